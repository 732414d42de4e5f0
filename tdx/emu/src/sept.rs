//! The emulated Secure-EPT tree (TDX module 1.5 `sept_manager.h`).
//!
//! Each S-EPT page is a table of 512 atomic entries kept beside the page's HPA. An entry word
//! stores the *public* state (RDX[15:8] values) in bits 7:0, the per-entry host lock TDEL in
//! bit 11, the HPA in bits 51:12 and the host-priority bit HP in bit 52, so a lock, a state
//! check and a state change are single atomic operations as in the module. The architectural
//! entry the module reports in RCX is synthesized from that word by [`arch_entry`].

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};

use tdx_abi::sept::entry_bits;
use tdx_abi::{Gpa, PageLevel, SeptLevelState, SeptState, TdxStatus};

/// Lock bit (TDEL).
pub const TDEL: u64 = entry_bits::TDEL;
/// Host-priority bit.
pub const HP: u64 = entry_bits::HP;
const STATE_MASK: u64 = 0xFF;
const HPA_MASK: u64 = entry_bits::HPA_MASK;

/// The internal word of a FREE entry.
pub const FREE_WORD: u64 = SeptState::Free as u64;

/// Builds an internal entry word.
pub const fn word(state: SeptState, hpa: u64) -> u64 {
    (state as u64) | (hpa & HPA_MASK)
}

/// State of an internal word (FREE for unknown values, which never occur).
pub fn state_of(w: u64) -> SeptState {
    SeptState::from_public((w & STATE_MASK) as u8).unwrap_or(SeptState::Free)
}

/// HPA of an internal word.
pub const fn hpa_of(w: u64) -> u64 {
    w & HPA_MASK
}

/// The architectural S-EPT entry for an internal word at `level`, as RCX reports it
/// (`set_arch_septe_details_in_vmm_regs` in intel/tdx-module
/// `src/common/memory_handlers/sept_manager.c`, masks in `sept_manager.h`):
///
/// * FREE: only SUPPRESS_VE (bit 63);
/// * a leaf (PS, bit 7, set at every level, 4 KiB included: it is part of the state
///   encoding): `SEPT_ARCH_ENTRY_LEAF_MASK`, i.e. RWX, memory type WB (bits 5:3 = 6), IPAT,
///   PS, the HPA and SUPPRESS_VE (every state sets it: `sept_set_leaf_no_lock_internal`,
///   `sept_update_state`). RWX is all-ones for MAPPED (TDH.MEM.PAGE.ADD,
///   TDG.MEM.PAGE.ACCEPT), R and X for BLOCKEDW (TDH.EXPORT.BLOCKW clears W) and zero for
///   PENDING (TDH.MEM.PAGE.AUG maps with no permissions) and the blocked states
///   (`block_sept_entry` in `tdh_mem_range_block.c`);
/// * a non-leaf entry (NL_MAPPED, NL_BLOCKED) and REMOVED: `SEPT_ARCH_ENTRY_NON_LEAF_MASK`,
///   i.e. only RWX and PS (0): all-ones when mapped (`sept_set_mapped_non_leaf`), zero when
///   blocked; the S-EPT page's HPA is not reported.
///
/// The module's internal bits (TDEL, HP, TDB, TDP, the state encoding beyond IPAT/PS) never
/// appear. The accept counter a partly accepted 2 MiB PENDING entry keeps in bits 20:12 is
/// not modelled (always 0).
pub fn arch_entry(w: u64, _level: PageLevel) -> u64 {
    use entry_bits::{IPAT, LEAF, MT_WB, R, RWX, SUPPRESS_VE, X};
    let s = state_of(w);
    match s {
        SeptState::Free => SUPPRESS_VE,
        SeptState::NlMapped => RWX,
        SeptState::NlBlocked | SeptState::Removed => 0,
        _ => {
            let rwx = match s {
                SeptState::Mapped => RWX,
                SeptState::BlockedW => R | X,
                _ => 0,
            };
            rwx | MT_WB | IPAT | LEAF | (w & HPA_MASK) | SUPPRESS_VE
        }
    }
}

/// One S-EPT page: 512 entries.
pub struct SeptTable {
    /// The entries.
    pub entries: [AtomicU64; 512],
    /// The physical page that holds this table's hardware twin for the SVM guest engine (its
    /// nested page table at the same level; 0 if none): the S-EPT page itself, and a TDCS
    /// page for the root. Entries there are a cache of these entries (see `crate::svm`).
    pub npt_page: AtomicU64,
}

impl SeptTable {
    /// A table of FREE entries.
    pub fn new() -> SeptTable {
        SeptTable {
            entries: core::array::from_fn(|_| AtomicU64::new(FREE_WORD)),
            npt_page: AtomicU64::new(0),
        }
    }

    /// A table of FREE entries whose hardware twin is the page at `hpa`.
    pub fn at(hpa: u64) -> SeptTable {
        let t = SeptTable::new();
        t.npt_page.store(hpa, Ordering::Relaxed);
        t
    }
    /// Whether all 512 entries are FREE (ignoring lock bits).
    pub fn all_free(&self) -> bool {
        self.entries
            .iter()
            .all(|e| state_of(e.load(Ordering::Acquire)) == SeptState::Free)
    }
}

impl Default for SeptTable {
    fn default() -> Self {
        Self::new()
    }
}

/// Where a walk ended.
pub struct WalkResult {
    /// Table holding the entry.
    pub table: Arc<SeptTable>,
    /// Index in the table.
    pub index: usize,
    /// Level of the entry.
    pub level: PageLevel,
    /// Entry word when read.
    pub word: u64,
}

impl WalkResult {
    /// The entry.
    pub fn entry(&self) -> &AtomicU64 {
        // The index is always < 512 (computed from 9 address bits).
        &self.table.entries[self.index & 511]
    }
    /// RCX/RDX values describing this entry as it is now.
    pub fn details(&self) -> (u64, u64) {
        self.details_of(self.entry().load(Ordering::Acquire))
    }
    /// RCX/RDX values describing this entry when its word is `w`: the architectural entry
    /// and the level/state word (`set_arch_septe_details_in_vmm_regs`).
    pub fn details_of(&self, w: u64) -> (u64, u64) {
        (
            arch_entry(w, self.level),
            SeptLevelState::new(self.level as u8, state_of(w)).0,
        )
    }
}

/// A TD's S-EPT: the root table (part of the TDCS) and every S-EPT page by HPA.
pub struct SeptTree {
    /// Root table, holding entries of level `levels - 1`.
    pub root: Arc<SeptTable>,
    /// EPT levels (4 or 5).
    pub levels: u8,
    tables: spin::RwLock<BTreeMap<u64, Arc<SeptTable>>>,
}

/// Index of `gpa` in a table of `level` entries.
pub const fn index_at(gpa: Gpa, level: PageLevel) -> usize {
    ((gpa.0 >> level.shift()) & 511) as usize
}

impl SeptTree {
    /// An empty tree with `levels` EPT levels.
    pub fn new(levels: u8) -> SeptTree {
        SeptTree {
            root: Arc::new(SeptTable::new()),
            levels,
            tables: spin::RwLock::new(BTreeMap::new()),
        }
    }

    /// Level of the root table's entries.
    pub fn top_level(&self) -> PageLevel {
        PageLevel::from_raw(u64::from(self.levels.saturating_sub(1))).unwrap_or(PageLevel::L512G)
    }

    /// The table at `hpa`, if it is an S-EPT page of this tree.
    pub fn table(&self, hpa: u64) -> Option<Arc<SeptTable>> {
        self.tables.read().get(&hpa).cloned()
    }

    /// Registers a new S-EPT page.
    pub fn insert_table(&self, hpa: u64, table: Arc<SeptTable>) {
        self.tables.write().insert(hpa, table);
    }

    /// Forgets an S-EPT page.
    pub fn remove_table(&self, hpa: u64) -> Option<Arc<SeptTable>> {
        self.tables.write().remove(&hpa)
    }

    /// Number of S-EPT pages (excluding the root).
    pub fn table_count(&self) -> usize {
        self.tables.read().len()
    }

    /// Walks from the root toward the entry for `gpa` at `target`. Descends only through
    /// present non-leaf entries (NL_MAPPED): `secure_ept_walk` (intel/tdx-module
    /// `src/common/memory_handlers/sept_manager.c`) stops at an entry whose RWX bits are clear,
    /// and blocking a non-leaf entry clears them. Returns `Ok` with the entry at `target`, or
    /// `Err` with the entry where the walk stopped above it.
    pub fn walk(&self, gpa: Gpa, target: PageLevel) -> Result<WalkResult, WalkResult> {
        let mut table = self.root.clone();
        let mut level = self.top_level();
        loop {
            let index = index_at(gpa, level);
            let w = table.entries[index].load(Ordering::Acquire);
            let here = WalkResult {
                table: table.clone(),
                index,
                level,
                word: w,
            };
            if level == target {
                return Ok(here);
            }
            if state_of(w) != SeptState::NlMapped {
                return Err(here);
            }
            let Some(child) = self.table(hpa_of(w)) else {
                return Err(here);
            };
            let Some(lower) = level.lower() else {
                return Err(here);
            };
            table = child;
            level = lower;
        }
    }

    /// Walks to the leaf (or the entry where the walk stops) covering `gpa`.
    pub fn walk_to_leaf(&self, gpa: Gpa) -> WalkResult {
        match self.walk(gpa, PageLevel::L4K) {
            Ok(r) | Err(r) => r,
        }
    }
}

/// Host-side entry lock (`sept_lock_acquire_host`): sets TDEL; if it was held, sets HP so
/// guest-side acquirers back off, and fails.
pub fn lock_host(e: &AtomicU64) -> Result<u64, TdxStatus> {
    let prev = e.fetch_or(TDEL, Ordering::AcqRel);
    if prev & TDEL != 0 {
        e.fetch_or(HP, Ordering::AcqRel);
        return Err(TdxStatus::OPERAND_BUSY);
    }
    if prev & HP != 0 {
        e.fetch_and(!HP, Ordering::AcqRel);
    }
    Ok(prev & !(TDEL | HP))
}

/// Guest-side entry lock: backs off with `OPERAND_BUSY_HOST_PRIORITY` while a host waiter
/// set HP, or `OPERAND_BUSY` if the lock is held.
pub fn lock_guest(e: &AtomicU64) -> Result<u64, TdxStatus> {
    let cur = e.load(Ordering::Acquire);
    if cur & HP != 0 {
        return Err(TdxStatus::OPERAND_BUSY_HOST_PRIORITY);
    }
    if cur & TDEL != 0 {
        return Err(TdxStatus::OPERAND_BUSY);
    }
    e.compare_exchange(cur, cur | TDEL, Ordering::AcqRel, Ordering::Acquire)
        .map(|_| cur)
        .map_err(|_| TdxStatus::OPERAND_BUSY)
}

/// Writes `new` (a word without lock bits) and releases the entry lock, keeping a concurrent
/// HP request.
pub fn store_unlock(e: &AtomicU64, new: u64) {
    let hp = e.load(Ordering::Acquire) & HP;
    e.store(new | hp, Ordering::Release);
}

/// Releases the entry lock without changing the entry.
pub fn unlock(e: &AtomicU64) {
    e.fetch_and(!TDEL, Ordering::AcqRel);
}

/// The unblocked variant of a blocked state.
pub fn unblocked(s: SeptState) -> SeptState {
    match s {
        SeptState::Blocked => SeptState::Mapped,
        SeptState::PendingBlocked => SeptState::Pending,
        SeptState::NlBlocked => SeptState::NlMapped,
        SeptState::BlockedW => SeptState::Mapped,
        SeptState::PendingBlockedW => SeptState::Pending,
        other => other,
    }
}

/// The blocked variant of a blockable state.
pub fn blocked(s: SeptState) -> Option<SeptState> {
    match s {
        SeptState::Mapped | SeptState::BlockedW => Some(SeptState::Blocked),
        SeptState::Pending | SeptState::PendingBlockedW => Some(SeptState::PendingBlocked),
        SeptState::NlMapped => Some(SeptState::NlBlocked),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn entry_lock_sets_host_priority_on_contention() {
        let e = AtomicU64::new(word(SeptState::Pending, 0x5000));
        let w = lock_host(&e).unwrap();
        assert_eq!(state_of(w), SeptState::Pending);
        assert_eq!(lock_host(&e), Err(TdxStatus::OPERAND_BUSY));
        assert_eq!(lock_guest(&e), Err(TdxStatus::OPERAND_BUSY_HOST_PRIORITY));
        store_unlock(&e, word(SeptState::Mapped, 0x5000));
        // HP still set: the guest keeps backing off until the host gets through.
        assert!(lock_guest(&e).is_err());
        let w = lock_host(&e).unwrap();
        assert_eq!(state_of(w), SeptState::Mapped);
        unlock(&e);
        assert!(lock_guest(&e).is_ok());
    }

    #[test]
    fn walk_stops_at_missing_tables() {
        let t = SeptTree::new(4);
        let r = t.walk(Gpa(0x20_0000), PageLevel::L2M).err().unwrap();
        assert_eq!(r.level, PageLevel::L512G);
        assert_eq!(state_of(r.word), SeptState::Free);
        assert!(t.walk(Gpa(0), PageLevel::L512G).is_ok());
    }
}
