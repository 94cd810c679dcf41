//! Authentication in the protocol: the `hello`'s `auth`, extra headers and cookies reach the
//! session parser; a refused `hello` is the server's code, and the client does not retry it; a
//! token source is asked again before every reconnect.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use sss_client::{close, codes, Client, ClientStatus, ConnectError, Options, Reconnect};
use sss_server::{MemoryScaler, Refusal, Rejection, Server, ServerBuilder, Session};
use sss_tests::{restart, start, within};

/// What the session parser saw, in order: the `auth` of each `hello` (raw JSON).
type Seen = Arc<Mutex<Vec<Option<String>>>>;

/// A server whose session parser takes tokens `tok-<user>` (and refuses `expired`), and reads
/// the `x-tenant` header and the `theme` cookie into the session's locals.
fn app(scaler: MemoryScaler, seen: Seen) -> ServerBuilder {
    Server::builder(scaler)
        .session_parser(move |req| {
            let seen = seen.clone();
            async move {
                let auth = req.auth().map(|a| a.get().to_owned());
                seen.lock().unwrap_or_else(|e| e.into_inner()).push(auth);
                let token: String = req
                    .auth_as()
                    .ok_or_else(|| Refusal::unauthorized("a token is required"))?;
                if token == "expired" {
                    return Err(Refusal::unauthorized("token expired"));
                }
                if token == "banned" {
                    return Err(Refusal::new("banned", "this account is banned"));
                }
                let user = token
                    .strip_prefix("tok-")
                    .ok_or_else(|| Refusal::forbidden("not a user token"))?;
                let tenant = req
                    .headers
                    .get("x-tenant")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
                    .to_owned();
                let theme = req.cookie("theme").unwrap_or("plain").to_owned();
                Ok(Session::user(user).with_local(format!("{tenant}/{theme}")))
            }
        })
        .on_ask("whoami", |socket, ()| async move {
            let extra = socket.local::<String>().cloned().unwrap_or_default();
            Ok::<_, Rejection>(json!([socket.user(), extra]))
        })
}

fn seen() -> Seen {
    Arc::new(Mutex::new(Vec::new()))
}

fn auths(seen: &Seen) -> Vec<Option<String>> {
    seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

#[tokio::test]
async fn a_token_headers_and_cookies_reach_the_session_parser() {
    let seen = seen();
    let (_server, _l, url) = start(app(MemoryScaler::default(), seen.clone())).await;
    let options = Options::default()
        .auth(json!("tok-ann"))
        .header("x-tenant", "acme")
        .cookie("theme", "dark");
    let client = within("connect", Client::connect(url, options))
        .await
        .expect("a good token connects");
    assert_eq!(
        client.identity().and_then(|i| i.user),
        Some("ann".to_owned())
    );
    let who: serde_json::Value = client.ask("whoami", &()).await.expect("whoami");
    assert_eq!(who, json!(["ann", "acme/dark"]));
    assert_eq!(auths(&seen), [Some(r#""tok-ann""#.to_owned())]);
}

#[tokio::test]
async fn a_refused_hello_is_the_servers_code_and_is_not_retried() {
    let seen = seen();
    let (_server, _l, url) = start(app(MemoryScaler::default(), seen.clone())).await;
    for (token, code, reason) in [
        (Some("expired"), codes::UNAUTHORIZED, "token expired"),
        (None, codes::UNAUTHORIZED, "a token is required"),
        (Some("guest"), codes::FORBIDDEN, "not a user token"),
        (Some("banned"), "banned", "this account is banned"),
    ] {
        let options = match token {
            Some(t) => Options::default().auth(json!(t)),
            None => Options::default(),
        };
        match within("connect", Client::connect(url.clone(), options)).await {
            Err(ConnectError::Rejected { code: c, reason: r }) => {
                assert_eq!((c.as_str(), r.as_str()), (code, reason));
            }
            other => panic!("{token:?}: {other:?}"),
        }
    }
    // A background client (which would retry a failed connection forever) ends with the
    // server's error after one attempt.
    seen.lock().unwrap_or_else(|e| e.into_inner()).clear();
    let client = Client::new(
        vec![url],
        Options::default()
            .auth(json!("expired"))
            .reconnect(Reconnect {
                base: Duration::from_millis(1),
                ..Reconnect::default()
            }),
    );
    let status = within("closed", client.wait_status(|s| s == ClientStatus::Closed)).await;
    assert_eq!(status, ClientStatus::Closed);
    let closed = client.closed().expect("closed");
    assert_eq!(closed.code, close::HANDSHAKE_REFUSED);
    let error = closed.error.expect("the server's error");
    assert_eq!(
        (error.code.as_str(), error.reason.as_str()),
        (codes::UNAUTHORIZED, "token expired")
    );
    assert_eq!(auths(&seen).len(), 1, "one attempt, no reconnect loop");
}

#[tokio::test]
async fn the_token_source_is_asked_again_before_every_reconnect() {
    let seen = seen();
    let hub = MemoryScaler::default();
    let (server, listening, url) = start(app(hub.instance(), seen.clone())).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    // Every call is a fresh token; the third is one the server no longer takes.
    let options = Options::default()
        .reconnect(Reconnect {
            base: Duration::from_millis(10),
            ..Reconnect::default()
        })
        .auth_with(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                match n {
                    1 | 2 => Ok(format!("tok-ann{n}")),
                    _ => Ok::<_, String>("expired".to_owned()),
                }
            }
        });
    let client = within("connect", Client::connect(url, options))
        .await
        .expect("connects");
    assert_eq!(
        client.identity().and_then(|i| i.user),
        Some("ann1".to_owned())
    );

    let (server, listening) = restart(server, listening, app(hub.instance(), seen.clone())).await;
    within(
        "reconnected as ann2",
        client.wait_status(|_| client.identity().and_then(|i| i.user).as_deref() == Some("ann2")),
    )
    .await;
    assert_eq!(client.status(), ClientStatus::Ready);

    let (_server, _listening) = restart(server, listening, app(hub.instance(), seen.clone())).await;
    within("closed", client.wait_status(|s| s == ClientStatus::Closed)).await;
    let error = client.closed().and_then(|c| c.error).expect("refused");
    assert_eq!(error.code, codes::UNAUTHORIZED);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        auths(&seen),
        [
            Some(r#""tok-ann1""#.to_owned()),
            Some(r#""tok-ann2""#.to_owned()),
            Some(r#""expired""#.to_owned()),
        ]
    );
}
