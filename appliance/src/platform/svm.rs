//! The software TDX module's guest CPU on this machine: AMD SVM with nested paging (what
//! QEMU's TCG offers its guest with `-cpu max`), through the `tdx-svm` primitives.
//!
//! Per logical CPU, SVM is switched on the first time a vCPU runs there: EFER.SVME, a host
//! save page for VMRUN and one for VMSAVE/VMLOAD of the host's own state. The I/O and MSR
//! permission maps are shared by every VMCB and intercept everything. All pages come from
//! the heap, which the firmware identity-maps, so their addresses are physical addresses.

use alloc::alloc::{Layout, alloc_zeroed};
use alloc::vec::Vec;

use tdx_abi::Hpa;
use tdx_emu::svm::GuestCpu;
use tdx_svm::GuestRegisters;

/// The longest a guest runs without an exit (µs): then the runner's APIC timer ends it, so
/// the runner can serve its other vCPUs, deliver kicks and notice a stop.
pub(crate) const GUEST_SLICE_US: u64 = 2_000;

/// The guest CPU of the software module.
pub struct SvmGuestCpu {
    iopm: u64,
    msrpm: u64,
    /// `(APIC ID, host save page for VMRUN, host VMSAVE area)` of every CPU that ran a
    /// guest.
    cpus: spin::Mutex<Vec<(u32, u64, u64)>>,
}

/// A zeroed, 4 KiB-aligned block of `pages` pages from the heap (never freed), filled with
/// `fill`; its address is physical (identity mapping).
fn pages(count: usize, fill: u8) -> Option<u64> {
    let layout = Layout::from_size_align(count * 4096, 4096).ok()?;
    // SAFETY: the layout has a non-zero size.
    let p = unsafe { alloc_zeroed(layout) };
    if p.is_null() {
        return None;
    }
    // SAFETY: `p` was just allocated with `count * 4096` bytes.
    unsafe { core::ptr::write_bytes(p, fill, count * 4096) };
    Some(p as u64)
}

/// This CPU's initial APIC ID (CPUID 1, EBX bits 31:24; the x2APIC ID from leaf 0xB when
/// the CPU has it).
fn apic_id() -> u32 {
    let basic = core::arch::x86_64::__cpuid(0);
    if basic.eax >= 0xB {
        let topo = core::arch::x86_64::__cpuid_count(0xB, 0);
        if topo.ebx != 0 {
            return topo.edx;
        }
    }
    core::arch::x86_64::__cpuid(1).ebx >> 24
}

impl SvmGuestCpu {
    /// The guest CPU, if this CPU offers SVM with nested paging.
    pub fn new() -> Option<SvmGuestCpu> {
        let caps = tdx_svm::detect()?;
        if !caps.nested_paging || caps.asids < 2 {
            return None;
        }
        Some(SvmGuestCpu {
            iopm: pages(3, 0xFF)?,
            msrpm: pages(2, 0xFF)?,
            cpus: spin::Mutex::new(Vec::new()),
        })
    }

    /// The VMSAVE area of the calling CPU, switching SVM on there first if needed. SVM is
    /// switched on again when the CPU lost it: MP Services may wake an idle application
    /// processor with INIT-SIPI-SIPI between two runner dispatches, and INIT clears EFER.SVME
    /// and VM_HSAVE_PA.
    fn this_cpu(&self) -> Option<u64> {
        let id = apic_id();
        let known = self
            .cpus
            .lock()
            .iter()
            .find(|c| c.0 == id)
            .map(|&(_, hsave, area)| (hsave, area));
        let (hsave, area) = match known {
            Some(pages) => pages,
            None => {
                let pages = (pages(1, 0)?, pages(1, 0)?);
                self.cpus.lock().push((id, pages.0, pages.1));
                pages
            }
        };
        // SAFETY: ring 0 (the appliance's only privilege level).
        if !unsafe { tdx_svm::enabled() } {
            // SAFETY: we run in ring 0 on a CPU `detect` accepted (all CPUs of this machine
            // are alike); `hsave` is this CPU's own page, never freed.
            unsafe { tdx_svm::enable(hsave) };
        }
        Some(area)
    }
}

impl GuestCpu for SvmGuestCpu {
    fn run(&self, vmcb: Hpa, regs: &mut GuestRegisters) {
        let Some(area) = self.this_cpu() else {
            return;
        };
        super::wake::arm_slice(GUEST_SLICE_US);
        // SAFETY: `this_cpu` switched SVM on for this CPU; the software module passes the
        // VMCB it built in a module-owned page, with nested tables and permission maps it
        // or `intercept_all_maps` set up; the VMSAVE area is this CPU's own page.
        unsafe { tdx_svm::run(vmcb.0, area, regs) };
    }

    fn intercept_all_maps(&self) -> (Hpa, Hpa) {
        (Hpa(self.iopm), Hpa(self.msrpm))
    }

    fn tsc(&self) -> u64 {
        super::clock::read_tsc()
    }

    fn tsc_per_ms(&self) -> u64 {
        super::clock::ticks_per_ms().max(1)
    }
}
