//! Client configuration and the reconnect backoff.

use std::time::Duration;

use super::time::millis;

use serde_json::value::RawValue;

/// Settings of a [`Client`](super::Client).
///
/// Build one with struct update syntax:
/// `Config { urls: vec!["wss://example.com/ws".into()], ..Config::default() }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Server URLs. The first connection goes to the first one; each reconnect attempt moves to
    /// the next, round-robin. An empty list makes the client close at once.
    pub urls: Vec<String>,
    /// How long an ask waits for its answer, counted from the `ask` call (time spent in the
    /// offline queue included). Default: 10 s.
    pub ask_timeout: Duration,
    /// How long a connection attempt may take, from [`Action::Connect`](super::Action::Connect)
    /// until the server's `welcome`. Past it the attempt counts as failed. Default: 10 s.
    pub connect_timeout: Duration,
    /// The reconnect policy.
    pub reconnect: Reconnect,
    /// How many asks and tells together may wait, while the client is not connected, to be sent
    /// once it is; presence requests waiting for their subscription to be live count too.
    /// Default: 1024.
    pub offline_queue: usize,
    /// Seed of the jitter generator. Drivers pass a random value; tests a fixed one, which makes
    /// every delay reproducible. Default: 0.
    pub seed: u64,
    /// When set, a first connection that fails (no `welcome` ever arrived) closes the client,
    /// with that failure's code and reason in [`Event::Closed`](super::Event::Closed), instead
    /// of reconnecting: what a driver's "connect and tell me whether it worked" wants. Later
    /// connections are retried as [`Config::reconnect`] says. Default: `false` (retry).
    pub fail_first_connect: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            ask_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            reconnect: Reconnect::default(),
            offline_queue: 1024,
            seed: 0,
            fail_first_connect: false,
        }
    }
}

/// How to subscribe, besides the channel: see [`Client::subscribe`](super::Client::subscribe).
///
/// `SubscribeOptions::default()` sends no query and asks for no presence events. Build others
/// with struct update syntax: `SubscribeOptions { presence: true, ..SubscribeOptions::default() }`.
#[derive(Clone, Debug)]
pub struct SubscribeOptions<P = Box<RawValue>> {
    /// Query for the server's subscription parser (any JSON).
    pub query: Option<P>,
    /// Whether to receive the channel's join / leave events ([`Event::Join`],
    /// [`Event::Leave`](super::Event::Leave)), when the server grants the subscription
    /// presence. Presence requests do not need it.
    ///
    /// [`Event::Join`]: super::Event::Join
    pub presence: bool,
}

impl<P> Default for SubscribeOptions<P> {
    fn default() -> Self {
        Self {
            query: None,
            presence: false,
        }
    }
}

/// Reconnect policy: exponential backoff with full jitter.
///
/// Before reconnect attempt `n` (0-based, counted since the last `welcome`), the client waits a
/// uniformly random delay in `[0, min(max, base * 2^n)]`: see [`backoff_delay`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reconnect {
    /// Ceiling of the first delay. Default: 250 ms.
    pub base: Duration,
    /// Largest ceiling of any delay. Default: 10 s.
    pub max: Duration,
    /// `Some(k)`: after `k` consecutive reconnect attempts fail (the first connection is not
    /// counted), the client closes for good. `None` (the default): retry forever.
    pub max_attempts: Option<u32>,
}

impl Default for Reconnect {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(250),
            max: Duration::from_secs(10),
            max_attempts: None,
        }
    }
}

impl Reconnect {
    /// The longest delay before attempt `attempt`: `min(max, base * 2^attempt)`, in whole
    /// milliseconds.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let base = millis(self.base);
        let factor = 2u64.checked_pow(attempt).unwrap_or(u64::MAX);
        Duration::from_millis(base.saturating_mul(factor).min(millis(self.max)))
    }
}

/// The delay before reconnect attempt `attempt` ("full jitter"), given a uniformly random
/// `rng_value`: a whole number of milliseconds in `[0, cfg.ceiling(attempt)]`.
pub fn backoff_delay(cfg: &Reconnect, attempt: u32, rng_value: u64) -> Duration {
    let ceiling = millis(cfg.ceiling(attempt));
    let delay = match ceiling.checked_add(1) {
        Some(span) => rng_value % span,
        None => rng_value,
    };
    Duration::from_millis(delay)
}

/// The splitmix64 generator: tiny, fast and good enough for jitter.
#[derive(Clone, Debug)]
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(super) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_up_to_max() {
        let cfg = Reconnect::default();
        let ceilings: Vec<u128> = (0..8).map(|n| cfg.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [250, 500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
        assert_eq!(cfg.ceiling(u32::MAX), cfg.max);
    }

    #[test]
    fn delays_stay_within_full_jitter_bounds() {
        let cfg = Reconnect::default();
        let mut rng = Rng::new(42);
        for attempt in 0..70 {
            let ceiling = cfg.ceiling(attempt);
            for _ in 0..200 {
                assert!(backoff_delay(&cfg, attempt, rng.next_u64()) <= ceiling);
            }
        }
        assert_eq!(backoff_delay(&cfg, 0, 0), Duration::ZERO);
        assert_eq!(backoff_delay(&cfg, 0, 250), Duration::from_millis(250));
        assert_eq!(backoff_delay(&cfg, 0, 251), Duration::ZERO);
        let huge = Reconnect {
            base: Duration::MAX,
            max: Duration::MAX,
            max_attempts: None,
        };
        assert_eq!(backoff_delay(&huge, 3, 7), Duration::from_millis(7));
    }

    #[test]
    fn jitter_spreads_and_is_reproducible() {
        let cfg = Reconnect::default();
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..50)
                .map(|_| backoff_delay(&cfg, 6, rng.next_u64()))
                .collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
        assert!(a.iter().any(|d| *d < Duration::from_secs(3)));
        assert!(a.iter().any(|d| *d > Duration::from_secs(7)));
    }
}
