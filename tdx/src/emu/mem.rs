//! Memory leaves: the S-EPT state machine (module 1.5 `tdh_mem_*.c`, `sept_state_lookup`;
//! tdx-reference §2.5–2.7) and the MRTD leaves (§3.1).

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use super::pamt::PamtMeta;
use super::sept::{self, SeptTable, WalkResult};
use super::td::Td;
use super::{EmulatedModule, LeafResult, LockMode};
use crate::abi::pamt::{PageType, PamtPageSize};
use crate::abi::{
    Gpa, Hpa, Leaf, OperandId, PageLevel, SeptState, TdxStatus, decode_gpa_level_operand,
};
use crate::seamcall::Regs;

/// A host-held S-EPT entry lock; released on drop unless a new value was committed.
struct EntryLock<'a> {
    entry: &'a AtomicU64,
    word: u64,
    committed: bool,
}

impl<'a> EntryLock<'a> {
    fn take(entry: &'a AtomicU64) -> Result<EntryLock<'a>, TdxStatus> {
        let word = sept::lock_host(entry)?;
        Ok(EntryLock {
            entry,
            word,
            committed: false,
        })
    }
    fn state(&self) -> SeptState {
        sept::state_of(self.word)
    }
    fn hpa(&self) -> u64 {
        sept::hpa_of(self.word)
    }
    fn commit(mut self, new: u64) {
        sept::store_unlock(self.entry, new);
        self.committed = true;
    }
}

impl Drop for EntryLock<'_> {
    fn drop(&mut self) {
        if !self.committed {
            sept::unlock(self.entry);
        }
    }
}

fn pamt_size(level: PageLevel) -> PamtPageSize {
    match level {
        PageLevel::L4K => PamtPageSize::S4K,
        PageLevel::L2M => PamtPageSize::S2M,
        _ => PamtPageSize::S1G,
    }
}

/// Sets RCX/RDX to the entry details and returns `status | RCX`.
fn sept_fail(r: &mut Regs, w: &WalkResult, status: TdxStatus) -> TdxStatus {
    let (rcx, rdx) = w.details();
    r.rcx = rcx;
    r.rdx = rdx;
    status.with_operand(OperandId::RCX)
}

impl EmulatedModule {
    /// Decodes and checks a GPA+level operand in RCX for `td`.
    fn decode_gpa(
        &self,
        td: &Td,
        raw: u64,
        min: PageLevel,
        max: PageLevel,
    ) -> Result<(Gpa, PageLevel), TdxStatus> {
        let invalid = TdxStatus::OPERAND_INVALID.with_operand(OperandId::RCX);
        let (gpa, level) = decode_gpa_level_operand(raw).ok_or(invalid)?;
        let cfg = td.cfg.get().ok_or(TdxStatus::TDCS_NOT_ALLOCATED)?;
        let top = td
            .tree
            .get()
            .map(|t| t.top_level())
            .ok_or(TdxStatus::TDCS_NOT_ALLOCATED)?;
        if level < min || level > max || level > top || !gpa.is_aligned(level) {
            return Err(invalid);
        }
        // Private GPAs only: below the shared bit (which is also the top of the GPA space).
        if gpa.0 >> cfg.shared_bit != 0 {
            return Err(invalid);
        }
        Ok((gpa, level))
    }

    fn tree_lock<'a>(
        &self,
        td: &'a Td,
        mode: LockMode,
    ) -> Result<super::lock::SharexGuard<'a>, TdxStatus> {
        td.tree_lock
            .try_lock(mode)
            .ok_or(TdxStatus::OPERAND_BUSY.with_operand(OperandId::SEPT_TREE))
    }

    fn bepoch_of(&self, hpa: u64) -> u64 {
        self.pamt
            .entry(hpa)
            .map(|e| e.bepoch.load(Ordering::Acquire))
            .unwrap_or(0)
    }

    /// The "must be blocked and tracked" rule shared by REMOVE, DEMOTE, PROMOTE,
    /// SEPT.REMOVE.
    fn check_blocked_and_tracked(
        &self,
        td: &Td,
        r: &mut Regs,
        w: &WalkResult,
        state: SeptState,
        bepoch_page: u64,
    ) -> Result<(), TdxStatus> {
        if !td.tracking_required() {
            return Ok(());
        }
        if !state.is_blocked() {
            return Err(sept_fail(r, w, TdxStatus::GPA_RANGE_NOT_BLOCKED));
        }
        if !td.is_tracked(self.bepoch_of(bepoch_page)) {
            return Err(TdxStatus::TLB_TRACKING_NOT_DONE.with_operand(OperandId::RCX));
        }
        Ok(())
    }

    pub(super) fn leaf_mem_page_add(&self, r: &mut Regs) -> LeafResult {
        let (td, _l) = self.lock_tdr(r.rdx, LockMode::Exclusive, OperandId::RDX)?;
        self.check_td_state(&td, Leaf::MemPageAdd)?;
        let (gpa, level) = self.decode_gpa(&td, r.rcx, PageLevel::L4K, PageLevel::L4K)?;
        let page = self.pamt.lock_explicit(
            r.r8,
            PamtPageSize::S4K,
            self.cfg.hkid_shift,
            LockMode::Exclusive,
            OperandId::R8,
        )?;
        if !page.all_free() {
            return Err(TdxStatus::PAGE_METADATA_INCORRECT.with_operand(OperandId::R8));
        }
        let source = self.check_page_hpa(r.r9, OperandId::R9)?;
        let mut data = alloc::vec![0u8; 4096];
        self.read_phys(source, &mut data, OperandId::R9)?;
        let tree = td.tree.get().ok_or(TdxStatus::TDCS_NOT_ALLOCATED)?;
        r.rcx = 0;
        r.rdx = 0;
        let w = match tree.walk(gpa, level) {
            Ok(w) => w,
            Err(w) => return Err(sept_fail(r, &w, TdxStatus::EPT_WALK_FAILED)),
        };
        let e = EntryLock::take(w.entry()).map_err(|s| sept_fail(r, &w, s))?;
        if e.state() != SeptState::Free {
            drop(e);
            return Err(sept_fail(r, &w, TdxStatus::EPT_ENTRY_STATE_INCORRECT));
        }
        self.mem.write(page.hpa, &data);
        page.set_all(PamtMeta {
            page_type: PageType::Reg,
            size: PamtPageSize::S4K,
            owner: Hpa(td.tdr),
        });
        td.chldcnt.fetch_add(1, Ordering::AcqRel);
        e.commit(sept::word(SeptState::Mapped, page.hpa.0));
        if let Some(sha) = td.mr.lock().sha.as_mut() {
            sha.page_add(gpa);
        }
        Ok(TdxStatus::SUCCESS)
    }

    pub(super) fn leaf_mem_sept_add(&self, r: &mut Regs) -> LeafResult {
        // RDX bits 11:0 may carry flags on newer modules; none are supported here.
        if r.rdx & 0xFFF != 0 {
            return Err(TdxStatus::OPERAND_INVALID.with_operand(OperandId::RDX));
        }
        let (td, _l) = self.lock_tdr(r.rdx, LockMode::Shared, OperandId::RDX)?;
        self.check_td_state(&td, Leaf::MemSeptAdd)?;
        let (gpa, level) = self.decode_gpa(&td, r.rcx, PageLevel::L2M, PageLevel::L256T)?;
        r.rcx = 0;
        r.rdx = 0;
        let page = self.pamt.lock_explicit(
            r.r8,
            PamtPageSize::S4K,
            self.cfg.hkid_shift,
            LockMode::Exclusive,
            OperandId::R8,
        )?;
        if !page.all_free() {
            return Err(TdxStatus::PAGE_METADATA_INCORRECT.with_operand(OperandId::R8));
        }
        let tree = td.tree.get().ok_or(TdxStatus::TDCS_NOT_ALLOCATED)?;
        let _t = self.tree_lock(&td, LockMode::Shared)?;
        let w = match tree.walk(gpa, level) {
            Ok(w) => w,
            Err(w) => return Err(sept_fail(r, &w, TdxStatus::EPT_WALK_FAILED)),
        };
        let e = EntryLock::take(w.entry()).map_err(|s| sept_fail(r, &w, s))?;
        if e.state() != SeptState::Free {
            drop(e);
            return Err(sept_fail(r, &w, TdxStatus::EPT_ENTRY_STATE_INCORRECT));
        }
        self.zero_phys(page.hpa.0, 4096);
        tree.insert_table(page.hpa.0, Arc::new(SeptTable::new()));
        page.set_all(PamtMeta {
            page_type: PageType::Ept,
            size: PamtPageSize::S4K,
            owner: Hpa(td.tdr),
        });
        td.chldcnt.fetch_add(1, Ordering::AcqRel);
        e.commit(sept::word(SeptState::NlMapped, page.hpa.0));
        Ok(TdxStatus::SUCCESS)
    }

    pub(super) fn leaf_mem_page_aug(&self, r: &mut Regs) -> LeafResult {
        let (td, _l) = self.lock_tdr(r.rdx, LockMode::Shared, OperandId::RDX)?;
        self.check_td_state(&td, Leaf::MemPageAug)?;
        let (gpa, level) = self.decode_gpa(&td, r.rcx, PageLevel::L4K, PageLevel::L2M)?;
        r.rcx = 0;
        r.rdx = 0;
        let size = pamt_size(level);
        let page = self.pamt.lock_explicit(
            r.r8,
            size,
            self.cfg.hkid_shift,
            LockMode::Exclusive,
            OperandId::R8,
        )?;
        if !page.all_free() {
            return Err(TdxStatus::PAGE_METADATA_INCORRECT.with_operand(OperandId::R8));
        }
        let tree = td.tree.get().ok_or(TdxStatus::TDCS_NOT_ALLOCATED)?;
        let _t = self.tree_lock(&td, LockMode::Shared)?;
        let w = match tree.walk(gpa, level) {
            Ok(w) => w,
            Err(w) => return Err(sept_fail(r, &w, TdxStatus::EPT_WALK_FAILED)),
        };
        let e = EntryLock::take(w.entry()).map_err(|s| sept_fail(r, &w, s))?;
        if !matches!(e.state(), SeptState::Free | SeptState::Removed) {
            drop(e);
            return Err(sept_fail(r, &w, TdxStatus::EPT_ENTRY_STATE_INCORRECT));
        }
        page.set_all(PamtMeta {
            page_type: PageType::Reg,
            size,
            owner: Hpa(td.tdr),
        });
        td.chldcnt.fetch_add(1, Ordering::AcqRel);
        e.commit(sept::word(SeptState::Pending, page.hpa.0));
        Ok(TdxStatus::SUCCESS)
    }

    pub(super) fn leaf_mem_range_block(&self, r: &mut Regs) -> LeafResult {
        let (td, _l) = self.lock_tdr(r.rdx, LockMode::Shared, OperandId::RDX)?;
        self.check_td_state(&td, Leaf::MemRangeBlock)?;
        let (gpa, level) = self.decode_gpa(&td, r.rcx, PageLevel::L4K, PageLevel::L256T)?;
        r.rcx = 0;
        r.rdx = 0;
        let tree = td.tree.get().ok_or(TdxStatus::TDCS_NOT_ALLOCATED)?;
        let _t = self.tree_lock(&td, LockMode::Exclusive)?;
        let w = match tree.walk(gpa, level) {
            Ok(w) => w,
            Err(w) => return Err(sept_fail(r, &w, TdxStatus::EPT_WALK_FAILED)),
        };
        let e = EntryLock::take(w.entry()).map_err(|s| sept_fail(r, &w, s))?;
        let state = e.state();
        if matches!(
            state,
            SeptState::Blocked | SeptState::PendingBlocked | SeptState::NlBlocked
        ) {
            drop(e);
            let _ = sept_fail(r, &w, TdxStatus::GPA_RANGE_ALREADY_BLOCKED);
            return Ok(TdxStatus::GPA_RANGE_ALREADY_BLOCKED.with_operand(OperandId::RCX));
        }
        let Some(new) = sept::blocked(state) else {
            drop(e);
            return Err(sept_fail(r, &w, TdxStatus::EPT_ENTRY_STATE_INCORRECT));
        };
        let hpa = e.hpa();
        if let Some(p) = self.pamt.entry(hpa) {
            p.bepoch
                .store(td.td_epoch.load(Ordering::Acquire), Ordering::Release);
        }
        e.commit(sept::word(new, hpa));
        Ok(TdxStatus::SUCCESS)
    }

    pub(super) fn leaf_mem_range_unblock(&self, r: &mut Regs) -> LeafResult {
        let (td, _l) = self.lock_tdr(r.rdx, LockMode::Shared, OperandId::RDX)?;
        self.check_td_state(&td, Leaf::MemRangeUnblock)?;
        let (gpa, level) = self.decode_gpa(&td, r.rcx, PageLevel::L4K, PageLevel::L256T)?;
        r.rcx = 0;
        r.rdx = 0;
        let tree = td.tree.get().ok_or(TdxStatus::TDCS_NOT_ALLOCATED)?;
        let _t = self.tree_lock(&td, LockMode::Exclusive)?;
        let w = match tree.walk(gpa, level) {
            Ok(w) => w,
            Err(w) => return Err(sept_fail(r, &w, TdxStatus::EPT_WALK_FAILED)),
        };
        let e = EntryLock::take(w.entry()).map_err(|s| sept_fail(r, &w, s))?;
        let state = e.state();
        if !matches!(
            state,
            SeptState::Blocked | SeptState::PendingBlocked | SeptState::NlBlocked
        ) {
            drop(e);
            return Err(sept_fail(r, &w, TdxStatus::EPT_ENTRY_STATE_INCORRECT));
        }
        if td.tracking_required() && !td.is_tracked(self.bepoch_of(e.hpa())) {
            return Err(TdxStatus::TLB_TRACKING_NOT_DONE.with_operand(OperandId::RCX));
        }
        let hpa = e.hpa();
        e.commit(sept::word(sept::unblocked(state), hpa));
        Ok(TdxStatus::SUCCESS)
    }

    pub(super) fn leaf_mem_track(&self, r: &mut Regs) -> LeafResult {
        let (td, _l) = self.lock_tdr(r.rcx, LockMode::Shared, OperandId::RCX)?;
        self.check_td_state(&td, Leaf::MemTrack)?;
        let _e = td
            .epoch_lock
            .try_lock(LockMode::Exclusive)
            .ok_or(TdxStatus::OPERAND_BUSY.with_operand(OperandId::TD_EPOCH))?;
        let epoch = td.td_epoch.load(Ordering::Acquire);
        let prev = epoch.wrapping_sub(1) & 1;
        if td.refcount[prev as usize].load(Ordering::Acquire) != 0 {
            return Err(TdxStatus::PREVIOUS_TLB_EPOCH_BUSY);
        }
        td.td_epoch.store(epoch + 1, Ordering::Release);
        Ok(TdxStatus::SUCCESS)
    }

    pub(super) fn leaf_mem_page_remove(&self, r: &mut Regs) -> LeafResult {
        let (td, _l) = self.lock_tdr(r.rdx, LockMode::Shared, OperandId::RDX)?;
        self.check_td_state(&td, Leaf::MemPageRemove)?;
        let (gpa, level) = self.decode_gpa(&td, r.rcx, PageLevel::L4K, PageLevel::L1G)?;
        r.rcx = 0;
        r.rdx = 0;
        let tree = td.tree.get().ok_or(TdxStatus::TDCS_NOT_ALLOCATED)?;
        let _t = self.tree_lock(&td, LockMode::Shared)?;
        let w = match tree.walk(gpa, level) {
            Ok(w) => w,
            Err(w) => return Err(sept_fail(r, &w, TdxStatus::EPT_WALK_FAILED)),
        };
        let e = EntryLock::take(w.entry()).map_err(|s| sept_fail(r, &w, s))?;
        let state = e.state();
        if !matches!(
            state,
            SeptState::Mapped
                | SeptState::Blocked
                | SeptState::Pending
                | SeptState::PendingBlocked
                | SeptState::BlockedW
                | SeptState::PendingBlockedW
        ) {
            drop(e);
            return Err(sept_fail(r, &w, TdxStatus::EPT_ENTRY_STATE_INCORRECT));
        }
        self.check_blocked_and_tracked(&td, r, &w, state, e.hpa())?;
        let pages = self
            .pamt
            .lock_pages(e.hpa(), level.pages_4k(), LockMode::Exclusive)
            .map_err(|s| s.with_operand(OperandId::RCX))?;
        let (rcx, rdx) = w.details();
        pages.set_all(PamtMeta::FREE);
        td.chldcnt.fetch_sub(1, Ordering::AcqRel);
        e.commit(sept::FREE_WORD);
        r.rcx = rcx & !sept::TDEL;
        r.rdx = rdx;
        Ok(TdxStatus::SUCCESS)
    }

    pub(super) fn leaf_mem_sept_remove(&self, r: &mut Regs) -> LeafResult {
        let (td, _l) = self.lock_tdr(r.rdx, LockMode::Shared, OperandId::RDX)?;
        self.check_td_state(&td, Leaf::MemSeptRemove)?;
        let (gpa, level) = self.decode_gpa(&td, r.rcx, PageLevel::L2M, PageLevel::L256T)?;
        r.rcx = 0;
        r.rdx = 0;
        let tree = td.tree.get().ok_or(TdxStatus::TDCS_NOT_ALLOCATED)?;
        let _t = self.tree_lock(&td, LockMode::Exclusive)?;
        let w = match tree.walk(gpa, level) {
            Ok(w) => w,
            Err(w) => return Err(sept_fail(r, &w, TdxStatus::EPT_WALK_FAILED)),
        };
        let e = EntryLock::take(w.entry()).map_err(|s| sept_fail(r, &w, s))?;
        let state = e.state();
        if !matches!(state, SeptState::NlMapped | SeptState::NlBlocked) {
            drop(e);
            return Err(sept_fail(r, &w, TdxStatus::EPT_ENTRY_STATE_INCORRECT));
        }
        let child = e.hpa();
        let page = self
            .pamt
            .lock_pages(child, 1, LockMode::Exclusive)
            .map_err(|s| s.with_operand(OperandId::RCX))?;
        self.check_blocked_and_tracked(&td, r, &w, state, child)?;
        let table = tree.table(child);
        if table.as_ref().is_some_and(|t| !t.all_free()) {
            drop(e);
            return Err(sept_fail(r, &w, TdxStatus::EPT_PAGE_NOT_FREE));
        }
        tree.remove_table(child);
        page.set_all(PamtMeta::FREE);
        td.chldcnt.fetch_sub(1, Ordering::AcqRel);
        e.commit(sept::FREE_WORD);
        r.rcx = child;
        r.rdx = 0;
        Ok(TdxStatus::SUCCESS)
    }

    pub(super) fn leaf_mem_page_demote(&self, r: &mut Regs) -> LeafResult {
        if r.rdx & 0xFFF != 0 {
            return Err(TdxStatus::OPERAND_INVALID.with_operand(OperandId::RDX));
        }
        let (td, _l) = self.lock_tdr(r.rdx, LockMode::Shared, OperandId::RDX)?;
        self.check_td_state(&td, Leaf::MemPageDemote)?;
        let (gpa, level) = self.decode_gpa(&td, r.rcx, PageLevel::L2M, PageLevel::L1G)?;
        r.rcx = 0;
        r.rdx = 0;
        let tree = td.tree.get().ok_or(TdxStatus::TDCS_NOT_ALLOCATED)?;
        let _t = self.tree_lock(&td, LockMode::Shared)?;
        let w = match tree.walk(gpa, level) {
            Ok(w) => w,
            Err(w) => return Err(sept_fail(r, &w, TdxStatus::EPT_WALK_FAILED)),
        };
        let e = EntryLock::take(w.entry()).map_err(|s| sept_fail(r, &w, s))?;
        let state = e.state();
        if !matches!(
            state,
            SeptState::Mapped | SeptState::Blocked | SeptState::Pending | SeptState::PendingBlocked
        ) {
            drop(e);
            return Err(sept_fail(r, &w, TdxStatus::EPT_ENTRY_STATE_INCORRECT));
        }
        let big = e.hpa();
        self.check_blocked_and_tracked(&td, r, &w, state, big)?;
        let new_page = self.pamt.lock_explicit(
            r.r8,
            PamtPageSize::S4K,
            self.cfg.hkid_shift,
            LockMode::Exclusive,
            OperandId::R8,
        )?;
        if !new_page.all_free() {
            return Err(TdxStatus::PAGE_METADATA_INCORRECT.with_operand(OperandId::R8));
        }
        let pages = self
            .pamt
            .lock_pages(big, level.pages_4k(), LockMode::Exclusive)
            .map_err(|s| s.with_operand(OperandId::RCX))?;
        let Some(child_level) = level.lower() else {
            return Err(TdxStatus::OPERAND_INVALID.with_operand(OperandId::RCX));
        };
        let child_state = sept::unblocked(state);
        let table = SeptTable::new();
        for (i, entry) in table.entries.iter().enumerate() {
            entry.store(
                sept::word(child_state, big + (i as u64) * child_level.size()),
                Ordering::Relaxed,
            );
        }
        self.zero_phys(new_page.hpa.0, 4096);
        tree.insert_table(new_page.hpa.0, Arc::new(table));
        pages.set_all(PamtMeta {
            page_type: PageType::Reg,
            size: pamt_size(child_level),
            owner: Hpa(td.tdr),
        });
        new_page.set_all(PamtMeta {
            page_type: PageType::Ept,
            size: PamtPageSize::S4K,
            owner: Hpa(td.tdr),
        });
        // One large page becomes 512 pages, plus the new S-EPT page.
        td.chldcnt.fetch_add(512, Ordering::AcqRel);
        e.commit(sept::word(SeptState::NlMapped, new_page.hpa.0));
        Ok(TdxStatus::SUCCESS)
    }

    pub(super) fn leaf_mem_page_promote(&self, r: &mut Regs) -> LeafResult {
        let (td, _l) = self.lock_tdr(r.rdx, LockMode::Shared, OperandId::RDX)?;
        self.check_td_state(&td, Leaf::MemPagePromote)?;
        let (gpa, level) = self.decode_gpa(&td, r.rcx, PageLevel::L2M, PageLevel::L1G)?;
        r.rcx = 0;
        r.rdx = 0;
        let tree = td.tree.get().ok_or(TdxStatus::TDCS_NOT_ALLOCATED)?;
        let _t = self.tree_lock(&td, LockMode::Shared)?;
        let w = match tree.walk(gpa, level) {
            Ok(w) => w,
            Err(w) => return Err(sept_fail(r, &w, TdxStatus::EPT_WALK_FAILED)),
        };
        let e = EntryLock::take(w.entry()).map_err(|s| sept_fail(r, &w, s))?;
        let state = e.state();
        if !matches!(state, SeptState::NlMapped | SeptState::NlBlocked) {
            drop(e);
            return Err(sept_fail(r, &w, TdxStatus::EPT_ENTRY_STATE_INCORRECT));
        }
        let child = e.hpa();
        let child_page = self
            .pamt
            .lock_pages(child, 1, LockMode::Exclusive)
            .map_err(|s| s.with_operand(OperandId::RCX))?;
        self.check_blocked_and_tracked(&td, r, &w, state, child)?;
        let Some(table) = tree.table(child) else {
            return Err(sept_fail(r, &w, TdxStatus::EPT_INVALID_PROMOTE_CONDITIONS));
        };
        let Some(child_level) = level.lower() else {
            return Err(TdxStatus::OPERAND_INVALID.with_operand(OperandId::RCX));
        };
        // Lock all 512 children and check: uniformly MAPPED or uniformly PENDING, contiguous
        // HPAs starting at an address aligned to the merged size.
        let mut locked: Vec<EntryLock<'_>> = Vec::with_capacity(512);
        for entry in table.entries.iter() {
            match EntryLock::take(entry) {
                Ok(l) => locked.push(l),
                Err(s) => {
                    drop(locked);
                    return Err(sept_fail(r, &w, s));
                }
            }
        }
        let first_state = locked.first().map(|l| l.state()).unwrap_or(SeptState::Free);
        let first_hpa = locked.first().map(|l| l.hpa()).unwrap_or(0);
        let uniform = matches!(first_state, SeptState::Mapped | SeptState::Pending)
            && first_hpa.is_multiple_of(level.size())
            && locked.iter().enumerate().all(|(i, l)| {
                l.state() == first_state && l.hpa() == first_hpa + i as u64 * child_level.size()
            });
        if !uniform {
            drop(locked);
            return Err(sept_fail(r, &w, TdxStatus::EPT_INVALID_PROMOTE_CONDITIONS));
        }
        let pages = self
            .pamt
            .lock_pages(first_hpa, level.pages_4k(), LockMode::Exclusive)
            .map_err(|s| s.with_operand(OperandId::RCX))?;
        pages.set_all(PamtMeta {
            page_type: PageType::Reg,
            size: pamt_size(level),
            owner: Hpa(td.tdr),
        });
        child_page.set_all(PamtMeta::FREE);
        tree.remove_table(child);
        td.chldcnt.fetch_sub(512, Ordering::AcqRel);
        drop(locked);
        e.commit(sept::word(first_state, first_hpa));
        r.rcx = child;
        r.rdx = 0;
        Ok(TdxStatus::SUCCESS)
    }

    pub(super) fn leaf_mem_sept_rd(&self, r: &mut Regs) -> LeafResult {
        let (td, _l) = self.lock_tdr(r.rdx, LockMode::Shared, OperandId::RDX)?;
        self.check_td_state(&td, Leaf::MemSeptRd)?;
        let (gpa, level) = self.decode_gpa(&td, r.rcx, PageLevel::L4K, PageLevel::L256T)?;
        let tree = td.tree.get().ok_or(TdxStatus::TDCS_NOT_ALLOCATED)?;
        let _t = self.tree_lock(&td, LockMode::Shared)?;
        match tree.walk(gpa, level) {
            Ok(w) => {
                let (rcx, rdx) = w.details();
                r.rcx = rcx;
                r.rdx = rdx;
                Ok(TdxStatus::SUCCESS)
            }
            Err(w) => Err(sept_fail(r, &w, TdxStatus::EPT_WALK_FAILED)),
        }
    }

    pub(super) fn leaf_mr_extend(&self, r: &mut Regs) -> LeafResult {
        let (td, _l) = self.lock_tdr(r.rdx, LockMode::Exclusive, OperandId::RDX)?;
        self.check_td_state(&td, Leaf::MrExtend)?;
        let cfg = td.cfg.get().ok_or(TdxStatus::TDCS_NOT_ALLOCATED)?;
        let gpa = Gpa(r.rcx);
        if !gpa.0.is_multiple_of(256) || gpa.0 >> cfg.shared_bit != 0 {
            return Err(TdxStatus::OPERAND_INVALID.with_operand(OperandId::RCX));
        }
        r.rcx = 0;
        r.rdx = 0;
        let tree = td.tree.get().ok_or(TdxStatus::TDCS_NOT_ALLOCATED)?;
        let w = match tree.walk(gpa.align_down(PageLevel::L4K), PageLevel::L4K) {
            Ok(w) => w,
            Err(w) => return Err(sept_fail(r, &w, TdxStatus::EPT_WALK_FAILED)),
        };
        if sept::state_of(w.word) != SeptState::Mapped {
            return Err(sept_fail(r, &w, TdxStatus::EPT_ENTRY_STATE_INCORRECT));
        }
        let mut chunk = [0u8; 256];
        self.read_phys(
            sept::hpa_of(w.word) + (gpa.0 & 0xF00),
            &mut chunk,
            OperandId::RCX,
        )?;
        if let Some(sha) = td.mr.lock().sha.as_mut() {
            sha.mr_extend(gpa, &chunk);
        }
        Ok(TdxStatus::SUCCESS)
    }

    pub(super) fn leaf_mr_finalize(&self, r: &mut Regs) -> LeafResult {
        let (td, _l) = self.lock_tdr(r.rcx, LockMode::Exclusive, OperandId::RCX)?;
        self.check_td_state(&td, Leaf::MrFinalize)?;
        let mut mr = td.mr.lock();
        if let Some(sha) = mr.sha.take() {
            mr.mrtd = sha.finalize();
        }
        drop(mr);
        td.op_state
            .store(super::OpState::Runnable as u8, Ordering::Release);
        Ok(TdxStatus::SUCCESS)
    }
}
