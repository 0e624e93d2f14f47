//! A token bucket: the one rate mechanism of the engine. Each session has one for all of its
//! requests (each request type costs what `Config::costs` says), and each room on a node has
//! one for its membership events (`member_joined` / `member_left`).
//!
//! Hand-written rather than a crate (`governor` and the like): it is a dozen lines, needs no
//! clock of its own beyond tokio's (so paused-time tests drive it), and lives inside a session's
//! state without a shared allocation.

use tokio::time::Instant;

/// Tokens refill at `rate` per second up to `burst`; a bucket starts full.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket, whatever its burst (the first [`take`](Self::take) caps it).
    pub(crate) fn new() -> Self {
        TokenBucket { tokens: f64::INFINITY, at: Instant::now() }
    }

    /// Takes `cost` tokens if there are that many after refilling at `rate` per second up to
    /// `burst`. A rate of 0 means no limit; a cost above the burst is charged the burst (so
    /// that every request can be made at all).
    pub(crate) fn take(&mut self, cost: u32, rate: u32, burst: u32) -> bool {
        if rate == 0 || cost == 0 {
            return true;
        }
        let now = Instant::now();
        let burst = f64::from(burst.max(1));
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * f64::from(rate);
        self.tokens = (self.tokens + refill).min(burst);
        self.at = now;
        let cost = f64::from(cost).min(burst);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn burst_then_rate() {
        let mut b = TokenBucket::new();
        assert!(b.take(4, 2, 10) && b.take(4, 2, 10), "8 of the 10 burst tokens");
        assert!(!b.take(4, 2, 10), "2 left: a cost of 4 waits");
        assert!(b.take(2, 2, 10), "exactly what is left is accepted");
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(b.take(3, 2, 10), "3 tokens refilled in 1.5 s at 2/s");
        assert!(!b.take(1, 2, 10));
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(b.take(25, 2, 10), "a cost above the burst is charged the burst");
        assert!(!b.take(1, 2, 10), "and empties it");
        assert!(b.take(1, 0, 0), "rate 0: no limit");
    }
}
