//! The scenarios, and the run that strings them together and reports.

mod channels;
mod fanout;
mod idle;
mod presence;
mod rpc;
mod scale;
mod storm;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};

use crate::child::{cluster_prefix, ServerProc, Spec};
use crate::opts::{Opts, ScalerOpt, Scenario};
use crate::report::{latency_json, Report};
use crate::serve::Kind;
use crate::wire::{self, In, Ws};
use crate::Result;

/// Why a scenario other than `fanout` refuses `--scaler redis-cluster`.
pub(crate) const ONE_REDIS: &str = "this scenario runs on the memory scaler or one Redis; \
    --scaler redis-cluster runs fanout only";

/// A connection that publishes through the server's `publish` ask handler.
pub(crate) struct Publisher {
    ws: Ws,
    next_id: u64,
    payload: usize,
}

impl Publisher {
    pub(crate) async fn connect(addr: SocketAddr, payload: usize) -> Result<Self> {
        let mut ws = wire::connect(addr).await?;
        wire::hello(&mut ws, Duration::from_secs(10)).await?;
        Ok(Self {
            ws,
            next_id: 1,
            payload,
        })
    }

    /// Publishes a timestamped message on `channel`; returns its seq.
    pub(crate) async fn publish(&mut self, channel: &str) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let frame = format!(
            r#"{{"t":"ask","id":{id},"topic":"publish","msg":{{"ch":"{channel}","msg":{}}}}}"#,
            wire::stamped(self.payload)
        );
        wire::send(&mut self.ws, frame).await?;
        let text = wire::expect(&mut self.ws, Duration::from_secs(10)).await?;
        let f = In::parse(&text)?;
        match (&*f.t, f.id, f.msg) {
            ("res", Some(i), Some(seq)) if i == id => Ok(serde_json::from_str(seq.get())?),
            _ => Err(format!("publish {id}: {}", f.why()).into()),
        }
    }
}

fn cpus_json(c: &Option<String>) -> Value {
    c.as_ref().map_or(Value::Null, |c| json!(c))
}

/// Runs the chosen scenarios in order; prints their JSON lines, then the table.
///
/// `--scaler redis` without `--redis-url` starts a `redis-server` of its own for the run, and
/// `--scaler redis-cluster` a Redis Cluster of three masters. A `--smoke` run with the memory
/// scaler, built with the `redis` feature (the default), also runs `fanout`, `reconnect-storm`
/// and `presence` over Redis (two processes), and `fanout` over a Redis Cluster, when
/// `redis-server` is installed.
pub(crate) async fn run_all(mut o: Opts) -> ExitCode {
    let mut report = Report::default();
    eprintln!(
        "sss-bench: {} CPUs, server cpus {:?}, load cpus {:?}{}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        o.server_cpus,
        o.load_cpus,
        if o.smoke { ", smoke" } else { "" }
    );
    if o.scaler == ScalerOpt::Redis(String::new()) {
        match crate::redis::RedisServer::spawn().await {
            Ok(redis) => {
                eprintln!("sss-bench: started redis-server at {}", redis.url());
                o.scaler = ScalerOpt::Redis(redis.url().to_owned());
                run_scenarios(&o, &mut report).await;
                redis.stop().await;
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    } else if o.scaler == ScalerOpt::RedisCluster(String::new()) {
        match crate::redis::RedisCluster::spawn().await {
            Ok(cluster) => {
                eprintln!("sss-bench: started a Redis Cluster at {}", cluster.urls());
                o.scaler = ScalerOpt::RedisCluster(cluster.urls());
                run_scenarios(&o, &mut report).await;
                cluster.stop().await;
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        run_scenarios(&o, &mut report).await;
    }
    let over_redis: Vec<Scenario> = o
        .scenarios
        .iter()
        .copied()
        .filter(|s| matches!(s, Scenario::Fanout | Scenario::Storm | Scenario::Presence))
        .collect();
    if o.smoke && cfg!(feature = "redis") && o.scaler == ScalerOpt::Memory && !over_redis.is_empty()
    {
        match crate::redis::RedisServer::spawn().await {
            Ok(redis) => {
                eprintln!("sss-bench: smoke over Redis at {}", redis.url());
                let mut o = o.clone();
                o.scaler = ScalerOpt::Redis(redis.url().to_owned());
                o.scenarios = over_redis;
                run_scenarios(&o, &mut report).await;
                redis.stop().await;
            }
            Err(e) => {
                eprintln!("smoke over Redis skipped: {e}");
                report.info("smoke[redis]", "skipped", e.to_string());
            }
        }
    }
    if o.smoke
        && cfg!(feature = "redis")
        && o.scaler == ScalerOpt::Memory
        && o.scenarios.contains(&Scenario::Fanout)
    {
        match crate::redis::RedisCluster::spawn().await {
            Ok(cluster) => {
                eprintln!(
                    "sss-bench: smoke over a Redis Cluster at {}",
                    cluster.urls()
                );
                let mut o = o.clone();
                o.scaler = ScalerOpt::RedisCluster(cluster.urls());
                o.scenarios = vec![Scenario::Fanout];
                run_scenarios(&o, &mut report).await;
                cluster.stop().await;
            }
            Err(e) => {
                eprintln!("smoke over a Redis Cluster skipped: {e}");
                report.info("smoke[redis-cluster]", "skipped", e.to_string());
            }
        }
    }
    report.print_table();
    if report.failures().is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("\ncorrectness checks failed:");
        for f in report.failures() {
            eprintln!("  {f}");
        }
        ExitCode::FAILURE
    }
}

/// Runs `o.scenarios` in order into `report`.
async fn run_scenarios(o: &Opts, report: &mut Report) {
    // The raw echo server's round trips/s and server CPU µs per round trip, for `rpc`'s ratios.
    let mut baseline: Option<Floor> = None;
    for scenario in o.scenarios.clone() {
        let base = match scenario {
            Scenario::Baseline => "baseline",
            Scenario::Rpc => "rpc",
            Scenario::Tells => "tells",
            Scenario::Fanout => "fanout",
            Scenario::Idle => "idle",
            Scenario::Storm => "reconnect-storm",
            Scenario::Channels => "channels",
            Scenario::Cores => "cores",
            Scenario::Presence => "presence",
            Scenario::Workers => "workers",
            Scenario::Scale => "scale",
        };
        let over_redis = matches!(
            scenario,
            Scenario::Fanout | Scenario::Storm | Scenario::Presence
        );
        let name = match &o.scaler {
            s if over_redis && s.is_redis() => format!("{base}[{}]", s.label()),
            _ => base.to_owned(),
        };
        let name = name.as_str();
        eprintln!("== {name}");
        let r = match scenario {
            Scenario::Baseline => {
                rpc_scenario(o, report, Kind::Echo, o.server_cpus.clone(), None, name)
                    .await
                    .map(|raw| baseline = Some(raw))
            }
            Scenario::Rpc => {
                rpc_scenario(o, report, Kind::Sss, o.server_cpus.clone(), baseline, name)
                    .await
                    .map(drop)
            }
            Scenario::Tells => tells_scenario(o, report, name).await,
            Scenario::Fanout => fanout_scenario(o, report, o.server_cpus.clone(), name).await,
            Scenario::Idle => idle_scenario(o, report).await,
            Scenario::Storm => storm_scenario(o, report, name).await,
            Scenario::Channels => channels_scenario(o, report).await,
            Scenario::Cores => cores_scenario(o, report).await,
            Scenario::Presence => presence_scenario(o, report, name).await,
            Scenario::Workers => workers_scenario(o, report, name).await,
            Scenario::Scale => scale_scenario(o, report, name).await,
        };
        if let Err(e) = r {
            eprintln!("{name} failed: {e}");
            report.line(&json!({"scenario": name, "error": e.to_string()}));
            report.error(name, &e.to_string());
        }
    }
}

/// `tells`: the raw echo server, then the sss server, under T tells and an ask per write.
async fn tells_scenario(o: &Opts, report: &mut Report, name: &str) -> Result<()> {
    let cpus = o.server_cpus.clone();
    let base = rpc::run(o, Kind::Echo, cpus.clone(), o.tells).await?;
    let r = rpc::run(o, Kind::Sss, cpus.clone(), o.tells).await?;
    for x in [&base, &r] {
        report.line(&json!({
            "scenario": name,
            "server": x.kind.as_str(),
            "server_cpus": cpus_json(&cpus),
            "connections": x.connections,
            "tells_per_ask": x.tells,
            "payload_bytes": o.payload,
            "seconds": x.cpu.wall.as_secs_f64(),
            "batches": x.count,
            "tells_per_s": x.tells_per_second(),
            "batch_latency": latency_json(&x.hist),
            "server_cpu_us_per_frame": x.server_us_per_frame(),
            "server_user_cpu_us_per_frame": x.server_user_us_per_frame(),
            "server_cores": x.cpu.server_cores(),
            "errors": x.errors,
        }));
        let ms = |q: f64| x.hist.value_at_quantile(q) as f64 / 1000.0;
        let who = x.kind.as_str();
        report.info(
            name,
            &format!("{who}: tells/s"),
            format!("{:.0}", x.tells_per_second()),
        );
        report.info(
            name,
            &format!("{who}: {} tells + ask p50/p99 ms", x.tells),
            format!("{:.2}/{:.2}", ms(0.5), ms(0.99)),
        );
        report.info(
            name,
            &format!("{who}: server CPU µs/frame"),
            format!("{:.2}", x.server_us_per_frame()),
        );
        report.check(
            name,
            &format!("{who}: errors"),
            x.errors,
            "connections failed",
        );
    }
    let ratio = r.server_us_per_frame() / base.server_us_per_frame().max(1e-9);
    report.info(name, "server CPU per frame / raw", format!("{ratio:.2}x"));
    let user = r.server_user_us_per_frame() / base.server_user_us_per_frame().max(1e-9);
    report.info(
        name,
        "server user CPU per frame / raw",
        format!("{user:.2}x"),
    );
    Ok(())
}

/// What a `baseline` run measured, for the `rpc` run's ratios.
#[derive(Clone, Copy)]
struct Floor {
    /// Round trips per second.
    rps: f64,
    /// Server CPU µs per round trip.
    us: f64,
    /// The user-space part of `us`.
    user_us: f64,
}

/// `rpc` (kind sss) or `baseline` (kind echo); returns what it measured.
async fn rpc_scenario(
    o: &Opts,
    report: &mut Report,
    kind: Kind,
    cpus: Option<String>,
    baseline: Option<Floor>,
    name: &str,
) -> Result<Floor> {
    let r = rpc::run(o, kind, cpus.clone(), 0).await?;
    let rps = r.per_second();
    let ratio = baseline.map(|b| rps / b.rps.max(1e-9));
    let cpu_ratio = baseline.map(|b| r.server_us_per_rt() / b.us.max(1e-9));
    let user_ratio = baseline.map(|b| r.server_user_us_per_rt() / b.user_us.max(1e-9));
    report.line(&json!({
        "scenario": name,
        "server": r.kind.as_str(),
        "server_cpus": cpus_json(&cpus),
        "load_cpus": cpus_json(&o.load_cpus),
        "connections": r.connections,
        "payload_bytes": o.payload,
        "seconds": r.cpu.wall.as_secs_f64(),
        "round_trips": r.count,
        "round_trips_per_s": rps,
        "latency": latency_json(&r.hist),
        "server_cpu_us_per_rt": r.server_us_per_rt(),
        "server_user_cpu_us_per_rt": r.server_user_us_per_rt(),
        "server_cores": r.cpu.server_cores(),
        "load_cpu_us_per_rt": r.load_us_per_rt(),
        "load_cores": r.cpu.load_cores(),
        "other_cores": r.cpu.other_cores(),
        "ratio_to_baseline": ratio,
        "server_cpu_ratio_to_baseline": cpu_ratio,
        "server_user_cpu_ratio_to_baseline": user_ratio,
        "errors": r.errors,
    }));
    let ms = |q: f64| r.hist.value_at_quantile(q) as f64 / 1000.0;
    report.info(name, "round trips/s", format!("{rps:.0}"));
    report.info(
        name,
        "latency p50/p90/p99/max ms",
        format!(
            "{:.3}/{:.3}/{:.3}/{:.3}",
            ms(0.5),
            ms(0.9),
            ms(0.99),
            r.hist.max() as f64 / 1000.0
        ),
    );
    report_cores(report, name, &r.cpu);
    if kind == Kind::Sss {
        if let Some(ratio) = ratio {
            report.target(
                name,
                "rpc / baseline",
                format!("{:.0}%", ratio * 100.0),
                ">= 70%",
                ratio >= 0.70,
            );
        }
        let us = r.server_us_per_rt();
        report.target(
            name,
            "server CPU µs/round trip",
            format!("{us:.2}"),
            "<= 8",
            us <= 8.0,
        );
        if let Some(x) = cpu_ratio {
            report.target(
                name,
                "server CPU per round trip / raw",
                format!("{x:.2}x"),
                "<= 1.15x",
                x <= 1.15,
            );
        }
        if let Some(x) = user_ratio {
            report.info(
                name,
                "server user CPU per round trip / raw",
                format!("{x:.2}x"),
            );
        }
    } else {
        report.info(
            name,
            "server CPU µs/round trip",
            format!("{:.2}", r.server_us_per_rt()),
        );
    }
    report.check(name, "errors", r.errors, "connections failed");
    Ok(Floor {
        rps,
        us: r.server_us_per_rt(),
        user_us: r.server_user_us_per_rt(),
    })
}

async fn fanout_scenario(
    o: &Opts,
    report: &mut Report,
    cpus: Option<String>,
    name: &str,
) -> Result<()> {
    // The floor, in the same run: one process, so only beside the memory scaler's.
    let raw = match &o.scaler {
        ScalerOpt::Memory => Some(fanout::run(o, cpus.clone(), true).await?),
        ScalerOpt::Redis(_) | ScalerOpt::RedisCluster(_) => None,
    };
    let r = fanout::run(o, cpus.clone(), false).await?;
    if let Some(raw) = &raw {
        report.line(&json!({
            "scenario": name,
            "server": "fanout-raw",
            "server_cpus": cpus_json(&cpus),
            "subscribers": raw.subscribers,
            "rate_per_s": o.rate,
            "payload_bytes": o.payload,
            "deliveries": raw.deliveries,
            "deliveries_per_s": raw.per_second(),
            "latency": latency_json(&raw.hist),
            "lost": raw.lost,
            "duplicated": raw.duplicated,
            "errors": raw.errors,
            "server_cpu_us_per_delivery": raw.server_us_per_delivery(),
            "server_user_cpu_us_per_delivery": raw.server_user_us_per_delivery(),
            "server_cores": raw.cpu.server_cores(),
            "other_cores": raw.cpu.other_cores(),
        }));
        let ms = |q: f64| raw.hist.value_at_quantile(q) as f64 / 1000.0;
        report.info(
            name,
            "raw: latency p50/p99 ms, server CPU µs/delivery",
            format!(
                "{:.3}/{:.3}, {:.2}",
                ms(0.5),
                ms(0.99),
                raw.server_us_per_delivery()
            ),
        );
        let lost = raw.lost + raw.duplicated + raw.errors;
        report.check(
            name,
            "raw: lost, duplicated, failed",
            lost,
            "raw fan-out failures",
        );
        let ratio = r.server_us_per_delivery() / raw.server_us_per_delivery().max(1e-9);
        report.target(
            name,
            "server CPU per delivery / raw",
            format!("{ratio:.2}x"),
            "<= 1.15x",
            ratio <= 1.15,
        );
        let user = r.server_user_us_per_delivery() / raw.server_user_us_per_delivery().max(1e-9);
        report.info(
            name,
            "server user CPU per delivery / raw",
            format!("{user:.2}x"),
        );
    }
    let scaler = o.scaler.label();
    report.line(&json!({
        "scenario": name,
        "scaler": scaler,
        "server_cpus": cpus_json(&cpus),
        "load_cpus": cpus_json(&o.load_cpus),
        "subscribers": r.subscribers,
        "rate_per_s": o.rate,
        "payload_bytes": o.payload,
        "published": r.published,
        "deliveries": r.deliveries,
        "deliveries_per_s": r.per_second(),
        "latency": latency_json(&r.hist),
        "lost": r.lost,
        "duplicated": r.duplicated,
        "errors": r.errors,
        "server_cpu_us_per_delivery": r.server_us_per_delivery(),
        "server_user_cpu_us_per_delivery": r.server_user_us_per_delivery(),
        "server_cores": r.cpu.server_cores(),
        "load_cpu_us_per_delivery": r.load_us_per_delivery(),
        "load_cores": r.cpu.load_cores(),
        "other_cores": r.cpu.other_cores(),
    }));
    let ms = |q: f64| r.hist.value_at_quantile(q) as f64 / 1000.0;
    report.info(name, "deliveries/s", format!("{:.0}", r.per_second()));
    report.info(
        name,
        "latency p50/p99/max ms",
        format!(
            "{:.3}/{:.3}/{:.3}",
            ms(0.5),
            ms(0.99),
            r.hist.max() as f64 / 1000.0
        ),
    );
    report.target(
        name,
        "latency p99 ms",
        format!("{:.3}", ms(0.99)),
        "<= 5",
        ms(0.99) <= 5.0,
    );
    let us = r.server_us_per_delivery();
    report.target(
        name,
        "server CPU µs/delivery",
        format!("{us:.2}"),
        "<= 2",
        us <= 2.0,
    );
    report_cores(report, name, &r.cpu);
    report.check(name, "lost", r.lost, "publications lost");
    report.check(name, "duplicated", r.duplicated, "publications duplicated");
    report.check(
        name,
        "errors",
        r.errors,
        "subscribers or publications failed",
    );
    Ok(())
}

async fn idle_scenario(o: &Opts, report: &mut Report) -> Result<()> {
    let sss = idle::run(o, Kind::Sss, &[]).await?;
    let tuned = idle::run(o, Kind::Sss, &[idle::MMAP_THRESHOLD_4K]).await?;
    let echo = idle::run(o, Kind::Echo, &[]).await?;
    report.line(&json!({
        "scenario": "idle",
        "server_cpus": cpus_json(&o.server_cpus),
        "connections": sss.connections,
        "rss_before_bytes": sss.rss_before,
        "rss_after_bytes": sss.rss_after,
        "rss_per_connection_bytes": sss.per_connection(),
        "mmap_threshold_4k_rss_per_connection_bytes": tuned.per_connection(),
        "baseline_rss_per_connection_bytes": echo.per_connection(),
        "errors": sss.errors + tuned.errors + echo.errors,
    }));
    for (what, r) in [
        ("server RSS/connection", &sss),
        ("server RSS/connection, glibc mmap threshold 4 KiB", &tuned),
    ] {
        let per = r.per_connection();
        report.target(
            "idle",
            what,
            format!("{per:.0} B"),
            "<= 4096 B",
            per <= 4096.0,
        );
    }
    report.info(
        "idle",
        "baseline RSS/connection",
        format!("{:.0} B", echo.per_connection()),
    );
    report.check(
        "idle",
        "errors",
        sss.errors + tuned.errors + echo.errors,
        "connections failed",
    );
    debug_assert_eq!(echo.kind, Kind::Echo);
    Ok(())
}

async fn storm_scenario(o: &Opts, report: &mut Report, name: &str) -> Result<()> {
    let r = storm::run(o).await?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    report.line(&json!({
        "scenario": name,
        "layout": match o.scaler {
            ScalerOpt::Memory => "one process, two instances on one MemoryScaler hub",
            ScalerOpt::Redis(_) | ScalerOpt::RedisCluster(_) => {
                "two processes over Redis, A SIGKILLed"
            }
        },
        "server_cpus": cpus_json(&o.server_cpus),
        "load_cpus": cpus_json(&o.load_cpus),
        "clients": r.clients,
        "channels": r.channels,
        "publish_rate_per_s": o.storm_rate,
        "jitter_ms": o.storm_jitter.as_millis() as u64,
        "published": r.published,
        "resynced": r.resynced,
        "all_resynced_ms": r.all_resynced.map(ms),
        "resync_p50_ms": ms(r.resync_p50),
        "resync_p99_ms": ms(r.resync_p99),
        "lost": r.lost,
        "duplicated": r.duplicated,
        "unrecovered": r.unrecovered,
        "reconnect_attempts": r.reconnect_attempts,
        "errors": r.errors,
        "server_cpu_ms": r.cpu.server_us as f64 / 1000.0,
        "load_cpu_ms": r.cpu.load_us as f64 / 1000.0,
        "other_cores": r.cpu.other_cores(),
    }));
    match r.all_resynced {
        Some(d) => report.target(
            name,
            "all resynced after kill",
            format!("{:.0} ms", ms(d)),
            "<= 5000 ms",
            d <= Duration::from_secs(5),
        ),
        None => report.target(
            name,
            "all resynced after kill",
            format!("{}/{}", r.resynced, r.clients),
            "all",
            false,
        ),
    }
    report.info(
        name,
        "resync p50/p99 ms",
        format!("{:.0}/{:.0}", ms(r.resync_p50), ms(r.resync_p99)),
    );
    report.check(
        name,
        "not resynced",
        (r.clients - r.resynced) as u64,
        "clients did not resync",
    );
    report.check(name, "lost", r.lost, "publications lost");
    report.check(name, "duplicated", r.duplicated, "publications duplicated");
    report.check(
        name,
        "unrecovered",
        r.unrecovered,
        "clients told unrecoverable",
    );
    report.check(name, "errors", r.errors, "clients or publications failed");
    Ok(())
}

/// `presence`: what joining and leaving one channel's presence costs, per member.
async fn presence_scenario(o: &Opts, report: &mut Report, name: &str) -> Result<()> {
    let r = presence::run(o).await?;
    let counts = |c: Option<presence::RedisCounts>| {
        c.map(|c| json!({"commands": c.commands, "script_calls": c.scripts}))
    };
    report.line(&json!({
        "scenario": name,
        "server_cpus": cpus_json(&o.server_cpus),
        "members": r.members,
        "join_s": r.join_time.as_secs_f64(),
        "leave_s": r.leave_time.as_secs_f64(),
        "join_redis": counts(r.join_redis),
        "leave_redis": counts(r.leave_redis),
        "errors": r.errors,
    }));
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    report.info(
        name,
        &format!("{} joins / leaves, ms to the last event", r.members),
        format!("{:.0} / {:.0}", ms(r.join_time), ms(r.leave_time)),
    );
    for (what, c) in [("joins", r.join_redis), ("leaves", r.leave_redis)] {
        if let Some(c) = c {
            report.info(
                name,
                &format!("Redis for the {what}: commands / script calls"),
                format!("{} / {}", c.commands, c.scripts),
            );
        }
    }
    report.check(name, "errors", r.errors, "members failed");
    Ok(())
}

async fn channels_scenario(o: &Opts, report: &mut Report) -> Result<()> {
    let r = channels::run(o).await?;
    let ratio = r.retained_ratio();
    report.line(&json!({
        "scenario": "channels",
        "scaler": "memory",
        "server_cpus": cpus_json(&o.server_cpus),
        "channels_per_round": r.channels,
        "sockets": r.sockets,
        "rounds": channels::ROUNDS,
        "subscribe_s": r.subscribe_time.as_secs_f64(),
        "rss_before_bytes": r.rss_before,
        "rss_peak_bytes": r.rss_peak,
        "rss_after_bytes": r.rss_after,
        "retained_ratio": ratio,
        "errors": r.errors,
    }));
    let mb = channels::mb;
    report.info(
        "channels",
        "RSS before / peak MB",
        format!("{:.1} / {:.1}", mb(r.rss_before), mb(r.peak())),
    );
    report.info(
        "channels",
        "RSS after each round MB",
        r.rss_after
            .iter()
            .map(|b| format!("{:.1}", mb(*b)))
            .collect::<Vec<_>>()
            .join(" / "),
    );
    report.info(
        "channels",
        "subscribed/s (round 1)",
        format!(
            "{:.0}",
            r.channels as f64 / r.subscribe_time.as_secs_f64().max(1e-9)
        ),
    );
    // Channel state must be freed when the channels are left: what stays after the last round
    // is what the server keeps for channels nobody uses.
    report.target(
        "channels",
        "RSS after / before",
        format!("{:.0}%", ratio * 100.0),
        "<= 110%",
        ratio <= 1.10,
    );
    report.check("channels", "errors", r.errors, "sockets failed");
    Ok(())
}

/// baseline, rpc and fanout with the server pinned to one core, then to two.
async fn cores_scenario(o: &Opts, report: &mut Report) -> Result<()> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut sets = vec!["0".to_owned()];
    // The smoke run pins to one core only, to stay short.
    if n >= 2 && !o.smoke {
        sets.push("0,1".to_owned());
    }
    for cpus in sets {
        let label = format!("cores[{cpus}]");
        let base = rpc_scenario(
            o,
            report,
            Kind::Echo,
            Some(cpus.clone()),
            None,
            &format!("{label} baseline"),
        )
        .await?;
        rpc_scenario(
            o,
            report,
            Kind::Sss,
            Some(cpus.clone()),
            Some(base),
            &format!("{label} rpc"),
        )
        .await?;
        fanout_scenario(o, report, Some(cpus.clone()), &format!("{label} fanout")).await?;
    }
    Ok(())
}

/// The table rows that say who was busy: the load generator, the servers, everything else.
/// `workers`: the rpc load against a server on the Redis scaler with its `echo` handler in
/// process, then against a gateway routing `echo` to `o.workers` worker processes, on the same
/// Redis. Server CPU per ask counts every process involved (gateway, workers, Redis).
async fn workers_scenario(o: &Opts, report: &mut Report, name: &str) -> Result<()> {
    let own = match &o.scaler {
        ScalerOpt::Redis(_) => None,
        ScalerOpt::Memory => Some(crate::redis::RedisServer::spawn().await?),
        ScalerOpt::RedisCluster(_) => return Err(ONE_REDIS.into()),
    };
    let url = match (&own, &o.scaler) {
        (Some(r), _) => ScalerOpt::Redis(r.url().to_owned()),
        (None, scaler @ ScalerOpt::Redis(_)) => scaler.clone(),
        (None, ScalerOpt::Memory | ScalerOpt::RedisCluster(_)) => return Err("no Redis".into()),
    };
    // Redis's CPU is known only for a redis-server this run started.
    let redis: Vec<u32> = own.as_ref().and_then(|r| r.pid()).into_iter().collect();
    let cpus = o.server_cpus.clone();

    let spec = Spec::redis(&url, &cluster_prefix(), cpus.clone());
    let server = ServerProc::spawn(&spec).await?;
    let inproc = rpc::measure(o, Kind::Sss, &server, std::slice::from_ref(&redis), 0).await;
    server.stop().await;
    let inproc = inproc?;

    let prefix = cluster_prefix();
    let mut workers = Vec::new();
    for _ in 0..o.workers {
        let mut spec = Spec::redis(&url, &prefix, cpus.clone());
        spec.kind = Kind::Worker;
        workers.push(ServerProc::spawn(&spec).await?);
    }
    let mut spec = Spec::redis(&url, &prefix, cpus.clone());
    spec.kind = Kind::Gateway;
    let gateway = ServerProc::spawn(&spec).await?;
    let pids: Vec<u32> = workers.iter().map(ServerProc::pid).collect();
    let routed = rpc::measure(o, Kind::Gateway, &gateway, &[pids, redis.clone()], 0).await;
    gateway.stop().await;
    for w in workers {
        w.stop().await;
    }
    if let Some(r) = own {
        r.stop().await;
    }
    let routed = routed?;

    let per_ask = |us: u64, r: &rpc::RpcResult| us as f64 / r.count.max(1) as f64;
    for (mode, r) in [("in process", &inproc), ("worker mode", &routed)] {
        let part = |i: usize| r.parts.get(i).map(|&us| per_ask(us, r));
        report.line(&json!({
            "scenario": name,
            "mode": mode,
            "workers": if r.kind == Kind::Gateway { o.workers } else { 0 },
            "connections": r.connections,
            "payload_bytes": o.payload,
            "seconds": r.cpu.wall.as_secs_f64(),
            "round_trips": r.count,
            "round_trips_per_s": r.per_second(),
            "latency": latency_json(&r.hist),
            "server_cpu_us_per_rt": r.server_us_per_rt(),
            "cpu_us_per_rt": {
                "server_or_gateway": part(0),
                "workers": if r.kind == Kind::Gateway { part(1) } else { None },
                "redis": if redis.is_empty() { None } else { part(r.parts.len() - 1) },
            },
            "errors": r.errors,
        }));
        let ms = |q: f64| r.hist.value_at_quantile(q) as f64 / 1000.0;
        report.info(
            name,
            &format!("{mode}: round trips/s"),
            format!("{:.0}", r.per_second()),
        );
        report.info(
            name,
            &format!("{mode}: latency p50/p99 ms"),
            format!("{:.3}/{:.3}", ms(0.5), ms(0.99)),
        );
        let parts: Vec<String> = r
            .parts
            .iter()
            .map(|&us| format!("{:.1}", per_ask(us, r)))
            .collect();
        report.info(
            name,
            &format!(
                "{mode}: CPU µs/ask (total; {})",
                if r.kind == Kind::Gateway {
                    "gateway, workers, redis"
                } else {
                    "server, redis"
                }
            ),
            format!("{:.1} ({})", r.server_us_per_rt(), parts.join(", ")),
        );
        report.check(
            name,
            &format!("{mode}: errors"),
            r.errors,
            "connections failed",
        );
        report.check(
            name,
            &format!("{mode}: answered"),
            u64::from(r.count == 0),
            "runs without any answer",
        );
    }
    let p50 = |r: &rpc::RpcResult| r.hist.value_at_quantile(0.5) as f64 / 1000.0;
    report.info(
        name,
        "worker mode adds: p50 ms, CPU µs/ask",
        format!(
            "{:.3}, {:.1}",
            p50(&routed) - p50(&inproc),
            routed.server_us_per_rt() - inproc.server_us_per_rt()
        ),
    );
    Ok(())
}

/// `scale`: see the module `scale`. Skipped, with the reason, when this machine's descriptor
/// limit cannot hold the connections.
async fn scale_scenario(o: &Opts, report: &mut Report, name: &str) -> Result<()> {
    let r = match scale::run(o, o.scale).await {
        Err(e) if e.to_string().contains("RLIMIT_NOFILE") => {
            eprintln!("{name}: skipped: {e}");
            report.info(name, "skipped", e.to_string());
            return Ok(());
        }
        r => r?,
    };
    let ms = |q: f64| r.hist.value_at_quantile(q) as f64 / 1000.0;
    report.line(&json!({
        "scenario": name,
        "connections": r.connections,
        "connect_seconds": r.connect_secs,
        "connects_per_s": r.connections as f64 / r.connect_secs.max(1e-9),
        "server_rss_bytes_per_connection": r.rss_per_connection,
        "idle_seconds": r.idle_secs,
        "idle_server_user_cores": r.idle_user_cores,
        "idle_server_kernel_cores": r.idle_kernel_cores,
        "subscribe_seconds": r.subscribe_secs,
        "publish_to_last_delivery_ms": r.publish_to_last_ms,
        "published": r.published,
        "latency": latency_json(&r.hist),
        "lost": r.lost,
        "errors": r.errors,
    }));
    report.info(name, "connections", r.connections.to_string());
    report.info(
        name,
        "connects/s",
        format!("{:.0}", r.connections as f64 / r.connect_secs.max(1e-9)),
    );
    let kb = r.rss_per_connection / 1024.0;
    report.target(
        name,
        "server RSS KiB/connection",
        format!("{kb:.2}"),
        "<= 4",
        kb <= 4.0,
    );
    report.info(
        name,
        "idle server cores: user / kernel",
        format!("{:.3} / {:.3}", r.idle_user_cores, r.idle_kernel_cores),
    );
    report.info(name, "subscribe all, s", format!("{:.2}", r.subscribe_secs));
    report.info(
        name,
        "one publish to last delivery, ms",
        format!("{:.1}", r.publish_to_last_ms),
    );
    report.info(
        name,
        "1/s: latency p50/p99/max ms",
        format!(
            "{:.1}/{:.1}/{:.1}",
            ms(0.5),
            ms(0.99),
            r.hist.max() as f64 / 1000.0
        ),
    );
    report.check(name, "lost", r.lost, "deliveries lost");
    report.check(name, "errors", r.errors, "connections failed");
    Ok(())
}

fn report_cores(report: &mut Report, name: &str, cpu: &crate::child::CpuUse) {
    report.info(name, "load cores busy", format!("{:.2}", cpu.load_cores()));
    report.info(
        name,
        "server cores busy",
        format!("{:.2}", cpu.server_cores()),
    );
    report.info(
        name,
        "other cores busy",
        format!("{:.2}", cpu.other_cores()),
    );
}
