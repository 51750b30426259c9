//! Polling the control queue after an answer: a request that arrives soon
//! after the previous one is picked up without the guest's kick waking the
//! worker thread from sleep (tens of microseconds on a busy host).
//!
//! [`Poller`] decides how long to poll, adaptively, the way halt polling
//! does: a poll that found a request doubles the window (up to the
//! configured maximum), a poll that found none halves it (down to a small
//! floor that keeps probing). A maximum of 0 turns polling off. The caller
//! polls with the queue's notifications off, and turns them back on (and
//! checks the ring once more) before it sleeps, so no request is missed.
//!
//! The window is microseconds: the worker holds the backend for that long,
//! and the front-end's vhost-user requests wait behind it, far below what
//! they tolerate.

use std::time::{Duration, Instant};

use serde::Serialize;

/// Default of the largest polling window, microseconds.
pub const DEFAULT_POLL_US: u32 = 50;
/// Largest polling window the configuration accepts, microseconds.
pub const MAX_POLL_US: u32 = 1000;

/// The smallest window: short enough to cost nothing, long enough to keep
/// finding out whether requests come back to back.
const FLOOR: Duration = Duration::from_micros(2);

/// What a poll costs and what it brings, for STATS.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PollStats {
    /// Polls that found a request before the window closed.
    pub hits: u64,
    /// Polls that found none (the worker then slept).
    pub misses: u64,
    /// Time spent polling, nanoseconds.
    pub busy_ns: u64,
    /// The current window, nanoseconds.
    pub window_ns: u64,
}

/// The adaptive polling window of one queue.
#[derive(Clone, Debug)]
pub struct Poller {
    max: Duration,
    window: Duration,
    stats: PollStats,
}

impl Poller {
    /// A poller whose window never exceeds `max_us` microseconds (0: off).
    pub fn new(max_us: u32) -> Self {
        let max = Duration::from_micros(u64::from(max_us.min(MAX_POLL_US)));
        Poller {
            max,
            window: FLOOR.min(max),
            stats: PollStats::default(),
        }
    }

    /// How long to poll now; zero when polling is off.
    pub fn window(&self) -> Duration {
        self.window
    }

    pub fn stats(&self) -> PollStats {
        PollStats {
            window_ns: u64::try_from(self.window.as_nanos()).unwrap_or(u64::MAX),
            ..self.stats.clone()
        }
    }

    /// Polls `ready` until it returns true or the window closes; adapts the
    /// window to the outcome. Returns whether `ready` became true.
    pub fn poll(&mut self, mut ready: impl FnMut() -> bool) -> bool {
        if self.max.is_zero() {
            return false;
        }
        let start = Instant::now();
        let deadline = start + self.window;
        let found = loop {
            if ready() {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            std::hint::spin_loop();
        };
        let spent = start.elapsed();
        self.record(found, spent);
        found
    }

    /// The adaptation: double on a hit, halve on a miss, within
    /// [`FLOOR`, max].
    fn record(&mut self, found: bool, spent: Duration) {
        self.stats.busy_ns = self
            .stats
            .busy_ns
            .saturating_add(u64::try_from(spent.as_nanos()).unwrap_or(u64::MAX));
        if found {
            self.stats.hits += 1;
            self.window = (self.window * 2).min(self.max);
        } else {
            self.stats.misses += 1;
            self.window = (self.window / 2).max(FLOOR).min(self.max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_never_polls() {
        let mut poller = Poller::new(0);
        assert_eq!(poller.window(), Duration::ZERO);
        let mut calls = 0;
        assert!(!poller.poll(|| {
            calls += 1;
            true
        }));
        assert_eq!(calls, 0);
        assert_eq!(poller.stats().hits + poller.stats().misses, 0);
    }

    #[test]
    fn hits_widen_the_window_up_to_the_maximum_and_misses_narrow_it() {
        let mut poller = Poller::new(40);
        assert_eq!(poller.window(), FLOOR);
        for _ in 0..10 {
            assert!(poller.poll(|| true));
        }
        assert_eq!(poller.window(), Duration::from_micros(40));
        for _ in 0..10 {
            assert!(!poller.poll(|| false));
        }
        assert_eq!(poller.window(), FLOOR);
        let stats = poller.stats();
        assert_eq!((stats.hits, stats.misses), (10, 10));
        // Ten misses of at least 2 us each.
        assert!(stats.busy_ns >= 10 * 2_000, "{stats:?}");
    }

    #[test]
    fn a_poll_ends_when_the_request_comes() {
        let mut poller = Poller::new(MAX_POLL_US);
        for _ in 0..12 {
            poller.poll(|| true);
        }
        assert_eq!(
            poller.window(),
            Duration::from_micros(u64::from(MAX_POLL_US))
        );
        let mut calls = 0;
        assert!(poller.poll(|| {
            calls += 1;
            calls == 3
        }));
        assert_eq!(calls, 3, "polling went on after the request came");
    }

    #[test]
    fn the_configured_maximum_is_capped() {
        let mut poller = Poller::new(u32::MAX);
        for _ in 0..20 {
            poller.poll(|| true);
        }
        assert_eq!(
            poller.window(),
            Duration::from_micros(u64::from(MAX_POLL_US))
        );
    }
}
