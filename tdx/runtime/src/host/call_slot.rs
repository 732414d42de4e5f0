//! A one-call mailbox between the main CPU and a CPU that polls it: how a platform runs a
//! closure on a CPU whose loop never returns to the firmware (the appliance's resident loops,
//! `appliance/src/platform/mp.rs`). Sans-IO: the slot carries an opaque word (the platform's
//! pointer to the closure) and the protocol's state; the platform dereferences the word.
//!
//! States: IDLE → POSTED (the caller stored the word) → TAKEN (the polling CPU took it and
//! runs it) → DONE (it returned) → IDLE (the caller saw it). The caller may withdraw a call
//! that is still POSTED (IDLE again), never one that is TAKEN: the word may point into the
//! caller's stack frame, which must outlive the call. One caller at a time (the platform
//! serializes them).
//!
//! The protocol is model-checked with loom (`loom_tests`).

use crate::sept::sync::{AtomicU64, Ordering};

const IDLE: u64 = 0;
const POSTED: u64 = 1;
const TAKEN: u64 = 2;
const DONE: u64 = 3;

/// What the caller sees when it looks at its posted call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallProgress {
    /// Not taken yet (it may still be withdrawn).
    Posted,
    /// The polling CPU runs it.
    Running,
    /// It returned; the slot is free again.
    Done,
}

/// One call slot (see the module docs).
#[derive(Debug)]
pub struct CallSlot {
    state: AtomicU64,
    word: AtomicU64,
}

impl Default for CallSlot {
    fn default() -> Self {
        Self::new()
    }
}

impl CallSlot {
    /// An empty slot.
    pub fn new() -> Self {
        CallSlot {
            state: AtomicU64::new(IDLE),
            word: AtomicU64::new(0),
        }
    }

    /// Posts `word`; false if a call is still in the slot (callers must take turns).
    pub fn post(&self, word: u64) -> bool {
        if self.state.load(Ordering::Acquire) != IDLE {
            return false;
        }
        self.word.store(word, Ordering::Relaxed);
        // Release: the word (and whatever it points to) is visible to whoever sees POSTED.
        self.state.store(POSTED, Ordering::Release);
        true
    }

    /// Whether a call waits to be taken (for the polling CPU: do not halt).
    pub fn is_posted(&self) -> bool {
        self.state.load(Ordering::Acquire) == POSTED
    }

    /// On the polling CPU: takes the posted call, if any. The caller must run it and then
    /// call [`CallSlot::finish`].
    pub fn take(&self) -> Option<u64> {
        self.state
            .compare_exchange(POSTED, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| self.word.load(Ordering::Relaxed))
    }

    /// On the polling CPU: the taken call returned.
    pub fn finish(&self) {
        self.state.store(DONE, Ordering::Release);
    }

    /// On the posting CPU: where its call is. `Done` frees the slot.
    pub fn progress(&self) -> CallProgress {
        match self.state.load(Ordering::Acquire) {
            DONE => {
                self.state.store(IDLE, Ordering::Release);
                CallProgress::Done
            }
            TAKEN => CallProgress::Running,
            _ => CallProgress::Posted,
        }
    }

    /// On the posting CPU: withdraws the call if it was not taken yet (true), else it is
    /// running or done and must be waited for (false).
    pub fn withdraw(&self) -> bool {
        self.state
            .compare_exchange(POSTED, IDLE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_call_goes_round_once() {
        let slot = CallSlot::new();
        assert_eq!(slot.take(), None);
        assert!(slot.post(7));
        assert!(!slot.post(8), "one call at a time");
        assert!(slot.is_posted());
        assert_eq!(slot.progress(), CallProgress::Posted);
        assert_eq!(slot.take(), Some(7));
        assert_eq!(slot.take(), None);
        assert!(!slot.withdraw(), "a running call cannot be withdrawn");
        assert_eq!(slot.progress(), CallProgress::Running);
        slot.finish();
        assert_eq!(slot.progress(), CallProgress::Done);
        assert!(slot.post(9), "free again");
        assert!(slot.withdraw());
        assert_eq!(slot.take(), None, "a withdrawn call is never taken");
    }
}

#[cfg(all(test, loom))]
#[allow(clippy::unwrap_used)]
mod loom_tests {
    //! The caller posts a call, waits a bounded number of turns, then withdraws it; the
    //! polling CPU takes and runs whatever is posted. Whatever the interleaving: a call runs
    //! at most once, a withdrawn call never runs, a call that was taken is waited for until
    //! it returned (so the caller's frame outlives it), and the slot ends free.
    use super::*;
    use loom::sync::Arc;
    use loom::sync::atomic::AtomicU64 as Counter;

    #[test]
    fn a_call_runs_once_or_never_and_is_waited_for() {
        loom::model(|| {
            let slot = Arc::new(CallSlot::new());
            let ran = Arc::new(Counter::new(0));
            let caller_done = Arc::new(loom::sync::atomic::AtomicBool::new(false));
            let poller = {
                let (slot, ran, caller_done) = (slot.clone(), ran.clone(), caller_done.clone());
                loom::thread::spawn(move || {
                    for _ in 0..2 {
                        if let Some(word) = slot.take() {
                            assert_eq!(word, 42);
                            // The caller's frame is still there while the call runs.
                            assert!(!caller_done.load(Ordering::SeqCst));
                            ran.fetch_add(1, Ordering::SeqCst);
                            slot.finish();
                        }
                        loom::thread::yield_now();
                    }
                })
            };
            assert!(slot.post(42));
            let mut withdrawn = false;
            let mut turns = 0;
            loop {
                match slot.progress() {
                    CallProgress::Done => break,
                    CallProgress::Posted if turns >= 1 => {
                        if slot.withdraw() {
                            withdrawn = true;
                            break;
                        }
                    }
                    _ => {}
                }
                turns += 1;
                loom::thread::yield_now();
            }
            caller_done.store(true, Ordering::SeqCst);
            poller.join().unwrap();
            let runs = ran.load(Ordering::SeqCst);
            assert_eq!(runs, if withdrawn { 0 } else { 1 });
            assert!(slot.post(1), "the slot ends free");
        });
    }
}
