//! A `redis-server` of the benchmark's own, for `--scaler redis` without `--redis-url`, and a
//! Redis Cluster of its own for `--scaler redis-cluster`.
//!
//! Each server runs on a free loopback port without persistence, its working directory in a
//! temporary directory; stopped (and the directory removed) by [`RedisServer::stop`] or on drop.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
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
    port: u16,
    child: Option<Child>,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port and waits until it answers PING.
    pub(crate) async fn spawn() -> Result<Self> {
        Self::start(&[]).await
    }

    /// [`spawn`](Self::spawn) with these options added. A cluster node also listens on its
    /// port + 10 000 (the cluster bus): it gets a port whose bus port is free too.
    async fn start(options: &[&str]) -> Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sss-bench-redis-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        let bus = options.contains(&"--cluster-enabled");
        // A free port can be taken between probing and binding: try a few.
        for _ in 0..20 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            if bus
                && (port > 55_000
                    || std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_err())
            {
                continue;
            }
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .args(options)
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
                port,
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
            if command(port, "PING")
                .await
                .is_ok_and(|r| r.starts_with("+PONG"))
            {
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

/// Sends one inline command and reads the first reply chunk.
async fn command(port: u16, command: &str) -> std::io::Result<String> {
    let io = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(format!("{command}\r\n").as_bytes())
            .await?;
        let mut buf = [0u8; 2048];
        let n = stream.read(&mut buf).await?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), io)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// A Redis Cluster of the benchmark's own: three masters without replicas (a benchmark
/// measures the cluster's path, not its failover, which the tests cover), formed with
/// `redis-cli --cluster create`.
pub(crate) struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the three nodes, forms the cluster and waits until every node says it is ok.
    pub(crate) async fn spawn() -> Result<Self> {
        let mut nodes = Vec::with_capacity(3);
        for _ in 0..3 {
            let options = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ];
            nodes.push(RedisServer::start(&options).await?);
        }
        let cluster = Self { nodes };
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(
                cluster
                    .nodes
                    .iter()
                    .map(|n| format!("127.0.0.1:{}", n.port)),
            )
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| format!("cannot run redis-cli: {e}"))?;
        if !out.status.success() {
            let said = String::from_utf8_lossy(&out.stdout);
            return Err(format!("redis-cli --cluster create failed: {said}").into());
        }
        for node in &cluster.nodes {
            let deadline = Instant::now() + READY;
            // A node gives no other sign that the cluster formed: poll, with a deadline.
            while !command(node.port, "CLUSTER INFO")
                .await
                .is_ok_and(|r| r.contains("cluster_state:ok"))
            {
                if Instant::now() >= deadline {
                    return Err(format!("cluster node {} is not ok in {READY:?}", node.port).into());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(cluster)
    }

    /// The nodes' URLs, comma-separated (what `--redis-url` takes with `--scaler
    /// redis-cluster`).
    pub(crate) fn urls(&self) -> String {
        let urls: Vec<&str> = self.nodes.iter().map(RedisServer::url).collect();
        urls.join(",")
    }

    /// Stops every node.
    pub(crate) async fn stop(self) {
        for node in self.nodes {
            node.stop().await;
        }
    }
}
