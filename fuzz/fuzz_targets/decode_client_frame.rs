//! `ClientFrame::decode` on arbitrary text: it must never panic, and a frame it accepts must
//! survive a round trip. `ClientFrame` holds `RawValue`s and so has no `PartialEq`: the round trip
//! compares encodings (decode → encode → decode → encode gives the same text twice).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sss_core::protocol::ClientFrame;

fuzz_target!(|data: &[u8]| {
    // Frames arrive in WebSocket text messages, which are UTF-8 by the time they are decoded.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(frame) = ClientFrame::decode(text) else {
        return;
    };
    let first = frame.encode();
    // The hand-written encoder promises the bytes of the serde derive it replaced.
    let derived = serde_json::to_string(&frame).expect("a decoded frame serializes");
    assert_eq!(
        first, derived,
        "hand-written encode differs from the serde derive"
    );
    let again = ClientFrame::decode(&first)
        .unwrap_or_else(|e| panic!("re-decoding {first:?} (from {text:?}) failed: {e}"));
    assert_eq!(
        first,
        again.encode(),
        "round trip changed the frame (input {text:?})"
    );
});
