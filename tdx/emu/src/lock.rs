//! The module's try-locks. Nothing in the software module ever waits for a lock that another
//! SEAMCALL holds: like the real module (`helpers/tdx_locks.h`) every acquisition is a single
//! attempt and failure becomes `TDX_OPERAND_BUSY` with the operand ID of the resource.

use core::sync::atomic::{AtomicU32, Ordering};

const EXCLUSIVE: u32 = 1 << 31;

/// Shared/exclusive lock (the module's *sharex* lock): an exclusive bit and a reader count.
#[derive(Default, Debug)]
pub struct Sharex(AtomicU32);

/// How a lock is wanted.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LockMode {
    /// Many holders at once.
    Shared,
    /// One holder, no readers.
    Exclusive,
}

impl Sharex {
    /// An unlocked lock.
    pub const fn new() -> Self {
        Sharex(AtomicU32::new(0))
    }

    /// One attempt to take the lock in `mode`; `None` if it is held incompatibly.
    pub fn try_lock(&self, mode: LockMode) -> Option<SharexGuard<'_>> {
        match mode {
            LockMode::Exclusive => self
                .0
                .compare_exchange(0, EXCLUSIVE, Ordering::Acquire, Ordering::Relaxed)
                .ok()
                .map(|_| SharexGuard { lock: self, mode }),
            LockMode::Shared => {
                let mut cur = self.0.load(Ordering::Relaxed);
                loop {
                    // A writer holds it, or the reader count would overflow into the writer bit.
                    if cur & EXCLUSIVE != 0 || cur + 1 >= EXCLUSIVE {
                        return None;
                    }
                    match self.0.compare_exchange_weak(
                        cur,
                        cur + 1,
                        Ordering::Acquire,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => return Some(SharexGuard { lock: self, mode }),
                        // Another reader changed the count: not a held lock, try again.
                        Err(v) => cur = v,
                    }
                }
            }
        }
    }

    /// Releases a hold whose guard was given up with `mem::forget` (test hooks only).
    pub fn release(&self, mode: LockMode) {
        match mode {
            LockMode::Exclusive => self.0.store(0, Ordering::Release),
            LockMode::Shared => {
                self.0.fetch_sub(1, Ordering::Release);
            }
        }
    }

    /// Whether anyone holds the lock (for invariant checks).
    pub fn is_locked(&self) -> bool {
        self.0.load(Ordering::Relaxed) != 0
    }
}

/// A held [`Sharex`]; released on drop.
#[derive(Debug)]
pub struct SharexGuard<'a> {
    lock: &'a Sharex,
    mode: LockMode,
}

impl SharexGuard<'_> {
    /// The mode the lock is held in.
    pub fn mode(&self) -> LockMode {
        self.mode
    }
}

impl Drop for SharexGuard<'_> {
    fn drop(&mut self) {
        match self.mode {
            LockMode::Exclusive => self.lock.0.store(0, Ordering::Release),
            LockMode::Shared => {
                self.lock.0.fetch_sub(1, Ordering::Release);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn shared_and_exclusive_exclude_each_other() {
        let l = Sharex::new();
        let a = l.try_lock(LockMode::Shared).unwrap();
        let b = l.try_lock(LockMode::Shared).unwrap();
        assert!(l.try_lock(LockMode::Exclusive).is_none());
        drop(a);
        drop(b);
        let x = l.try_lock(LockMode::Exclusive).unwrap();
        assert!(l.try_lock(LockMode::Shared).is_none());
        assert!(l.try_lock(LockMode::Exclusive).is_none());
        drop(x);
        assert!(!l.is_locked());
    }
}
