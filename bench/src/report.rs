//! Results: latency histograms, the JSON lines, the final table and the correctness verdict.

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// A latency histogram in µs (1 µs .. 100 s, 3 significant figures).
pub(crate) fn histogram() -> Histogram<u64> {
    // Fixed, valid bounds: construction cannot fail.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds")
}

/// Records one latency, clamped into the histogram's range.
pub(crate) fn record(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.max(1));
}

/// p50 / p90 / p99 / max in milliseconds, as JSON.
pub(crate) fn latency_json(h: &Histogram<u64>) -> Value {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    json!({
        "samples": h.len(),
        "p50_ms": ms(0.5),
        "p90_ms": ms(0.9),
        "p99_ms": ms(0.99),
        "max_ms": h.max() as f64 / 1000.0,
    })
}

/// One row of the final table.
pub(crate) struct Row {
    scenario: String,
    metric: String,
    value: String,
    target: String,
    verdict: &'static str,
}

/// Everything the run found: table rows and failed correctness checks.
#[derive(Default)]
pub(crate) struct Report {
    rows: Vec<Row>,
    failures: Vec<String>,
}

impl Report {
    /// Prints a scenario's JSON line at once (stdout).
    pub(crate) fn line(&self, v: &Value) {
        println!("{v}");
    }

    /// A measured value without a target.
    pub(crate) fn info(&mut self, scenario: &str, metric: &str, value: String) {
        self.rows.push(Row {
            scenario: scenario.into(),
            metric: metric.into(),
            value,
            target: String::new(),
            verdict: "",
        });
    }

    /// A measured value against a performance target (reported, never fatal).
    pub(crate) fn target(
        &mut self,
        scenario: &str,
        metric: &str,
        value: String,
        target: &str,
        met: bool,
    ) {
        self.rows.push(Row {
            scenario: scenario.into(),
            metric: metric.into(),
            value,
            target: target.into(),
            verdict: if met { "ok" } else { "MISSED" },
        });
    }

    /// A correctness check: a failure makes the run exit non-zero.
    pub(crate) fn check(&mut self, scenario: &str, metric: &str, value: u64, what: &str) {
        let ok = value == 0;
        self.rows.push(Row {
            scenario: scenario.into(),
            metric: metric.into(),
            value: value.to_string(),
            target: "0".into(),
            verdict: if ok { "ok" } else { "FAILED" },
        });
        if !ok {
            self.failures.push(format!("{scenario}: {value} {what}"));
        }
    }

    /// A scenario that could not run at all.
    pub(crate) fn error(&mut self, scenario: &str, e: &str) {
        self.rows.push(Row {
            scenario: scenario.into(),
            metric: "error".into(),
            value: e.into(),
            target: String::new(),
            verdict: "FAILED",
        });
        self.failures.push(format!("{scenario}: {e}"));
    }

    pub(crate) fn failures(&self) -> &[String] {
        &self.failures
    }

    /// The human table (stdout, after the JSON lines).
    pub(crate) fn print_table(&self) {
        let w =
            |f: fn(&Row) -> usize, min: usize| self.rows.iter().map(f).max().unwrap_or(0).max(min);
        let (ws, wm, wv, wt) = (
            w(|r| r.scenario.len(), 8),
            w(|r| r.metric.len(), 6),
            w(|r| r.value.len(), 5),
            w(|r| r.target.len(), 6),
        );
        println!();
        println!(
            "{:ws$}  {:wm$}  {:>wv$}  {:wt$}  verdict",
            "scenario", "metric", "value", "target"
        );
        println!("{}", "-".repeat(ws + wm + wv + wt + 15));
        for r in &self.rows {
            println!(
                "{:ws$}  {:wm$}  {:>wv$}  {:wt$}  {}",
                r.scenario, r.metric, r.value, r.target, r.verdict
            );
        }
    }
}
