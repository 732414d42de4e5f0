//! Memory leaves: the S-EPT state machine (module 1.5 `tdh_mem_*.c`, `sept_state_lookup`)
//! and the MRTD leaves (`tdh_mem_page_add.c`, `tdh_mr_extend.c`,
//! `tdh_mr_finalize.c`).

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use super::lock::SharexGuard;
use super::pamt::{PageLock, PamtMeta};
use super::sept::{self, SeptTable, SeptTree, WalkResult};
use super::td::Td;
use super::{EmulatedModule, LeafResult, LockMode};
use tdx_abi::pamt::{PageType, PamtPageSize};
use tdx_abi::seamcall::Regs;
use tdx_abi::td_params::attributes;
use tdx_abi::{Gpa, Leaf, OperandId, PageLevel, SeptState, TdxStatus, decode_gpa_level_operand};

/// A host-held S-EPT entry lock; released on drop unless a new value was committed.
///
/// Holds its table (not a borrow of it) so that [`Located`] can carry the lock and the walk
/// that found the entry together.
struct EntryLock {
    table: Arc<SeptTable>,
    index: usize,
    word: u64,
    committed: bool,
}

impl EntryLock {
    /// Host-locks entry `index` (taken modulo 512) of `table`.
    fn take(table: &Arc<SeptTable>, index: usize) -> Result<EntryLock, TdxStatus> {
        let index = index & 511;
        let word = sept::lock_host(&table.entries[index])?;
        Ok(EntryLock {
            table: table.clone(),
            index,
            word,
            committed: false,
        })
    }
    fn entry(&self) -> &AtomicU64 {
        &self.table.entries[self.index]
    }
    fn state(&self) -> SeptState {
        sept::state_of(self.word)
    }
    fn hpa(&self) -> u64 {
        sept::hpa_of(self.word)
    }
    fn commit(mut self, new: u64) {
        sept::store_unlock(self.entry(), new);
        self.committed = true;
    }
}

impl Drop for EntryLock {
    fn drop(&mut self) {
        if !self.committed {
            sept::unlock(self.entry());
        }
    }
}

/// An S-EPT entry found and host-locked by [`EmulatedModule::locate_entry`].
///
/// Fields drop in declaration order: the entry lock is released before the tree lock.
struct Located<'a> {
    /// The host lock on the entry.
    entry: EntryLock,
    /// Where the walk ended (table, index, level); feeds [`sept_fail`].
    walk: WalkResult,
    /// The TD's S-EPT tree.
    tree: &'a SeptTree,
    /// The S-EPT tree lock, when the leaf takes one.
    _tree_lock: Option<SharexGuard<'a>>,
}

/// TDH.MEM.SEPT.RD: RDX bit 0 (`READ_L2_ATTRIBUTES_FLAG` in intel/tdx-module
/// `src/vmm_dispatcher/api_calls/tdh_mem_sept_rd.c`) asks for the L2 attributes in R8.
const SEPT_RD_L2_ATTRIBUTES: u64 = 1;

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

/// NULL_PA (`x86_defs.h`): what version 1 of TDH.MEM.SEPT.REMOVE and TDH.MEM.PAGE.PROMOTE
/// leaves in R9–R11 for L2 VMs that have no S-EPT page to return.
const NULL_PA: u64 = u64::MAX;

/// The start shared by TDH.MEM.SEPT.REMOVE and TDH.MEM.PAGE.PROMOTE (intel/tdx-module
/// `tdh_mem_sept_remove.c`, `tdh_mem_page_promote.c`): RCX/RDX zeroed, then for version 1
/// and above R9–R11 = NULL_PA (one per L2 VM), then a version above 1 is OPERAND_INVALID on
/// RAX, all before the TDR is looked at.
fn l2_versioned_prologue(r: &mut Regs, version: u8) -> Result<(), TdxStatus> {
    if version > 0 {
        r.r9 = NULL_PA;
        r.r10 = NULL_PA;
        r.r11 = NULL_PA;
    }
    if version > 1 {
        r.rcx = 0;
        r.rdx = 0;
        return Err(TdxStatus::OPERAND_INVALID.with_operand(OperandId::RAX));
    }
    Ok(())
}

/// Walks `tree` to `gpa` at `level`; a walk that stops early is EPT_WALK_FAILED with the
/// details of the entry it stopped at in RCX/RDX.
fn walk_to(
    r: &mut Regs,
    tree: &SeptTree,
    gpa: Gpa,
    level: PageLevel,
) -> Result<WalkResult, TdxStatus> {
    tree.walk(gpa, level)
        .map_err(|w| sept_fail(r, &w, TdxStatus::EPT_WALK_FAILED))
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

    /// The prologue of the S-EPT leaves taking the TDR in RDX (shared): RCX/RDX are zeroed
    /// first, so every error reports zeros there unless it carries entry details (each
    /// `tdh_mem_*.c` of intel/tdx-module clears them before its TDR check), then TDR lock,
    /// TD state check for `leaf`, GPA+level decode from RCX with the level in `min..=max`.
    fn open_sept_leaf(
        &self,
        r: &mut Regs,
        leaf: Leaf,
        min: PageLevel,
        max: PageLevel,
    ) -> Result<(Arc<Td>, PageLock<'_>, Gpa, PageLevel), TdxStatus> {
        let (gpa_in, tdr_in) = (r.rcx, r.rdx);
        r.rcx = 0;
        r.rdx = 0;
        let (td, tdr_lock) = self.lock_tdr(tdr_in, LockMode::Shared, OperandId::RDX)?;
        self.check_td_state(&td, leaf)?;
        let (gpa, level) = self.decode_gpa(&td, gpa_in, min, max)?;
        Ok((td, tdr_lock, gpa, level))
    }

    /// Finds the S-EPT entry of `td` for `gpa` at `level` and host-locks it. Steps, and so
    /// the status precedence: the tree lock in `tree_mode` (none if `None`; OPERAND_BUSY on
    /// SEPT_TREE), the walk (EPT_WALK_FAILED), the entry lock (busy statuses), then
    /// `allowed(state)` (EPT_ENTRY_STATE_INCORRECT, read after the entry is unlocked); the
    /// last three put the entry details in RCX/RDX.
    fn locate_entry<'a>(
        &self,
        r: &mut Regs,
        td: &'a Td,
        gpa: Gpa,
        level: PageLevel,
        tree_mode: Option<LockMode>,
        allowed: impl Fn(SeptState) -> bool,
    ) -> Result<Located<'a>, TdxStatus> {
        let tree = td.tree.get().ok_or(TdxStatus::TDCS_NOT_ALLOCATED)?;
        let tree_lock = tree_mode.map(|m| self.tree_lock(td, m)).transpose()?;
        let walk = walk_to(r, tree, gpa, level)?;
        let entry = EntryLock::take(&walk.table, walk.index).map_err(|s| sept_fail(r, &walk, s))?;
        if !allowed(entry.state()) {
            drop(entry);
            return Err(sept_fail(r, &walk, TdxStatus::EPT_ENTRY_STATE_INCORRECT));
        }
        Ok(Located {
            entry,
            walk,
            tree,
            _tree_lock: tree_lock,
        })
    }

    /// SEPT.REMOVE and PROMOTE: [`Self::locate_entry`] for a non-leaf (NL_MAPPED or
    /// NL_BLOCKED) entry, then its child S-EPT page locked exclusively in PAMT (busy on RCX),
    /// then the blocked-and-tracked rule. Bound as `(loc, page)`, the page lock drops
    /// first, as when both were locals of the leaf.
    fn locate_non_leaf<'a>(
        &'a self,
        r: &mut Regs,
        td: &'a Td,
        gpa: Gpa,
        level: PageLevel,
        tree_mode: LockMode,
    ) -> Result<(Located<'a>, PageLock<'a>), TdxStatus> {
        let loc = self.locate_entry(r, td, gpa, level, Some(tree_mode), |s| {
            matches!(s, SeptState::NlMapped | SeptState::NlBlocked)
        })?;
        let child = loc.entry.hpa();
        let child_page = self
            .pamt
            .lock_pages(child, 1, LockMode::Exclusive)
            .map_err(|s| s.with_operand(OperandId::RCX))?;
        self.check_blocked_and_tracked(td, r, &loc.walk, loc.entry.state(), child)?;
        Ok((loc, child_page))
    }

    /// Exclusively locks the page whose HPA (with HKID bits) is in R8 as a PAMT page of
    /// `size`; it must be free (PAGE_METADATA_INCORRECT on R8 otherwise).
    fn lock_free_page_r8(&self, raw: u64, size: PamtPageSize) -> Result<PageLock<'_>, TdxStatus> {
        let page = self.pamt.lock_explicit(
            raw,
            size,
            self.cfg.hkid_shift,
            LockMode::Exclusive,
            OperandId::R8,
        )?;
        if !page.all_free() {
            return Err(TdxStatus::PAGE_METADATA_INCORRECT.with_operand(OperandId::R8));
        }
        Ok(page)
    }

    fn tree_lock<'a>(&self, td: &'a Td, mode: LockMode) -> Result<SharexGuard<'a>, TdxStatus> {
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
        // RCX/RDX cleared before the TDR check (`tdh_mem_page_add.c`).
        let (gpa_in, tdr_in) = (r.rcx, r.rdx);
        r.rcx = 0;
        r.rdx = 0;
        let (td, _l) = self.lock_tdr(tdr_in, LockMode::Exclusive, OperandId::RDX)?;
        self.check_td_state(&td, Leaf::MemPageAdd)?;
        let (gpa, level) = self.decode_gpa(&td, gpa_in, PageLevel::L4K, PageLevel::L4K)?;
        let page = self.lock_free_page_r8(r.r8, PamtPageSize::S4K)?;
        let source = self.check_page_hpa(r.r9, OperandId::R9)?;
        let mut data = alloc::vec![0u8; 4096];
        self.read_phys(source, &mut data, OperandId::R9)?;
        // No tree lock: the exclusive TDR lock already excludes every other S-EPT leaf.
        let loc = self.locate_entry(r, &td, gpa, level, None, |s| s == SeptState::Free)?;
        self.mem.write(page.hpa, &data);
        page.set_all(PamtMeta::owned(PageType::Reg, PamtPageSize::S4K, td.tdr));
        td.chldcnt.fetch_add(1, Ordering::AcqRel);
        loc.entry.commit(sept::word(SeptState::Mapped, page.hpa.0));
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
        let (td, _l, gpa, level) =
            self.open_sept_leaf(r, Leaf::MemSeptAdd, PageLevel::L2M, PageLevel::L256T)?;
        let page = self.lock_free_page_r8(r.r8, PamtPageSize::S4K)?;
        let loc = self.locate_entry(r, &td, gpa, level, Some(LockMode::Shared), |s| {
            s == SeptState::Free
        })?;
        self.zero_phys(page.hpa.0, 4096);
        loc.tree
            .insert_table(page.hpa.0, Arc::new(SeptTable::at(page.hpa.0)));
        page.set_all(PamtMeta::owned(PageType::Ept, PamtPageSize::S4K, td.tdr));
        td.chldcnt.fetch_add(1, Ordering::AcqRel);
        loc.entry
            .commit(sept::word(SeptState::NlMapped, page.hpa.0));
        Ok(TdxStatus::SUCCESS)
    }

    pub(super) fn leaf_mem_page_aug(&self, r: &mut Regs) -> LeafResult {
        let (td, _l, gpa, level) =
            self.open_sept_leaf(r, Leaf::MemPageAug, PageLevel::L4K, PageLevel::L2M)?;
        let size = pamt_size(level);
        let page = self.lock_free_page_r8(r.r8, size)?;
        let loc = self.locate_entry(r, &td, gpa, level, Some(LockMode::Shared), |s| {
            matches!(s, SeptState::Free | SeptState::Removed)
        })?;
        page.set_all(PamtMeta::owned(PageType::Reg, size, td.tdr));
        // TDR.CHLDCNT counts 4 KiB pages: a 2 MiB leaf adds 1 << (9 * level) = 512
        // (intel/tdx-module `src/vmm_dispatcher/api_calls/tdh_mem_page_aug.c`).
        td.chldcnt.fetch_add(level.pages_4k(), Ordering::AcqRel);
        loc.entry.commit(sept::word(SeptState::Pending, page.hpa.0));
        Ok(TdxStatus::SUCCESS)
    }

    pub(super) fn leaf_mem_range_block(&self, r: &mut Regs) -> LeafResult {
        let (td, _l, gpa, level) =
            self.open_sept_leaf(r, Leaf::MemRangeBlock, PageLevel::L4K, PageLevel::L256T)?;
        // Every state is examined below: "already blocked" is a warning, not an error.
        let loc = self.locate_entry(r, &td, gpa, level, Some(LockMode::Exclusive), |_| true)?;
        let state = loc.entry.state();
        if state.is_blocked() {
            drop(loc.entry);
            let _ = sept_fail(r, &loc.walk, TdxStatus::GPA_RANGE_ALREADY_BLOCKED);
            return Ok(TdxStatus::GPA_RANGE_ALREADY_BLOCKED.with_operand(OperandId::RCX));
        }
        let Some(new) = sept::blocked(state) else {
            drop(loc.entry);
            return Err(sept_fail(
                r,
                &loc.walk,
                TdxStatus::EPT_ENTRY_STATE_INCORRECT,
            ));
        };
        let hpa = loc.entry.hpa();
        if let Some(p) = self.pamt.entry(hpa) {
            p.bepoch
                .store(td.td_epoch.load(Ordering::Acquire), Ordering::Release);
        }
        loc.entry.commit(sept::word(new, hpa));
        // A blocked entry is not present in hardware: drop the nested-page-table twin the
        // SVM engine may have made of it (refilled from the S-EPT on the next fault).
        self.npt_forget(&loc.walk.table, loc.walk.index);
        Ok(TdxStatus::SUCCESS)
    }

    pub(super) fn leaf_mem_range_unblock(&self, r: &mut Regs) -> LeafResult {
        let (td, _l, gpa, level) =
            self.open_sept_leaf(r, Leaf::MemRangeUnblock, PageLevel::L4K, PageLevel::L256T)?;
        let loc = self.locate_entry(r, &td, gpa, level, Some(LockMode::Exclusive), |s| {
            s.is_blocked()
        })?;
        let hpa = loc.entry.hpa();
        if td.tracking_required() && !td.is_tracked(self.bepoch_of(hpa)) {
            return Err(TdxStatus::TLB_TRACKING_NOT_DONE.with_operand(OperandId::RCX));
        }
        let state = loc.entry.state();
        loc.entry.commit(sept::word(sept::unblocked(state), hpa));
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
        let (td, _l, gpa, level) =
            self.open_sept_leaf(r, Leaf::MemPageRemove, PageLevel::L4K, PageLevel::L1G)?;
        let loc = self.locate_entry(r, &td, gpa, level, Some(LockMode::Shared), |s| {
            matches!(
                s,
                SeptState::Mapped
                    | SeptState::Blocked
                    | SeptState::Pending
                    | SeptState::PendingBlocked
                    | SeptState::BlockedW
                    | SeptState::PendingBlockedW
            )
        })?;
        // intel/tdx-module `tdh_mem_page_remove.c`: the removed page's PAMT entries are
        // locked (busy on RCX, no entry details) before the blocked-and-tracked rule.
        let hpa = loc.entry.hpa();
        let pages = self
            .pamt
            .lock_pages(hpa, level.pages_4k(), LockMode::Exclusive)
            .map_err(|s| s.with_operand(OperandId::RCX))?;
        self.check_blocked_and_tracked(&td, r, &loc.walk, loc.entry.state(), hpa)?;
        pages.set_all(PamtMeta::FREE);
        // Minus the removed page's 4 KiB pages, 1 << (9 * level) (intel/tdx-module
        // `src/vmm_dispatcher/api_calls/tdh_mem_page_remove.c`).
        td.chldcnt.fetch_sub(level.pages_4k(), Ordering::AcqRel);
        loc.entry.commit(sept::FREE_WORD);
        // Outputs: RCX = the removed page's HPA, RDX stays 0 (`tdh_mem_page_remove.c`).
        r.rcx = hpa;
        r.rdx = 0;
        Ok(TdxStatus::SUCCESS)
    }

    /// TDH.MEM.SEPT.REMOVE (intel/tdx-module
    /// `src/vmm_dispatcher/api_calls/tdh_mem_sept_remove.c`, `tdh_mem_sept_remove`), in the
    /// source's order: RCX/RDX zeroed, R9–R11 = NULL_PA for version 1 (the L2 S-EPT pages it
    /// would return; there are no L2 VMs here), version above 1 refused on RAX; TDR shared
    /// (RDX), TD state; GPA+level in RCX (2 MiB up to the EPT's top level, aligned, private);
    /// the tree lock exclusively (OPERAND_BUSY on SEPT_TREE); the walk (EPT_WALK_FAILED, with
    /// the entry where it stopped); the entry's host lock (busy, with the entry); the state
    /// (NL_MAPPED or NL_BLOCKED, else EPT_ENTRY_STATE_INCORRECT with the entry); the child
    /// page's PAMT lock (busy on RCX, no details); when the TD runs, blocked (else
    /// GPA_RANGE_NOT_BLOCKED with the entry) and tracked (else TLB_TRACKING_NOT_DONE, no
    /// details); every child entry FREE (else EPT_PAGE_NOT_FREE with the parent entry). On
    /// success RCX = the removed page's HPA, RDX = 0.
    pub(super) fn leaf_mem_sept_remove(&self, version: u8, r: &mut Regs) -> LeafResult {
        l2_versioned_prologue(r, version)?;
        let (td, _l, gpa, level) =
            self.open_sept_leaf(r, Leaf::MemSeptRemove, PageLevel::L2M, PageLevel::L256T)?;
        let (loc, page) = self.locate_non_leaf(r, &td, gpa, level, LockMode::Exclusive)?;
        let child = loc.entry.hpa();
        let table = loc.tree.table(child);
        if table.as_ref().is_some_and(|t| !t.all_free()) {
            drop(loc.entry);
            return Err(sept_fail(r, &loc.walk, TdxStatus::EPT_PAGE_NOT_FREE));
        }
        loc.tree.remove_table(child);
        page.set_all(PamtMeta::FREE);
        td.chldcnt.fetch_sub(1, Ordering::AcqRel);
        loc.entry.commit(sept::FREE_WORD);
        r.rcx = child;
        r.rdx = 0;
        Ok(TdxStatus::SUCCESS)
    }

    pub(super) fn leaf_mem_page_demote(&self, r: &mut Regs) -> LeafResult {
        if r.rdx & 0xFFF != 0 {
            return Err(TdxStatus::OPERAND_INVALID.with_operand(OperandId::RDX));
        }
        let (td, _l, gpa, level) =
            self.open_sept_leaf(r, Leaf::MemPageDemote, PageLevel::L2M, PageLevel::L1G)?;
        let loc = self.locate_entry(r, &td, gpa, level, Some(LockMode::Shared), |s| {
            matches!(
                s,
                SeptState::Mapped
                    | SeptState::Blocked
                    | SeptState::Pending
                    | SeptState::PendingBlocked
            )
        })?;
        let state = loc.entry.state();
        let big = loc.entry.hpa();
        self.check_blocked_and_tracked(&td, r, &loc.walk, state, big)?;
        let new_page = self.lock_free_page_r8(r.r8, PamtPageSize::S4K)?;
        let pages = self
            .pamt
            .lock_pages(big, level.pages_4k(), LockMode::Exclusive)
            .map_err(|s| s.with_operand(OperandId::RCX))?;
        let Some(child_level) = level.lower() else {
            return Err(TdxStatus::OPERAND_INVALID.with_operand(OperandId::RCX));
        };
        let child_state = sept::unblocked(state);
        let table = SeptTable::at(new_page.hpa.0);
        for (i, entry) in table.entries.iter().enumerate() {
            entry.store(
                sept::word(child_state, big + (i as u64) * child_level.size()),
                Ordering::Relaxed,
            );
        }
        self.zero_phys(new_page.hpa.0, 4096);
        loc.tree.insert_table(new_page.hpa.0, Arc::new(table));
        pages.set_all(PamtMeta::owned(
            PageType::Reg,
            pamt_size(child_level),
            td.tdr,
        ));
        new_page.set_all(PamtMeta::owned(PageType::Ept, PamtPageSize::S4K, td.tdr));
        // The large page's 4 KiB pages were already counted: only the new S-EPT page adds
        // one (intel/tdx-module `src/vmm_dispatcher/api_calls/tdh_mem_page_demote.c`).
        td.chldcnt.fetch_add(1, Ordering::AcqRel);
        loc.entry
            .commit(sept::word(SeptState::NlMapped, new_page.hpa.0));
        Ok(TdxStatus::SUCCESS)
    }

    /// TDH.MEM.PAGE.PROMOTE (intel/tdx-module
    /// `src/vmm_dispatcher/api_calls/tdh_mem_page_promote.c`, `tdh_mem_page_promote`): the
    /// prologue of TDH.MEM.SEPT.REMOVE with the level in 2 MiB..=1 GiB and the tree lock
    /// shared, the same non-leaf, PAMT and blocked-and-tracked checks, then
    /// `is_sept_page_valid_for_merge`: each of the 512 child entries is host-locked and
    /// checked in turn, so the first bad entry decides: a busy lock is that status, a first
    /// entry whose HPA is not aligned to the merged size or that is neither MAPPED nor PENDING,
    /// or a later entry that differs from the first by more than the next HPA, is
    /// EPT_INVALID_PROMOTE_CONDITIONS; either with the parent entry in RCX/RDX. On success
    /// RCX = the freed S-EPT page, RDX = 0.
    pub(super) fn leaf_mem_page_promote(&self, version: u8, r: &mut Regs) -> LeafResult {
        l2_versioned_prologue(r, version)?;
        let (td, _l, gpa, level) =
            self.open_sept_leaf(r, Leaf::MemPagePromote, PageLevel::L2M, PageLevel::L1G)?;
        let (loc, child_page) = self.locate_non_leaf(r, &td, gpa, level, LockMode::Shared)?;
        let child = loc.entry.hpa();
        let Some(table) = loc.tree.table(child) else {
            return Err(sept_fail(
                r,
                &loc.walk,
                TdxStatus::EPT_INVALID_PROMOTE_CONDITIONS,
            ));
        };
        let Some(child_level) = level.lower() else {
            return Err(TdxStatus::OPERAND_INVALID.with_operand(OperandId::RCX));
        };
        // Lock and check the children one by one; the locks taken so far are released
        // (dropped) on any failure.
        let mut locked: Vec<EntryLock> = Vec::with_capacity(512);
        for index in 0..table.entries.len() {
            let l = match EntryLock::take(&table, index) {
                Ok(l) => l,
                Err(s) => {
                    drop(locked);
                    return Err(sept_fail(r, &loc.walk, s));
                }
            };
            let ok = match locked.first() {
                None => {
                    l.hpa().is_multiple_of(level.size())
                        && matches!(l.state(), SeptState::Mapped | SeptState::Pending)
                }
                Some(first) => {
                    l.state() == first.state()
                        && l.hpa() == first.hpa() + index as u64 * child_level.size()
                }
            };
            locked.push(l);
            if !ok {
                drop(locked);
                return Err(sept_fail(
                    r,
                    &loc.walk,
                    TdxStatus::EPT_INVALID_PROMOTE_CONDITIONS,
                ));
            }
        }
        let first_state = locked.first().map(|l| l.state()).unwrap_or(SeptState::Free);
        let first_hpa = locked.first().map(|l| l.hpa()).unwrap_or(0);
        let pages = self
            .pamt
            .lock_pages(first_hpa, level.pages_4k(), LockMode::Exclusive)
            .map_err(|s| s.with_operand(OperandId::RCX))?;
        pages.set_all(PamtMeta::owned(PageType::Reg, pamt_size(level), td.tdr));
        child_page.set_all(PamtMeta::FREE);
        loc.tree.remove_table(child);
        // Only the freed S-EPT page leaves the count; the merged page keeps its 4 KiB pages
        // counted (intel/tdx-module `src/vmm_dispatcher/api_calls/tdh_mem_page_promote.c`).
        td.chldcnt.fetch_sub(1, Ordering::AcqRel);
        drop(locked);
        loc.entry.commit(sept::word(first_state, first_hpa));
        r.rcx = child;
        r.rdx = 0;
        Ok(TdxStatus::SUCCESS)
    }

    /// TDH.MEM.SEPT.RD (intel/tdx-module `src/vmm_dispatcher/api_calls/tdh_mem_sept_rd.c`):
    /// RCX/RDX zeroed first; RDX bit 0 asks for the L2 attributes in R8, refused
    /// (OPERAND_INVALID on RDX) unless the TD is a DEBUG TD; the walk (EPT_WALK_FAILED with
    /// the entry it stopped at), the entry's host lock (busy, with the entry); on success
    /// RCX = the architectural entry, RDX = level and state, R8 = the L2 attributes (0: the
    /// software module has no L2 VMs).
    pub(super) fn leaf_mem_sept_rd(&self, r: &mut Regs) -> LeafResult {
        let (gpa_in, tdr_in) = (r.rcx, r.rdx);
        r.rcx = 0;
        r.rdx = 0;
        let read_l2_attributes = tdr_in & SEPT_RD_L2_ATTRIBUTES != 0;
        let (td, _l) = self.lock_tdr(
            tdr_in & !SEPT_RD_L2_ATTRIBUTES,
            LockMode::Shared,
            OperandId::RDX,
        )?;
        self.check_td_state(&td, Leaf::MemSeptRd)?;
        let debug = td
            .cfg
            .get()
            .is_some_and(|c| c.params.attributes & attributes::DEBUG != 0);
        if read_l2_attributes && !debug {
            return Err(TdxStatus::OPERAND_INVALID.with_operand(OperandId::RDX));
        }
        let (gpa, level) = self.decode_gpa(&td, gpa_in, PageLevel::L4K, PageLevel::L256T)?;
        let tree = td.tree.get().ok_or(TdxStatus::TDCS_NOT_ALLOCATED)?;
        let _t = self.tree_lock(&td, LockMode::Shared)?;
        let w = walk_to(r, tree, gpa, level)?;
        // The entry is read under its host lock, as the module does.
        let entry = EntryLock::take(&w.table, w.index).map_err(|s| sept_fail(r, &w, s))?;
        (r.rcx, r.rdx) = w.details_of(entry.word);
        drop(entry);
        if read_l2_attributes {
            r.r8 = 0;
        }
        Ok(TdxStatus::SUCCESS)
    }

    pub(super) fn leaf_mr_extend(&self, r: &mut Regs) -> LeafResult {
        // RCX/RDX cleared before the TDR check (`tdh_mr_extend.c`).
        let (gpa_in, tdr_in) = (r.rcx, r.rdx);
        r.rcx = 0;
        r.rdx = 0;
        let (td, _l) = self.lock_tdr(tdr_in, LockMode::Exclusive, OperandId::RDX)?;
        self.check_td_state(&td, Leaf::MrExtend)?;
        let cfg = td.cfg.get().ok_or(TdxStatus::TDCS_NOT_ALLOCATED)?;
        let gpa = Gpa(gpa_in);
        if !gpa.0.is_multiple_of(256) || gpa.0 >> cfg.shared_bit != 0 {
            return Err(TdxStatus::OPERAND_INVALID.with_operand(OperandId::RCX));
        }
        let tree = td.tree.get().ok_or(TdxStatus::TDCS_NOT_ALLOCATED)?;
        let w = walk_to(r, tree, gpa.align_down(PageLevel::L4K), PageLevel::L4K)?;
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
