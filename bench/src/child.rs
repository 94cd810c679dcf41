//! Server child processes: spawning, pinning, commands, and their `/proc` readings.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::opts::ScalerOpt;
use crate::procfs;
use crate::serve::Kind;
use crate::Result;

/// Pins this process (and the threads it starts later) to a CPU list, with `taskset`.
pub(crate) fn pin_self(cpus: &str) -> Result<()> {
    let status = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        return Err(format!("taskset exited with {status}").into());
    }
    Ok(())
}

/// How to start a server child.
#[derive(Clone, Debug)]
pub(crate) struct Spec {
    pub(crate) kind: Kind,
    pub(crate) instances: usize,
    /// Instance that can be killed with [`ServerProc::kill_instance`].
    pub(crate) killable: Option<usize>,
    pub(crate) cpus: Option<String>,
    pub(crate) scaler: ScalerOpt,
    /// Key prefix for `--scaler redis`: the processes of one cluster share one.
    pub(crate) redis_prefix: Option<String>,
    /// A command the server runs under (e.g. `perf record -g --`), split on whitespace.
    pub(crate) wrap: Option<String>,
    /// Environment variables of the server process, beside the bench's own.
    pub(crate) env: Vec<(&'static str, &'static str)>,
}

impl Spec {
    /// One process of a cluster of `sss` servers over `scaler` (one Redis or a Redis Cluster),
    /// with the cluster's key `prefix` (see [`cluster_prefix`]).
    pub(crate) fn redis(scaler: &ScalerOpt, prefix: &str, cpus: Option<String>) -> Self {
        let mut spec = Self::new(Kind::Sss, cpus);
        spec.scaler = scaler.clone();
        spec.redis_prefix = Some(prefix.to_owned());
        spec
    }

    pub(crate) fn new(kind: Kind, cpus: Option<String>) -> Self {
        Self {
            kind,
            instances: 1,
            killable: None,
            cpus,
            scaler: ScalerOpt::Memory,
            redis_prefix: None,
            wrap: std::env::var("SSS_BENCH_SERVER_WRAP").ok(),
            env: Vec::new(),
        }
    }
}

/// A Redis key prefix of its own for one cluster: runs (and concurrent benches on one Redis)
/// never see each other's channels and history.
pub(crate) fn cluster_prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "sss-bench-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A running server child.
pub(crate) struct ServerProc {
    child: Child,
    pid: u32,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    /// The instances' listening addresses.
    pub(crate) addrs: Vec<SocketAddr>,
}

impl ServerProc {
    /// Starts the child and waits for its `READY` line.
    pub(crate) async fn spawn(spec: &Spec) -> Result<Self> {
        let exe = std::env::current_exe()?;
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if let Some(cpus) = &spec.cpus {
            argv.extend(["taskset".into(), "-c".into(), cpus.into()]);
        }
        if let Some(wrap) = &spec.wrap {
            argv.extend(wrap.split_whitespace().map(Into::into));
        }
        argv.push(exe.into());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).envs(spec.env.iter().copied());
        cmd.arg("serve")
            .args(["--kind", spec.kind.as_str()])
            .args(["--instances", &spec.instances.to_string()]);
        if let Some(k) = spec.killable {
            cmd.args(["--killable", &k.to_string()]);
        }
        if let ScalerOpt::Redis(url) | ScalerOpt::RedisCluster(url) = &spec.scaler {
            cmd.args(["--scaler", spec.scaler.label(), "--redis-url", url]);
            if let Some(prefix) = &spec.redis_prefix {
                cmd.args(["--redis-prefix", prefix]);
            }
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        // taskset execs the server, so the pid is the server's (not so under a wrapper that
        // forks, like perf: its CPU numbers are then the wrapper's).
        let pid = child.id().ok_or("server child exited at once")?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut stdout = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), stdout.next_line())
            .await
            .map_err(|_| "server child did not get ready in 20 s")??
            .ok_or("server child exited before it was ready")?;
        let addrs = line
            .strip_prefix("READY ")
            .ok_or_else(|| format!("unexpected line from the server child: {line}"))?
            .split(',')
            .filter(|a| !a.is_empty())
            .map(str::parse)
            .collect::<std::result::Result<Vec<SocketAddr>, _>>()?;
        Ok(Self {
            child,
            pid,
            stdin,
            stdout,
            addrs,
        })
    }

    /// The child's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Kills one instance of the child abruptly (see the `serve` module) and waits until done.
    pub(crate) async fn kill_instance(&mut self, i: usize) -> Result<()> {
        self.stdin
            .write_all(format!("kill {i}\n").as_bytes())
            .await?;
        self.stdin.flush().await?;
        let line = tokio::time::timeout(Duration::from_secs(10), self.stdout.next_line())
            .await
            .map_err(|_| "server child did not confirm the kill")??
            .ok_or("server child exited")?;
        if line != format!("KILLED {i}") {
            return Err(format!("unexpected line from the server child: {line}").into());
        }
        Ok(())
    }

    /// Kills the child with SIGKILL (no cleanup, connections reset by the kernel) and reaps it.
    pub(crate) async fn sigkill(self) -> Result<()> {
        let Self { mut child, .. } = self;
        child.kill().await?;
        Ok(())
    }

    /// Ends the child: closing its stdin makes it exit (so wrappers such as valgrind write their
    /// output); after 5 s it is killed. Reaps it.
    pub(crate) async fn stop(self) {
        let Self {
            mut child, stdin, ..
        } = self;
        drop(stdin);
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
}

/// CPU time of the server children and of this load generator at one moment.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CpuSnap {
    at: Instant,
    server_us: u64,
    server_user_us: u64,
    load_us: u64,
    machine_us: u64,
}

impl CpuSnap {
    /// Reads the CPU time of the server processes `pids` (summed) and of this process.
    pub(crate) fn take(pids: &[u32]) -> Result<Self> {
        let (mut server_us, mut server_user_us) = (0, 0);
        for &pid in pids {
            let (user, kernel) = procfs::cpu_split_us(pid)?;
            server_us += user + kernel;
            server_user_us += user;
        }
        Ok(Self {
            at: Instant::now(),
            server_us,
            server_user_us,
            load_us: procfs::cpu_us(std::process::id())?,
            machine_us: procfs::machine_busy_us()?,
        })
    }

    /// CPU used from `self` to `later`.
    pub(crate) fn until(&self, later: &CpuSnap) -> CpuUse {
        CpuUse {
            wall: later.at.saturating_duration_since(self.at),
            server_us: later.server_us.saturating_sub(self.server_us),
            server_user_us: later.server_user_us.saturating_sub(self.server_user_us),
            load_us: later.load_us.saturating_sub(self.load_us),
            machine_us: later.machine_us.saturating_sub(self.machine_us),
        }
    }
}

/// CPU used over a window, by the server children and by the load generator.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CpuUse {
    pub(crate) wall: Duration,
    pub(crate) server_us: u64,
    /// The part of `server_us` spent in user space: the server's own code, apart from the
    /// kernel's TCP work, which is the same for any server.
    pub(crate) server_user_us: u64,
    pub(crate) load_us: u64,
    /// The whole machine's busy time, everything included.
    pub(crate) machine_us: u64,
}

impl CpuUse {
    /// Cores busy with something else than the server and the load generator (other processes,
    /// interrupts, steal): a noisy machine shows here.
    pub(crate) fn other_cores(&self) -> f64 {
        let other = self
            .machine_us
            .saturating_sub(self.server_us + self.load_us);
        other as f64 / self.wall.as_micros().max(1) as f64
    }

    /// Cores the server kept busy on average (1.0 = one core all the time).
    pub(crate) fn server_cores(&self) -> f64 {
        self.server_us as f64 / self.wall.as_micros().max(1) as f64
    }

    /// Cores the load generator kept busy on average.
    pub(crate) fn load_cores(&self) -> f64 {
        self.load_us as f64 / self.wall.as_micros().max(1) as f64
    }
}
