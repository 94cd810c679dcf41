//! CPU time and resident memory of a process, from `/proc`.

use std::sync::OnceLock;

use crate::Result;

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`, 100 on Linux in practice).
fn clk_tck() -> u64 {
    static TCK: OnceLock<u64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// User plus system CPU time of a process (all its threads, dead ones included), in µs. The
/// kernel counts in clock ticks (10 ms), so short windows are coarse.
pub(crate) fn cpu_us(pid: u32) -> Result<u64> {
    let (user, kernel) = cpu_split_us(pid)?;
    Ok(user + kernel)
}

/// User and kernel CPU time of a process apart, in µs.
pub(crate) fn cpu_split_us(pid: u32) -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("unexpected /proc/<pid>/stat format")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) overall; `rest` starts at field 3.
    let ticks = |i: usize| -> Result<u64> {
        Ok(fields
            .get(i)
            .ok_or("short /proc/<pid>/stat")?
            .parse::<u64>()?)
    };
    Ok((
        ticks(11)? * 1_000_000 / clk_tck(),
        ticks(12)? * 1_000_000 / clk_tck(),
    ))
}

/// CPU time the whole machine spent busy (every process, interrupts and steal), in µs: the
/// benchmark reports what other processes used, since the machine is shared.
pub(crate) fn machine_busy_us() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().ok_or("empty /proc/stat")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<std::result::Result<_, _>>()?;
    // user nice system idle iowait irq softirq steal guest guest_nice (guest time is already
    // counted in user).
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    Ok(busy * 1_000_000 / clk_tck())
}

/// Resident set size of a process, in bytes (`VmRSS`).
pub(crate) fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS in /proc/<pid>/status")?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .ok_or("bad VmRSS line")?
        .parse()?;
    Ok(kb * 1024)
}
