//! Test doubles with state: a model of the module's S-EPT (enough of the state rules of
//! the TDX module's S-EPT leaves (`intel/tdx-module`, `src/common/memory_handlers/sept_manager.h`,
//! `include/auto_gen/sept_state_lookup.c`) to catch a manager that issues a leaf in the wrong state, maps a page
//! twice or removes without tracking), a private-memory backing that checks ownership, and
//! vCPU control that tells the model when vCPUs are kept out (no BUSY then). Loom-aware.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tdx_abi::seamcall::{ModuleKind, Regs, Seamcall};
use tdx_abi::{
    Gfn, Hpa, Leaf, OperandId, PAGE_SIZE_4K, PageLevel, SeptLevelState, SeptState, TdxStatus,
    decode_gpa_level_operand,
};

use super::sync::Mutex;
use super::{PrivateMemory, SeptPagePool, VcpuControl};

pub(crate) const HKID_SHIFT: u32 = 46;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MockLeaf {
    pub(crate) hpa: u64,
    pub(crate) pending: bool,
    pub(crate) blocked: bool,
    pub(crate) bepoch: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MockNl {
    page: u64,
    blocked: bool,
    bepoch: u64,
}

#[derive(Default)]
pub(crate) struct MockState {
    /// (level, first gfn) → leaf.
    pub(crate) leaves: BTreeMap<(u32, u64), MockLeaf>,
    nl: BTreeMap<(u32, u64), MockNl>,
    /// 4 KiB frames owned by the TD (leaves and S-EPT pages).
    frames: BTreeSet<u64>,
    epoch: u64,
    runnable: bool,
    teardown: bool,
    rng: u64,
    /// Per mille of eligible calls answered with BUSY.
    busy_per_mille: u64,
    /// Leaves that answer BUSY on their next call, once each.
    busy_once: Vec<Leaf>,
    /// Leaf that fails with a hard error on its next call.
    fail_next: Option<(Leaf, TdxStatus)>,
    pub(crate) calls: BTreeMap<u16, u64>,
    pub(crate) busy_injected: u64,
}

/// The model module. `vcpus_out` is set while the manager keeps vCPUs out of the TD.
pub(crate) struct MockModule {
    pub(crate) state: Mutex<MockState>,
    top_level: u32,
    vcpus_out: AtomicBool,
}

fn err(status: TdxStatus) -> Result<(), TdxStatus> {
    Err(status)
}

fn align(gfn: u64, level: u32) -> u64 {
    gfn & !((1u64 << (9 * level)) - 1)
}

impl MockModule {
    pub(crate) fn new(top_level: u32) -> Arc<Self> {
        Arc::new(MockModule {
            state: Mutex::new(MockState {
                rng: 0x9E37_79B9_7F4A_7C15,
                ..MockState::default()
            }),
            top_level,
            vcpus_out: AtomicBool::new(false),
        })
    }
    pub(crate) fn set_runnable(&self) {
        self.state.lock().runnable = true;
    }
    pub(crate) fn set_teardown(&self) {
        self.state.lock().teardown = true;
    }
    pub(crate) fn set_busy_per_mille(&self, p: u64, seed: u64) {
        let mut s = self.state.lock();
        s.busy_per_mille = p;
        s.rng = seed | 1;
    }
    pub(crate) fn busy_once(&self, leaf: Leaf) {
        self.state.lock().busy_once.push(leaf);
    }
    pub(crate) fn fail_next(&self, leaf: Leaf, status: TdxStatus) {
        self.state.lock().fail_next = Some((leaf, status));
    }
    /// The guest accepts the pending leaf at `level` covering `gfn`.
    pub(crate) fn accept(&self, gfn: u64, level: PageLevel) -> bool {
        let lvl = level.raw() as u32;
        let mut s = self.state.lock();
        match s.leaves.get_mut(&(lvl, align(gfn, lvl))) {
            Some(l) if l.pending && !l.blocked => {
                l.pending = false;
                true
            }
            _ => false,
        }
    }
    pub(crate) fn leaf_at(&self, gfn: u64) -> Option<(u32, MockLeaf)> {
        let s = self.state.lock();
        (0..3).find_map(|l| s.leaves.get(&(l, align(gfn, l))).map(|leaf| (l, *leaf)))
    }
    pub(crate) fn owned_frames(&self) -> usize {
        self.state.lock().frames.len()
    }
    pub(crate) fn nl_count(&self) -> usize {
        self.state.lock().nl.len()
    }
    pub(crate) fn calls(&self, leaf: Leaf) -> u64 {
        self.state
            .lock()
            .calls
            .get(&leaf.number())
            .copied()
            .unwrap_or(0)
    }

    fn take_frames(s: &mut MockState, hpa: u64, n: u64) -> Result<(), TdxStatus> {
        if (0..n).any(|i| s.frames.contains(&(hpa + i * PAGE_SIZE_4K))) {
            return err(TdxStatus::PAGE_NOT_FREE.with_operand(OperandId::R8));
        }
        for i in 0..n {
            s.frames.insert(hpa + i * PAGE_SIZE_4K);
        }
        Ok(())
    }

    /// Walks the non-leaf entries above `level`.
    fn walk(&self, s: &MockState, gfn: u64, level: u32) -> Result<(), TdxStatus> {
        let mut l = self.top_level;
        while l > level {
            if s.leaves.contains_key(&(l, align(gfn, l))) {
                return err(TdxStatus::EPT_WALK_FAILED.with_operand(OperandId::RCX));
            }
            if !s.nl.contains_key(&(l, align(gfn, l))) {
                return err(TdxStatus::EPT_WALK_FAILED.with_operand(OperandId::RCX));
            }
            l -= 1;
        }
        Ok(())
    }

    fn tracked(s: &MockState, bepoch: u64) -> bool {
        !s.runnable || bepoch < s.epoch
    }

    fn free_at(s: &MockState, gfn: u64, level: u32) -> bool {
        !s.leaves.contains_key(&(level, gfn)) && !s.nl.contains_key(&(level, gfn))
    }

    fn dispatch(&self, s: &mut MockState, leaf: Leaf, regs: &mut Regs) -> Result<(), TdxStatus> {
        let target =
            decode_gpa_level_operand(regs.rcx).map(|(gpa, lvl)| (gpa.0 >> 12, lvl.raw() as u32));
        let bad_rcx = TdxStatus::OPERAND_INVALID.with_operand(OperandId::RCX);
        let state_incorrect = TdxStatus::EPT_ENTRY_STATE_INCORRECT.with_operand(OperandId::RCX);
        match leaf {
            Leaf::MemSeptAdd => {
                let (gfn, l) = target.ok_or(bad_rcx)?;
                if l == 0 || l > self.top_level || gfn != align(gfn, l) {
                    return err(bad_rcx);
                }
                self.walk(s, gfn, l)?;
                if !Self::free_at(s, gfn, l) {
                    return err(state_incorrect);
                }
                Self::take_frames(s, regs.r8, 1)?;
                s.nl.insert(
                    (l, gfn),
                    MockNl {
                        page: regs.r8,
                        blocked: false,
                        bepoch: 0,
                    },
                );
            }
            Leaf::MemPageAug | Leaf::MemPageAdd => {
                let (gfn, l) = target.ok_or(bad_rcx)?;
                if l > 1 || gfn != align(gfn, l) || (leaf == Leaf::MemPageAdd && l != 0) {
                    return err(bad_rcx);
                }
                if leaf == Leaf::MemPageAdd && s.runnable {
                    return err(TdxStatus::OP_STATE_INCORRECT);
                }
                self.walk(s, gfn, l)?;
                if !Self::free_at(s, gfn, l) {
                    return err(state_incorrect);
                }
                Self::take_frames(s, regs.r8, 1 << (9 * l))?;
                let pending = leaf == Leaf::MemPageAug;
                s.leaves.insert(
                    (l, gfn),
                    MockLeaf {
                        hpa: regs.r8,
                        pending,
                        blocked: false,
                        bepoch: 0,
                    },
                );
            }
            Leaf::MemRangeBlock => {
                let (gfn, l) = target.ok_or(bad_rcx)?;
                self.walk(s, gfn, l)?;
                let epoch = s.epoch;
                if let Some(leaf) = s.leaves.get_mut(&(l, gfn)) {
                    if leaf.blocked {
                        regs.rax = TdxStatus::GPA_RANGE_ALREADY_BLOCKED.0;
                        return Ok(());
                    }
                    leaf.blocked = true;
                    leaf.bepoch = epoch;
                } else if let Some(nl) = s.nl.get_mut(&(l, gfn)) {
                    nl.blocked = true;
                    nl.bepoch = epoch;
                } else {
                    return err(state_incorrect);
                }
            }
            Leaf::MemRangeUnblock => {
                let (gfn, l) = target.ok_or(bad_rcx)?;
                let runnable = s.runnable;
                let epoch = s.epoch;
                let tracked = |b: u64| !runnable || b < epoch;
                if let Some(leaf) = s.leaves.get_mut(&(l, gfn)).filter(|x| x.blocked) {
                    if !tracked(leaf.bepoch) {
                        return err(TdxStatus::TLB_TRACKING_NOT_DONE);
                    }
                    leaf.blocked = false;
                } else if let Some(nl) = s.nl.get_mut(&(l, gfn)).filter(|x| x.blocked) {
                    if !tracked(nl.bepoch) {
                        return err(TdxStatus::TLB_TRACKING_NOT_DONE);
                    }
                    nl.blocked = false;
                } else {
                    return err(state_incorrect);
                }
            }
            Leaf::MemTrack => s.epoch += 1,
            Leaf::MemPageRemove => {
                let (gfn, l) = target.ok_or(bad_rcx)?;
                self.walk(s, gfn, l)?;
                let leaf = *s.leaves.get(&(l, gfn)).ok_or(state_incorrect)?;
                if s.runnable && !leaf.blocked {
                    return err(TdxStatus::GPA_RANGE_NOT_BLOCKED);
                }
                if leaf.blocked && !Self::tracked(s, leaf.bepoch) {
                    return err(TdxStatus::TLB_TRACKING_NOT_DONE);
                }
                s.leaves.remove(&(l, gfn));
                for i in 0..(1u64 << (9 * l)) {
                    s.frames.remove(&(leaf.hpa + i * PAGE_SIZE_4K));
                }
            }
            Leaf::PhymemPageWbinvd => {
                let hpa = regs.rcx & ((1u64 << HKID_SHIFT) - 1);
                if s.frames.contains(&hpa) {
                    return err(TdxStatus::PAGE_NOT_FREE.with_operand(OperandId::RCX));
                }
            }
            Leaf::MemPageDemote => {
                let (gfn, l) = target.ok_or(bad_rcx)?;
                if l == 0 || l > 2 {
                    return err(bad_rcx);
                }
                self.walk(s, gfn, l)?;
                let leaf = *s.leaves.get(&(l, gfn)).ok_or(state_incorrect)?;
                if s.runnable && !leaf.blocked {
                    return err(TdxStatus::GPA_RANGE_NOT_BLOCKED);
                }
                if leaf.blocked && !Self::tracked(s, leaf.bepoch) {
                    return err(TdxStatus::TLB_TRACKING_NOT_DONE);
                }
                Self::take_frames(s, regs.r8, 1)?;
                s.leaves.remove(&(l, gfn));
                s.nl.insert(
                    (l, gfn),
                    MockNl {
                        page: regs.r8,
                        blocked: false,
                        bepoch: 0,
                    },
                );
                let sub = l - 1;
                for i in 0..512u64 {
                    let child = MockLeaf {
                        hpa: leaf.hpa + (i << (12 + 9 * sub)),
                        pending: leaf.pending,
                        blocked: false,
                        bepoch: 0,
                    };
                    s.leaves.insert((sub, gfn + (i << (9 * sub))), child);
                }
            }
            Leaf::MemPagePromote => {
                let (gfn, l) = target.ok_or(bad_rcx)?;
                if l == 0 || l > 2 {
                    return err(bad_rcx);
                }
                self.walk(s, gfn, l)?;
                let nl = *s.nl.get(&(l, gfn)).ok_or(state_incorrect)?;
                if !nl.blocked {
                    return err(TdxStatus::GPA_RANGE_NOT_BLOCKED);
                }
                if !Self::tracked(s, nl.bepoch) {
                    return err(TdxStatus::TLB_TRACKING_NOT_DONE);
                }
                let sub = l - 1;
                let first = s.leaves.get(&(sub, gfn)).copied();
                let uniform = first.is_some_and(|f| {
                    f.hpa & ((1u64 << (12 + 9 * l)) - 1) == 0
                        && (0..512u64).all(|i| {
                            s.leaves
                                .get(&(sub, gfn + (i << (9 * sub))))
                                .is_some_and(|c| {
                                    c.pending == f.pending
                                        && !c.blocked
                                        && c.hpa == f.hpa + (i << (12 + 9 * sub))
                                })
                        })
                });
                let Some(first) = first.filter(|_| uniform) else {
                    return err(
                        TdxStatus::EPT_INVALID_PROMOTE_CONDITIONS.with_operand(OperandId::RCX)
                    );
                };
                for i in 0..512u64 {
                    s.leaves.remove(&(sub, gfn + (i << (9 * sub))));
                }
                s.nl.remove(&(l, gfn));
                s.frames.remove(&nl.page);
                s.leaves.insert(
                    (l, gfn),
                    MockLeaf {
                        hpa: first.hpa,
                        pending: first.pending,
                        blocked: false,
                        bepoch: 0,
                    },
                );
                regs.rcx = nl.page;
            }
            Leaf::MemSeptRd => {
                let (gfn, l) = target.ok_or(bad_rcx)?;
                self.walk(s, gfn, l)?;
                let (raw, state) = if let Some(leaf) = s.leaves.get(&(l, gfn)) {
                    let st = match (leaf.pending, leaf.blocked) {
                        (false, false) => SeptState::Mapped,
                        (false, true) => SeptState::Blocked,
                        (true, false) => SeptState::Pending,
                        (true, true) => SeptState::PendingBlocked,
                    };
                    (leaf.hpa, st)
                } else if let Some(nl) = s.nl.get(&(l, gfn)) {
                    (
                        nl.page,
                        if nl.blocked {
                            SeptState::NlBlocked
                        } else {
                            SeptState::NlMapped
                        },
                    )
                } else {
                    (0, SeptState::Free)
                };
                regs.rcx = raw;
                regs.rdx = SeptLevelState::new(l as u8, state).0;
            }
            Leaf::PhymemPageReclaim => {
                if !s.teardown {
                    return err(TdxStatus::LIFECYCLE_STATE_INCORRECT);
                }
                let hpa = regs.rcx;
                let leaf_key = s.leaves.iter().find(|(_, v)| v.hpa == hpa).map(|(k, _)| *k);
                let nl_key = s.nl.iter().find(|(_, v)| v.page == hpa).map(|(k, _)| *k);
                if let Some(k) = leaf_key {
                    s.leaves.remove(&k);
                    for i in 0..(1u64 << (9 * k.0)) {
                        s.frames.remove(&(hpa + i * PAGE_SIZE_4K));
                    }
                    regs.r8 = u64::from(k.0);
                } else if let Some(k) = nl_key {
                    s.nl.remove(&k);
                    s.frames.remove(&hpa);
                    regs.r8 = 0;
                } else {
                    return err(TdxStatus::PAGE_METADATA_INCORRECT.with_operand(OperandId::RCX));
                }
            }
            _ => return err(TdxStatus::OPERAND_INVALID.with_operand(OperandId::RAX)),
        }
        Ok(())
    }
}

impl Seamcall for MockModule {
    fn seamcall(&self, regs: &mut Regs) {
        let Some(leaf) = Leaf::from_number(regs.rax as u16) else {
            regs.rax = TdxStatus::OPERAND_INVALID.0;
            return;
        };
        let mut s = self.state.lock();
        *s.calls.entry(leaf.number()).or_insert(0) += 1;
        if let Some((l, status)) = s.fail_next
            && l == leaf
        {
            s.fail_next = None;
            regs.rax = status.0;
            return;
        }
        if let Some(pos) = s.busy_once.iter().position(|&l| l == leaf) {
            s.busy_once.remove(pos);
            s.busy_injected += 1;
            regs.rax = TdxStatus::OPERAND_BUSY.with_operand(OperandId::SEPT_TREE).0;
            return;
        }
        let eligible = !matches!(
            leaf,
            Leaf::MemSeptRd | Leaf::PhymemPageReclaim | Leaf::PhymemPageWbinvd
        );
        if eligible && s.busy_per_mille > 0 && !self.vcpus_out.load(Ordering::Relaxed) {
            // xorshift64
            s.rng ^= s.rng << 13;
            s.rng ^= s.rng >> 7;
            s.rng ^= s.rng << 17;
            if s.rng % 1000 < s.busy_per_mille {
                s.busy_injected += 1;
                regs.rax = TdxStatus::OPERAND_BUSY
                    .with_operand(OperandId::SEPT_ENTRY)
                    .0;
                return;
            }
        }
        regs.rax = 0;
        match self.dispatch(&mut s, leaf, regs) {
            Ok(()) => {}
            Err(status) => regs.rax = status.0,
        }
    }
    fn kind(&self) -> ModuleKind {
        ModuleKind::Emulated
    }
    fn hkid_shift(&self) -> u32 {
        HKID_SHIFT
    }
}

/// vCPU control that tells the model when vCPUs are kept out (it injects no BUSY then).
pub(crate) struct MockVcpus {
    pub(crate) module: Arc<MockModule>,
    pub(crate) kicks: AtomicU64,
}

impl VcpuControl for MockVcpus {
    fn block_entry(&self) {
        self.module.vcpus_out.store(true, Ordering::Relaxed);
    }
    fn kick_all_and_wait(&self) {
        self.kicks.fetch_add(1, Ordering::Relaxed);
    }
    fn allow_entry(&self) {
        self.module.vcpus_out.store(false, Ordering::Relaxed);
    }
}

/// A backing with one fixed page per GFN (`base + gfn * 4 KiB`) that checks every page is
/// handed out at most once at a time and comes back whole.
pub(crate) struct CheckedMemory {
    base: u64,
    huge: bool,
    out: Mutex<BTreeSet<u64>>,
    pub(crate) violations: Mutex<Vec<String>>,
}

impl CheckedMemory {
    pub(crate) fn new(base: u64, huge: bool) -> Arc<Self> {
        Arc::new(CheckedMemory {
            base,
            huge,
            out: Mutex::new(BTreeSet::new()),
            violations: Mutex::new(Vec::new()),
        })
    }
    pub(crate) fn hpa_of(&self, gfn: u64) -> u64 {
        self.base + gfn * PAGE_SIZE_4K
    }
    pub(crate) fn outstanding(&self) -> usize {
        self.out.lock().len()
    }
    pub(crate) fn is_out(&self, hpa: u64) -> bool {
        self.out.lock().contains(&hpa)
    }
    pub(crate) fn violations(&self) -> Vec<String> {
        self.violations.lock().clone()
    }
    fn hand_out(&self, gfn: u64, n: u64) -> Hpa {
        let hpa = self.hpa_of(gfn);
        let mut out = self.out.lock();
        for i in 0..n {
            if !out.insert(hpa + i * PAGE_SIZE_4K) {
                self.violations.lock().push(alloc::format!(
                    "page {:#x} handed out twice",
                    hpa + i * PAGE_SIZE_4K
                ));
            }
        }
        Hpa(hpa)
    }
}

impl PrivateMemory for CheckedMemory {
    fn alloc_4k(&self, gfn: Gfn) -> Option<Hpa> {
        Some(self.hand_out(gfn.0, 1))
    }
    fn alloc_2m(&self, gfn: Gfn) -> Option<Hpa> {
        self.huge.then(|| self.hand_out(gfn.0, 512))
    }
    fn release(&self, gfn: Gfn, hpa: Hpa, level: PageLevel) {
        if hpa.0 != self.hpa_of(gfn.0) {
            self.violations
                .lock()
                .push(alloc::format!("gfn {:#x} released with page {hpa}", gfn.0));
        }
        let mut out = self.out.lock();
        for i in 0..level.pages_4k() {
            if !out.remove(&(hpa.0 + i * PAGE_SIZE_4K)) {
                self.violations.lock().push(alloc::format!(
                    "page {:#x} released but not handed out",
                    hpa.0 + i * PAGE_SIZE_4K
                ));
            }
        }
    }
}

/// A pool of S-EPT pages that counts what is out.
pub(crate) struct CountingPool {
    free: Mutex<Vec<Hpa>>,
    pub(crate) total: usize,
}

impl CountingPool {
    pub(crate) fn new(start: u64, pages: usize) -> Arc<Self> {
        Arc::new(CountingPool {
            free: Mutex::new(
                (0..pages as u64)
                    .map(|i| Hpa(start + i * PAGE_SIZE_4K))
                    .collect(),
            ),
            total: pages,
        })
    }
    pub(crate) fn free(&self) -> usize {
        self.free.lock().len()
    }
}

impl SeptPagePool for CountingPool {
    fn take(&self) -> Option<Hpa> {
        self.free.lock().pop()
    }
    fn give_back(&self, hpa: Hpa) {
        self.free.lock().push(hpa);
    }
}

/// The xorshift64 step the stress tests draw their operations from (deterministic per seed).
#[cfg(not(loom))]
pub(super) fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// The stress tests' random fault at `gfn` on `cpu`: 2 MiB allowed when bit 8 of `r` is set.
#[cfg(not(loom))]
pub(super) fn random_fault(gfn: u64, r: u64, cpu: usize) -> super::FaultRequest {
    let level = if r & 0x100 != 0 {
        PageLevel::L2M
    } else {
        PageLevel::L4K
    };
    super::FaultRequest::new(Gfn(gfn)).max_level(level).cpu(cpu)
}
