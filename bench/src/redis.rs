//! A `redis-server` of the benchmark's own, for `--scaler redis` without `--redis-url`.
//!
//! Runs on a free loopback port without persistence, its working directory in a temporary
//! directory; stopped (and the directory removed) by [`RedisServer::stop`] or on drop.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::Result;

/// How long the spawned server may take to answer PING.
const READY: Duration = Duration::from_secs(10);

/// A running `redis-server` child.
pub(crate) struct RedisServer {
    url: String,
    child: Option<Child>,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port and waits until it answers PING.
    pub(crate) async fn spawn() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("sss-bench-redis-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        // A free port can be taken between probing and binding: try a few.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => {
                        "redis-server is not installed (or pass --redis-url URL)".to_owned()
                    }
                    _ => format!("cannot run redis-server: {e}"),
                })?;
            let mut server = Self {
                url: format!("redis://127.0.0.1:{port}/"),
                child: Some(child),
                dir: dir.clone(),
            };
            if server.wait_ready(port).await? {
                return Ok(server);
            }
        }
        Err("redis-server did not start on any free port".into())
    }

    /// Its URL.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// `Ok(false)` if the child exited (the port was taken, say).
    async fn wait_ready(&mut self, port: u16) -> Result<bool> {
        let deadline = Instant::now() + READY;
        let mut delay = Duration::from_millis(5);
        while Instant::now() < deadline {
            if ping(port).await.is_ok_and(|r| r.starts_with("+PONG")) {
                return Ok(true);
            }
            if let Some(child) = self.child.as_mut() {
                if child.try_wait()?.is_some() {
                    self.child = None;
                    return Ok(false);
                }
            }
            // The server gives no other sign of readiness: poll, with a bounded deadline.
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(100));
        }
        Err(format!("redis-server on port {port} did not answer PING within {READY:?}").into())
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Kills the server and waits for it.
    pub(crate) async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends PING and reads the first reply chunk.
async fn ping(port: u16) -> std::io::Result<String> {
    let io = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut buf = [0u8; 16];
        let n = stream.read(&mut buf).await?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), io)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}
