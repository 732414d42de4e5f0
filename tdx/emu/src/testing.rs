//! Test support: an initialized emulated platform and runnable TDs in a few lines.
//!
//! ```
//! use tdx_emu::testing::{Platform, TdOptions};
//! use tdx_abi::{Gpa, PageLevel};
//! use tdx_abi::seamcall::TdxModule;
//!
//! let p = Platform::new();
//! let td = p.create_td(&TdOptions::default()).unwrap();
//! p.add_page(&td, Gpa(0x1000), &[0xAA; 4096], true).unwrap();
//! let mrtd = p.finalize(&td).unwrap();
//! assert_ne!(mrtd, [0; 48]);
//! // After finalize: map a page with AUG (S-EPT path first).
//! p.ensure_sept_path(&td, Gpa(0x20_0000), PageLevel::L4K).unwrap();
//! let page = p.alloc_page().unwrap();
//! p.module.mem_page_aug(td.tdr, Gpa(0x20_0000), PageLevel::L4K, page).unwrap();
//! ```
//!
//! Everything goes through SEAMCALLs; the helpers only allocate pages and sequence leaves the
//! way a host runtime would. Used by the S-EPT manager's and the runtime's tests.

use alloc::sync::Arc;
use alloc::vec::Vec;

use super::{EmuConfig, EmuConfigError, EmuLimits, EmulatedModule};
use crate::metadata::td as tdf;
use tdx_abi::metadata::sys as sysf;
use tdx_abi::pamt::{PageType, PamtPageSize, pamt_array_size};
use tdx_abi::phys::{PhysMemory, SparseMemory};
use tdx_abi::seamcall::{Regs, SeamError, Seamcall, TdxModule};
use tdx_abi::td_params::{TdParams, attributes};
use tdx_abi::{Gpa, Hkid, Hpa, Leaf, PageLevel, TdxStatus, gpa_level_operand};

/// Platform shape for [`Platform::with_config`].
#[derive(Clone, Debug)]
pub struct PlatformConfig {
    /// Base of the emulated physical range (1 GiB aligned).
    pub phys_base: u64,
    /// Size in bytes (multiple of 1 GiB).
    pub phys_size: u64,
    /// Logical processors.
    pub num_lps: u32,
    /// Packages.
    pub num_packages: u32,
    /// First TDX KeyID.
    pub hkid_start: u16,
    /// Number of TDX KeyIDs (one becomes the global KeyID).
    pub num_hkids: u16,
    /// KeyID bit position.
    pub hkid_shift: u32,
    /// Module limits.
    pub limits: EmuLimits,
}

impl Default for PlatformConfig {
    fn default() -> Self {
        PlatformConfig {
            phys_base: 1 << 30,
            phys_size: 1 << 30,
            num_lps: 4,
            num_packages: 1,
            hkid_start: 32,
            num_hkids: 32,
            hkid_shift: 46,
            limits: EmuLimits::default(),
        }
    }
}

/// Why platform setup failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    /// The module refused the configuration.
    #[error("module configuration: {0}")]
    Config(#[from] EmuConfigError),
    /// A SEAMCALL of the init sequence failed.
    #[error("init sequence: {0}")]
    Seam(#[from] SeamError),
    /// The range is too small for PAMT + scratch + pages, or not 1 GiB aligned.
    #[error("physical range too small or misaligned")]
    Range,
    /// The page allocator ran dry.
    #[error("out of emulated physical pages")]
    OutOfMemory,
}

/// A simple page allocator over the emulated range (4 KiB from the bottom, 2 MiB from the
/// top, both with free lists).
struct PageAllocator {
    next_4k: u64,
    next_2m_top: u64,
    free_4k: Vec<u64>,
    free_2m: Vec<u64>,
}

/// Scratch pages in the reserved area (never TDX pages).
struct Scratch {
    tdmr_array: u64,
    tdmr_info: u64,
    td_params: u64,
    source: u64,
    rdall: u64,
}

/// An emulated platform, initialized through SEAMCALLs (SYS.INIT, LP.INIT on every LP,
/// SYS.CONFIG with one TDMR covering the range and PAMT in its reserved head, SYS.KEY.CONFIG
/// per package, TDMR.INIT until done).
pub struct Platform {
    /// The module.
    pub module: Arc<EmulatedModule>,
    /// Its memory.
    pub mem: Arc<SparseMemory>,
    /// The global KeyID chosen in SYS.CONFIG.
    pub global_hkid: Hkid,
    alloc: spin::Mutex<PageAllocator>,
    scratch: spin::Mutex<Scratch>,
    hkids: spin::Mutex<Vec<u16>>,
    cfg: PlatformConfig,
}

/// Options for [`Platform::create_td`].
#[derive(Clone, Debug)]
pub struct TdOptions {
    /// TD attributes (default `SEPT_VE_DISABLE`).
    pub attributes: u64,
    /// vCPUs to create and initialize.
    pub vcpus: u16,
    /// MAX_VCPUS in TD_PARAMS (at least `vcpus`).
    pub max_vcpus: u16,
}

impl Default for TdOptions {
    fn default() -> Self {
        TdOptions {
            attributes: attributes::SEPT_VE_DISABLE,
            vcpus: 1,
            max_vcpus: 8,
        }
    }
}

/// A TD created by [`Platform::create_td`].
#[derive(Clone, Debug)]
pub struct TestTd {
    /// TDR page.
    pub tdr: Hpa,
    /// KeyID.
    pub hkid: Hkid,
    /// TDCS pages.
    pub tdcs: Vec<Hpa>,
    /// vCPUs.
    pub vcpus: Vec<TestVcpu>,
}

/// A vCPU of a [`TestTd`].
#[derive(Clone, Debug)]
pub struct TestVcpu {
    /// TDVPR page.
    pub tdvpr: Hpa,
    /// TDCX pages.
    pub tdcx: Vec<Hpa>,
}

impl Platform {
    /// A default platform: 1 GiB at 1 GiB, 4 LPs, 1 package, 32 KeyIDs.
    ///
    /// # Panics
    /// Only if the default configuration is broken (a bug caught by the crate's own tests).
    #[allow(clippy::expect_used)]
    pub fn new() -> Platform {
        Self::with_config(PlatformConfig::default()).expect("default platform initializes")
    }

    /// A platform with `cfg`, initialized.
    pub fn with_config(cfg: PlatformConfig) -> Result<Platform, SetupError> {
        const G1: u64 = 1 << 30;
        if !cfg.phys_base.is_multiple_of(G1)
            || !cfg.phys_size.is_multiple_of(G1)
            || cfg.phys_size == 0
        {
            return Err(SetupError::Range);
        }
        let mem = Arc::new(SparseMemory::new());
        let module = EmulatedModule::new(
            EmuConfig {
                phys_base: Hpa(cfg.phys_base),
                phys_size: cfg.phys_size,
                num_lps: cfg.num_lps,
                num_packages: cfg.num_packages,
                hkid_start: cfg.hkid_start,
                num_hkids: cfg.num_hkids,
                hkid_shift: cfg.hkid_shift,
                limits: cfg.limits.clone(),
            },
            mem.clone() as Arc<dyn PhysMemory>,
        )?;
        // Reserved head: PAMT arrays then scratch pages, rounded up to 2 MiB.
        let base = cfg.phys_base;
        let p4k = pamt_array_size(cfg.phys_size, PamtPageSize::S4K);
        let p2m = pamt_array_size(cfg.phys_size, PamtPageSize::S2M);
        let p1g = pamt_array_size(cfg.phys_size, PamtPageSize::S1G);
        let scratch_base = base + p4k + p2m + p1g;
        let reserved = (scratch_base + 16 * 4096 - base).next_multiple_of(2 << 20);
        if reserved + (8 << 20) > cfg.phys_size {
            return Err(SetupError::Range);
        }
        let scratch = Scratch {
            tdmr_array: scratch_base,
            tdmr_info: scratch_base + 4096,
            td_params: scratch_base + 2 * 4096,
            source: scratch_base + 3 * 4096,
            rdall: scratch_base + 4 * 4096,
        };
        let global = cfg.hkid_start;
        let lps: Vec<_> = (0..cfg.num_lps).filter_map(|i| module.lp(i)).collect();
        let call = |s: &dyn Seamcall, mut r: Regs| -> Result<Regs, SeamError> {
            let leaf = Leaf::from_number(r.rax as u16).unwrap_or(Leaf::SysInfo);
            s.seamcall(&mut r);
            if TdxStatus(r.rax).is_error() {
                Err(SeamError {
                    leaf,
                    status: TdxStatus(r.rax),
                    rcx: r.rcx,
                    rdx: r.rdx,
                })
            } else {
                Ok(r)
            }
        };
        call(&*module, Regs::for_leaf(Leaf::SysInit, 0))?;
        for lp in &lps {
            call(lp, Regs::for_leaf(Leaf::SysLpInit, 0))?;
        }
        // TDMR_INFO: base, size, PAMT 1G/2M/4K (base, size), reserved area 0 = the head.
        let mut info = [0u8; 512];
        let fields = [
            base,
            cfg.phys_size,
            base + p4k + p2m,
            p1g,
            base + p4k,
            p2m,
            base,
            p4k,
            0,
            reserved,
        ];
        for (i, v) in fields.iter().enumerate() {
            info[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        mem.write(Hpa(scratch.tdmr_info), &info);
        mem.write(Hpa(scratch.tdmr_array), &scratch.tdmr_info.to_le_bytes());
        let mut r = Regs::for_leaf(Leaf::SysConfig, 0);
        r.rcx = scratch.tdmr_array;
        r.rdx = 1;
        r.r8 = u64::from(global);
        call(&*module, r)?;
        let mut done_pkgs = Vec::new();
        for lp in &lps {
            let pkg = lp.lp() % cfg.num_packages;
            if !done_pkgs.contains(&pkg) {
                call(lp, Regs::for_leaf(Leaf::SysKeyConfig, 0))?;
                done_pkgs.push(pkg);
            }
        }
        loop {
            let mut r = Regs::for_leaf(Leaf::SysTdmrInit, 0);
            r.rcx = base;
            let out = call(&*module, r)?;
            if out.rdx >= base + cfg.phys_size {
                break;
            }
        }
        let hkids = (cfg.hkid_start + 1..cfg.hkid_start + cfg.num_hkids)
            .rev()
            .collect();
        Ok(Platform {
            module,
            mem,
            global_hkid: Hkid(global),
            alloc: spin::Mutex::new(PageAllocator {
                next_4k: base + reserved,
                next_2m_top: base + cfg.phys_size,
                free_4k: Vec::new(),
                free_2m: Vec::new(),
            }),
            scratch: spin::Mutex::new(scratch),
            hkids: spin::Mutex::new(hkids),
            cfg,
        })
    }

    /// The configuration used.
    pub fn config(&self) -> &PlatformConfig {
        &self.cfg
    }

    /// A handle issuing SEAMCALLs on logical processor `lp`.
    pub fn lp(&self, lp: u32) -> Option<super::LpHandle> {
        self.module.lp(lp)
    }

    /// Allocates a free 4 KiB page.
    pub fn alloc_page(&self) -> Result<Hpa, SetupError> {
        let mut a = self.alloc.lock();
        if let Some(p) = a.free_4k.pop() {
            return Ok(Hpa(p));
        }
        if a.next_4k + 4096 > a.next_2m_top {
            return Err(SetupError::OutOfMemory);
        }
        let p = a.next_4k;
        a.next_4k += 4096;
        Ok(Hpa(p))
    }

    /// Allocates a free 2 MiB-aligned extent.
    pub fn alloc_2m(&self) -> Result<Hpa, SetupError> {
        let mut a = self.alloc.lock();
        if let Some(p) = a.free_2m.pop() {
            return Ok(Hpa(p));
        }
        let top = a.next_2m_top - (2 << 20);
        if top < a.next_4k {
            return Err(SetupError::OutOfMemory);
        }
        a.next_2m_top = top;
        Ok(Hpa(top))
    }

    /// Returns a 4 KiB page to the allocator.
    pub fn free_page(&self, hpa: Hpa) {
        self.alloc.lock().free_4k.push(hpa.0);
    }

    /// Returns a 2 MiB extent to the allocator.
    pub fn free_2m(&self, hpa: Hpa) {
        self.alloc.lock().free_2m.push(hpa.0);
    }

    /// Reads a global metadata field through TDH.SYS.RD.
    pub fn sys_rd(&self, field: u64) -> Result<u64, SeamError> {
        let mut r = Regs::for_leaf(Leaf::SysRd, 0);
        r.rdx = field;
        self.module.call(r).map(|o| o.r8)
    }

    /// Reads a TD metadata field through TDH.MNG.RD.
    pub fn mng_rd(&self, tdr: Hpa, field: u64) -> Result<u64, SeamError> {
        let mut r = Regs::for_leaf(Leaf::MngRd, 0);
        r.rcx = tdr.0;
        r.rdx = field;
        self.module.call(r).map(|o| o.r8)
    }

    /// Calls `leaf` (RCX = `rcx`) on the first logical processor of each package, as the
    /// per-package leaves (MNG.KEY.CONFIG, PHYMEM.CACHE.WB) require.
    fn call_per_package(&self, leaf: Leaf, rcx: u64) -> Result<(), SetupError> {
        let mut pkgs = Vec::new();
        for lp in 0..self.cfg.num_lps {
            let pkg = lp % self.cfg.num_packages;
            if pkgs.contains(&pkg) {
                continue;
            }
            pkgs.push(pkg);
            let h = self.module.lp(lp).ok_or(SetupError::Range)?;
            let mut r = Regs::for_leaf(leaf, 0);
            r.rcx = rcx;
            h.call(r)?;
        }
        Ok(())
    }

    fn take_hkid(&self) -> Result<u16, SetupError> {
        self.hkids.lock().pop().ok_or(SetupError::OutOfMemory)
    }

    /// Creates a TD up to op-state INITIALIZED with its vCPUs initialized: MNG.CREATE,
    /// MNG.KEY.CONFIG on one LP per package, MNG.ADDCX × TDCS pages, MNG.INIT with a basic
    /// TD_PARAMS, and per vCPU VP.CREATE, VP.ADDCX × (TDVPS pages − 1), VP.INIT (v1).
    pub fn create_td(&self, opts: &TdOptions) -> Result<TestTd, SetupError> {
        let m = &*self.module;
        let hkid = self.take_hkid()?;
        let tdr = self.alloc_page()?;
        let mut r = Regs::for_leaf(Leaf::MngCreate, 0);
        r.rcx = tdr.0;
        r.rdx = u64::from(hkid);
        m.call(r)?;
        self.call_per_package(Leaf::MngKeyConfig, tdr.0)?;
        let tdcs_pages = self.sys_rd(sysf::TDCS_BASE_SIZE)? / 4096;
        let mut tdcs = Vec::new();
        for _ in 0..tdcs_pages {
            let p = self.alloc_page()?;
            let mut r = Regs::for_leaf(Leaf::MngAddCx, 0);
            r.rcx = p.0;
            r.rdx = tdr.0;
            m.call(r)?;
            tdcs.push(p);
        }
        let params = TdParams::basic(opts.attributes, opts.max_vcpus.max(opts.vcpus));
        let params_pa = {
            let s = self.scratch.lock();
            self.mem.write(Hpa(s.td_params), &params.to_bytes());
            let mut r = Regs::for_leaf(Leaf::MngInit, 0);
            r.rcx = tdr.0;
            r.rdx = s.td_params;
            m.call(r)?;
            s.td_params
        };
        let _ = params_pa;
        let tdvps_pages = self.sys_rd(sysf::TDVPS_BASE_SIZE)? / 4096;
        let mut vcpus = Vec::new();
        for i in 0..opts.vcpus {
            let tdvpr = self.alloc_page()?;
            let mut r = Regs::for_leaf(Leaf::VpCreate, 0);
            r.rcx = tdvpr.0;
            r.rdx = tdr.0;
            m.call(r)?;
            let mut tdcx = Vec::new();
            for _ in 1..tdvps_pages {
                let p = self.alloc_page()?;
                let mut r = Regs::for_leaf(Leaf::VpAddCx, 0);
                r.rcx = p.0;
                r.rdx = tdvpr.0;
                m.call(r)?;
                tdcx.push(p);
            }
            let mut r = Regs::for_leaf(Leaf::VpInit, 1);
            r.rcx = tdvpr.0;
            r.rdx = 0;
            r.r8 = u64::from(i);
            m.call(r)?;
            vcpus.push(TestVcpu { tdvpr, tdcx });
        }
        Ok(TestTd {
            tdr,
            hkid: Hkid(hkid),
            tdcs,
            vcpus,
        })
    }

    /// Adds S-EPT pages (TDH.MEM.SEPT.ADD) so that the entry for `gpa` at `level` exists.
    pub fn ensure_sept_path(
        &self,
        td: &TestTd,
        gpa: Gpa,
        level: PageLevel,
    ) -> Result<(), SetupError> {
        let top = if self.mng_rd(td.tdr, tdf::EPTP_CONTROLS)? >> 3 & 7 == 4 {
            PageLevel::L256T
        } else {
            PageLevel::L512G
        };
        let mut l = top;
        while l > level {
            // The entry at `l` must point to a table.
            let (_, ls) = self.module.mem_sept_rd(td.tdr, gpa.align_down(l), l)?;
            if ls.state() == Some(tdx_abi::SeptState::Free) {
                let page = self.alloc_page()?;
                if let Err(e) = self.module.mem_sept_add(td.tdr, gpa.align_down(l), l, page) {
                    self.free_page(page);
                    return Err(e.into());
                }
            }
            match l.lower() {
                Some(lower) => l = lower,
                None => break,
            }
        }
        Ok(())
    }

    /// Adds one 4 KiB page before finalize: builds the S-EPT path, copies `contents` (zero
    /// padded) through a scratch source page with TDH.MEM.PAGE.ADD, then TDH.MR.EXTEND × 16
    /// if `extend`. Returns the page's HPA.
    pub fn add_page(
        &self,
        td: &TestTd,
        gpa: Gpa,
        contents: &[u8],
        extend: bool,
    ) -> Result<Hpa, SetupError> {
        self.ensure_sept_path(td, gpa, PageLevel::L4K)?;
        let page = self.alloc_page()?;
        let mut data = alloc::vec![0u8; 4096];
        let n = contents.len().min(4096);
        data[..n].copy_from_slice(&contents[..n]);
        {
            let s = self.scratch.lock();
            self.mem.write(Hpa(s.source), &data);
            if let Err(e) = self.module.mem_page_add(td.tdr, gpa, page, Hpa(s.source)) {
                self.free_page(page);
                return Err(e.into());
            }
        }
        if extend {
            for i in 0..16u64 {
                let mut r = Regs::for_leaf(Leaf::MrExtend, 0);
                r.rcx = gpa.0 + i * 256;
                r.rdx = td.tdr.0;
                self.module.call(r)?;
            }
        }
        Ok(page)
    }

    /// TDH.MR.FINALIZE, then reads MRTD back with TDH.MNG.RD.
    pub fn finalize(&self, td: &TestTd) -> Result<[u8; 48], SetupError> {
        let mut r = Regs::for_leaf(Leaf::MrFinalize, 0);
        r.rcx = td.tdr.0;
        self.module.call(r)?;
        let mut mrtd = [0u8; 48];
        for i in 0..6u64 {
            let v = self.mng_rd(td.tdr, tdf::MRTD + i)?;
            mrtd[i as usize * 8..i as usize * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        Ok(mrtd)
    }

    /// A finalized (RUNNABLE) TD with `opts`, no initial pages.
    pub fn runnable_td(&self, opts: &TdOptions) -> Result<TestTd, SetupError> {
        let td = self.create_td(opts)?;
        self.finalize(&td)?;
        Ok(td)
    }

    /// Maps `page` at `gpa` (4 KiB or 2 MiB) with TDH.MEM.PAGE.AUG, adding S-EPT pages first.
    pub fn aug(
        &self,
        td: &TestTd,
        gpa: Gpa,
        level: PageLevel,
        page: Hpa,
    ) -> Result<(), SetupError> {
        self.ensure_sept_path(td, gpa, level)?;
        self.module.mem_page_aug(td.tdr, gpa, level, page)?;
        Ok(())
    }

    /// TDH.VP.FLUSH of every vCPU that is associated with an LP, on that LP (TDH.VP.INIT
    /// associates a vCPU with the LP that ran it, so after [`Platform::create_td`] that is
    /// LP 0).
    pub fn flush_vcpus(&self, td: &TestTd) -> Result<(), SetupError> {
        let m = &*self.module;
        for v in &td.vcpus {
            let mut r = Regs::for_leaf(Leaf::VpRd, 0);
            r.rcx = v.tdvpr.0;
            r.rdx = crate::metadata::vcpu::ASSOCIATED_LP;
            let lp = m.call(r)?.r8;
            if lp != u64::MAX {
                let h = self.module.lp(lp as u32).ok_or(SetupError::Range)?;
                let mut r = Regs::for_leaf(Leaf::VpFlush, 0);
                r.rcx = v.tdvpr.0;
                h.call(r)?;
            }
        }
        Ok(())
    }

    /// Tears the TD down the way KVM does (VP.FLUSH of associated vCPUs on their LP,
    /// VPFLUSHDONE, CACHE.WB per package, KEY.FREEID, PAGE.RECLAIM of every page it owns, TDR
    /// last) and returns every page to the allocator.
    pub fn teardown(&self, td: &TestTd) -> Result<(), SetupError> {
        let m = &*self.module;
        self.flush_vcpus(td)?;
        let mut r = Regs::for_leaf(Leaf::MngVpFlushDone, 0);
        r.rcx = td.tdr.0;
        m.call(r)?;
        self.call_per_package(Leaf::PhymemCacheWb, 0)?;
        let mut r = Regs::for_leaf(Leaf::MngKeyFreeId, 0);
        r.rcx = td.tdr.0;
        m.call(r)?;
        self.hkids.lock().push(td.hkid.0);
        // Every page PAMT says the TD owns, children first.
        let owned: Vec<(Hpa, super::pamt::PamtMeta)> = self
            .module
            .pamt
            .snapshot()
            .into_iter()
            .filter(|(hpa, meta)| {
                meta.owner == td.tdr
                    && meta.page_type != PageType::Tdr
                    && !matches!(meta.page_type, PageType::Nda | PageType::Rsvd)
                    && hpa.0 % (meta.size.pages_4k() * 4096) == 0
            })
            .collect();
        for (hpa, meta) in owned {
            m.phymem_page_reclaim(hpa)?;
            match meta.size {
                PamtPageSize::S4K => self.free_page(hpa),
                PamtPageSize::S2M => self.free_2m(hpa),
                PamtPageSize::S1G => {
                    for i in 0..512 {
                        self.free_2m(Hpa(hpa.0 + i * (2 << 20)));
                    }
                }
            }
        }
        m.phymem_page_reclaim(td.tdr)?;
        m.phymem_page_wbinvd(td.tdr, self.global_hkid)?;
        self.free_page(td.tdr);
        Ok(())
    }

    /// Runs SYS.RDALL into a scratch page and returns the `(field, value)` pairs of the first
    /// list.
    pub fn sys_rdall(&self) -> Result<Vec<(u64, u64)>, SetupError> {
        let s = self.scratch.lock();
        let mut r = Regs::for_leaf(Leaf::SysRdAll, 0);
        r.rdx = s.rdall;
        r.r8 = 0;
        self.module.call(r)?;
        let mut page = alloc::vec![0u8; 4096];
        self.mem.read(Hpa(s.rdall), &mut page);
        let q = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&page[o..o + 8]);
            u64::from_le_bytes(b)
        };
        let n = (q(0) as usize).min(255);
        Ok((0..n).map(|i| (q(8 + i * 16), q(16 + i * 16))).collect())
    }

    /// The raw GPA+level operand (for tests that build registers by hand).
    pub fn gpa_operand(gpa: Gpa, level: PageLevel) -> u64 {
        gpa_level_operand(gpa, level)
    }
}

impl Default for Platform {
    fn default() -> Self {
        Self::new()
    }
}
