//! The TD KeyIDs (HKIDs) the host hands out: every private KeyID but the first, which
//! bring-up made the module's global KeyID.

use alloc::vec::Vec;

/// A free list of TD KeyIDs. Interior-locked, so a [`TdReservation`](super::create) can give
/// its KeyID back from its `Drop`.
pub(crate) struct HkidAllocator {
    free: spin::Mutex<Vec<u16>>,
    total: u32,
}

impl HkidAllocator {
    /// The TD KeyIDs of `count` private KeyIDs starting at `start` (the first is global).
    pub(crate) fn new(start: u16, count: u16) -> Self {
        let td_keys = count.saturating_sub(1);
        HkidAllocator {
            // Lowest first out: `pop` takes from the end.
            free: spin::Mutex::new((1..=td_keys).rev().map(|i| start + i).collect()),
            total: u32::from(td_keys),
        }
    }

    /// A free KeyID, if any.
    pub(crate) fn take(&self) -> Option<u16> {
        self.free.lock().pop()
    }

    /// Returns a KeyID the module has released (TDH.MNG.KEY.FREEID) or never used.
    pub(crate) fn give_back(&self, hkid: u16) {
        self.free.lock().push(hkid);
    }

    /// Free KeyIDs.
    pub(crate) fn free(&self) -> u32 {
        self.free.lock().len() as u32
    }

    /// All TD KeyIDs.
    pub(crate) fn total(&self) -> u32 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_global_keyid_is_never_handed_out() {
        let a = HkidAllocator::new(32, 3);
        assert_eq!((a.total(), a.free()), (2, 2));
        assert_eq!(a.take(), Some(33));
        assert_eq!(a.take(), Some(34));
        assert_eq!(a.take(), None);
        a.give_back(33);
        assert_eq!((a.free(), a.take()), (1, Some(33)));
    }
}
