//! What a TD being created holds before the TDX module knows it, as one reservation that
//! gives everything back when dropped: the KeyID, the private-memory backing, the S-EPT page
//! cache and the control pages (TDR, TDCS, per vCPU TDVPR and TDCX).
//!
//! The reservation ends when TDH.MNG.CREATE succeeds: from then on the module owns the TDR,
//! and only the teardown path (reclaim through the module) may give pages back.

use super::hkids::HkidAllocator;
use super::memory::{self, SeptPageCache, TdBacking};
use super::shared_ept::SharedEpt;
use super::*;
use alloc::boxed::Box;
use tdx_abi::Gpa;

use crate::devices::PortIoBus;
use crate::devices::fw_cfg::{FW_CFG_BASE, FW_CFG_PORTS, FwCfg, StoredFile};
use crate::devices::ioapic::{IOAPIC_BASE, IOAPIC_MMIO_BYTES, IoApic};
use crate::devices::pci::{PciBarDevice, PciBarWindow};
use crate::devices::virtio::VirtioPci;
use crate::devices::virtio::blk::{Disk, VirtioBlk};
use crate::devices::virtio::console::{ConsoleInput, VirtioConsole};
use crate::pool::{MemoryPool, MemoryUse};

/// Control pages of a TD being created.
pub(crate) struct ControlPages {
    /// The TD root page (TDH.MNG.CREATE).
    pub(crate) tdr: Hpa,
    /// The TDCS pages (TDH.MNG.ADDCX).
    pub(crate) tdcs: Vec<Hpa>,
    /// Per vCPU: TDVPR and TDCX pages.
    pub(crate) vcpus: Vec<(Hpa, Vec<Hpa>)>,
}

impl ControlPages {
    /// Every page, TDR first.
    fn all(&self) -> impl Iterator<Item = Hpa> + '_ {
        core::iter::once(self.tdr)
            .chain(self.tdcs.iter().copied())
            .chain(
                self.vcpus
                    .iter()
                    .flat_map(|(p, cx)| core::iter::once(*p).chain(cx.iter().copied())),
            )
    }
}

/// The sizes of a TD's control structures, as the module reported them.
#[derive(Clone, Copy)]
pub(crate) struct ControlSizes {
    /// TDCS pages.
    pub(crate) tdcs_pages: u64,
    /// TDVPS pages per vCPU (TDVPR included).
    pub(crate) tdvps_pages: u64,
}

/// Everything a new TD holds before TDH.MNG.CREATE; released on drop.
///
/// Each part is taken in [`TdReservation::new`] in turn and held as `Some` from then on, so a
/// shortage half-way drops a partial reservation that gives back exactly what it took. There
/// is no other release path: no caller frees a part by hand.
pub(crate) struct TdReservation {
    /// Where the memory goes back.
    pool: Arc<MemoryPool>,
    /// Where the KeyID goes back.
    hkids: Arc<HkidAllocator>,
    /// The TD's KeyID.
    hkid: Option<u16>,
    /// Private memory.
    backing: Option<TdBacking>,
    /// Pages for the S-EPT.
    cache: Option<SeptPageCache>,
    /// TDR, TDCS and the vCPUs' TDVPR and TDCX pages.
    control: Option<ControlPages>,
}

/// What a consumed reservation hands over to the TD.
pub(crate) struct Reserved {
    /// The TD's KeyID.
    pub(crate) hkid: u16,
    /// Private memory.
    pub(crate) backing: TdBacking,
    /// Pages for the S-EPT.
    pub(crate) cache: SeptPageCache,
    /// TDR, TDCS and the vCPUs' TDVPR and TDCX pages.
    pub(crate) control: ControlPages,
}

impl TdReservation {
    /// Takes a KeyID and allocates the memory of a TD with private GPA ranges `gpa_ranges`
    /// and `vcpus` vCPUs. On any shortage, what was taken goes back at once.
    pub(crate) fn new(
        pool: &Arc<MemoryPool>,
        hkids: &Arc<HkidAllocator>,
        gpa_ranges: &[(u64, u64)],
        huge_pages: bool,
        vcpus: u32,
        sizes: ControlSizes,
    ) -> Result<TdReservation, HostError> {
        let mut r = TdReservation {
            pool: pool.clone(),
            hkids: hkids.clone(),
            hkid: None,
            backing: None,
            cache: None,
            control: None,
        };
        r.hkid = Some(hkids.take().ok_or(HostError::OutOfHkids)?);
        r.backing = Some(
            TdBacking::allocate(pool, gpa_ranges, huge_pages)
                .map_err(|_| HostError::OutOfMemory)?,
        );
        // The S-EPT's tables and, as many again plus a root, the shared EPT's.
        let sept_pages = 2 * memory::sept_pages_bound(gpa_ranges, 3) + 1;
        r.cache =
            Some(SeptPageCache::allocate(pool, sept_pages).map_err(|_| HostError::OutOfMemory)?);
        r.control = Some(alloc_control(pool, vcpus, sizes)?);
        Ok(r)
    }

    /// TDH.MNG.CREATE with the reserved TDR and KeyID; on success the reservation ends and
    /// its parts go to the TD (from then on the module owns the TDR, and only the teardown
    /// path may give anything back). On failure the reservation is dropped: everything goes
    /// back to the pool and the allocator.
    pub(crate) fn mng_create(self, module: &dyn Seamcall) -> Result<Reserved, HostError> {
        let (Some(control), Some(hkid)) = (&self.control, self.hkid) else {
            // `new` fills every part; nothing was handed to the module.
            return Err(HostError::OutOfMemory);
        };
        if let Err(e) = RetryBusy(module).mng_create(control.tdr, Hkid(hkid)) {
            log::error!("host: TDH.MNG.CREATE failed: {e}");
            return Err(HostError::Module(e));
        }
        self.consume().ok_or(HostError::OutOfMemory)
    }

    /// Ends the reservation without releasing anything: the parts are the caller's.
    fn consume(mut self) -> Option<Reserved> {
        Some(Reserved {
            // The KeyID stays the TD's (the teardown path gives it back after KEY.FREEID).
            hkid: self.hkid.take()?,
            backing: self.backing.take()?,
            cache: self.cache.take()?,
            control: self.control.take()?,
        })
    }
}

impl Drop for TdReservation {
    fn drop(&mut self) {
        if let Some(control) = self.control.take() {
            for page in control.all() {
                let _ = self.pool.free_4k(page, MemoryUse::Control);
            }
        }
        if let Some(cache) = self.cache.take() {
            cache.free(&self.pool);
        }
        if let Some(backing) = self.backing.take() {
            backing.free(&self.pool);
        }
        if let Some(hkid) = self.hkid.take() {
            self.hkids.give_back(hkid);
        }
    }
}

/// Allocates the control pages of a TD with `vcpus` vCPUs (all or none).
fn alloc_control(
    pool: &MemoryPool,
    vcpus: u32,
    sizes: ControlSizes,
) -> Result<ControlPages, HostError> {
    let per_vcpu = sizes.tdvps_pages.max(1);
    let n = 1 + sizes.tdcs_pages + u64::from(vcpus) * per_vcpu;
    let mut pages = Vec::new();
    pool.alloc_4k_batch(MemoryUse::Control, n as usize, &mut pages)
        .map_err(|_| HostError::OutOfMemory)?;
    let mut it = pages.into_iter();
    let tdr = it.next().ok_or(HostError::OutOfMemory)?;
    let tdcs = it.by_ref().take(sizes.tdcs_pages as usize).collect();
    let mut v = Vec::new();
    for _ in 0..vcpus {
        let tdvpr = it.next().ok_or(HostError::OutOfMemory)?;
        let tdcx = it.by_ref().take(per_vcpu as usize - 1).collect();
        v.push((tdvpr, tdcx));
    }
    Ok(ControlPages {
        tdr,
        tdcs,
        vcpus: v,
    })
}

/// PCI slot (device number on bus 0) of a TD's virtio disk.
const VIRTIO_BLK_SLOT: u8 = 3;
/// COM1's ISA interrupt, an I/O APIC pin of the same number (the MADT overrides none).
const COM1_IRQ: usize = 4;
/// The PCI slot of a kernel-booting TD's virtio console.
const VIRTIO_CONSOLE_SLOT: u8 = 4;
/// End of the 32-bit PCI memory window (exclusive): where the firmware's flash, the I/O
/// APIC and the local APIC ranges start on a PC.
const PCI_WINDOW_END: u64 = 0xFC00_0000;

/// Start of the 32-bit PCI memory window OVMF uses on a 440FX board: the top of low RAM,
/// at least 2 GiB (edk2 `OvmfPkg/Library/PlatformInitLib`, `PlatformMemMapInitialization`).
fn pci_window_base((low_ram, _): (u64, u64)) -> u64 {
    low_ram.max(1 << 31)
}
impl Host {
    /// Checks a create request against the host and the module's limits before anything is
    /// allocated: a valid, unused name; 1 to the module's maximum vCPUs; at least
    /// [`MIN_TD_MEMORY_MIB`]; attributes within the module's fixed-0 and fixed-1 masks; a
    /// declared workload only on the software module; at least one runner CPU.
    pub(super) fn validate_spec(&self, spec: &TdSpec) -> Result<(), HostError> {
        let invalid = |field, reason| Err(HostError::InvalidSpec { field, reason });
        if !images::valid_name(&spec.name) {
            return invalid("name", "1-64 characters of A-Z a-z 0-9 . _ -");
        }
        if self.tds.values().any(|t| t.name == spec.name) {
            return Err(HostError::NameTaken);
        }
        if spec.vcpus == 0
            || spec.vcpus > self.limits.max_vcpus_per_td
            || spec.vcpus > u32::from(u16::MAX)
        {
            return invalid("vcpus", "must be between 1 and the module's maximum");
        }
        if spec.memory_mib < MIN_TD_MEMORY_MIB {
            return invalid("memory_mib", "must be at least 32");
        }
        if spec.attributes & !self.limits.attributes_fixed0 != 0 {
            return invalid("attributes", "has bits the TDX module does not support");
        }
        if spec.attributes & self.limits.attributes_fixed1 != self.limits.attributes_fixed1 {
            return invalid("attributes", "lacks bits the TDX module requires");
        }
        if spec.workload.is_some() && self.module_kind() == ModuleKind::Hardware {
            return Err(HostError::WorkloadNeedsEmulation);
        }
        if self.runners.is_empty() {
            return invalid("vcpus", "the host has no runner CPUs");
        }
        if let Some(linux) = &spec.linux {
            let kernel = self
                .images
                .get(&linux.kernel)
                .ok_or(HostError::ImageNotFound)?
                .kernel()
                .copied();
            let Some(kernel) = kernel else {
                return invalid("kernel", "not a Linux kernel image");
            };
            if let Some(initrd) = &linux.initrd {
                let image = self.images.get(initrd).ok_or(HostError::ImageNotFound)?;
                if image.kind() != ImageKind::Initrd {
                    return invalid("initrd", "not an initramfs image");
                }
            }
            if linux.cmdline.len() as u64 > u64::from(kernel.cmdline_max) {
                return invalid("cmdline", "longer than the kernel accepts");
            }
            if linux
                .cmdline
                .bytes()
                .any(|b| b == 0 || !(b == b' ' || b.is_ascii_graphic()))
            {
                return invalid("cmdline", "only printable ASCII characters and spaces");
            }
        }
        if let Some(disk) = &spec.disk {
            let image = self.images.get(disk).ok_or(HostError::ImageNotFound)?;
            if image.kind() != ImageKind::Disk {
                return invalid("disk", "not a disk image");
            }
        }
        Ok(())
    }

    /// TD_PARAMS (Intel TDX Module ABI specification, TDH.MNG.INIT) from the spec and the
    /// module's limits: the requested attributes, the XFAM bits the module requires, 4-level
    /// EPT (GPAW 48) with write-back memory type, and every configurable CPUID bit left 0.
    ///
    /// `NO_RBP_MOD` stays clear, unlike KVM (Linux `arch/x86/kvm/vmx/tdx.c`,
    /// `setup_tdparams()`): under it the module refuses a TDG.VP.VMCALL that exposes RBP
    /// (TDX module 1.5 `tdg_vp_vmcall.c`), and TDVF's TDVMCALLs do (edk2's mask 0xFFEC, in
    /// Debian's OVMF.fd). The SEAMCALL entry path saves the host's RBP itself and carries
    /// the guest's through [`Regs::rbp`](tdx_abi::seamcall::Regs).
    pub(super) fn td_params(&self, spec: &TdSpec) -> TdParams {
        let mut p = TdParams::basic(spec.attributes, spec.vcpus as u16);
        p.xfam = self.limits.xfam_fixed1 & self.limits.xfam_fixed0;
        p.eptp_controls = EPTP_MEMTYPE_WB | (3 << 3);
        p.config_flags = 0;
        p.cpuid_values = alloc::vec![[0u32; 4]; self.limits.cpuid_config.len()];
        p
    }

    /// Adds to `io` what a TD that boots a kernel directly needs: fw_cfg with the kernel,
    /// initramfs and command line (the images stay stored while the TD uses them) and the
    /// ACPI tables ([`crate::acpi`]), which OVMF takes from fw_cfg once fw_cfg exists.
    fn linux_devices(
        &self,
        spec: &TdSpec,
        shared: &Arc<SharedEpt>,
        ram_split: (u64, u64),
        mut io: PortIoBus,
    ) -> PortIoBus {
        let Some(linux) = &spec.linux else {
            return io;
        };
        let stored = |name: &str| {
            self.images.get(name).map(|i| StoredFile {
                pages: i.pages().to_vec(),
                len: i.size,
            })
        };
        let (Some(kernel), Some(setup)) = (
            stored(&linux.kernel),
            self.images
                .get(&linux.kernel)
                .and_then(|i| i.kernel())
                .map(|h| h.setup_bytes),
        ) else {
            // `validate_spec` checked the kernel exists and is one.
            return io;
        };
        let initrd = linux.initrd.as_deref().and_then(stored);
        let acpi = crate::acpi::build(spec.vcpus, (pci_window_base(ram_split), PCI_WINDOW_END));
        let device = FwCfg::new_linux(
            self.phys.clone(),
            shared.clone(),
            &kernel,
            setup,
            initrd.as_ref(),
            &linux.cmdline,
            alloc::vec![
                (crate::acpi::LOADER_FILE, acpi.loader),
                (crate::acpi::TABLES_FILE, acpi.tables),
                (crate::acpi::RSDP_FILE, acpi.rsdp),
            ],
        );
        if let Err(e) = io.insert(FW_CFG_BASE, FW_CFG_PORTS, Arc::new(device)) {
            log::error!("host: fw_cfg not placed: {e}");
        }
        io
    }

    /// Creates a TD and starts its build. On any error nothing is left allocated.
    pub fn create_td(&mut self, spec: TdSpec, now_ms: u64) -> Result<TdInfo, HostError> {
        self.start_runners();
        self.validate_spec(&spec)?;
        let image = self
            .images
            .get(&spec.image)
            .ok_or(HostError::ImageNotFound)?;
        let (metadata, _) = image.firmware().ok_or(HostError::InvalidSpec {
            field: "image",
            reason: "not a firmware image (a kernel or initramfs goes in `kernel` or `initrd`)",
        })?;
        let layout =
            TdMemoryLayout::new(metadata, spec.memory_mib).map_err(|_| HostError::InvalidSpec {
                field: "memory_mib",
                reason: "the firmware's sections do not fit this memory size",
            })?;
        let plan = BuildPlan::new(&layout).map_err(|_| HostError::InvalidSpec {
            field: "memory_mib",
            reason: "the TD HOB for this memory size does not fit the firmware's TD_HOB section",
        })?;
        // Private GPAs: RAM and the firmware sections outside it.
        let mut gpa_ranges: Vec<(u64, u64)> = layout
            .ram_ranges()
            .iter()
            .map(|r| (r.start.0, r.end.0))
            .collect();
        for (s, p) in layout.sections().iter().zip(layout.placements()) {
            if *p == SectionPlacement::FirmwareWindow {
                gpa_ranges.push((s.memory_address.0, s.memory_end()));
            }
        }
        // The TD's own copy of its disk, made before anything else is reserved: without room
        // for it nothing is allocated.
        let disk = match spec.disk.as_deref().and_then(|d| self.images.get(d)) {
            Some(image) => Some(
                Disk::copy_of(
                    self.phys.clone(),
                    self.pool.clone(),
                    image.pages(),
                    image.size,
                )
                .map_err(|_| HostError::OutOfMemory)?,
            ),
            None => None,
        };
        let reservation = TdReservation::new(
            &self.pool,
            &self.hkids,
            &gpa_ranges,
            spec.huge_pages,
            spec.vcpus,
            ControlSizes {
                tdcs_pages: self.limits.tdcs_pages,
                tdvps_pages: self.limits.tdvps_pages,
            },
        )?;
        // TDH.MNG.CREATE: until it succeeds the module knows nothing of the TD, and an error
        // drops the reservation, which gives everything back.
        let reserved = reservation.mng_create(&*self.main)?;
        let (hkid, control, backing, cache) = (
            reserved.hkid,
            reserved.control,
            Arc::new(reserved.backing),
            Arc::new(reserved.cache),
        );
        let id = TdId(self.next_td);
        self.next_td += 1;
        let parts = TdParts {
            id,
            hkid,
            control,
            backing,
            cache,
            seam_counters: Arc::new(SeamcallCounters::new()),
            ram_split: layout.ram_ranges().iter().fold((0, 0), |(low, high), r| {
                let below = r.end.0.min(1 << 32).saturating_sub(r.start.0.min(1 << 32));
                let len = r.end.0 - r.start.0;
                (low + below, high + (len - below))
            }),
            disk: spin::Mutex::new(disk),
        };
        // Everything below runs on a TD the module knows: failures tear it down.
        let result = self.init_td(&spec, &parts, plan, now_ms);
        match result {
            Ok(()) => {
                let _ = self.apply(id, TdEvent::BeginBuild, now_ms);
                self.td(id)
            }
            Err(e) => {
                log::error!("host: creating TD {} ({}) failed: {e}", id.0, spec.name);
                if let Some(mut td) = self.tds.remove(&id) {
                    for r in &self.runners {
                        r.unbind_td(&td.shared);
                    }
                    self.flush_vcpus_from_host(&td);
                    let _ = self.teardown(&mut td);
                    self.retired.leaked_pages += td.leaked_pages;
                } else {
                    // init_td failed before the TD object existed: tear down the bare TD.
                    let mut bare = self.bare_td(&spec, &parts);
                    let _ = self.teardown(&mut bare);
                    self.retired.leaked_pages += bare.leaked_pages;
                }
                Err(e)
            }
        }
    }

    /// The TD object for a TD that failed before its vCPUs existed (for teardown).
    pub(super) fn bare_td(&self, spec: &TdSpec, parts: &TdParts) -> Td {
        let vcpus = Arc::new(TdVcpus {
            vcpus: Vec::new(),
            block: core::sync::atomic::AtomicU32::new(0),
            kicker: self.kicker(),
        });
        let sept = self.sept_manager(parts, &vcpus);
        let shared_ept = Arc::new(SharedEpt::new(self.phys.clone(), parts.cache.clone(), 47));
        self.td_object(spec, parts, vcpus, sept, shared_ept, 0)
    }

    /// How a TD's vCPUs are interrupted: through the software module's hooks, or an IPI to
    /// the runner CPU on hardware.
    pub(super) fn kicker(&self) -> Kicker {
        match &self.module {
            HostModule::Software(m) => Kicker::Software(m.clone(), self.platform.clone()),
            HostModule::Hardware(_) => Kicker::Hardware(self.platform.clone()),
        }
    }

    /// The S-EPT manager of a new TD: its TDR and KeyID, its private memory and S-EPT page
    /// cache, its vCPUs (for the TLB-tracking protocol), with SEAMCALLs counted per TD.
    pub(super) fn sept_manager(
        &self,
        parts: &TdParts,
        vcpus: &Arc<TdVcpus>,
    ) -> SeptManager<dyn Seamcall> {
        let counters = &parts.seam_counters;
        // The fault and unmap paths run on any CPU; the module sees them as CPU 0's calls
        // (hardware: the CPU that makes them).
        let module: Arc<dyn Seamcall> = Arc::new(Counted {
            counters: counters.clone(),
            inner: self
                .module
                .seamcall_on(0)
                .unwrap_or_else(|| self.main.clone()),
        });
        SeptManager::new(
            module,
            TdSeptInfo {
                tdr: parts.control.tdr,
                hkid: Hkid(parts.hkid),
                gpaw: Gpaw::Bits48,
            },
            SeptBackends {
                memory: parts.backing.clone(),
                pool: parts.cache.clone(),
                vcpus: Arc::new(VcpuGate(vcpus.clone())),
                phys: self.phys.clone(),
            },
            SeptConfig {
                stat_slots: self.runners.len() + 1,
                ..SeptConfig::default()
            },
        )
    }

    /// The main CPU's record of a new TD (state `Created`): its shared part for the
    /// runners (console, devices, S-EPT, vCPUs) and its pages. The control pages of vCPUs
    /// past the first `created_vcpus` (never created in the module) are kept apart, so the
    /// teardown gives them back without reclaiming them.
    pub(super) fn td_object(
        &self,
        spec: &TdSpec,
        parts: &TdParts,
        vcpus: Arc<TdVcpus>,
        sept: SeptManager<dyn Seamcall>,
        shared_ept: Arc<SharedEpt>,
        created_vcpus: usize,
    ) -> Td {
        let (id, hkid, control) = (parts.id, parts.hkid, &parts.control);
        let (backing, cache) = (parts.backing.clone(), parts.cache.clone());
        let seam_counters = parts.seam_counters.clone();
        let console = Arc::new(ConsoleRing::new(self.config.console_ring_bytes));
        let power = Arc::new(PowerRequests::default());
        // A TD that boots a kernel gets the I/O APIC its ACPI tables describe, with COM1 on
        // ISA IRQ 4 and the power button on it.
        let ioapic = spec
            .linux
            .as_ref()
            .map(|_| Arc::new(IoApic::new(vcpus.clone())));
        let uart = Arc::new(match &ioapic {
            Some(ioapic) => Serial16550::with_interrupt(console.clone(), ioapic.clone(), COM1_IRQ),
            None => Serial16550::new(console.clone()),
        });
        let disk = parts.disk.lock().take().map(|disk| {
            Arc::new(VirtioPci::new(
                Box::new(VirtioBlk::new(disk)),
                shared_ept.clone(),
                vcpus.clone(),
            ))
        });
        let virtio_console = spec.linux.as_ref().map(|_| {
            let input = Arc::new(ConsoleInput::default());
            let device = Arc::new(VirtioPci::new(
                Box::new(VirtioConsole::new(console.clone(), input.clone())),
                shared_ept.clone(),
                vcpus.clone(),
            ));
            (device, input)
        });
        let virtio_functions: Vec<(u8, Arc<VirtioPci>)> = disk
            .map(|d| (VIRTIO_BLK_SLOT, d))
            .into_iter()
            .chain(
                virtio_console
                    .as_ref()
                    .map(|(d, _)| (VIRTIO_CONSOLE_SLOT, d.clone())),
            )
            .collect();
        let pci_functions: Vec<_> = virtio_functions
            .iter()
            .map(|(slot, d)| (*slot, 0, d.config()))
            .collect();
        let mut mmio = MmioBus::new();
        if let Some(ioapic) = &ioapic
            && let Err(e) = mmio.insert(Gpa(IOAPIC_BASE), IOAPIC_MMIO_BYTES, ioapic.clone())
        {
            log::error!("host: I/O APIC not placed: {e}");
        }
        if !virtio_functions.is_empty() {
            let base = pci_window_base(parts.ram_split);
            let bars = virtio_functions
                .into_iter()
                .map(|(_, d)| d as Arc<dyn PciBarDevice>)
                .collect();
            let window = PciBarWindow::new(base, bars);
            if let Err(e) = mmio.insert(Gpa(base), PCI_WINDOW_END - base, Arc::new(window)) {
                log::error!("host: PCI window not placed: {e}");
            }
        }
        let shared = Arc::new(TdShared {
            id,
            tdr: control.tdr,
            run: core::sync::atomic::AtomicU8::new(RUN_NOT_STARTED),
            vcpus,
            sept,
            backing: backing.clone(),
            shared_ept: shared_ept.clone(),
            io: self.linux_devices(
                spec,
                &shared_ept,
                parts.ram_split,
                td_port_devices(
                    &uart,
                    &self.platform,
                    &power,
                    parts.ram_split,
                    pci_functions,
                ),
            ),
            uart,
            power,
            mmio,
            virtio_console,
            ioapic,
            console,
            counters: TdCounterCells::default(),
            outcome: spin::Mutex::new(None),
            shared_bit: 47,
            guest_tsc: super::td::GuestTsc::default(),
            huge_pages: spec.huge_pages,
            idle_wakeup_ms: self.config.idle_wakeup_ms,
            notify_vector: core::sync::atomic::AtomicU8::new(0),
        });
        Td {
            shared,
            lifecycle: TdLifecycle::new(),
            name: spec.name.clone(),
            image: spec.image.clone(),
            linux: spec.linux.clone(),
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            attributes: spec.attributes,
            created_ms: self.platform.now_ms(),
            engine: self.guest_engine(spec.workload.is_some()),
            hkid,
            hkid_live: true,
            tdr: control.tdr,
            tdcs: control.tdcs.clone(),
            vcpu_pages: control.vcpus.iter().take(created_vcpus).cloned().collect(),
            unused_control: control
                .vcpus
                .iter()
                .skip(created_vcpus)
                .flat_map(|(p, cx)| core::iter::once(*p).chain(cx.iter().copied()))
                .collect(),
            backing,
            sept_cache: cache,
            seam_counters,
            build: None,
            teardown: None,
            stop_deadline: None,
            destroy_requested: false,
            destroy_started_ms: 0,
            teardown_flush_warned: false,
            reason: None,
            mrtd: None,
            leaked_pages: 0,
        }
    }

    /// KEY.CONFIG per package, ADDCX, MNG.INIT, VP.CREATE/ADDCX/INIT per vCPU, the S-EPT
    /// manager, runner binding and the build job. On error the caller tears the TD down.
    pub(super) fn init_td(
        &mut self,
        spec: &TdSpec,
        parts: &TdParts,
        plan: BuildPlan,
        now_ms: u64,
    ) -> Result<(), HostError> {
        let (id, control) = (parts.id, &parts.control);
        let tdr = control.tdr;
        let main_handle = self.main.clone();
        let main = RetryBusy(&*main_handle);
        for cpu in self.cpus.one_cpu_per_package() {
            self.call_on_cpu(cpu, &|m| m.mng_key_config(tdr).map(drop))?;
        }
        for page in &control.tdcs {
            main.mng_addcx(tdr, *page).map_err(HostError::Module)?;
        }
        let params = self.td_params(spec);
        self.phys.write(self.td_params_page, &params.to_bytes());
        main.mng_init(tdr, self.td_params_page)
            .map_err(HostError::Module)?;
        // vCPUs, each bound to a runner round-robin.
        let mut vcpus = Vec::new();
        let mut created = 0usize;
        let mut fail: Option<HostError> = None;
        let shared_ept = Arc::new(SharedEpt::new(self.phys.clone(), parts.cache.clone(), 47));
        let shared_ept_root = shared_ept.root().ok();
        for (i, (tdvpr, tdcx)) in control.vcpus.iter().enumerate() {
            if let Err(e) = main.vp_create(tdr, *tdvpr) {
                fail = Some(HostError::Module(e));
                break;
            }
            created += 1;
            let added = tdcx
                .iter()
                .try_for_each(|page| main.vp_addcx(*tdvpr, *page));
            if let Err(e) = added {
                fail = Some(HostError::Module(e));
                break;
            }
            let runner = self.next_runner % self.runners.len().max(1);
            self.next_runner += 1;
            let cpu = self.runners.get(runner).map(|r| r.cpu()).unwrap_or(0);
            // TDH.VP.INIT associates the vCPU with the logical CPU that runs it, and VP.RD,
            // VP.WR and VP.ENTER elsewhere fail with TDX_VCPU_ASSOCIATED until TDH.VP.FLUSH
            // (intel/tdx-module `tdh_vp_init.c`, `associate_vcpu` in
            // `src/common/helpers/helpers.c`): so they run on the runner's CPU, as KVM runs
            // `tdx_vcpu_init` on the vCPU's own CPU.
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            // x2APIC ID = vCPU index (TDH.VP.INIT version 1); `i` < the TD's vCPU count.
            if let Err(e) = self.call_on_cpu(cpu, &|m| m.vp_init(*tdvpr, 0, index)) {
                fail = Some(e.into());
                break;
            }
            // Associated from here on: teardown flushes it on `cpu`.
            let vcpu = VcpuShared::new(index, *tdvpr, runner, cpu);
            let posted = (
                vcpu.posted.vector(),
                self.platform.physical_address_of(vcpu.posted.address()),
            );
            vcpus.push(vcpu);
            if let Err(e) = self.call_on_cpu(cpu, &|m| {
                vcpu_vmcs_setup(m, *tdvpr, shared_ept_root, posted)
            }) {
                fail = Some(e.into());
                break;
            }
        }
        let vcpus = Arc::new(TdVcpus {
            vcpus,
            block: core::sync::atomic::AtomicU32::new(0),
            kicker: self.kicker(),
        });
        let sept = self.sept_manager(parts, &vcpus);
        let mut td = self.td_object(spec, parts, vcpus, sept, shared_ept, created);
        td.created_ms = now_ms;
        // The TD's TSC as TDH.MNG.INIT set it up (offset, and scale to TD_PARAMS'
        // frequency), for its TSC-deadline timers.
        let tsc_offset = main.mng_rd(tdr, tdx_abi::metadata::td::TSC_OFFSET);
        let tsc_multiplier = main.mng_rd(tdr, tdx_abi::metadata::td::TSC_MULTIPLIER);
        match (tsc_offset, tsc_multiplier) {
            (Ok(offset), Ok(multiplier)) if multiplier != 0 => {
                td.shared.guest_tsc.set(offset, multiplier);
            }
            (offset, multiplier) => {
                log::warn!(
                    "host: TD {}: TSC offset/multiplier unreadable ({offset:?}, {multiplier:?}); \
                     its TSC deadlines assume the host's TSC",
                    id.0
                );
            }
        }
        if let Some(e) = fail {
            self.tds.insert(id, td);
            return Err(e);
        }
        if let (Some(program), Some(m)) = (&spec.workload, self.module.software())
            && let Some((tdvpr, _)) = control.vcpus.first()
            && m.bind_guest_program(*tdvpr, program).is_err()
        {
            // The module was asked at create time (`WorkloadNeedsEmulation`); a refusal here
            // is a program of another engine's kind.
            self.tds.insert(id, td);
            return Err(HostError::InvalidSpec {
                field: "workload",
                reason: "the TDX module's guest engine does not run this workload",
            });
        }
        for v in td.shared.vcpus.vcpus.iter() {
            if let Some(r) = self.runners.get(v.runner) {
                r.bind(runner::Slot {
                    td: td.shared.clone(),
                    vcpu: v.index as usize,
                });
            }
        }
        self.ensure_runners();
        td.build = Some(build::BuildJob::new(plan));
        self.tds.insert(id, td);
        Ok(())
    }
}

/// The host-writable TD-VMCS fields of a new vCPU, written on its CPU (TDH.VP.WR associates
/// it there): the shared EPT root, then posted interrupts in KVM's order (`tdx_vcpu_init`:
/// the notification vector and the descriptor address before the pin-based control that
/// enables them, which the module refuses otherwise; intel/tdx-module `metadata_vp.c`).
fn vcpu_vmcs_setup(
    m: &dyn Seamcall,
    tdvpr: Hpa,
    shared_ept_root: Option<Hpa>,
    (vector, descriptor): (u8, u64),
) -> Result<(), SeamError> {
    use tdx_abi::metadata::vcpu;
    // The shared EPT: the TD's shared memory (MapGPA) is mapped there.
    if let Some(root) = shared_ept_root {
        m.vp_wr(tdvpr, vcpu::SHARED_EPTP, root.0, u64::MAX)?;
    }
    m.vp_wr(tdvpr, vcpu::POSTED_INTR_NV, u64::from(vector), 0xFFFF)?;
    m.vp_wr(tdvpr, vcpu::POSTED_INTR_DESC_ADDR, descriptor, u64::MAX)?;
    let enable = vcpu::PIN_BASED_POSTED_INTERRUPTS;
    m.vp_wr(tdvpr, vcpu::PIN_BASED_CONTROLS, enable, enable)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sizes() -> ControlSizes {
        ControlSizes {
            tdcs_pages: 4,
            tdvps_pages: 6,
        }
    }

    #[test]
    fn a_dropped_reservation_gives_everything_back() {
        let pool = Arc::new(MemoryPool::new(Hpa(1 << 30), 64 << 20).unwrap());
        let hkids = Arc::new(HkidAllocator::new(16, 3));
        let before = pool.stats();
        let ranges = [(0u64, 8u64 << 20)];
        let r = TdReservation::new(&pool, &hkids, &ranges, true, 2, sizes()).unwrap();
        assert_ne!(pool.stats(), before);
        assert_eq!(hkids.free(), 1);
        drop(r);
        assert_eq!(pool.stats(), before);
        assert_eq!(hkids.free(), 2);
    }

    #[test]
    fn a_shortage_at_any_step_leaves_nothing_taken() {
        let hkids = Arc::new(HkidAllocator::new(16, 3));
        // Private memory fits, the control pages do not (or nothing fits at all).
        for (pool_mib, ranges_mib) in [(9u64, 8u64), (4, 8), (8, 7)] {
            let pool = Arc::new(MemoryPool::new(Hpa(1 << 30), pool_mib << 20).unwrap());
            let before = pool.stats();
            let ranges = [(0u64, ranges_mib << 20)];
            let got = TdReservation::new(&pool, &hkids, &ranges, false, 64, sizes());
            assert!(
                matches!(got, Err(HostError::OutOfMemory)),
                "{pool_mib}/{ranges_mib}"
            );
            assert_eq!(pool.stats(), before);
            assert_eq!(hkids.free(), 2);
        }
        // No KeyID left.
        let pool = Arc::new(MemoryPool::new(Hpa(1 << 30), 64 << 20).unwrap());
        let a = hkids.take();
        let b = hkids.take();
        let got = TdReservation::new(&pool, &hkids, &[(0, 1 << 20)], false, 1, sizes());
        assert!(matches!(got, Err(HostError::OutOfHkids)));
        hkids.give_back(a.unwrap());
        hkids.give_back(b.unwrap());
    }

    /// A module that answers every SEAMCALL with one status and records the leaf and RCX
    /// (the TDR for TDH.MNG.CREATE).
    struct Answer {
        status: tdx_abi::TdxStatus,
        calls: spin::Mutex<Vec<(u64, u64)>>,
    }

    impl Seamcall for Answer {
        fn seamcall(&self, regs: &mut tdx_abi::seamcall::Regs) {
            self.calls.lock().push((regs.rax, regs.rcx));
            regs.rax = self.status.0;
        }
        fn kind(&self) -> ModuleKind {
            ModuleKind::Emulated
        }
        fn hkid_shift(&self) -> u32 {
            46
        }
    }

    fn answer(status: tdx_abi::TdxStatus) -> Answer {
        Answer {
            status,
            calls: spin::Mutex::new(Vec::new()),
        }
    }

    #[test]
    fn a_failed_mng_create_gives_everything_back() {
        let pool = Arc::new(MemoryPool::new(Hpa(1 << 30), 64 << 20).unwrap());
        let hkids = Arc::new(HkidAllocator::new(16, 3));
        let before = pool.stats();
        let r = TdReservation::new(&pool, &hkids, &[(0, 8 << 20)], true, 2, sizes()).unwrap();
        let module = answer(tdx_abi::TdxStatus::OPERAND_INVALID);
        let got = r.mng_create(&module);
        assert!(
            matches!(got, Err(HostError::Module(e)) if e.leaf == tdx_abi::Leaf::MngCreate),
            "{:?}",
            got.err()
        );
        assert_eq!(module.calls.lock().len(), 1);
        assert_eq!(pool.stats(), before);
        assert_eq!(hkids.free(), 2);
    }

    #[test]
    fn a_created_td_keeps_what_it_reserved() {
        let pool = Arc::new(MemoryPool::new(Hpa(1 << 30), 64 << 20).unwrap());
        let hkids = Arc::new(HkidAllocator::new(16, 3));
        let before = pool.stats();
        let r = TdReservation::new(&pool, &hkids, &[(0, 4 << 20)], false, 1, sizes()).unwrap();
        let module = answer(tdx_abi::TdxStatus::SUCCESS);
        let reserved = r.mng_create(&module).unwrap();
        // TDH.MNG.CREATE got the reserved TDR.
        let calls = module.calls.lock().clone();
        assert_eq!(calls.len(), 1);
        assert_eq!(
            calls[0].0 & 0xFFFF,
            u64::from(tdx_abi::Leaf::MngCreate.number())
        );
        assert_eq!(calls[0].1, reserved.control.tdr.0);
        assert_eq!(reserved.hkid, 17);
        assert_eq!(reserved.control.vcpus[0].1.len(), 5);
        // Nothing goes back: the parts are the TD's now.
        assert_ne!(pool.stats(), before);
        assert_eq!(hkids.free(), 1);
    }
}
