//! `sss-core`: the Super Scaled Sockets wire protocol and the sans-IO client state machine.
//!
//! This crate does no I/O and reads no clock: drivers (the native `sss-client` and the browser
//! `sss-wasm`) own the socket and the timers, feed what happens into [`client::Client`] and carry
//! out what it asks for. See `docs/PROTOCOL.md` for the wire protocol.
#![forbid(unsafe_code)]

pub mod client;
pub mod protocol;

pub use protocol::{Position, PROTOCOL_VERSION};
