//! TD exits: the output registers of TDH.VP.ENTER decoded into a [`TdExit`], and what the
//! host does for each one (KVM's `tdx_handle_exit` in `arch/x86/kvm/vmx/tdx.c` has the same
//! split).
//!
//! | exit | handling |
//! | --- | --- |
//! | external interrupt (kick, timer) | nothing; re-enter on a later turn |
//! | EPT violation | [`SeptManager::map_private`](crate::sept::SeptManager::map_private) with the mapping size from the guest's accept level (4 KiB for plain accesses, 2 MiB only if the TD allows huge pages), retried locally on `MapOutcome::Retry` as KVM does, so the vCPU does not re-enter just to fault again (zero-step) |
//! | EPT violation on a PENDING page (`SEPT_VE_DISABLE`) | guest bug: TD failed |
//! | TDVMCALL | decoded into a [`Request`] and answered with a [`Reply`]: port I/O and MMIO go to the TD's device buses ([`crate::devices`]); MapGPA converts at most 64 MiB per exit (and maps the shared side in the shared EPT), answering RETRY with the next GPA; HLT idles the vCPU |
//! | triple fault | guest shutdown → stopped |
//! | anything else | TD bugged |
//!
//! Nothing here allocates or logs: outcomes are recorded in the TD and logged once by the main
//! CPU.

use core::sync::atomic::Ordering;

use tdx_abi::exit::{
    BUS_LOCK, C_STATE_SMI, EPT_VIOLATION, EXCEPTION_OR_NMI, EXT_QUAL_INFO_SHIFT,
    EXT_QUAL_TYPE_ACCEPT, EXT_QUAL_TYPE_MASK, EXT_QUAL_TYPE_PENDING_EPT_VIOLATION,
    EXTERNAL_INTERRUPT, OTHER_SMI, TDCALL, TRIPLE_FAULT, is_host_nmi,
};
use tdx_abi::seamcall::{Regs, SeamError};
use tdx_abi::{Gfn, Gpa, Leaf, PageLevel, TdxStatus};

use crate::sept::{FaultRequest, MapOutcome, SeptError};

use super::memory::VcpuGate;

/// GetQuote buffer status "quote service unavailable" (the header's second u64; Linux
/// `GET_QUOTE_SERVICE_UNAVAILABLE`, QEMU's `QGS_ERROR_UNAVAILABLE` mapping).
const QGS_UNAVAILABLE: u64 = 0x8000_0000_0000_0001;
use super::msr::MsrRefused;
use super::td::{BugCause, FailCause, GuestOutcome, RUN_GRACEFUL, RUN_HALT, TdShared, VcpuShared};
use super::tdvmcall::{Access, Reply, Request};
use crate::devices::lapic::{self, ApicRefused, Delivery};
use crate::sept::VcpuControl;

/// The basic exit reason: bits 15:0 of the exit reason.
const EXIT_REASON_BASIC_MASK: u64 = 0xFFFF;

/// Bytes converted per MapGPA exit before answering RETRY (GHCI allows RETRY; Linux honours
/// it). Large enough that TDVF's requests finish in one call: OVMF 2022.11 ignores the
/// status (`BaseMemEncryptTdxLib`, `SetOrClearSharedBit`), so a partly converted buffer
/// would stay so. Small enough to bound one exit's work (about 50 ms under TCG).
pub const MAPGPA_CHUNK_BYTES: u64 = 64 << 20;
/// Local fault retries before re-entering the vCPU.
const LOCAL_FAULT_RETRIES: u32 = 64;

/// A decoded TD exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TdExit {
    /// External interrupt: a kick or the timer; just re-enter.
    ExternalInterrupt,
    /// Something of the host's own interrupted the TD: an NMI, an SMI (the platform's SMM
    /// ran), a C-state SMI or a bus lock. Nothing for the TD; just re-enter (KVM re-enters
    /// after EXIT_REASON_OTHER_SMI and after handling a host NMI).
    HostEvent {
        /// The basic exit reason.
        reason: u64,
    },
    /// Triple fault: the guest shut down.
    TripleFault,
    /// EPT violation on `gpa`.
    EptViolation {
        /// Faulting GPA (shared bit included).
        gpa: Gpa,
        /// Exit qualification (bit 0 read, bit 1 write).
        qualification: u64,
        /// Extended exit qualification type (bits 3:0).
        ext_type: u64,
        /// The guest's accept level when `ext_type` is [`EXT_QUAL_TYPE_ACCEPT`].
        accept_level: Option<PageLevel>,
    },
    /// A TDVMCALL.
    Tdvmcall(Request),
    /// The module ended the entry with a non-recoverable status (bit 62): the vCPU or the
    /// whole TD can no longer run. Bit 63 is clear for some of these, so the typed wrapper
    /// returns them as a completed call; they are sorted out here, before the exit reason.
    NonRecoverable {
        /// RAX bits 63:32 (the status; the low half is the exit reason).
        status: TdxStatus,
    },
    /// Another exit reason.
    Other {
        /// The basic exit reason (RAX bits 15:0).
        reason: u64,
    },
}

impl TdExit {
    /// Decodes the output registers of a TDH.VP.ENTER that ended in a TD exit (Linux
    /// `tdx_vcpu_run`/`tdx_handle_exit`): RAX bits 63:32 the completion status, bits 31:0 the
    /// exit reason whose bits 15:0 are the basic reason (bit 26 marks a bus lock, bit 31 a
    /// failed entry); RCX the exit qualification, RDX the extended qualification, R8 the GPA,
    /// and for TDCALL the TDVMCALL registers.
    pub fn decode(r: &Regs) -> TdExit {
        let status = TdxStatus(r.rax & 0xFFFF_FFFF_0000_0000);
        let reason = r.rax & EXIT_REASON_BASIC_MASK;
        // The module reports a triple fault as TDX_NON_RECOVERABLE_VCPU with reason 2
        // (intel/tdx-module `tdx_td_dispatcher.c`): the guest shut down, which KVM sorts out
        // before its non-recoverable check too.
        if reason == TRIPLE_FAULT && matches!(r.rax >> 32, 0 | 0x4000_0001) {
            return TdExit::TripleFault;
        }
        if status.is_non_recoverable() {
            return TdExit::NonRecoverable { status };
        }
        match reason {
            EXTERNAL_INTERRUPT => TdExit::ExternalInterrupt,
            OTHER_SMI | C_STATE_SMI | BUS_LOCK => TdExit::HostEvent { reason },
            EXCEPTION_OR_NMI if is_host_nmi(r.rax, r.r9) => TdExit::HostEvent { reason },
            EPT_VIOLATION => {
                let ext_type = r.rdx & EXT_QUAL_TYPE_MASK;
                TdExit::EptViolation {
                    gpa: Gpa(r.r8),
                    qualification: r.rcx,
                    ext_type,
                    accept_level: (ext_type == EXT_QUAL_TYPE_ACCEPT)
                        .then(|| PageLevel::from_raw((r.rdx >> EXT_QUAL_INFO_SHIFT) & 7))
                        .flatten(),
                }
            }
            TDCALL => TdExit::Tdvmcall(Request::decode(r)),
            reason => TdExit::Other { reason },
        }
    }
}

/// What the runner does with the vCPU after its exit was handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AfterExit {
    /// Enter it again on a later turn (and hand it `Reply` if it made a TDVMCALL).
    Continue(Reply),
    /// The guest is idle during a graceful stop: flush and park it.
    Park,
}

/// The vCPU that exited, as the handlers see it.
pub(crate) struct ExitContext<'a> {
    /// Its TD.
    pub(crate) td: &'a TdShared,
    /// The vCPU.
    pub(crate) vcpu: &'a VcpuShared,
    /// The runner handling it (the S-EPT fault path's per-CPU cache index).
    pub(crate) runner: usize,
    /// Platform time of the exit (ms).
    pub(crate) now_ms: u64,
    /// Platform time of the exit (ns), for the virtual APIC timer.
    pub(crate) now_ns: u64,
    /// The platform's TSC and ticks per millisecond at the exit ([`super::Platform::tsc`]).
    pub(crate) platform_tsc: (u64, u64),
    /// The platform, for time taken by the handling itself.
    pub(crate) platform: &'a dyn super::Platform,
    /// The runner's SEAMCALL handle (this CPU, which the vCPU is associated with).
    pub(crate) seam: &'a dyn tdx_abi::seamcall::Seamcall,
}

impl ExitContext<'_> {
    /// Handles `exit`.
    pub(crate) fn handle(&self, exit: TdExit) -> AfterExit {
        let td = self.td;
        td.counters.exits.fetch_add(1, Ordering::Relaxed);
        match exit {
            TdExit::ExternalInterrupt | TdExit::HostEvent { .. } => {}
            TdExit::TripleFault => td.set_outcome(GuestOutcome::Shutdown),
            TdExit::EptViolation {
                gpa,
                ext_type,
                accept_level,
                ..
            } => {
                td.counters.ept_violations.fetch_add(1, Ordering::Relaxed);
                self.fault(gpa, ext_type, accept_level);
            }
            TdExit::Tdvmcall(request) => return self.tdvmcall(request),
            TdExit::NonRecoverable { status } => {
                td.set_outcome(GuestOutcome::Bugged(BugCause::Seamcall(SeamError {
                    leaf: Leaf::VpEnter,
                    status,
                    rcx: 0,
                    rdx: 0,
                })));
            }
            TdExit::Other { reason } => {
                td.set_outcome(GuestOutcome::Bugged(BugCause::UnknownExit(reason)));
            }
        }
        AfterExit::Continue(Reply::DONE)
    }

    /// Posts an interrupt the vCPU's x2APIC raised to its destinations (the vCPU itself,
    /// one other by x2APIC ID, or all others); a halted destination wakes, a running other
    /// one is kicked so that it takes the interrupt at once.
    fn deliver(&self, delivery: Delivery) {
        let vcpus = &self.td.vcpus;
        let post = |v: &VcpuShared, vector: u8| {
            vcpus.kicker.post_interrupt(v, vector);
            if v.index != self.vcpu.index {
                v.wake();
                vcpus.kicker.kick(v.cpu, v.tdvpr);
            }
        };
        match delivery {
            Delivery::None => {}
            Delivery::ToSelf(vector) => post(self.vcpu, vector),
            Delivery::To { apic_id, vector } => {
                if let Some(v) = vcpus.vcpus.iter().find(|v| v.index == apic_id) {
                    post(v, vector);
                }
            }
            Delivery::ToOthers { vector, and_self } => {
                for v in &vcpus.vcpus {
                    if and_self || v.index != self.vcpu.index {
                        post(v, vector);
                    }
                }
            }
        }
    }

    /// For a HLT with interrupts on: whether TDH.VP.RD of VCPU_STATE_DETAILS reports a
    /// deliverable virtual interrupt (VMXIP, bit 0), as KVM's
    /// `tdx_protected_apic_has_interrupt` asks before it lets a vCPU sleep. A failed read
    /// counts as none.
    fn virtual_interrupt_pending(&self, request: Request) -> bool {
        use tdx_abi::seamcall::TdxModule;
        matches!(
            request,
            Request::Hlt {
                interrupts_blocked: false
            }
        ) && self
            .seam
            .vp_rd(self.vcpu.tdvpr, tdx_abi::metadata::vcpu::VCPU_STATE_DETAILS)
            .is_ok_and(|details| details & 1 != 0)
    }

    fn tdvmcall(&self, request: Request) -> AfterExit {
        let td = self.td;
        let reply = match request {
            Request::Hlt { .. } => {
                if td.run.load(Ordering::SeqCst) == RUN_GRACEFUL {
                    // The guest is idle: it honours the shutdown request.
                    return AfterExit::Park;
                }
                let mut lapic = self.vcpu.lapic.lock();
                if let Some(vector) = lapic.poll_timer(self.now_ns) {
                    // An interrupt is due already: no halt.
                    td.vcpus.kicker.post_interrupt(self.vcpu, vector);
                    return AfterExit::Continue(Reply::DONE);
                }
                if td.vcpus.kicker.interrupt_pending(self.vcpu)
                    || self.virtual_interrupt_pending(request)
                {
                    // One was posted before the halt reached the host, or the guest halted
                    // with interrupts on while one waits in its virtual APIC: no halt either.
                    return AfterExit::Continue(Reply::DONE);
                }
                // Wake at the idle period or the vCPU's next timer interrupt, whichever is
                // first (an interrupt posted meanwhile wakes it at once).
                let idle_until = self.now_ms + td.idle_wakeup_ms.max(1);
                let timer_ms = lapic.next_timer_ns().map(|ns| ns.div_ceil(1_000_000));
                let until = timer_ms.map_or(idle_until, |t| t.clamp(self.now_ms + 1, idle_until));
                self.vcpu.halted_until.store(until, Ordering::Release);
                Reply::DONE
            }
            Request::Io { size, port, access } => match access {
                Access::Write(value) => {
                    td.io.write(port, size, value);
                    if td.power.off_requested() {
                        td.set_outcome(GuestOutcome::PoweredOff);
                    } else if td.power.reset_requested() {
                        td.set_outcome(GuestOutcome::Reset);
                    }
                    Reply::DONE
                }
                Access::Read => Reply::success(td.io.read(port, size)),
            },
            Request::Mmio { size, gpa, access } => {
                let gpa = Gpa(gpa.0 & !(1u64 << td.shared_bit));
                match access {
                    Access::Write(value) => {
                        td.mmio.write(gpa, size, value);
                        Reply::DONE
                    }
                    Access::Read => Reply::success(td.mmio.read(gpa, size)),
                }
            }
            Request::MapGpa { gpa, size } => self.map_gpa(gpa, size),
            Request::ReportFatalError { code, message } => {
                td.set_outcome(GuestOutcome::FatalError { code, message });
                Reply::DONE
            }
            // The hypervisor leaves name a KVM-compatible host with no paravirtual features
            // (0x40000001 all zero), as a TD under QEMU/KVM sees: Linux allows x2APIC without
            // interrupt remapping only under a hypervisor it recognises, and a TD must use
            // x2APIC. The x2APIC topology leaves (0xB, 0x1F) carry this vCPU's x2APIC ID in
            // EDX, as the VMM's CPUID table does: TDVF's relocated mailbox loop learns its
            // APIC ID this way and compares it with the ID the OS writes to wake it (edk2
            // `OvmfPkg/TdxDxe/X64/ApRunLoop.nasm`). Any other leaf the module sends here
            // reads as zeros, as a leaf the CPU does not implement.
            Request::Cpuid {
                leaf: 0x4000_0000, ..
            } => Reply::success4([0x4000_0001, 0x4B4D_564B, 0x564B_4D56, 0x4D]),
            Request::Cpuid {
                leaf: 0xB | 0x1F,
                subleaf,
            } => {
                let (ebx, ecx) = match subleaf {
                    // SMT level: one thread; core level: one core per package.
                    0 => (1, 0x100),
                    1 => (1, 0x201),
                    n => (0, n & 0xFF),
                };
                Reply::success4([0, ebx, u64::from(ecx), u64::from(self.vcpu.index)])
            }
            Request::Cpuid { .. } => Reply::success4([0; 4]),
            Request::Rdmsr {
                msr: lapic::MSR_TSC_DEADLINE,
            } => Reply::success(self.vcpu.lapic.lock().tsc_deadline()),
            Request::Wrmsr {
                msr: lapic::MSR_TSC_DEADLINE,
                value,
            } => {
                // When the TD's TSC reaches `value`, on the platform clock.
                let (tsc, per_ms) = self.platform_tsc;
                let ahead = td.guest_tsc.ns_until(value, tsc, per_ms);
                let at = self.now_ns.saturating_add(ahead);
                self.vcpu.lapic.lock().set_tsc_deadline(value, at);
                Reply::DONE
            }
            Request::Rdmsr { msr } if (lapic::X2APIC_FIRST..=lapic::X2APIC_LAST).contains(&msr) => {
                match self.vcpu.lapic.lock().read(msr, self.now_ns) {
                    Ok(value) => Reply::success(value),
                    Err(ApicRefused) => Reply::INVALID_OPERAND,
                }
            }
            Request::Wrmsr { msr, value }
                if (lapic::X2APIC_FIRST..=lapic::X2APIC_LAST).contains(&msr) =>
            {
                let written = self.vcpu.lapic.lock().write(msr, value, self.now_ns);
                match written {
                    Ok(delivery) => {
                        self.deliver(delivery);
                        Reply::DONE
                    }
                    Err(ApicRefused) => Reply::INVALID_OPERAND,
                }
            }
            Request::Rdmsr { msr } => match self.vcpu.msrs.lock().read(msr) {
                Ok(value) => Reply::success(value),
                Err(MsrRefused) => Reply::INVALID_OPERAND,
            },
            Request::Wrmsr { msr, value } => match self.vcpu.msrs.lock().write(msr, value) {
                Ok(()) => Reply::DONE,
                Err(MsrRefused) => Reply::INVALID_OPERAND,
            },
            // Only the base GHCI set: R11–R14 zero.
            Request::GetTdVmCallInfo { leaf: 0 } => Reply::success4([0; 4]),
            Request::GetTdVmCallInfo { .. } => Reply::INVALID_OPERAND,
            Request::SetupEventNotifyInterrupt { vector } => match u8::try_from(vector) {
                Ok(v) if v >= 32 => {
                    td.notify_vector.store(v, Ordering::Relaxed);
                    Reply::DONE
                }
                _ => Reply::INVALID_OPERAND,
            },
            // No quoting enclave on this host: the request completes with the buffer's status
            // "quote service unavailable" (QGS_UNAVAILABLE), as QEMU answers without a QGS.
            // The buffer must be shared memory the guest converted (GHCI GetQuote).
            Request::GetQuote { gpa, size } => {
                let shared = 1u64 << td.shared_bit;
                if gpa.0 & shared == 0 || !gpa.0.is_multiple_of(4096) || size < 24 {
                    Reply::INVALID_OPERAND
                } else if td.shared_ept.write_shared(
                    (gpa.0 & !shared) >> 12,
                    8,
                    &QGS_UNAVAILABLE.to_le_bytes(),
                ) {
                    Reply::DONE
                } else {
                    Reply::INVALID_OPERAND
                }
            }
            // A sub-function this host does not implement is the guest's problem, not a
            // broken TD (KVM answers the same way).
            Request::Malformed { .. } | Request::Unsupported { .. } => Reply::INVALID_OPERAND,
        };
        AfterExit::Continue(reply)
    }

    fn fault(&self, gpa: Gpa, ext_type: u64, accept_level: Option<PageLevel>) {
        let td = self.td;
        let shared_mask = 1u64 << td.shared_bit;
        if gpa.0 & shared_mask != 0 {
            td.set_outcome(GuestOutcome::Failed {
                what: FailCause::SharedAccess,
                value: gpa.0,
            });
            return;
        }
        if ext_type == EXT_QUAL_TYPE_PENDING_EPT_VIOLATION {
            td.set_outcome(GuestOutcome::Failed {
                what: FailCause::PendingAccess,
                value: gpa.0,
            });
            return;
        }
        let level = match accept_level {
            Some(l) if td.huge_pages => l.min(PageLevel::L2M),
            _ => PageLevel::L4K,
        };
        let req = FaultRequest::new(gpa.gfn())
            .max_level(level)
            .cpu(self.runner);
        for _ in 0..LOCAL_FAULT_RETRIES {
            match td.sept.map_private(req) {
                Ok(MapOutcome::Mapped { .. } | MapOutcome::AlreadyMapped { .. }) => return,
                Ok(MapOutcome::Retry) => {
                    if td.run.load(Ordering::SeqCst) == RUN_HALT {
                        return;
                    }
                    core::hint::spin_loop();
                }
                Err(e) => {
                    let outcome = match e {
                        SeptError::Bugged(r) => GuestOutcome::Bugged(BugCause::Sept(r)),
                        SeptError::TornDown => return,
                        SeptError::OutOfPrivateMemory { .. } | SeptError::GfnOutOfRange { .. } => {
                            GuestOutcome::Failed {
                                what: FailCause::NoPrivateMemory,
                                value: gpa.0,
                            }
                        }
                        _ => GuestOutcome::Bugged(BugCause::SeptPagesExhausted),
                    };
                    td.set_outcome(outcome);
                    return;
                }
            }
        }
        // Still contended: re-enter; the guest faults again.
    }

    fn map_gpa(&self, gpa: Gpa, size: u64) -> Reply {
        let td = self.td;
        let shared_mask = 1u64 << td.shared_bit;
        let to_shared = gpa.0 & shared_mask != 0;
        let start = gpa.0 & !shared_mask;
        let end = start.checked_add(size);
        if !start.is_multiple_of(4096)
            || size == 0
            || !size.is_multiple_of(4096)
            || end.is_none_or(|e| e > shared_mask)
        {
            return Reply::INVALID_OPERAND;
        }
        let chunk = size.min(MAPGPA_CHUNK_BYTES);
        let (first, last) = (start >> 12, (start + chunk) >> 12);
        if to_shared {
            // Attribute first, so a racing fault cannot map the GFNs again.
            td.backing.set_shared(first, last, true);
            match td.sept.unmap_private(Gfn(first)..Gfn(last)) {
                Ok(removed) => {
                    let bytes = removed.removed_4k * PageLevel::L4K.size()
                        + removed.removed_2m * PageLevel::L2M.size()
                        + removed.removed_1g * PageLevel::L1G.size();
                    if bytes > 0 {
                        let c = &td.counters;
                        c.shared_conversion_bytes
                            .fetch_add(bytes, Ordering::Relaxed);
                        let spent = self.platform.now_ns().saturating_sub(self.now_ns);
                        c.shared_conversion_ns.fetch_add(spent, Ordering::Relaxed);
                    }
                }
                Err(SeptError::Bugged(r)) => {
                    td.set_outcome(GuestOutcome::Bugged(BugCause::Sept(r)));
                    return Reply::DONE;
                }
                Err(SeptError::TornDown) => return Reply::DONE,
                Err(_) => return Reply::INVALID_OPERAND,
            }
            // The private page is out of the TD: its frame backs the shared alias.
            for gfn in first..last {
                if let Some(frame) = td.backing.frame(gfn)
                    && td.shared_ept.map(gfn, frame).is_err()
                {
                    return Reply::INVALID_OPERAND;
                }
            }
        } else {
            let mut unmapped = false;
            for gfn in first..last {
                unmapped |= td.shared_ept.unmap(gfn).is_some();
            }
            if unmapped {
                // Every vCPU flushes its CPU's translations before it enters again, and each
                // one in the TD leaves it once, so no stale translation of the shared alias
                // survives before the frame may become private again.
                for v in &td.vcpus.vcpus {
                    v.flush_translations.store(true, Ordering::SeqCst);
                }
                VcpuGate(td.vcpus.clone()).kick_all_and_wait();
            }
            td.backing.set_shared(first, last, false);
        }
        td.counters.conversions.fetch_add(1, Ordering::Relaxed);
        if chunk < size {
            Reply::retry((start + chunk) | (gpa.0 & shared_mask))
        } else {
            Reply::DONE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tdx_abi::exit::{QUAL_WRITE, TDVMCALL_IO};

    #[test]
    fn decodes_accept_level_and_tdvmcalls() {
        let r = Regs {
            rax: EPT_VIOLATION,
            rcx: QUAL_WRITE,
            rdx: EXT_QUAL_TYPE_ACCEPT | 1 << 32,
            r8: 0x20_0000,
            ..Regs::default()
        };
        assert_eq!(
            TdExit::decode(&r),
            TdExit::EptViolation {
                gpa: Gpa(0x20_0000),
                qualification: QUAL_WRITE,
                ext_type: EXT_QUAL_TYPE_ACCEPT,
                accept_level: Some(PageLevel::L2M),
            }
        );
        let r = Regs {
            rax: TDCALL,
            r11: TDVMCALL_IO,
            r12: 1,
            r13: 1,
            r14: 0x3F8,
            r15: u64::from(b'x'),
            ..Regs::default()
        };
        assert_eq!(
            TdExit::decode(&r),
            TdExit::Tdvmcall(Request::Io {
                size: crate::devices::AccessSize::Byte,
                port: 0x3F8,
                access: Access::Write(u64::from(b'x'))
            })
        );
        assert_eq!(
            TdExit::decode(&Regs {
                rax: 0x1234,
                ..Regs::default()
            }),
            TdExit::Other { reason: 0x1234 }
        );
        // A TDVMCALL exit with the bus-lock bit (26) is still a TDVMCALL.
        let mut bus_lock = r;
        bus_lock.rax = TDCALL | 1 << 26;
        assert!(matches!(TdExit::decode(&bus_lock), TdExit::Tdvmcall(_)));
        // Non-recoverable statuses come first, whatever the reason bits say; bit 63 is clear
        // in TDX_NON_RECOVERABLE_VCPU.
        for status in [
            TdxStatus::NON_RECOVERABLE_VCPU,
            TdxStatus::NON_RECOVERABLE_TD,
            TdxStatus::NON_RECOVERABLE_TD_NON_ACCESSIBLE,
        ] {
            assert_eq!(
                TdExit::decode(&Regs {
                    rax: status.0 | EPT_VIOLATION,
                    ..Regs::default()
                }),
                TdExit::NonRecoverable { status }
            );
        }
        // ... except a triple fault, which the module reports as TDX_NON_RECOVERABLE_VCPU
        // with reason 2 (intel/tdx-module `tdx_td_dispatcher.c`): the guest shut down.
        let decode = |rax: u64, r9: u64| {
            TdExit::decode(&Regs {
                rax,
                r9,
                ..Regs::default()
            })
        };
        let vcpu_lost = TdxStatus::NON_RECOVERABLE_VCPU.0;
        assert_eq!(decode(vcpu_lost | TRIPLE_FAULT, 0), TdExit::TripleFault);
        assert_eq!(
            decode(TdxStatus::NON_RECOVERABLE_TD.0 | TRIPLE_FAULT, 0),
            TdExit::NonRecoverable {
                status: TdxStatus::NON_RECOVERABLE_TD
            }
        );
        // The host's own events exit with TDX_SUCCESS and are re-entered (the module's
        // async exits for SMIs, C-state SMIs and bus locks; an NMI has R9 type 2).
        for reason in [OTHER_SMI, C_STATE_SMI, BUS_LOCK] {
            assert_eq!(decode(reason, 0), TdExit::HostEvent { reason });
        }
        assert_eq!(
            decode(EXCEPTION_OR_NMI, 1 << 31 | 2 << 8 | 2),
            TdExit::HostEvent {
                reason: EXCEPTION_OR_NMI
            }
        );
        assert_eq!(
            decode(EXCEPTION_OR_NMI, 1 << 31 | 3 << 8 | 14),
            TdExit::Other {
                reason: EXCEPTION_OR_NMI
            }
        );
    }
}
