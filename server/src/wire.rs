//! The server's text frames, framed here and written straight to the connection.
//!
//! Through tungstenite's `Sink`, a frame cost ~870 instructions beyond the socket write itself
//! (callgrind, `sss-bench fanout`: ~1 050 of the ~2 465 the server spent per delivery): a
//! `Frame` built, its header and payload copied into tungstenite's buffer, and the task's waker
//! set through tokio-tungstenite's compatibility layer at every call. A frame from a server is
//! a header of 2, 4 or 10 bytes before the payload, unmasked (RFC 6455 §5.2), so [`Writer`]
//! writes the header from the stack and the payload from the frame's own buffer, several
//! frames to one write: copied into one buffer for a plain `send` when small (see
//! [`COPY_MAX`]), written in place with a vectored write when not.
//!
//! tungstenite keeps the rest of the stream: it reads, and it writes what it queues on its own
//! (the pong to a ping, the reply to a close) and the closing handshake. Its bytes and these
//! must not interleave. The socket's task reads only once its frames are written, so
//! tungstenite never writes while a frame of this module is half-written; and before writing,
//! the task lets tungstenite finish whatever it queued (see `socket.rs`).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::AsyncWrite;

use crate::fifo::Fifo;

/// Frames gathered into one vectored write: a burst of 16 frames (a client's pipelined asks,
/// a publication burst) costs one system call, as it did through tungstenite's buffer.
const BATCH: usize = 16;

/// Frames of up to this many bytes in all are copied into one buffer and sent with one plain
/// write: a `writev` cost the kernel more than a `send` of the same bytes (perf, `sss-bench
/// fanout`: `vfs_writev` and `fdget_pos` took 7.7 % of the server's CPU where `send` took
/// 4.7 %), more than copying a kilobyte costs.
const COPY_MAX: usize = 1024;

/// The header of an unmasked, final text frame of `len` bytes, and how many of its bytes are
/// used.
fn header(len: usize) -> ([u8; 10], usize) {
    let mut h = [0; 10];
    // FIN, no extension bits, opcode 1 (text).
    h[0] = 0x81;
    let used = if len < 126 {
        h[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        h[1] = 126;
        h[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (h, used)
}

/// Writes a queue of text frames, resumably: its state is the queue and how much of the
/// first frame is already written, so the socket's task holds no write future.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    /// Bytes of the first queued frame, header included, already written.
    offset: usize,
}

impl Writer {
    /// Writes `frames` to `io` and flushes it, as far as `io` takes them now. A frame leaves
    /// the queue once written whole, and its payload's length is added to `bytes`. Ready when
    /// the queue is empty and flushed, or on the first error (the unwritten frames stay
    /// queued, for the caller to drop).
    pub(crate) fn poll_write<S, F>(
        &mut self,
        io: &mut S,
        frames: &mut Fifo<F>,
        bytes: &mut u64,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>>
    where
        S: AsyncWrite + Unpin,
        F: AsRef<[u8]>,
    {
        while !frames.is_empty() {
            let mut heads = [([0; 10], 0); BATCH];
            for (head, frame) in heads.iter_mut().zip(frames.iter()) {
                *head = header(frame.as_ref().len());
            }
            let mut slices = [IoSlice::new(&[]); 2 * BATCH];
            let mut used = 0;
            let mut skip = self.offset;
            for ((head, len), frame) in heads.iter().zip(frames.iter()) {
                for part in [&head[..*len], frame.as_ref()] {
                    if skip >= part.len() {
                        skip -= part.len();
                    } else {
                        slices[used] = IoSlice::new(&part[skip..]);
                        skip = 0;
                        used += 1;
                    }
                }
            }
            let slices = &slices[..used];
            let total: usize = slices.iter().map(|s| s.len()).sum();
            let n = if total <= COPY_MAX {
                let mut copy = [0; COPY_MAX];
                let mut at = 0;
                for s in slices {
                    copy[at..at + s.len()].copy_from_slice(s);
                    at += s.len();
                }
                ready!(Pin::new(&mut *io).poll_write(cx, &copy[..at]))?
            } else {
                ready!(Pin::new(&mut *io).poll_write_vectored(cx, slices))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            // The write ends within this batch: its frames leave as far as written whole.
            let mut done = self.offset + n;
            for (_, head_len) in heads {
                let Some(payload_len) = frames.front().map(|f| f.as_ref().len()) else {
                    break;
                };
                let whole = head_len + payload_len;
                if done < whole {
                    break;
                }
                done -= whole;
                *bytes += payload_len as u64;
                frames.pop();
            }
            self.offset = done;
        }
        Pin::new(io).poll_flush(cx)
    }

    /// Whether the first queued frame is partly written.
    pub(crate) fn started(&self) -> bool {
        self.offset > 0
    }

    /// Drops the queued frames not yet started. A frame half-written stays queued: the
    /// connection is usable only once its rest is written (before a close frame, say).
    pub(crate) fn drop_unstarted<F>(&self, frames: &mut Fifo<F>) {
        let started = if self.started() { frames.pop() } else { None };
        while frames.pop().is_some() {}
        if let Some(frame) = started {
            frames.push(frame);
        }
    }

    /// Drops every queued frame, a half-written one too (the connection failed).
    pub(crate) fn drop_all<F>(&mut self, frames: &mut Fifo<F>) {
        while frames.pop().is_some() {}
        self.offset = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::Utf8Bytes;

    /// A deterministic stream of pseudo-random numbers (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        }
    }

    /// tungstenite's encoding of a text frame, which this module replaces.
    fn tungstenite_frame(payload: &str) -> Vec<u8> {
        let mut out = Vec::new();
        Frame::message(payload.to_owned(), OpCode::Data(Data::Text), true)
            .format(&mut out)
            .expect("a Vec takes any frame");
        out
    }

    fn payload(len: usize) -> Utf8Bytes {
        Utf8Bytes::from(
            (0..len)
                .map(|i| char::from(b'a' + (i % 26) as u8))
                .collect::<String>(),
        )
    }

    #[test]
    fn headers_are_tungstenites_at_every_length_boundary() {
        for len in [0, 1, 125, 126, 127, 1000, 65_535, 65_536, 70_000] {
            let p = payload(len);
            let (h, used) = header(len);
            let mut ours = h[..used].to_vec();
            ours.extend_from_slice(p.as_bytes());
            assert_eq!(ours, tungstenite_frame(&p), "length {len}");
        }
    }

    /// A connection that takes a few bytes at a time, or none (`Pending`), as the random
    /// stream decides: every frame must still arrive whole and in order.
    struct Choppy {
        rng: Rng,
        written: Vec<u8>,
    }

    impl AsyncWrite for Choppy {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            if self.rng.below(4) == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let mut room = 1 + self.rng.below(300) as usize;
            let mut n = 0;
            for b in bufs {
                let take = room.min(b.len());
                self.written.extend_from_slice(&b[..take]);
                n += take;
                room -= take;
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn frames_written_in_pieces_are_tungstenites_byte_for_byte() {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        for seed in 1..=200 {
            let mut rng = Rng(seed);
            let mut io = Choppy {
                rng: Rng(seed * 7919),
                written: Vec::new(),
            };
            let (mut writer, mut frames, mut bytes) = (Writer::default(), Fifo::default(), 0);
            let mut expected = Vec::new();
            let mut payload_bytes = 0;
            // Frames arrive between writes, as a socket's events queue them.
            for _ in 0..40 {
                for _ in 0..rng.below(BATCH as u64 + 4) {
                    let len = match rng.below(10) {
                        0 => 126 + rng.below(70_000) as usize,
                        _ => rng.below(130) as usize,
                    };
                    let p = payload(len);
                    expected.extend(tungstenite_frame(&p));
                    payload_bytes += len as u64;
                    frames.push(p);
                }
                let _ = writer.poll_write(&mut io, &mut frames, &mut bytes, &mut cx);
            }
            while writer
                .poll_write(&mut io, &mut frames, &mut bytes, &mut cx)
                .is_pending()
            {}
            assert!(frames.is_empty());
            assert_eq!(writer.offset, 0);
            assert_eq!(io.written, expected, "seed {seed}");
            assert_eq!(bytes, payload_bytes, "seed {seed}");
        }
    }

    #[test]
    fn a_burst_is_gathered_into_one_write() {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let (mut writer, mut frames, mut bytes) = (Writer::default(), Fifo::default(), 0);
        for _ in 0..BATCH {
            frames.push(payload(5));
        }
        struct Whole(Vec<u8>, usize);
        impl AsyncWrite for Whole {
            fn poll_write(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                self.1 += 1;
                self.0.extend_from_slice(buf);
                Poll::Ready(Ok(buf.len()))
            }
            fn poll_write_vectored(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
                bufs: &[IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                self.1 += 1;
                let mut n = 0;
                for b in bufs {
                    self.0.extend_from_slice(b);
                    n += b.len();
                }
                Poll::Ready(Ok(n))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        let mut io = Whole(Vec::new(), 0);
        assert!(writer
            .poll_write(&mut io, &mut frames, &mut bytes, &mut cx)
            .is_ready());
        assert_eq!(io.1, 1, "{BATCH} frames, one write");
        assert_eq!(io.0.len(), BATCH * 7);
    }
}
