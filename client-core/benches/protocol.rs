//! Micro-benchmarks of the wire protocol's hot paths and of the client core handling a `pub`
//! frame. Run with `cargo bench -p sss-core`.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use sss_core::client::{Client, Config, Instant, SubscribeOptions};
use sss_core::protocol::{encode_pub, raw_json, ClientFrame, ServerFrame};
use sss_core::Position;

const PAYLOAD: &str =
    r#"{"from":"ann","text":"hello, this is a message of about one hundred bytes!!"}"#;

fn pub_frame(seq: u64) -> String {
    let msg = raw_json(PAYLOAD).expect("valid json");
    encode_pub("room:lobby", "msg", &Position::new("8c2f1e", seq), &msg)
}

fn codec(c: &mut Criterion) {
    let msg = raw_json(PAYLOAD).expect("valid json");
    let ask = ClientFrame::Ask {
        id: 42,
        topic: "chat.send".into(),
        msg: msg.clone(),
    };
    let ask_text = ask.encode();
    let pos = Position::new("8c2f1e", 41);
    let pub_text = pub_frame(41);
    c.bench_function("encode ask (client)", |b| {
        b.iter(|| black_box(&ask).encode())
    });
    c.bench_function("decode ask (server side)", |b| {
        b.iter(|| ClientFrame::decode(black_box(&ask_text)).expect("decodes"))
    });
    c.bench_function("encode_pub (server, once per publication)", |b| {
        b.iter(|| encode_pub("room:lobby", "msg", black_box(&pos), black_box(&msg)))
    });
    c.bench_function("decode pub (client side)", |b| {
        b.iter(|| ServerFrame::decode(black_box(&pub_text)).expect("decodes"))
    });
}

/// A client core that is welcomed and subscribed to `room:lobby` at seq 0.
fn subscribed_client() -> Client {
    let config = Config {
        urls: vec!["ws://bench.invalid/".into()],
        ..Config::default()
    };
    let now = Instant::from_millis(0);
    let mut c = Client::new(config, now);
    while c.poll_action().is_some() {}
    c.handle_open(now);
    c.handle_frame(now, r#"{"t":"welcome","v":1,"socket":"s-1","hb":25000}"#);
    c.subscribe(now, "room:lobby", SubscribeOptions::default())
        .expect("subscribes");
    c.handle_frame(
        now,
        r#"{"t":"subok","id":1,"ch":"room:lobby","pos":{"e":"8c2f1e","s":0}}"#,
    );
    while c.poll_transmit().is_some() {}
    while c.poll_event().is_some() {}
    c
}

fn client_core(c: &mut Criterion) {
    let frame = pub_frame(1);
    c.bench_function("client core: handle a pub frame and poll its event", |b| {
        b.iter_batched_ref(
            subscribed_client,
            |client| {
                client.handle_frame(Instant::from_millis(1), black_box(&frame));
                black_box(client.poll_event())
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, codec, client_core);
criterion_main!(benches);
