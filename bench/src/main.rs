//! `sss-bench`: the load benchmark of Super Scaled Sockets.
//!
//! It starts real servers on loopback as child processes (this binary re-executed with the
//! hidden `serve` subcommand), so their CPU time and RSS can be read from `/proc/<pid>`, drives
//! them with lightweight clients speaking the wire protocol over tokio-tungstenite, and prints one
//! JSON line per scenario on stdout, then a human-readable table (progress goes to stderr).
//!
//! Scenarios: `baseline` (a raw tokio-tungstenite echo server), `rpc`, `fanout`, `idle`,
//! `reconnect-storm`, `channels` and `cores`. `--smoke` runs every scenario tiny and exits
//! non-zero when a correctness check fails. `sss-bench --help` lists the options;
//! `docs/PERFORMANCE.md` explains them and records the numbers measured.

mod child;
mod opts;
mod procfs;
mod redis;
mod report;
mod scenarios;
mod serve;
mod wire;

use std::process::ExitCode;

/// The error type of the whole binary: every failure ends up as a message.
pub(crate) type Error = Box<dyn std::error::Error + Send + Sync>;
/// `Result` with [`Error`].
pub(crate) type Result<T> = std::result::Result<T, Error>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Both the load side and the server children hold thousands of sockets.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("warning: could not raise RLIMIT_NOFILE: {e}");
    }
    if args.first().map(String::as_str) == Some("serve") {
        return serve::main(&args[1..]);
    }
    let opts = match opts::Opts::parse(&args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{}", opts::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{}", opts::USAGE);
            return ExitCode::from(2);
        }
    };
    if let Some(cpus) = &opts.load_cpus {
        // Before the runtime starts its threads: they inherit the affinity.
        if let Err(e) = child::pin_self(cpus) {
            eprintln!("error: pinning the load generator to CPUs {cpus}: {e}");
            return ExitCode::from(2);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(scenarios::run_all(opts))
}
