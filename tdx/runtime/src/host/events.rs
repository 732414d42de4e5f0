//! The host's event log: the newest events, each with an increasing id, for
//! `GET /v1/events` (long polls follow `last_id`).

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use super::types::{Event, EventKind};

/// A bounded log of events.
pub(crate) struct EventLog {
    events: VecDeque<Event>,
    next: u64,
    capacity: usize,
}

impl EventLog {
    /// An empty log keeping the newest `capacity` events (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        EventLog {
            events: VecDeque::new(),
            next: 1,
            capacity: capacity.max(1),
        }
    }

    /// Appends an event, dropping the oldest beyond the capacity.
    pub(crate) fn push(&mut self, at_ms: u64, kind: EventKind) {
        let id = self.next;
        self.next += 1;
        self.events.push_back(Event { id, at_ms, kind });
        while self.events.len() > self.capacity {
            self.events.pop_front();
        }
    }

    /// Events with id > `since`, at most `max`.
    pub(crate) fn since(&self, since: u64, max: usize) -> Vec<Event> {
        self.events
            .iter()
            .filter(|e| e.id > since)
            .take(max)
            .cloned()
            .collect()
    }

    /// Id of the newest event (0 if none).
    pub(crate) fn last_id(&self) -> u64 {
        self.next - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;

    fn host(message: &str) -> EventKind {
        EventKind::Host {
            message: String::from(message),
        }
    }

    #[test]
    fn keeps_the_newest_and_numbers_them() {
        let mut log = EventLog::new(2);
        assert_eq!(log.last_id(), 0);
        for m in ["a", "b", "c"] {
            log.push(1, host(m));
        }
        assert_eq!(log.last_id(), 3);
        let ids: Vec<u64> = log.since(0, 10).iter().map(|e| e.id).collect();
        assert_eq!(ids, [2, 3]);
        assert_eq!(log.since(2, 10).len(), 1);
        assert_eq!(log.since(0, 1).len(), 1);
    }
}
