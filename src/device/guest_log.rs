//! Log lines a guest can cause, rate-limited per VM: a guest that provokes
//! refusals as fast as it can must not flood the log every VM shares (nor
//! the disk under it). A token bucket lets [`GUEST_LOG_BURST`] lines
//! through at once and [`GUEST_LOG_PER_SEC`] a second after that; lines
//! left out are counted, and the count is logged with the next line let
//! through (`[suppressed: N]`) and when the VM's device goes. Every refusal
//! is counted in STATS as well, limited or not.

use std::fmt;
use std::time::{Duration, Instant};

use log::warn;

/// Lines let through at once.
pub const GUEST_LOG_BURST: u32 = 10;
/// Lines let through a second once the burst is spent.
pub const GUEST_LOG_PER_SEC: u32 = 1;

/// The rate limit of one VM's guest-caused log lines.
#[derive(Debug)]
pub struct GuestLog {
    /// `"VM NAME: "`, or empty for a device that serves no named VM.
    prefix: String,
    tokens: u32,
    refilled: Instant,
    suppressed: u64,
}

impl Default for GuestLog {
    fn default() -> Self {
        GuestLog {
            prefix: String::new(),
            tokens: GUEST_LOG_BURST,
            refilled: Instant::now(),
            suppressed: 0,
        }
    }
}

impl GuestLog {
    /// Names the VM in every line.
    pub fn set_vm(&mut self, name: &str) {
        self.prefix = format!("VM {name}: ");
    }

    /// Logs `message` at warn level if the bucket has a token; else counts
    /// it as suppressed.
    pub fn warn(&mut self, message: fmt::Arguments<'_>) {
        if !self.take(Instant::now()) {
            self.suppressed = self.suppressed.saturating_add(1);
            return;
        }
        if self.suppressed > 0 {
            warn!("{}{message} [suppressed: {}]", self.prefix, self.suppressed);
            self.suppressed = 0;
        } else {
            warn!("{}{message}", self.prefix);
        }
    }

    /// Lines left out since the last one let through.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }

    /// Takes a token at `now`, refilling whole seconds first.
    fn take(&mut self, now: Instant) -> bool {
        let secs = now.saturating_duration_since(self.refilled).as_secs();
        if secs > 0 {
            let earned = secs.saturating_mul(u64::from(GUEST_LOG_PER_SEC));
            let tokens = u64::from(self.tokens).saturating_add(earned);
            self.tokens = tokens.min(u64::from(GUEST_LOG_BURST)) as u32;
            self.refilled += Duration::from_secs(secs);
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

impl Drop for GuestLog {
    fn drop(&mut self) {
        if self.suppressed > 0 {
            warn!(
                "{}lines about guest requests [suppressed: {}]",
                self.prefix, self.suppressed
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_line_a_second() {
        let mut log = GuestLog::default();
        let start = log.refilled;
        let allowed = (0..100).filter(|_| log.take(start)).count();
        assert_eq!(allowed, GUEST_LOG_BURST as usize);
        let later = start + Duration::from_millis(2500);
        let allowed = (0..100).filter(|_| log.take(later)).count();
        assert_eq!(allowed, 2 * GUEST_LOG_PER_SEC as usize);
        // A long quiet time refills the burst, no more.
        let much_later = start + Duration::from_secs(3600);
        let allowed = (0..100).filter(|_| log.take(much_later)).count();
        assert_eq!(allowed, GUEST_LOG_BURST as usize);
    }

    #[test]
    fn left_out_lines_are_counted_and_the_count_restarts() {
        let mut log = GuestLog::default();
        for _ in 0..GUEST_LOG_BURST + 5 {
            log.warn(format_args!("refused"));
        }
        assert_eq!(log.suppressed(), 5);
        log.refilled -= Duration::from_secs(1);
        log.warn(format_args!("refused"));
        assert_eq!(log.suppressed(), 0);
    }
}
