//! vCPU runner loops: the code a runner CPU (an application processor on the appliance, a
//! thread in host tests) runs through [`Runner::poll`] while it has vCPUs bound.
//!
//! A runner with no vCPU bound (and no cross-CPU request pending) parks: [`Runner::poll`]
//! returns [`RunnerPoll::Parked`] and clears the runner's `running` flag under the slot
//! lock, so its CPU goes back to the platform's idle state instead of spinning (under QEMU
//! TCG a spinning AP costs a whole host core; uefi-platform-notes, "Other CPUs"). The host
//! binds vCPUs under the same lock and then starts every bound runner that is not running
//! (`Host::ensure_runners`), so a bind either keeps the loop alive or sees it parked.
//!
//! Each vCPU is bound to one runner; a runner serves its vCPUs round-robin, one TDH.VP.ENTER
//! per turn, and hands each exit to [`super::exit`]. The runner keeps only scheduling: which
//! vCPU enters next, halted vCPUs waiting for their wake-up time, parking.
//!
//! The turn path never allocates and never logs (outcomes are recorded in the TD and logged
//! once by the main CPU). Entry follows KVM's `vcpu->mode` protocol: publish IN_GUEST, then
//! check the TD's block count and run state, so the S-EPT unmap path's
//! [`VcpuGate`](super::memory::VcpuGate) either sees the vCPU in guest mode (and kicks it) or
//! the vCPU sees the block.
//!
//! When its TD stops, the runner issues TDH.VP.FLUSH for the vCPU on its own CPU (the CPU the
//! vCPU is associated with) and parks it; teardown starts only once every vCPU is parked.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use tdx_abi::TdxStatus;
use tdx_abi::seamcall::{Regs, Seamcall, TdxModule};

use super::exit::{AfterExit, ExitContext, TdExit};
use super::seam::RetryBusy;
use super::td::{
    BugCause, GuestOutcome, MODE_IN_GUEST, MODE_OUTSIDE, RUN_GRACEFUL, RUN_HALT, RUN_NOT_STARTED,
    TdShared, VcpuShared,
};
use super::{Platform, RunnerPoll};

const MAIL_EMPTY: u8 = 0;
const MAIL_POSTED: u8 = 1;
const MAIL_DONE: u8 = 2;

/// The longest an idle runner sleeps between polls (ms).
const IDLE_SLEEP_MAX_MS: u64 = 10;

/// How long a runner keeps entering the same vCPU before it turns to the next one (ns),
/// unless that vCPU halts or gives the CPU back earlier. Without it a vCPU that exits often
/// (port I/O, MMIO) would get one entry per turn while a sibling that spins without exits
/// (TDVF's application processors poll their mailbox) gets a whole time slice per turn.
const VCPU_SLICE_NS: u64 = 2_000_000;

/// What one turn did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Turn {
    /// The vCPU could not run (halted, parked, not started, blocked).
    Skipped,
    /// The vCPU ran and may run again at once.
    Ran,
    /// The vCPU gave the CPU back or must retry its entry (parked, BUSY).
    Yielded,
    /// A host interrupt ended the vCPU's entry (the time slice, a kick) or it spin-waited
    /// (PAUSE): it gives the CPU back.
    Preempted,
}

/// Turns a vCPU that spent a whole slice in one entry lets the runner's other vCPUs go
/// first. Such a vCPU polls memory without exits (TDVF's application processors wait for
/// their mailbox that way): at equal turns it would take half of a CPU its busy siblings
/// need. Two such vCPUs still alternate, as both wait out their penalties.
const SPIN_PENALTY_TURNS: u8 = 3;

/// A [`Seamcall`] handle that issues each call on a runner's CPU through its mailbox (the
/// hardware module's per-CPU leaves once a runner loop occupies the CPU), so typed wrappers
/// run there unchanged. A call the loop did not take within the timeout (or because it
/// parked) is not issued: it reads as failed, and [`Mailbox::delivered`] turns false.
pub(crate) struct Mailbox<'a> {
    runner: &'a Runner,
    timeout_ms: u64,
    undelivered: AtomicBool,
}

impl<'a> Mailbox<'a> {
    /// A mailbox to `runner` that waits up to `timeout_ms` for each call.
    pub(crate) fn new(runner: &'a Runner, timeout_ms: u64) -> Self {
        Mailbox {
            runner,
            timeout_ms,
            undelivered: AtomicBool::new(false),
        }
    }

    /// Whether every call went through the runner's CPU.
    pub(crate) fn delivered(&self) -> bool {
        !self.undelivered.load(Ordering::Acquire)
    }
}

impl Seamcall for Mailbox<'_> {
    fn seamcall(&self, regs: &mut Regs) {
        match self.runner.call_here(*regs, self.timeout_ms) {
            Some(out) => *regs = out,
            None => {
                self.undelivered.store(true, Ordering::Release);
                // Not issued: fail the typed wrapper; the caller sees `delivered() == false`.
                regs.rax = TdxStatus::OPERAND_INVALID.0;
            }
        }
    }
    fn kind(&self) -> tdx_abi::seamcall::ModuleKind {
        self.runner.seam.kind()
    }
    fn hkid_shift(&self) -> u32 {
        self.runner.seam.hkid_shift()
    }
}

/// A vCPU bound to a runner.
#[derive(Clone)]
pub(crate) struct Slot {
    pub(crate) td: Arc<TdShared>,
    pub(crate) vcpu: usize,
}

/// One runner loop, bound to one CPU.
pub struct Runner {
    index: AtomicUsize,
    cpu: u32,
    seam: Arc<dyn Seamcall>,
    clock: Arc<dyn Platform>,
    slots: spin::Mutex<Vec<Slot>>,
    cursor: AtomicUsize,
    exit: AtomicBool,
    /// A loop is dispatched (set by the host before starting it, cleared by the loop when it
    /// parks).
    running: AtomicBool,
    /// A failed restart was logged (once per runner).
    start_error_logged: AtomicBool,
    mail_state: AtomicU8,
    mail: spin::Mutex<Regs>,
    /// When the vCPU at `cursor` got the CPU (ns, the platform clock).
    slice_start_ns: AtomicU64,
    /// Entries the vCPU at `cursor` made in its slice.
    slice_entries: AtomicU32,
}

impl Runner {
    pub(crate) fn new(
        index: usize,
        cpu: u32,
        seam: Arc<dyn Seamcall>,
        clock: Arc<dyn Platform>,
    ) -> Runner {
        Runner {
            index: AtomicUsize::new(index),
            cpu,
            seam,
            clock,
            slots: spin::Mutex::new(Vec::new()),
            cursor: AtomicUsize::new(0),
            exit: AtomicBool::new(false),
            running: AtomicBool::new(false),
            start_error_logged: AtomicBool::new(false),
            mail_state: AtomicU8::new(MAIL_EMPTY),
            mail: spin::Mutex::new(Regs::default()),
            slice_start_ns: AtomicU64::new(0),
            slice_entries: AtomicU32::new(0),
        }
    }

    pub(crate) fn set_index(&self, index: usize) {
        self.index.store(index, Ordering::Relaxed);
    }

    /// The CPU this runner runs on.
    pub fn cpu(&self) -> u32 {
        self.cpu
    }

    /// Asks the loop to return [`RunnerPoll::Exit`] at its next turn.
    pub fn request_exit(&self) {
        self.exit.store(true, Ordering::Release);
    }

    /// Whether a loop is dispatched for this runner (false once it returned
    /// [`RunnerPoll::Parked`]).
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// Claims the right to dispatch a loop: true if the runner was parked (the caller must
    /// then start it, or call [`Runner::start_failed`]).
    pub(crate) fn claim_start(&self) -> bool {
        self.running
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Undoes [`Runner::claim_start`] after the platform could not start the loop.
    pub(crate) fn start_failed(&self) {
        self.running.store(false, Ordering::SeqCst);
    }

    /// Whether a failed restart was already logged; marks it logged (logged once per runner).
    pub(crate) fn take_start_error_logged(&self) -> bool {
        self.start_error_logged.swap(true, Ordering::Relaxed)
    }

    /// vCPUs bound to this runner.
    pub fn bound_vcpus(&self) -> usize {
        self.slots.lock().len()
    }

    pub(crate) fn bind(&self, slot: Slot) {
        self.slots.lock().push(slot);
    }

    /// Removes every vCPU of the TD with TDR `tdr`.
    pub(crate) fn unbind_td(&self, td: &Arc<TdShared>) {
        self.slots.lock().retain(|s| !Arc::ptr_eq(&s.td, td));
    }

    /// Issues `regs` on this runner's CPU from another CPU (hardware per-CPU leaves once the
    /// runner occupies the CPU) and waits up to `timeout_ms`.
    pub(crate) fn call_here(&self, regs: Regs, timeout_ms: u64) -> Option<Regs> {
        if self
            .mail_state
            .compare_exchange(MAIL_EMPTY, MAIL_EMPTY, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return None;
        }
        *self.mail.lock() = regs;
        self.mail_state.store(MAIL_POSTED, Ordering::Release);
        self.clock.kick_cpu(self.cpu);
        let deadline = self.clock.now_ms().saturating_add(timeout_ms);
        while self.mail_state.load(Ordering::Acquire) != MAIL_DONE {
            let parked = !self.running.load(Ordering::SeqCst);
            if parked || self.clock.now_ms() > deadline {
                // Withdraw the request unless the loop served it meanwhile.
                if self
                    .mail_state
                    .compare_exchange(MAIL_POSTED, MAIL_EMPTY, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return None;
                }
                continue;
            }
            core::hint::spin_loop();
        }
        let out = *self.mail.lock();
        self.mail_state.store(MAIL_EMPTY, Ordering::Release);
        Some(out)
    }

    fn serve_mail(&self) {
        if self.mail_state.load(Ordering::Acquire) == MAIL_POSTED {
            let mut regs = *self.mail.lock();
            RetryBusy(&*self.seam).seamcall(&mut regs);
            *self.mail.lock() = regs;
            self.mail_state.store(MAIL_DONE, Ordering::Release);
        }
    }

    /// One turn of the loop: serve a cross-CPU request, then run one vCPU entry. Returns
    /// [`RunnerPoll::Parked`] (and the loop must return) when no vCPU is bound.
    pub fn poll(&self) -> RunnerPoll {
        if self.exit.load(Ordering::Acquire) {
            self.running.store(false, Ordering::SeqCst);
            return RunnerPoll::Exit;
        }
        self.serve_mail();
        let n = {
            let slots = self.slots.lock();
            if slots.is_empty() && self.mail_state.load(Ordering::Acquire) == MAIL_EMPTY {
                // Under the slot lock: a concurrent bind either lands before this check (and
                // the loop keeps running) or sees `running` false afterwards (and restarts it).
                self.running.store(false, Ordering::SeqCst);
                return RunnerPoll::Parked;
            }
            slots.len()
        };
        // The vCPU at the cursor keeps the CPU until its slice ends or it stops running. A
        // first pass passes over vCPUs serving a spin penalty; if nothing else could run, a
        // second pass ignores the penalties.
        let start = self.cursor.load(Ordering::Relaxed);
        for pass in 0..2 {
            for k in 0..n {
                let i = (start + k) % n;
                let Some(slot) = self.slots.lock().get(i).cloned() else {
                    break;
                };
                let penalty = slot.td.vcpus.vcpus.get(slot.vcpu).map(|v| &v.spin_penalty);
                if pass == 0
                    && let Some(p) = penalty
                    && p.load(Ordering::Relaxed) > 0
                {
                    p.fetch_sub(1, Ordering::Relaxed);
                    continue;
                }
                if k > 0 || pass > 0 {
                    self.start_slice();
                }
                let turn = self.turn(&slot);
                if !matches!(turn, Turn::Skipped) {
                    self.slice_entries.fetch_add(1, Ordering::Relaxed);
                }
                let used = self
                    .clock
                    .now_ns()
                    .saturating_sub(self.slice_start_ns.load(Ordering::Relaxed));
                let next = match turn {
                    Turn::Skipped => continue,
                    Turn::Ran if used < VCPU_SLICE_NS => i,
                    Turn::Ran | Turn::Yielded => i + 1,
                    Turn::Preempted => {
                        // One entry ran the whole slice: a spin without exits.
                        let spun = self.slice_entries.load(Ordering::Relaxed) == 1
                            && used >= VCPU_SLICE_NS;
                        if spun && let Some(p) = penalty {
                            p.store(SPIN_PENALTY_TURNS, Ordering::Relaxed);
                        }
                        i + 1
                    }
                };
                if next != i {
                    self.start_slice();
                }
                self.cursor.store(next, Ordering::Relaxed);
                return RunnerPoll::Busy;
            }
        }
        RunnerPoll::Idle {
            sleep_ms: self.idle_sleep_ms(),
        }
    }

    /// How long an idle runner may sleep: until the earliest halted vCPU's wake-up time
    /// when every bound vCPU is halted (at most [`IDLE_SLEEP_MAX_MS`]), else 1 ms. Kicks
    /// (start, stop, interrupts for its vCPUs) wake it earlier.
    fn idle_sleep_ms(&self) -> u64 {
        let now = self.clock.now_ms();
        let mut sleep = IDLE_SLEEP_MAX_MS;
        for slot in self.slots.lock().iter() {
            let Some(v) = slot.td.vcpus.vcpus.get(slot.vcpu) else {
                continue;
            };
            if v.parked.load(Ordering::Acquire) {
                continue;
            }
            match v.halted_until.load(Ordering::Acquire) {
                0 => return 1,
                until => sleep = sleep.min(until.saturating_sub(now).max(1)),
            }
        }
        sleep
    }

    /// Starts a new slice (for the vCPU the runner turns to).
    fn start_slice(&self) {
        self.slice_start_ns
            .store(self.clock.now_ns(), Ordering::Relaxed);
        self.slice_entries.store(0, Ordering::Relaxed);
    }

    /// Runs one entry of the slot's vCPU if it may run.
    fn turn(&self, slot: &Slot) -> Turn {
        let parked = |did: bool| if did { Turn::Yielded } else { Turn::Skipped };
        let td = &*slot.td;
        let Some(v) = td.vcpus.vcpus.get(slot.vcpu) else {
            return Turn::Skipped;
        };
        if v.parked.load(Ordering::Acquire) {
            return Turn::Skipped;
        }
        let run = td.run.load(Ordering::SeqCst);
        if run == RUN_HALT {
            return parked(self.park(td, v));
        }
        if run == RUN_NOT_STARTED {
            return Turn::Skipped;
        }
        let now = self.clock.now_ms();
        let until = v.halted_until.load(Ordering::Acquire);
        if until != 0 {
            if run == RUN_GRACEFUL {
                return parked(self.park(td, v));
            }
            if now < until {
                return Turn::Skipped;
            }
            v.halted_until.store(0, Ordering::Release);
        }
        // The vCPU's APIC timer, checked at every entry (the guest leaves at least at each of
        // the host's own timer interrupts).
        let expired = v.lapic.lock().poll_timer(self.clock.now_ns());
        if let Some(vector) = expired {
            td.vcpus.kicker.post_interrupt(v, vector);
        }
        // KVM order: publish the mode, then look at requests.
        v.mode.store(MODE_IN_GUEST, Ordering::SeqCst);
        if td.vcpus.block.load(Ordering::SeqCst) > 0 || td.run.load(Ordering::SeqCst) == RUN_HALT {
            v.mode.store(MODE_OUTSIDE, Ordering::SeqCst);
            return Turn::Skipped;
        }
        if v.flush_translations.swap(false, Ordering::SeqCst) {
            self.clock.flush_guest_translations();
        }
        td.vcpus.kicker.before_entry(v);
        let answer = *v.answer.lock();
        let result = self.seam.vp_enter(v.tdvpr, &answer);
        v.exits.fetch_add(1, Ordering::SeqCst);
        v.mode.store(MODE_OUTSIDE, Ordering::SeqCst);
        match result {
            Err(e) if e.is_busy() => {
                td.counters.busy_retries.fetch_add(1, Ordering::Relaxed);
                Turn::Yielded
            }
            Err(e) => {
                td.set_outcome(GuestOutcome::Bugged(BugCause::Seamcall(e)));
                Turn::Yielded
            }
            Ok(regs) => {
                let exit_reason = TdExit::decode(&regs);
                let yielded = matches!(exit_reason, TdExit::ExternalInterrupt);
                let exit = ExitContext {
                    td,
                    vcpu: v,
                    runner: self.index.load(Ordering::Relaxed),
                    now_ms: now,
                    now_ns: self.clock.now_ns(),
                    platform_tsc: self.clock.tsc(),
                    platform: &*self.clock,
                    seam: &*self.seam,
                };
                match exit.handle(exit_reason) {
                    AfterExit::Continue(reply) => *v.answer.lock() = reply.answer(&regs),
                    AfterExit::Park => {
                        self.park(td, v);
                    }
                }
                if yielded { Turn::Preempted } else { Turn::Ran }
            }
        }
    }

    /// Flushes the vCPU on this CPU (TDH.VP.INIT associated it here) and parks it. False if
    /// the flush must be retried.
    fn park(&self, td: &TdShared, v: &VcpuShared) -> bool {
        if !v.flushed.load(Ordering::Acquire) {
            match self.seam.vp_flush(v.tdvpr) {
                Ok(()) => {}
                Err(e) if e.is_busy() => return true,
                Err(e) if e.status.is(TdxStatus::VCPU_NOT_ASSOCIATED) => {}
                Err(e) => td.set_outcome(GuestOutcome::Bugged(BugCause::Seamcall(e))),
            }
            v.flushed.store(true, Ordering::Release);
        }
        v.parked.store(true, Ordering::Release);
        true
    }
}

impl core::fmt::Debug for Runner {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Runner")
            .field("index", &self.index.load(Ordering::Relaxed))
            .field("cpu", &self.cpu)
            .finish()
    }
}
