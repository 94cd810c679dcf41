//! wss://: the server terminates TLS itself with rustls; the native client verifies it.

use std::sync::Arc;

use futures::StreamExt;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sss_client::{Client, ConnectError, Options, SubEvent};
use sss_server::{MemoryScaler, Rejection, Server};
use sss_tests::{init_tracing, within};

struct Certs {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

fn certs() -> Certs {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let cert: CertificateDer<'static> = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    let server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .expect("server config");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("root");
    let client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Certs {
        server: Arc::new(server),
        client: Arc::new(client),
    }
}

#[tokio::test]
async fn wss_end_to_end() {
    init_tracing();
    let certs = certs();
    let server = Server::builder(MemoryScaler::default())
        .on_ask("add", |_s, (a, b): (i64, i64)| async move {
            Ok::<_, Rejection>(a + b)
        })
        .build()
        .await
        .expect("server");
    let listening = server
        .listen_tls("127.0.0.1:0", certs.server.clone())
        .await
        .expect("listen");
    let url = format!("wss://localhost:{}/ws", listening.local_addr().port());

    let client = within(
        "connect",
        Client::connect(&url, Options::default().tls(certs.client)),
    )
    .await
    .expect("connects over TLS");
    assert_eq!(
        within("ask", client.ask::<_, i64>("add", &(2, 2)))
            .await
            .expect("ask"),
        4
    );
    let mut sub = within("sub", client.subscribe("news", None::<()>))
        .await
        .expect("sub");
    server
        .publish("news", "n", &"over tls")
        .await
        .expect("publish");
    match within("publication", sub.next()).await {
        Some(SubEvent::Publication(p)) => assert_eq!(p.msg.get(), r#""over tls""#),
        other => panic!("{other:?}"),
    }

    // A client that does not trust the certificate cannot connect.
    let untrusted = within("connect", Client::connect(&url, Options::default())).await;
    assert!(
        matches!(untrusted, Err(ConnectError::Closed { code: 1006, .. })),
        "{untrusted:?}"
    );
}
