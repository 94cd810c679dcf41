//! One browser `WebSocket` and the callbacks it owns.

use std::rc::Weak;

use js_sys::{Array, Function, Reflect};
use wasm_bindgen::prelude::*;
use web_sys::{BinaryType, CloseEvent, Event, MessageEvent, WebSocket};

use crate::driver::Shared;

/// A `WebSocket` together with its three event callbacks.
///
/// The callbacks hold only a weak reference to the driver and the socket's id, so events of a
/// socket the driver has replaced are ignored. Dropping a `Socket` unsets every callback (no
/// event of it reaches the driver afterwards) and closes the socket if it is still open; the
/// closures are then freed with it: none is ever leaked on purpose.
pub(crate) struct Socket {
    pub(crate) id: u64,
    ws: WebSocket,
    close: Option<(u16, String)>,
    _on_open: Closure<dyn FnMut(Event)>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_close: Closure<dyn FnMut(CloseEvent)>,
}

impl Socket {
    /// Opens a socket to `url`, with the global `WebSocket` or the application's `ctor` (the
    /// `ws` package in Node: the same interface, used through the same bindings, which access
    /// its properties by name). Fails when the URL is refused at once (a malformed URL,
    /// `ws://` from an `https://` page, a blocked port).
    pub(crate) fn open(
        url: &str,
        ctor: Option<&Function>,
        driver: Weak<Shared>,
        id: u64,
    ) -> Result<Socket, JsValue> {
        let ws: WebSocket = match ctor {
            Some(ctor) => {
                Reflect::construct(ctor, &Array::of1(&JsValue::from_str(url)))?.unchecked_into()
            }
            None => WebSocket::new(url)?,
        };
        ws.set_binary_type(BinaryType::Arraybuffer);

        let d = driver.clone();
        let on_open = Closure::<dyn FnMut(Event)>::new(move |_: Event| {
            if let Some(shared) = d.upgrade() {
                shared.on_open(id);
            }
        });
        let d = driver.clone();
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
            // Text frames only: the protocol has no binary frames, and the core ignores them.
            if let Some(text) = e.data().as_string() {
                if let Some(shared) = d.upgrade() {
                    shared.on_message(id, &text);
                }
            }
        });
        let d = driver.clone();
        let on_close = Closure::<dyn FnMut(CloseEvent)>::new(move |e: CloseEvent| {
            if let Some(shared) = d.upgrade() {
                shared.on_close(id, e.code(), &e.reason());
            }
        });
        // No `error` listener: the event is a plain `Event` with nothing to read (no
        // `message`), and a `close` event (1006) always follows it; that is what the driver
        // acts on.
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        Ok(Socket {
            id,
            ws,
            close: None,
            _on_open: on_open,
            _on_message: on_message,
            _on_close: on_close,
        })
    }

    /// The `WebSocket` (a new reference to it, to use without borrowing the driver).
    pub(crate) fn ws(&self) -> WebSocket {
        self.ws.clone()
    }

    /// Closes the socket with this code and reason, and drops it (no event of it follows).
    pub(crate) fn close(mut self, code: u16, reason: &str) {
        self.close = Some((code, reason.to_owned()));
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
        let state = self.ws.ready_state();
        if state == WebSocket::CONNECTING || state == WebSocket::OPEN {
            let (code, reason) = self
                .close
                .take()
                .unwrap_or_else(|| (1000, "client dropped".to_owned()));
            // Browsers accept only 1000 and 3000..=4999 here, and a reason of at most 123 bytes.
            let code = if code == 1000 || (3000..=4999).contains(&code) {
                code
            } else {
                1000
            };
            let reason = truncate(&reason, 123);
            if self.ws.close_with_code_and_reason(code, reason).is_err() {
                let _ = self.ws.close();
            }
        }
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn truncates_at_a_char_boundary() {
        assert_eq!(truncate("short", 123), "short");
        assert_eq!(truncate("abcdef", 3), "abc");
        // "é" is two bytes: cutting inside it backs off to the boundary before it.
        assert_eq!(truncate("aé", 2), "a");
        assert_eq!(truncate(&"x".repeat(200), 123).len(), 123);
    }
}
