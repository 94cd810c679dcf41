//! The server as a library inside someone else's HTTP app, and its graceful shutdown.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sss_client::{Client, Options};
use sss_server::{close, is_upgrade_request, MemoryScaler, Rejection, Server};
use sss_tests::{init_tracing, within, RawPeer};
use tokio::net::TcpListener;

async fn server() -> Server {
    init_tracing();
    Server::builder(MemoryScaler::default())
        .on_ask("add", |_s, (a, b): (i64, i64)| async move {
            Ok::<_, Rejection>(a + b)
        })
        .build()
        .await
        .expect("server")
}

/// An application's own hyper service: `/ws` upgrades go to the sockets server, the rest is the
/// application's.
#[tokio::test]
async fn mounted_in_a_hyper_app() {
    let sockets = server().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                break;
            };
            let sockets = sockets.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let sockets = sockets.clone();
                    async move {
                        let res = if req.uri().path() == "/ws" && is_upgrade_request(&req) {
                            sockets.upgrade(req, Some(peer)).await
                        } else {
                            Response::new(Full::new(Bytes::from_static(b"the app's page")))
                        };
                        Ok::<_, Infallible>(res)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    let client = within(
        "connect",
        Client::connect(format!("ws://{addr}/ws"), Options::default()),
    )
    .await
    .expect("connects through the app");
    assert_eq!(
        within("ask", client.ask::<_, i64>("add", &(3, 4)))
            .await
            .expect("ask"),
        7
    );
}

/// An application that accepts TCP connections itself hands them to the server.
#[tokio::test]
async fn serves_connections_accepted_elsewhere() {
    let sockets = server().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            let sockets = sockets.clone();
            tokio::spawn(async move { sockets.serve_io(tcp, Some(peer)).await });
        }
    });
    let client = within(
        "connect",
        Client::connect(format!("ws://{addr}/"), Options::default()),
    )
    .await
    .expect("connects");
    assert_eq!(
        within("ask", client.ask::<_, i64>("add", &(1, 4)))
            .await
            .expect("ask"),
        5
    );
}

#[tokio::test]
async fn shutdown_tells_clients_to_go_elsewhere() {
    let sockets = server().await;
    let listening = sockets.listen("127.0.0.1:0").await.expect("listen");
    let url = format!("ws://{}/ws", listening.local_addr());
    let mut peer = RawPeer::hello(&url).await;
    assert_eq!(sockets.local_sockets(), 1);
    let down = {
        let s = sockets.clone();
        tokio::spawn(async move { s.shutdown(Duration::from_secs(5)).await })
    };
    let (code, _) = peer.closed().await;
    assert_eq!(code, close::GOING_AWAY);
    within("shutdown", down).await.expect("shutdown task");
    assert_eq!(sockets.local_sockets(), 0);
    within("listener stops", listening.stopped()).await;
}
