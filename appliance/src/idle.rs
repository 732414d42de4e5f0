//! The adaptive idle policy of the main loop.
//!
//! SNP has no receive interrupt, so frames are only seen when the loop polls. While traffic
//! flows the loop polls back to back (lowest latency); once nothing happened for
//! [`IdlePolicy::busy_window_ms`] it sleeps on a firmware timer event for at most
//! [`IdlePolicy::max_sleep_ms`] (one timer tick), which halts the CPU instead of spinning.

/// Tuning of [`AdaptiveIdle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdlePolicy {
    /// Keep polling without sleeping for this long after the last activity.
    pub busy_window_ms: u64,
    /// Longest sleep; also bounds how late a newly arrived frame is noticed.
    pub max_sleep_ms: u64,
}

impl Default for IdlePolicy {
    /// 5 ms of hard polling after activity, then 1 ms sleeps (one tick of the shortened timer).
    fn default() -> Self {
        Self {
            busy_window_ms: 5,
            max_sleep_ms: 1,
        }
    }
}

/// What the loop does after a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleAction {
    /// Poll again at once.
    PollAgain,
    /// Wait on the timer for this many milliseconds (at least 1).
    Sleep {
        /// Milliseconds to sleep.
        ms: u64,
    },
}

/// Decides between polling and sleeping from the history of activity.
#[derive(Debug, Clone)]
pub struct AdaptiveIdle {
    policy: IdlePolicy,
    last_activity_ms: u64,
    sleeps: u64,
    busy_polls: u64,
}

impl AdaptiveIdle {
    /// Starts in the busy state (boot counts as activity).
    pub fn new(policy: IdlePolicy, now_ms: u64) -> Self {
        Self {
            policy,
            last_activity_ms: now_ms,
            sleeps: 0,
            busy_polls: 0,
        }
    }

    /// Records the outcome of one poll and returns what to do next. `activity` says the poll
    /// moved frames or data; `deadline_ms` is how soon the network stack wants to be polled
    /// again (`None`: no timer pending).
    pub fn after_poll(
        &mut self,
        now_ms: u64,
        activity: bool,
        deadline_ms: Option<u64>,
    ) -> IdleAction {
        if activity {
            self.last_activity_ms = now_ms;
        }
        if now_ms.saturating_sub(self.last_activity_ms) < self.policy.busy_window_ms {
            self.busy_polls = self.busy_polls.saturating_add(1);
            return IdleAction::PollAgain;
        }
        self.sleeps = self.sleeps.saturating_add(1);
        let cap = self.policy.max_sleep_ms.max(1);
        let ms = deadline_ms.map_or(cap, |deadline| deadline.clamp(1, cap));
        IdleAction::Sleep { ms }
    }

    /// How many polls were followed by another poll without sleeping.
    pub fn busy_polls(&self) -> u64 {
        self.busy_polls
    }

    /// How many polls were followed by a sleep.
    pub fn sleeps(&self) -> u64 {
        self.sleeps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> IdlePolicy {
        IdlePolicy {
            busy_window_ms: 5,
            max_sleep_ms: 2,
        }
    }

    #[test]
    fn polls_hard_right_after_activity() {
        let mut idle = AdaptiveIdle::new(policy(), 0);
        assert_eq!(idle.after_poll(100, true, None), IdleAction::PollAgain);
        assert_eq!(idle.after_poll(104, false, None), IdleAction::PollAgain);
        assert_eq!(idle.busy_polls(), 2);
    }

    #[test]
    fn sleeps_once_the_busy_window_has_passed() {
        let mut idle = AdaptiveIdle::new(policy(), 0);
        idle.after_poll(100, true, None);
        assert_eq!(
            idle.after_poll(105, false, None),
            IdleAction::Sleep { ms: 2 }
        );
        assert_eq!(idle.sleeps(), 1);
    }

    #[test]
    fn sleep_is_bounded_by_the_stack_deadline_but_never_zero() {
        let mut idle = AdaptiveIdle::new(policy(), 0);
        assert_eq!(
            idle.after_poll(50, false, Some(1)),
            IdleAction::Sleep { ms: 1 }
        );
        assert_eq!(
            idle.after_poll(51, false, Some(0)),
            IdleAction::Sleep { ms: 1 }
        );
        assert_eq!(
            idle.after_poll(52, false, Some(60_000)),
            IdleAction::Sleep { ms: 2 }
        );
    }

    #[test]
    fn new_activity_returns_to_polling() {
        let mut idle = AdaptiveIdle::new(policy(), 0);
        assert!(matches!(
            idle.after_poll(10, false, None),
            IdleAction::Sleep { .. }
        ));
        assert_eq!(idle.after_poll(11, true, None), IdleAction::PollAgain);
    }

    #[test]
    fn a_clock_that_steps_back_does_not_stall_the_policy() {
        let mut idle = AdaptiveIdle::new(policy(), 100);
        assert_eq!(idle.after_poll(90, false, None), IdleAction::PollAgain);
    }

    #[test]
    fn zero_max_sleep_still_sleeps_one_ms() {
        let mut idle = AdaptiveIdle::new(
            IdlePolicy {
                busy_window_ms: 0,
                max_sleep_ms: 0,
            },
            0,
        );
        assert_eq!(idle.after_poll(0, false, None), IdleAction::Sleep { ms: 1 });
    }
}
