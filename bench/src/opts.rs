//! Command-line options of the load side.

use std::time::Duration;

pub(crate) const USAGE: &str = "\
usage: sss-bench [SCENARIO...] [OPTIONS]

Scenarios (default: all, in this order):
  baseline          raw tokio-tungstenite echo server, same load as rpc
  rpc               C connections doing sequential asks
  tells             C connections each sending T tells and an ask in one write, then waiting
                    for the answer; the same load first on the raw echo server (which
                    drops tells and echoes the ask)
  fanout            N subscribers on one channel, one publisher at R msgs/s
  idle              K welcomed connections held open: server RSS per connection (with glibc's
                    defaults, then with its mmap threshold at 4 KiB)
  reconnect-storm   K subscribed clients lose their instance and resync on another
  channels          N distinct channels subscribed then left (twice): server RSS before, at
                    peak and after (is channel state freed?)
  cores             baseline, rpc and fanout with the server pinned to 1 core, then 2 cores
  presence          M sockets join one channel's presence at once, then leave: time to the
                    last join / leave event a watcher sees, and (over Redis) the Redis commands
  scale             K connections to one server (from 127.S.0.2, .3, ...): connect rate, RSS
                    per connection, idle CPU (user and kernel apart), then all on one channel:
                    publish-to-last-delivery time and 1 publication/s latency (skipped, with
                    the reason, when RLIMIT_NOFILE cannot hold K)
  workers           the rpc load with handlers in process (Redis scaler), then through worker
                    mode (1 gateway, W worker processes, one Redis): added latency and CPU per
                    ask (starts a redis-server of its own unless --scaler redis)

Options:
  --smoke                 every scenario tiny (a few seconds); exit 1 if a correctness check fails
  --connections C         rpc and tells connections (50)
  --tells T               tells before each ask in the tells scenario (100)
  --duration S            seconds measured per rpc / fanout run (10)
  --payload B             bytes of application payload per ask / publication (100)
  --subscribers N         fanout subscribers (1000)
  --rate R                fanout publications per second (20)
  --idle K                idle connections (5000)
  --storm-clients K       reconnect-storm clients (5000)
  --storm-channels N      channels the storm clients spread over (50)
  --storm-rate R          publications per second during the storm, over all channels (50)
  --storm-jitter-ms MS    reconnect delay drawn from [0, MS] like the client's first backoff (250)
  --channels N            distinct channels of the channels scenario, per round (100000)
  --channel-sockets S     sockets the channels are spread over (100)
  --members M             presence members (1000)
  --workers W             worker processes of the workers scenario (2)
  --scale K               connections of the scale scenario (250000)
  --server-cpus LIST      pin the server children with taskset -c LIST
  --load-cpus LIST        pin this load generator with taskset -c LIST
  --scaler memory|redis|redis-cluster
                          scaler of the servers (memory); redis needs the `redis` feature;
                          redis-cluster runs the fanout scenario only
  --redis-url URL         Redis for --scaler redis, or the nodes of a Redis Cluster for
                          --scaler redis-cluster, comma-separated (default: the bench starts
                          its own redis-server, or three cluster masters, on free loopback
                          ports and stops them at the end)
  -h, --help              this text

Environment:
  SSS_BENCH_SERVER_WRAP   command the server children run under, e.g. `valgrind --tool=massif`
";

/// Which scaler joins the server instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ScalerOpt {
    /// The embedded in-memory scaler (one process).
    Memory,
    /// Redis at this URL (two server processes); empty until the bench started its own
    /// `redis-server` (no `--redis-url`).
    Redis(String),
    /// A Redis Cluster known by these node URLs, comma-separated (two server processes; the
    /// `fanout` scenario only); empty until the bench started its own (three masters).
    RedisCluster(String),
}

impl ScalerOpt {
    /// Whether the servers run over Redis, one or a cluster.
    pub(crate) fn is_redis(&self) -> bool {
        !matches!(self, Self::Memory)
    }

    /// Its name in scenario names and reports.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Redis(_) => "redis",
            Self::RedisCluster(_) => "redis-cluster",
        }
    }
}

/// One scenario of the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scenario {
    Baseline,
    Rpc,
    Tells,
    Fanout,
    Idle,
    Storm,
    Channels,
    Cores,
    Presence,
    Workers,
    Scale,
}

impl Scenario {
    const ALL: [Scenario; 11] = [
        Scenario::Baseline,
        Scenario::Rpc,
        Scenario::Tells,
        Scenario::Fanout,
        Scenario::Idle,
        Scenario::Storm,
        Scenario::Channels,
        Scenario::Cores,
        Scenario::Presence,
        Scenario::Workers,
        Scenario::Scale,
    ];

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "baseline" => Self::Baseline,
            "rpc" => Self::Rpc,
            "tells" => Self::Tells,
            "fanout" => Self::Fanout,
            "idle" => Self::Idle,
            "reconnect-storm" | "storm" => Self::Storm,
            "channels" => Self::Channels,
            "cores" => Self::Cores,
            "presence" => Self::Presence,
            "workers" => Self::Workers,
            "scale" => Self::Scale,
            _ => return None,
        })
    }
}

/// Everything the load side was asked to do.
#[derive(Clone, Debug)]
pub(crate) struct Opts {
    pub(crate) scenarios: Vec<Scenario>,
    pub(crate) smoke: bool,
    pub(crate) connections: usize,
    pub(crate) tells: usize,
    pub(crate) duration: Duration,
    pub(crate) payload: usize,
    pub(crate) subscribers: usize,
    pub(crate) rate: u32,
    pub(crate) idle: usize,
    pub(crate) storm_clients: usize,
    pub(crate) storm_channels: usize,
    pub(crate) storm_rate: u32,
    pub(crate) storm_jitter: Duration,
    pub(crate) channels: usize,
    pub(crate) channel_sockets: usize,
    /// Members of the presence scenario.
    pub(crate) members: usize,
    pub(crate) workers: usize,
    pub(crate) scale: usize,
    pub(crate) server_cpus: Option<String>,
    pub(crate) load_cpus: Option<String>,
    pub(crate) scaler: ScalerOpt,
}

impl Opts {
    fn defaults() -> Self {
        Self {
            scenarios: Vec::new(),
            smoke: false,
            connections: 50,
            tells: 100,
            duration: Duration::from_secs(10),
            payload: 100,
            subscribers: 1000,
            rate: 20,
            idle: 5000,
            storm_clients: 5000,
            storm_channels: 50,
            storm_rate: 50,
            storm_jitter: Duration::from_millis(250),
            channels: 100_000,
            channel_sockets: 100,
            members: 1000,
            workers: 2,
            scale: 250_000,
            server_cpus: None,
            load_cpus: None,
            scaler: ScalerOpt::Memory,
        }
    }

    /// The tiny settings of `--smoke` (explicit options given after it still apply).
    fn smoke(&mut self) {
        self.smoke = true;
        self.connections = 10;
        self.duration = Duration::from_millis(700);
        self.subscribers = 50;
        self.rate = 20;
        self.idle = 200;
        self.storm_clients = 200;
        self.storm_channels = 10;
        self.storm_rate = 20;
        self.channels = 2000;
        self.channel_sockets = 10;
        self.members = 50;
        self.scale = 500;
    }

    /// Parses the arguments; `Ok(None)` for `--help`.
    pub(crate) fn parse(args: &[String]) -> Result<Option<Self>, String> {
        let mut o = Self::defaults();
        if args.iter().any(|a| a == "--smoke") {
            o.smoke();
        }
        let mut redis_url = String::new();
        let mut want_redis = None;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            fn num<T: std::str::FromStr>(name: &str, v: String) -> Result<T, String> {
                v.parse().map_err(|_| format!("{name}: not a number: {v}"))
            }
            match a.as_str() {
                "-h" | "--help" => return Ok(None),
                "--smoke" => {}
                "--connections" => o.connections = num(a, value(a)?)?,
                "--tells" => o.tells = num::<usize>(a, value(a)?)?.max(1),
                "--duration" => {
                    o.duration = Duration::from_secs_f64(num::<f64>(a, value(a)?)?.max(0.1));
                }
                "--payload" => o.payload = num(a, value(a)?)?,
                "--subscribers" => o.subscribers = num(a, value(a)?)?,
                "--rate" => o.rate = num::<u32>(a, value(a)?)?.max(1),
                "--idle" => o.idle = num(a, value(a)?)?,
                "--storm-clients" => o.storm_clients = num(a, value(a)?)?,
                "--storm-channels" => o.storm_channels = num::<usize>(a, value(a)?)?.max(1),
                "--storm-rate" => o.storm_rate = num::<u32>(a, value(a)?)?.max(1),
                "--storm-jitter-ms" => {
                    o.storm_jitter = Duration::from_millis(num(a, value(a)?)?);
                }
                "--channels" => o.channels = num::<usize>(a, value(a)?)?.max(1),
                "--channel-sockets" => o.channel_sockets = num::<usize>(a, value(a)?)?.max(1),
                "--members" => o.members = num::<usize>(a, value(a)?)?.max(1),
                "--workers" => o.workers = num::<usize>(a, value(a)?)?.max(1),
                "--scale" => o.scale = num::<usize>(a, value(a)?)?.max(1),
                "--server-cpus" => o.server_cpus = Some(value(a)?),
                "--load-cpus" => o.load_cpus = Some(value(a)?),
                "--scaler" => match value(a)?.as_str() {
                    "memory" => want_redis = None,
                    "redis" => want_redis = Some(false),
                    "redis-cluster" => want_redis = Some(true),
                    other => return Err(format!("unknown scaler {other:?}")),
                },
                "--redis-url" => redis_url = value(a)?,
                s if !s.starts_with('-') => match Scenario::parse(s) {
                    Some(sc) => o.scenarios.push(sc),
                    None => return Err(format!("unknown scenario {s:?}")),
                },
                other => return Err(format!("unknown option {other:?}")),
            }
        }
        match want_redis {
            Some(false) => o.scaler = ScalerOpt::Redis(redis_url),
            Some(true) => o.scaler = ScalerOpt::RedisCluster(redis_url),
            None => {}
        }
        if o.scenarios.is_empty() {
            o.scenarios = Scenario::ALL.to_vec();
        }
        if o.connections == 0 || o.subscribers == 0 || o.storm_clients == 0 {
            return Err("connections, subscribers and storm clients must be at least 1".into());
        }
        Ok(Some(o))
    }
}
