//! A once-per-interval gate for log lines that could otherwise fire per packet or per request.

/// Opens at most once per `interval_ms`.
#[derive(Debug, Clone)]
pub struct RateLimit {
    interval_ms: u64,
    next_ms: u64,
}

impl RateLimit {
    /// A gate that first opens at `now_ms + interval_ms`.
    pub fn new(interval_ms: u64, now_ms: u64) -> Self {
        Self {
            interval_ms,
            next_ms: now_ms.saturating_add(interval_ms),
        }
    }

    /// True (and re-armed) when the interval has passed since it last opened.
    pub fn ready(&mut self, now_ms: u64) -> bool {
        if now_ms < self.next_ms {
            return false;
        }
        self.next_ms = now_ms.saturating_add(self.interval_ms);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_once_per_interval() {
        let mut gate = RateLimit::new(10, 0);
        assert!(!gate.ready(9));
        assert!(gate.ready(10));
        assert!(!gate.ready(19));
        assert!(gate.ready(25));
        assert!(!gate.ready(34));
        assert!(gate.ready(35));
    }

    #[test]
    fn saturates_instead_of_overflowing() {
        let mut gate = RateLimit::new(u64::MAX, 5);
        assert!(!gate.ready(u64::MAX - 1));
        assert!(gate.ready(u64::MAX));
        assert!(!gate.ready(u64::MAX - 1));
    }
}
