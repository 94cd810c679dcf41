//! `ServerFrame::decode` on arbitrary text (what a client reads): it must never panic, and a
//! frame it accepts must survive a round trip. `ServerFrame` holds `RawValue`s and so has no
//! `PartialEq`: the round trip compares encodings.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sss_core::protocol::ServerFrame;

fuzz_target!(|data: &[u8]| {
    // Frames arrive in WebSocket text messages, which are UTF-8 by the time they are decoded.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(frame) = ServerFrame::decode(text) else {
        return;
    };
    let first = frame.encode();
    let again = ServerFrame::decode(&first)
        .unwrap_or_else(|e| panic!("re-decoding {first:?} (from {text:?}) failed: {e}"));
    assert_eq!(
        first,
        again.encode(),
        "round trip changed the frame (input {text:?})"
    );
});
