//! Real backing services for the tests: a `redis-server` and a MongoDB-wire server of the
//! test's own.

use std::future::IntoFuture;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a spawned `redis-server` may take to answer PING.
const READY: Duration = Duration::from_secs(10);

/// A key prefix (Redis keys, MongoDB collections) no other test of this process uses.
pub fn unique_prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "sss_test_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A plain Redis connection, to play the part of an operator or a failure.
pub async fn redis_admin(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).expect("redis url");
    crate::within(
        "admin connection",
        client.get_multiplexed_async_connection(),
    )
    .await
    .expect("admin connection")
}

/// How a spawned `redis-server` keeps its data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Persistence {
    /// Nothing on disk (`--save '' --appendonly no`): a hard restart loses everything.
    #[default]
    Ephemeral,
    /// An append-only file synced on every write: even a killed server restarts with its data.
    AppendOnly,
}

/// A Redis server for one test.
///
/// [`RedisServer::start`] uses `REDIS_URL` when it is set; otherwise, like
/// [`RedisServer::spawn`], it runs `redis-server` on a free loopback port, killed on drop.
pub struct RedisServer {
    url: String,
    spawned: Option<Spawned>,
}

struct Spawned {
    port: u16,
    dir: PathBuf,
    persistence: Persistence,
    child: Option<Child>,
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("spawned", &self.spawned.is_some())
            .finish_non_exhaustive()
    }
}

impl RedisServer {
    /// The server at `REDIS_URL` if set, else a new `redis-server` without persistence.
    pub async fn start() -> Self {
        match std::env::var("REDIS_URL") {
            Ok(url) if !url.is_empty() => Self { url, spawned: None },
            _ => Self::spawn(Persistence::Ephemeral).await,
        }
    }

    /// A new `redis-server` on a free loopback port (ignores `REDIS_URL`: the test controls it).
    pub async fn spawn(persistence: Persistence) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sss-redis-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the redis data directory");
        // A free port can be taken between probing and binding: try a few.
        for _ in 0..5 {
            let port = free_port();
            let mut spawned = Spawned {
                port,
                dir: dir.clone(),
                persistence,
                child: None,
            };
            if spawned.launch().await {
                return Self {
                    url: format!("redis://127.0.0.1:{port}/"),
                    spawned: Some(spawned),
                };
            }
        }
        panic!("redis-server did not start on any free port");
    }

    /// Its URL, as `REDIS_URL` would give it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops the server: with `keep_data`, saved first (`SHUTDOWN SAVE`) unless it persists on
    /// its own, in which case it is killed hard like a crash; without, killed and its files
    /// removed. Panics for a server from `REDIS_URL`.
    pub async fn stop(&mut self, keep_data: bool) {
        let s = self.spawned_mut();
        if keep_data && s.persistence == Persistence::Ephemeral {
            // The server exits on SHUTDOWN and closes the connection: no reply is expected.
            let _ = command(s.port, "SHUTDOWN SAVE").await;
            s.wait_exit().await;
        } else {
            s.kill();
            if !keep_data {
                let _ = std::fs::remove_dir_all(&s.dir);
                std::fs::create_dir_all(&s.dir).expect("recreate the redis data directory");
            }
        }
    }

    /// Starts a stopped server again on the same port and waits until it answers.
    pub async fn resume(&mut self) {
        let s = self.spawned_mut();
        assert!(s.child.is_none(), "the redis server is running");
        assert!(
            s.launch().await,
            "redis-server did not restart on port {}",
            s.port
        );
    }

    /// [`stop`](Self::stop), then [`resume`](Self::resume).
    pub async fn restart(&mut self, keep_data: bool) {
        self.stop(keep_data).await;
        self.resume().await;
    }

    fn spawned_mut(&mut self) -> &mut Spawned {
        self.spawned
            .as_mut()
            .expect("only a spawned redis server (not one from REDIS_URL) can be restarted")
    }
}

impl Spawned {
    /// Runs `redis-server` and waits for PING; `false` if it exited (e.g. the port was taken).
    async fn launch(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match self.persistence {
            Persistence::Ephemeral => cmd.args(["--appendonly", "no"]),
            Persistence::AppendOnly => cmd.args(["--appendonly", "yes", "--appendfsync", "always"]),
        };
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not installed; run scripts/test.sh (which installs it) or set \
                 REDIS_URL"
            ),
            Err(e) => panic!("cannot run redis-server: {e}"),
        };
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + READY;
        let mut delay = Duration::from_millis(5);
        while tokio::time::Instant::now() < deadline {
            if let Ok(reply) = command(self.port, "PING").await {
                if reply.starts_with("+PONG") {
                    return true;
                }
            }
            if let Some(child) = self.child.as_mut() {
                if child.try_wait().ok().flatten().is_some() {
                    self.child = None;
                    return false;
                }
            }
            // Polling with a bounded deadline: the server gives no other sign of readiness.
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(100));
        }
        self.kill();
        panic!(
            "redis-server on port {} did not answer PING within {READY:?}",
            self.port
        );
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn wait_exit(&mut self) {
        let deadline = tokio::time::Instant::now() + READY;
        while let Some(child) = self.child.as_mut() {
            if child.try_wait().ok().flatten().is_some() {
                self.child = None;
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                self.kill();
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Sends one inline command and reads the first reply chunk.
async fn command(port: u16, cmd: &str) -> std::io::Result<String> {
    let io = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(format!("{cmd}\r\n").as_bytes()).await?;
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).await?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), io)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// How long a spawned MongoDB-wire server may take to answer a ping.
const MONGO_READY: Duration = Duration::from_secs(20);
/// How long a spawned MongoDB-wire server may take to exit on SIGTERM before it is killed.
const MONGO_EXIT: Duration = Duration::from_secs(10);

/// A MongoDB server for one test.
///
/// [`MongoServer::start`] uses `MONGODB_URI` when it is set (a real MongoDB, say); otherwise it
/// runs SecantusDB, a MongoDB-wire-compatible server installed in `.tools/mongo` by
/// `scripts/install-services.sh`, on a free loopback port with its data in a temporary
/// directory, stopped (SIGTERM, then SIGKILL) and removed on drop. The tests use only what both
/// servers support, so they run unchanged against either.
pub struct MongoServer {
    uri: String,
    spawned: Option<SpawnedMongo>,
}

struct SpawnedMongo {
    child: Child,
    dir: PathBuf,
}

impl std::fmt::Debug for MongoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoServer")
            .field("spawned", &self.spawned.is_some())
            .finish_non_exhaustive()
    }
}

/// The SecantusDB launcher installed by `scripts/install-services.sh`.
fn secantusd() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(".tools/mongo/bin/secantusd-py")
}

impl MongoServer {
    /// The server at `MONGODB_URI` if set, else a new SecantusDB on a free loopback port.
    pub async fn start() -> Self {
        match std::env::var("MONGODB_URI") {
            Ok(uri) if !uri.is_empty() => Self { uri, spawned: None },
            _ => Self::spawn().await,
        }
    }

    /// A new SecantusDB on a free loopback port (ignores `MONGODB_URI`).
    pub async fn spawn() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let bin = secantusd();
        assert!(
            bin.exists(),
            "{} is missing: run scripts/install-services.sh (it installs SecantusDB, a \
             MongoDB-wire test server), or set MONGODB_URI to a MongoDB",
            bin.display()
        );
        let dir = std::env::temp_dir().join(format!(
            "sss-mongo-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the mongo data directory");
        // An explicit, empty config: no secantusd.toml found elsewhere changes the server.
        let config = dir.join("secantusd.toml");
        std::fs::write(&config, "").expect("write the mongo config");
        // A free port can be taken between probing and binding: try a few.
        for _ in 0..5 {
            let port = free_port();
            let child = Command::new(&bin)
                .arg("--config")
                .arg(&config)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--log-level", "WARNING", "--storage-path"])
                .arg(dir.join("data"))
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
            let mut spawned = SpawnedMongo {
                child,
                dir: dir.clone(),
            };
            let uri = format!("mongodb://127.0.0.1:{port}/");
            if spawned.ready(&uri).await {
                return Self {
                    uri,
                    spawned: Some(spawned),
                };
            }
            // It exited (the port was taken, most likely): keep the directory for the next try.
            spawned.dir = PathBuf::new();
        }
        panic!("the MongoDB-wire server did not start on any free port");
    }

    /// Its URI, as `MONGODB_URI` would give it.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// A driver client for operator-side work in tests (commands bounded by a few seconds).
    pub async fn client(&self) -> mongodb::Client {
        let mut opts = crate::within(
            "parse MONGODB_URI",
            mongodb::options::ClientOptions::parse(&self.uri).into_future(),
        )
        .await
        .expect("a valid MongoDB URI");
        opts.server_selection_timeout = Some(Duration::from_secs(5));
        mongodb::Client::with_options(opts).expect("a MongoDB client")
    }
}

/// Whether a ping on `uri` is answered.
async fn mongo_ping(uri: &str) -> bool {
    let Ok(mut opts) = mongodb::options::ClientOptions::parse(uri).await else {
        return false;
    };
    opts.server_selection_timeout = Some(Duration::from_millis(500));
    opts.connect_timeout = Some(Duration::from_millis(500));
    let Ok(client) = mongodb::Client::with_options(opts) else {
        return false;
    };
    let admin = client.database("admin");
    let ping = admin.run_command(mongodb::bson::doc! { "ping": 1 });
    let ok = matches!(
        tokio::time::timeout(Duration::from_secs(2), ping).await,
        Ok(Ok(_))
    );
    // Closes the pool's connections now rather than from a background task.
    let _ = tokio::time::timeout(Duration::from_secs(2), client.shutdown()).await;
    ok
}

impl SpawnedMongo {
    /// Waits for a ping; `false` if the server exited first.
    async fn ready(&mut self, uri: &str) -> bool {
        let deadline = tokio::time::Instant::now() + MONGO_READY;
        let mut delay = Duration::from_millis(20);
        while tokio::time::Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return false;
            }
            if mongo_ping(uri).await {
                return true;
            }
            // Polling with a bounded deadline: the server gives no other sign of readiness.
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(200));
        }
        self.stop();
        panic!("the MongoDB-wire server at {uri} did not answer a ping within {MONGO_READY:?}");
    }

    /// SIGTERM, then SIGKILL if it has not exited within [`MONGO_EXIT`].
    fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let term = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if term.is_ok_and(|s| s.success()) {
            let deadline = std::time::Instant::now() + MONGO_EXIT;
            while std::time::Instant::now() < deadline {
                if self.child.try_wait().ok().flatten().is_some() {
                    return;
                }
                // Drop cannot await: a short blocking poll, bounded by MONGO_EXIT.
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SpawnedMongo {
    fn drop(&mut self) {
        self.stop();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// How long a spawned Redis Cluster may take to form, or to recover from a failover.
const CLUSTER_READY: Duration = Duration::from_secs(30);

/// A local Redis Cluster for one test: three masters with a replica each, `redis-server
/// --cluster-enabled yes` on six free loopback ports joined by `redis-cli --cluster create`,
/// without persistence. A node timeout of one second and `--cluster-replica-validity-factor 0`
/// let a replica take over a killed master within seconds (see `shared/redis-cluster`). Every
/// node is killed, and its files removed, on drop.
pub struct RedisCluster {
    dir: PathBuf,
    nodes: Vec<(u16, Option<Child>)>,
}

impl std::fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCluster")
            .field("ports", &self.nodes.iter().map(|n| n.0).collect::<Vec<_>>())
            .finish()
    }
}

impl RedisCluster {
    /// Starts the six nodes, creates the cluster and waits until every node says it is ok.
    pub async fn spawn() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sss-redis-cluster-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let mut cluster = Self {
            dir,
            nodes: Vec::new(),
        };
        while cluster.nodes.len() < 6 {
            let taken: Vec<u16> = cluster.nodes.iter().map(|n| n.0).collect();
            let node = cluster.start_node(&taken).await;
            cluster.nodes.push(node);
        }
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.0).collect();
        for &port in &ports {
            cluster.wait_ok(port).await;
        }
        // The state is ok before the replicas finished their first sync (seen: 2-4 s later); a
        // master killed meanwhile would leave an empty replica to take over.
        for port in ports {
            cluster.wait_synced(port).await;
        }
        cluster
    }

    /// Starts one node on a free port (and its bus port, + 10000) that no node in `taken` uses,
    /// and waits until it answers PING. A port is free when probed but can be taken before the
    /// node binds it (seen once in CI): a node that exits is started again on another port, up
    /// to a few times, and its log is in the panic message if none works.
    async fn start_node(&self, taken: &[u16]) -> (u16, Option<Child>) {
        let mut last_log = String::new();
        // Most tries that fail are cheap: a port above 55000 (its bus port would not fit).
        for _ in 0..20 {
            let port = free_port();
            let clashes = taken
                .iter()
                .any(|&t| [t, t + 10_000].contains(&port) || t == port + 10_000);
            if port > 55_000
                || clashes
                || std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_err()
            {
                continue;
            }
            let node_dir = self.dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).expect("create a cluster node's directory");
            let log = node_dir.join("redis.log");
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
                .args(["--cluster-node-timeout", "1000"])
                .args(["--cluster-replica-validity-factor", "0"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--logfile")
                .arg(&log)
                .current_dir(&node_dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server runs (scripts/test.sh installs it)");
            let deadline = tokio::time::Instant::now() + READY;
            loop {
                if command(port, "PING")
                    .await
                    .is_ok_and(|r| r.starts_with("+PONG"))
                {
                    return (port, Some(child));
                }
                if child.try_wait().ok().flatten().is_some() {
                    last_log = std::fs::read_to_string(&log).unwrap_or_default();
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_log = std::fs::read_to_string(&log).unwrap_or_default();
                    break;
                }
                // Polling with a bounded deadline: the server gives no other sign of readiness.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("no cluster node started on a free port; the last one's log:\n{last_log}");
    }

    /// A URL of each node, for `RedisScaler::connect_cluster`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|(p, _)| format!("redis://127.0.0.1:{p}/"))
            .collect()
    }

    /// The port of the master that serves `key`'s hash slot.
    pub async fn master_of(&self, key: &str) -> u16 {
        let slot = self.slot_of(key).await;
        self.owner(self.live_port(), slot)
            .await
            .expect("the slot has a master")
    }

    /// `key`'s hash slot.
    async fn slot_of(&self, key: &str) -> u16 {
        let live = self.live_port();
        let mut admin = redis_admin(&format!("redis://127.0.0.1:{live}/")).await;
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut admin)
            .await
            .expect("CLUSTER KEYSLOT")
    }

    /// Kills (SIGKILL) the master serving `key`'s slot and waits until its replica took over
    /// and the cluster is ok again. Returns the killed port.
    pub async fn kill_master_of(&mut self, key: &str) -> u16 {
        let port = self.master_of(key).await;
        for (p, child) in &mut self.nodes {
            if *p == port {
                if let Some(mut c) = child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
        let (live, slot) = (self.live_port(), self.slot_of(key).await);
        let deadline = tokio::time::Instant::now() + CLUSTER_READY;
        loop {
            if let Some(owner) = self.owner(live, slot).await {
                if owner != port {
                    break;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no replica took over the master on {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.wait_ok(live).await;
        port
    }

    /// Moves `key`'s hash slot, with its keys, to another master while the cluster serves (the
    /// steps of `redis-cli --cluster reshard` for one slot: IMPORTING / MIGRATING, MIGRATE of
    /// its keys, then SETSLOT NODE on every master). Returns the ports it moved from and to.
    pub async fn move_slot_of(&self, key: &str) -> (u16, u16) {
        let (from, slot) = (self.master_of(key).await, self.slot_of(key).await);
        let url = |p: u16| format!("redis://127.0.0.1:{p}/");
        let mut masters = Vec::new();
        for &(port, ref child) in &self.nodes {
            if child.is_some() && self.owns_slots(port).await {
                masters.push(port);
            }
        }
        let to = *masters
            .iter()
            .find(|&&p| p != from)
            .expect("another master");
        let id = |port: u16| async move {
            let mut c = redis_admin(&url(port)).await;
            redis::cmd("CLUSTER")
                .arg("MYID")
                .query_async::<String>(&mut c)
                .await
                .expect("CLUSTER MYID")
        };
        let (from_id, to_id) = (id(from).await, id(to).await);
        let mut src = redis_admin(&url(from)).await;
        let mut dst = redis_admin(&url(to)).await;
        let setslot = |state: &str, node: &str| {
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("SETSLOT").arg(slot).arg(state).arg(node);
            cmd
        };
        let _: () = setslot("IMPORTING", &from_id)
            .query_async(&mut dst)
            .await
            .expect("IMPORTING");
        let _: () = setslot("MIGRATING", &to_id)
            .query_async(&mut src)
            .await
            .expect("MIGRATING");
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(100)
                .query_async(&mut src)
                .await
                .expect("GETKEYSINSLOT");
            if keys.is_empty() {
                break;
            }
            let _: () = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .query_async(&mut src)
                .await
                .expect("MIGRATE");
        }
        for port in masters {
            let mut c = redis_admin(&url(port)).await;
            let _: () = setslot("NODE", &to_id)
                .query_async(&mut c)
                .await
                .expect("SETSLOT NODE");
        }
        (from, to)
    }

    /// Whether the node on `port` is a master that serves slots.
    async fn owns_slots(&self, port: u16) -> bool {
        let mut admin = redis_admin(&format!("redis://127.0.0.1:{port}/")).await;
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut admin)
            .await
            .unwrap_or_default();
        info.contains("role:master")
    }

    /// A node that runs.
    fn live_port(&self) -> u16 {
        self.nodes
            .iter()
            .find(|(_, c)| c.is_some())
            .map(|(p, _)| *p)
            .expect("a live node")
    }

    /// The port of the healthy master of `slot`, as `via` sees it (from `CLUSTER NODES`).
    async fn owner(&self, via: u16, slot: u16) -> Option<u16> {
        let mut admin = redis_admin(&format!("redis://127.0.0.1:{via}/")).await;
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut admin)
            .await
            .ok()?;
        nodes.lines().find_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            let flags = f.get(2)?;
            if !flags.contains("master") || flags.contains("fail") {
                return None;
            }
            let serves = f.iter().skip(8).any(|range| {
                let mut ends = range.splitn(2, '-').map(|e| e.parse::<u16>().ok());
                match (ends.next().flatten(), ends.next()) {
                    (Some(lo), Some(Some(hi))) => (lo..=hi).contains(&slot),
                    (Some(one), None) => one == slot,
                    _ => false,
                }
            });
            let port = f.get(1)?.split(['@', ':']).nth(1)?.parse().ok()?;
            serves.then_some(port)
        })
    }

    /// Waits until the node on `port` says `cluster_state:ok`.
    async fn wait_ok(&self, port: u16) {
        self.wait_until(port, &["CLUSTER", "INFO"], |r| {
            r.contains("cluster_state:ok")
        })
        .await;
    }

    /// Waits until the node on `port`, if it is a replica, is in sync with its master.
    async fn wait_synced(&self, port: u16) {
        self.wait_until(port, &["INFO", "replication"], |r| {
            r.contains("role:master") || r.contains("master_link_status:up")
        })
        .await;
    }

    /// Waits until the reply of the node on `port` to `command` satisfies `done`.
    async fn wait_until(&self, port: u16, command: &[&str], done: impl Fn(&str) -> bool) {
        let deadline = tokio::time::Instant::now() + CLUSTER_READY;
        let mut admin = redis_admin(&format!("redis://127.0.0.1:{port}/")).await;
        loop {
            let reply: String = redis::cmd(command[0])
                .arg(&command[1..])
                .query_async(&mut admin)
                .await
                .unwrap_or_default();
            if done(&reply) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {port}: {command:?} still answers {reply}"
            );
            // Polling: a node gives no other sign that the cluster formed or a replica synced.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Deletes one channel's keys from the Redis scaler's store (its epoch, seq and history, in the
/// channel's hash slot: see the redis module's docs), as a Redis that lost them would; asserts
/// they existed. On one Redis or a cluster.
pub async fn forget_redis_channel(
    conn: &mut impl redis::aio::ConnectionLike,
    prefix: &str,
    channel: &str,
) {
    let keys = ["epoch", "seq", "hist"].map(|k| format!("{prefix}:{{{channel}}}:{k}"));
    let deleted: u64 = redis::cmd("DEL")
        .arg(&keys)
        .query_async(conn)
        .await
        .expect("DEL");
    assert_eq!(deleted, 3, "the channel's keys existed");
}
