//! Attacks on the server's HTTP/TCP edge, over real sockets: stalled half-sent upgrade
//! requests, connection floods past the process and per-IP limits, and running out of file
//! descriptors under `accept`.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use futures::StreamExt;
use sss_server::{MemoryScaler, Server, ServerOptions};
use sss_tests::{start, within, RawPeer};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite;

/// A request line and one header, without the blank line that ends the head: the server waits
/// for the rest forever unless something reaps it.
const PARTIAL: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\n";

/// Makes `needed` file descriptors available to this process: the soft limit is raised to the
/// hard one, and a privileged process (root, CAP_SYS_RESOURCE) raises the hard one if it is
/// too low. Anyone else gets a loud failure, never a silent skip.
fn raise_fd_limit(needed: u64) {
    use rlimit::Resource;
    let (soft, hard) = rlimit::getrlimit(Resource::NOFILE).expect("getrlimit(RLIMIT_NOFILE)");
    if soft >= needed {
        return;
    }
    let target = hard.max(needed);
    if let Err(e) = rlimit::setrlimit(Resource::NOFILE, target, target) {
        panic!(
            "this test needs {needed} file descriptors (both ends of every connection are in this \
             process); RLIMIT_NOFILE is {soft} soft / {hard} hard and raising it failed ({e}): \
             raise the hard limit (`ulimit -Hn {needed}` as root, or LimitNOFILE= / \
             `docker run --ulimit nofile={needed}`)"
        );
    }
}

/// A WebSocket upgrade request for `addr`.
fn upgrade_request(addr: SocketAddr) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// Connects to `addr` from the local address `src` (any of 127.0.0.0/8 on Linux).
async fn connect_from(src: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(src, 0)).expect("bind source");
    within("connect", socket.connect(addr))
        .await
        .expect("connect")
}

/// Reads what the server sends until it closes the connection (EOF or reset).
async fn read_until_closed(tcp: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match within("the server to close", tcp.read(&mut buf)).await {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("read failed: {e}"),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Sends a complete upgrade request and returns the response's status code.
async fn upgrade_status(tcp: &mut TcpStream, addr: SocketAddr) -> u16 {
    // A refused connection may already be closed when the request arrives: the answer was
    // written first and is still readable, so a failed write is not the result.
    let _ = tcp.write_all(upgrade_request(addr).as_bytes()).await;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match within("response head", tcp.read(&mut buf)).await {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => panic!("no response: {e} (read so far: {head:?})"),
        }
    }
    let head = String::from_utf8_lossy(&head);
    head.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {head:?}"))
}

/// Connects with a real WebSocket client and returns the HTTP status that refused it.
async fn refused_status(url: &str) -> u16 {
    match within("refusal", tokio_tungstenite::connect_async(url)).await {
        Err(tungstenite::Error::Http(res)) => res.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {:?}", other.map(|_| ())),
    }
}

/// An open connection in the HTTP phase: connected, nothing sent.
async fn idle_connection(addr: SocketAddr) -> TcpStream {
    within("connect", TcpStream::connect(addr))
        .await
        .expect("connect")
}

/// Closes a connection in the HTTP phase from the client side and waits for the server to
/// close its end: the server releases the connection's count before closing the socket.
async fn leave(mut tcp: TcpStream) {
    tcp.shutdown().await.expect("shutdown");
    let rest = read_until_closed(&mut tcp).await;
    assert_eq!(rest, "", "an idle connection gets no answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_half_open_upgrades_are_reaped_and_good_clients_still_served() {
    // The attack exhausted the file descriptors at about 20k connections. Both ends are in this
    // process, so 20k stalled connections need ~41k descriptors: the test holds 20k where the
    // hard limit allows and otherwise as many as it does (this machine's hard limit is 20 000,
    // which root cannot raise: 9 500 here), and says so. A server process on its own holds one
    // descriptor per connection; SSS_TEST_STALLED_CONNECTIONS sets the count.
    let stalled_count: usize = match std::env::var("SSS_TEST_STALLED_CONNECTIONS") {
        Ok(n) => n.parse().expect("SSS_TEST_STALLED_CONNECTIONS is a number"),
        Err(_) => {
            let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).expect("getrlimit");
            let fits = usize::try_from(hard.saturating_sub(1_000) / 2).unwrap_or(usize::MAX);
            if fits < 20_000 {
                println!("RLIMIT_NOFILE hard limit {hard}: holding {fits} stalled connections");
            }
            assert!(
                fits >= 5_000,
                "RLIMIT_NOFILE hard limit {hard} is too low for this test"
            );
            fits.min(20_000)
        }
    };
    // Short for the test, but longer than opening them all takes (20k: ~4 s in a debug build
    // on 2 busy cores, printed below), so all are held at once when the good client comes.
    const HEADER_TIMEOUT: Duration = Duration::from_secs(8);
    raise_fd_limit(2 * stalled_count as u64 + 1_000);
    let builder = Server::builder(MemoryScaler::default())
        .options(ServerOptions::default().header_read_timeout(HEADER_TIMEOUT));
    let (server, listening, url) = start(builder).await;
    let addr = listening.local_addr();

    let started = Instant::now();
    let stalled: Vec<(TcpStream, Instant)> = within(
        "the stalled connections",
        futures::stream::iter(0..stalled_count)
            .map(|_| async move {
                // Taken before connecting: the server accepts (and starts its timer) after
                // this, while this task may see the connection complete much later.
                let at = Instant::now();
                let mut tcp = TcpStream::connect(addr).await.expect("connect");
                tcp.write_all(PARTIAL).await.expect("partial request");
                (tcp, at)
            })
            .buffer_unordered(256)
            .collect(),
    )
    .await;
    let connected_in = started.elapsed();

    // Accepted in order: by the time the good client is served, every stalled connection
    // before it was accepted too.
    let asked = Instant::now();
    let _good = RawPeer::hello(&url).await;
    let served_in = asked.elapsed();
    let held = server.open_connections();
    println!(
        "{stalled_count} stalled connections opened in {connected_in:?}; a good client was served \
         (upgrade + hello/welcome) in {served_in:?} while the server held {held} connections"
    );
    assert_eq!(
        held,
        stalled_count + 1,
        "every stalled connection (and the good one) is held while the good client is served \
         (opening them took {connected_in:?}, header_read_timeout is {HEADER_TIMEOUT:?})"
    );
    assert!(
        served_in < Duration::from_secs(1),
        "good client waited {served_in:?}"
    );

    let lifetimes: Vec<Duration> = within(
        "the server to close every stalled connection",
        futures::stream::iter(stalled)
            .map(|(mut tcp, at)| async move {
                read_until_closed(&mut tcp).await;
                at.elapsed()
            })
            .buffer_unordered(stalled_count)
            .collect(),
    )
    .await;
    let first = lifetimes.iter().min().copied().unwrap_or_default();
    let last = lifetimes.iter().max().copied().unwrap_or_default();
    println!(
        "all {} stalled connections closed by the server, {first:?} to {last:?} after they \
         connected (header_read_timeout {HEADER_TIMEOUT:?})",
        lifetimes.len()
    );
    assert_eq!(lifetimes.len(), stalled_count);
    assert!(first >= HEADER_TIMEOUT, "one was closed early: {first:?}");
    // Counts are released before the socket closes, so this is exact once all saw the close.
    assert_eq!(server.open_connections(), 1, "only the good client is left");
}

#[tokio::test]
async fn connections_beyond_the_process_limit_get_503_fast() {
    let builder = Server::builder(MemoryScaler::default())
        .options(ServerOptions::default().max_connections(3));
    let (server, listening, url) = start(builder).await;
    let addr = listening.local_addr();
    // Two in the HTTP phase and one open WebSocket: an upgraded socket keeps its count.
    let _a = idle_connection(addr).await;
    let _b = idle_connection(addr).await;
    let _ws = RawPeer::hello(&url).await;
    assert_eq!(server.open_connections(), 3);

    // The refusal does not wait for a request: it is written at accept.
    let asked = Instant::now();
    let mut excess = idle_connection(addr).await;
    let answer = read_until_closed(&mut excess).await;
    let answered_in = asked.elapsed();
    println!("refused in {answered_in:?}: {answer:?}");
    assert!(
        answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{answer:?}"
    );
    assert!(answer.contains("\r\nConnection: close\r\n"), "{answer:?}");
    assert!(answered_in < Duration::from_millis(500), "{answered_in:?}");

    // A real client sees the status.
    assert_eq!(refused_status(&url).await, 503);
    assert_eq!(
        server.open_connections(),
        3,
        "refused ones are never counted"
    );
}

#[tokio::test]
async fn connections_beyond_the_per_ip_limit_get_429() {
    let builder = Server::builder(MemoryScaler::default())
        .options(ServerOptions::default().max_connections_per_ip(2));
    let (server, listening, url) = start(builder).await;
    let addr = listening.local_addr();
    let local: IpAddr = [127, 0, 0, 1].into();
    let _ws = RawPeer::hello(&url).await;
    let _idle = connect_from(local, addr).await;

    let mut third = connect_from(local, addr).await;
    assert_eq!(upgrade_status(&mut third, addr).await, 429);
    assert_eq!(refused_status(&url).await, 429);

    // Another address is not affected.
    let mut other = connect_from([127, 0, 0, 2].into(), addr).await;
    assert_eq!(upgrade_status(&mut other, addr).await, 101);
    assert_eq!(server.open_connections(), 3);
}

#[tokio::test]
async fn refused_floods_leave_no_count_behind_and_freed_slots_are_reused() {
    let builder = Server::builder(MemoryScaler::default()).options(
        ServerOptions::default()
            .max_connections(2)
            .max_connections_per_ip(2),
    );
    let (server, listening, url) = start(builder).await;
    let addr = listening.local_addr();
    let a = idle_connection(addr).await;
    let (mut ws, _) = within("ws", tokio_tungstenite::connect_async(url.as_str()))
        .await
        .expect("ws connects");

    // A flood of refused connections, answered and closed.
    for _ in 0..50 {
        let mut tcp = idle_connection(addr).await;
        let answer = read_until_closed(&mut tcp).await;
        assert!(answer.starts_with("HTTP/1.1 503 "), "{answer:?}");
    }
    assert_eq!(server.open_connections(), 2);

    // Both holders leave: one in the HTTP phase, one WebSocket (closing handshake, then the
    // server closes the TCP connection).
    leave(a).await;
    futures::SinkExt::close(&mut ws).await.expect("close");
    while let Some(Ok(_)) = within("ws close", ws.next()).await {}
    read_until_closed(ws.get_mut_tcp()).await;
    assert_eq!(server.open_connections(), 0, "counts released");

    // Both slots can be used again, by the same address.
    let _one = RawPeer::hello(&url).await;
    let _two = RawPeer::hello(&url).await;
    assert_eq!(server.open_connections(), 2);
}

/// The underlying TCP stream of a plain ws:// client.
trait TcpOf {
    fn get_mut_tcp(&mut self) -> &mut TcpStream;
}

impl TcpOf for tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>> {
    fn get_mut_tcp(&mut self) -> &mut TcpStream {
        match self.get_mut() {
            tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp,
            _ => panic!("ws:// is plain TCP"),
        }
    }
}

/// Set in the child process of the EMFILE test.
const EMFILE_CHILD: &str = "SSS_TEST_EMFILE_CHILD";
/// How long the child stays out of descriptors with a connection waiting.
const EMFILE_WINDOW: Duration = Duration::from_secs(3);

/// Runs a server in a child process (this test binary, re-executed) whose descriptors are all
/// in use, so `accept` fails with EMFILE while a client waits in the accept queue. The child
/// logs every failed accept at debug level; the count over the window shows the loop backs off
/// (10 ms doubling to 1 s: 9 attempts in 3 s; the old fixed 50 ms sleep made 60, and a loop
/// without a sleep thousands), and only the first failure is a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_loop_backs_off_when_out_of_file_descriptors() {
    if std::env::var_os(EMFILE_CHILD).is_some() {
        return emfile_child().await;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let mut child = tokio::process::Command::new(exe)
        .args([
            "--exact",
            "accept_loop_backs_off_when_out_of_file_descriptors",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(EMFILE_CHILD, "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the child");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut stderr = child.stderr.take().expect("stderr");
    let log = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });
    let addr = within("the child's address", line_starting(&mut stdout, "ADDR ")).await;
    let filled = within(
        "the child to run out of descriptors",
        line_starting(&mut stdout, "FULL "),
    )
    .await;

    let url = format!("ws://{addr}/ws");
    let hello = tokio::spawn(async move {
        RawPeer::hello(&url).await;
        Instant::now()
    });
    // Not a synchronisation: the child's behaviour is observed over a fixed time window.
    tokio::time::sleep(EMFILE_WINDOW).await;
    stdin.write_all(b"release\n").await.expect("tell the child");
    let released = Instant::now();
    let served = within("the waiting client to be served", hello)
        .await
        .expect("hello task");
    let recovery = served.saturating_duration_since(released);
    drop(stdin);
    let status = within("the child to exit", child.wait())
        .await
        .expect("child");
    let log = within("the child's log", log).await.expect("log task");
    assert!(status.success(), "child failed: {status}\n{log}");

    let failures = log.lines().filter(|l| l.contains("accept failed")).count();
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("accept failed"))
        .count();
    println!(
        "child filled {filled} descriptors; {failures} failed accepts in {EMFILE_WINDOW:?}, \
         {warnings} warning(s); the waiting client was served {recovery:?} after descriptors \
         were freed"
    );
    assert!(
        log.contains("Too many open files"),
        "EMFILE was not provoked:\n{log}"
    );
    assert!(
        (5..=15).contains(&failures),
        "{failures} failed accepts in {EMFILE_WINDOW:?}:\n{log}"
    );
    assert_eq!(warnings, 1, "one warning, then a summary per 10 s:\n{log}");
    assert!(
        recovery < Duration::from_millis(1500),
        "served {recovery:?} after descriptors were freed (the longest backoff is 1 s)"
    );
}

/// The rest of the first line of the child's output that contains `prefix`, after it.
async fn line_starting(
    stdout: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    prefix: &str,
) -> String {
    loop {
        let line = stdout
            .next_line()
            .await
            .expect("child stdout")
            .unwrap_or_else(|| panic!("child exited before printing {prefix}"));
        // libtest prints "test <name> ... " without a line break before the child's output.
        if let Some(at) = line.find(prefix) {
            return line[at + prefix.len()..].to_owned();
        }
    }
}

/// The child of the EMFILE test: a server whose process has no free descriptor until the parent
/// says `release`.
async fn emfile_child() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("sss_server=debug"))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let server = Server::builder(MemoryScaler::default())
        .build()
        .await
        .expect("server");
    let listening = server.listen("127.0.0.1:0").await.expect("listen");
    println!("ADDR {}", listening.local_addr());

    // Every descriptor below a low soft limit in use: the next accept fails with EMFILE.
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).expect("getrlimit");
    rlimit::setrlimit(rlimit::Resource::NOFILE, 256, hard).expect("lower the soft limit");
    let mut filler = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        filler.push(f);
    }
    println!("FULL {}", filler.len());

    assert_eq!(stdin_line().await.as_deref(), Some("release\n"));
    drop(filler);
    // Serve until the parent is done (it closes stdin).
    while stdin_line().await.is_some() {}
}

/// One line of the process's standard input (`None` at its end). Tokio's stdin needs a feature
/// the tests do not otherwise use; std's runs on the blocking pool.
async fn stdin_line() -> Option<String> {
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        match std::io::stdin().read_line(&mut line) {
            Ok(n) if n > 0 => Some(line),
            _ => None,
        }
    })
    .await
    .expect("stdin task")
}

/// Reads one HTTP response head from `tcp`: its status and everything read after the head.
async fn response_head(tcp: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).into_owned();
            let status = head
                .strip_prefix("HTTP/1.1 ")
                .and_then(|rest| rest.get(..3))
                .and_then(|code| code.parse().ok())
                .unwrap_or_else(|| panic!("not an HTTP response: {head:?}"));
            return (status, got[end + 4..].to_vec());
        }
        match within("response head", tcp.read(&mut buf)).await {
            Ok(0) => panic!("closed before a response head: {got:?}"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("no response: {e}"),
        }
    }
}

/// A client's text frame (payload under 126 bytes), masked with a zero key.
fn client_text(payload: &str) -> Vec<u8> {
    let len = u8::try_from(payload.len()).expect("short payload");
    assert!(len < 126);
    let mut frame = vec![0x81, 0x80 | len, 0, 0, 0, 0];
    frame.extend_from_slice(payload.as_bytes());
    frame
}

/// Reads from `tcp`, after `already`, until a server text frame holds `needle`.
async fn until_frame_with(tcp: &mut TcpStream, mut already: Vec<u8>, needle: &str) {
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&already).contains(needle) {
        match within(needle, tcp.read(&mut buf)).await {
            Ok(0) => panic!(
                "closed before {needle}: {:?}",
                String::from_utf8_lossy(&already)
            ),
            Ok(n) => already.extend_from_slice(&buf[..n]),
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

/// However an upgrade's head arrives, it is answered: with a `hello` in the same write (the
/// bytes after the head are the WebSocket's), with 20 KB of cookies, after a plain request on a
/// kept-alive connection; and refusals are answered and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_are_answered_however_the_head_arrives() {
    let builder = Server::builder(MemoryScaler::default())
        .options(
            ServerOptions::default()
                .observability_endpoints(true)
                .allowed_origins(["https://app.example"]),
        )
        .session_parser(|req| async move {
            let big = req.cookie("big").map_or(0, str::len);
            Ok(sss_server::Session::user(format!("cookie-{big}")))
        });
    let (server, _listening, url) = start(builder).await;
    let addr: SocketAddr = url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .parse()
        .expect("address");
    let hello = client_text(r#"{"t":"hello","v":1}"#);

    // 1. The hello in the same TCP write as the upgrade: the bytes after the head are the
    //    WebSocket's.
    let mut tcp = idle_connection(addr).await;
    let mut write = upgrade_request(addr).into_bytes();
    write.extend_from_slice(&hello);
    tcp.write_all(&write).await.expect("write");
    let (status, rest) = response_head(&mut tcp).await;
    assert_eq!(status, 101);
    until_frame_with(&mut tcp, rest, r#""user":"cookie-0""#).await;

    // 2. A long head: the session parser sees the whole cookie.
    let mut tcp = idle_connection(addr).await;
    let cookie = "c".repeat(20_000);
    let request =
        upgrade_request(addr).replace("\r\n\r\n", &format!("\r\nCookie: big={cookie}\r\n\r\n"));
    tcp.write_all(request.as_bytes()).await.expect("write");
    let (status, rest) = response_head(&mut tcp).await;
    assert_eq!(status, 101);
    tcp.write_all(&hello).await.expect("hello");
    until_frame_with(&mut tcp, rest, r#""user":"cookie-20000""#).await;

    // 3. A plain request first, then an upgrade on the same connection.
    let mut tcp = idle_connection(addr).await;
    tcp.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let (status, mut rest) = response_head(&mut tcp).await;
    assert_eq!(status, 200);
    // The health answer's body ("ok\n" or the like) precedes the next response.
    while !rest.ends_with(b"\n") {
        let mut buf = [0u8; 64];
        let n = within("health body", tcp.read(&mut buf))
            .await
            .expect("read");
        rest.extend_from_slice(&buf[..n]);
    }
    tcp.write_all(upgrade_request(addr).as_bytes())
        .await
        .expect("write");
    let (status, rest) = response_head(&mut tcp).await;
    assert_eq!(status, 101);
    tcp.write_all(&hello).await.expect("hello");
    until_frame_with(&mut tcp, rest, r#""t":"welcome""#).await;

    // 4. Refusals: an origin not allowed (403) and a version other than 13 (426), answered,
    //    closed as the request asked, and counted.
    for (request, status) in [
        (
            upgrade_request(addr).replace(
                "\r\n\r\n",
                "\r\nOrigin: https://evil.example\r\nConnection: close\r\n\r\n",
            ),
            403,
        ),
        (
            upgrade_request(addr)
                .replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8")
                .replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n"),
            426,
        ),
    ] {
        let mut tcp = idle_connection(addr).await;
        tcp.write_all(request.as_bytes()).await.expect("write");
        let answer = read_until_closed(&mut tcp).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{answer}"
        );
        assert!(answer.contains("content-length: "), "{answer}");
    }
    let metrics = server.render_metrics();
    for line in [
        r#"sss_connections_refused_total{reason="origin"} 1"#,
        r#"sss_connections_refused_total{reason="bad_request"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
}
