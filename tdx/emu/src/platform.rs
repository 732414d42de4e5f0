//! Platform leaves: TDH.SYS.INIT, LP.INIT, RD, RDALL, CONFIG, KEY.CONFIG, TDMR.INIT
//! (module 1.5 `tdh_sys_*.c`; Linux `arch/x86/virt/vmx/tdx/tdx.c` init sequence).

use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use super::pamt::TdmrRange;
use super::{EmulatedModule, KotState, LeafResult, LockMode, SysState};
use tdx_abi::metadata::sys as f;
use tdx_abi::pamt::{PAMT_ENTRY_SIZE, PamtPageSize, pamt_array_size};
use tdx_abi::seamcall::Regs;
use tdx_abi::td_params::attributes;
use tdx_abi::{OperandId, TdxStatus};

/// Size of one TDMR_INFO structure (512-byte aligned).
pub const TDMR_INFO_SIZE: usize = 512;

/// CPUID leaves the software module reports as configurable (`leaf | subleaf << 32`,
/// subleaf `0xFFFF_FFFF` = none) and their configurable bit masks `[EAX, EBX, ECX, EDX]`.
pub const CPUID_CONFIG: [(u64, [u32; 4]); 2] = [
    (0xFFFF_FFFF_0000_0001, [0, 0, 0x0040_0000, 0]),
    (0x0000_0000_0000_0007, [0, 0x0000_0218, 0, 0]),
];

/// TDX_XFAM_FIXED0: the XFAM bits a TD may ever set (intel/tdx-module
/// `src/common/data_structures/td_control_structures.h`; MPX, bits 3 and 4, is not one).
const TDX_XFAM_FIXED0: u64 = 0x0006_DBE7;

/// The XFAM bits of the modelled CPU (XCR0 | IA32_XSS): x87, SSE, AVX, MPX, AVX-512 (k-mask,
/// ZMM_Hi256, Hi16_ZMM), PKRU, AMX (XTILECFG, XTILEDATA).
const CPU_XFAM: u64 = 0x0006_02FF;

/// XFAM_FIXED0 as SYS.RD reports it and TDH.MNG.INIT enforces it: TDX_XFAM_FIXED0 limited to
/// what the CPU supports (`check_xfam` in intel/tdx-module `src/common/helpers/helpers.c`).
pub(crate) const XFAM_FIXED0: u64 = TDX_XFAM_FIXED0 & CPU_XFAM;

/// XFAM_FIXED1: x87 and SSE, which every TD has (TDX_XFAM_FIXED1).
pub(crate) const XFAM_FIXED1: u64 = 0x3;

/// Module version reported (1.5.x).
const VERSION: (u64, u64, u64) = (1, 5, 1);

impl EmulatedModule {
    fn set_sys_state(&self, s: SysState) {
        self.sys.state.store(s as u8, Ordering::Release);
    }

    pub(super) fn leaf_sys_init(&self) -> LeafResult {
        let _g = self
            .sys
            .lock
            .try_lock(LockMode::Exclusive)
            .ok_or(TdxStatus::SYS_BUSY)?;
        if self.sys_state() != SysState::Uninitialized {
            return Err(TdxStatus::SYS_INIT_NOT_PENDING);
        }
        self.set_sys_state(SysState::SysInitDone);
        Ok(TdxStatus::SUCCESS)
    }

    pub(super) fn leaf_sys_lp_init(&self, lp: u32) -> LeafResult {
        if self.sys_state() == SysState::Uninitialized {
            return Err(TdxStatus::SYS_STATE_INCORRECT);
        }
        let flag = self
            .sys
            .lp_init
            .get(lp as usize)
            .ok_or(TdxStatus::OPERAND_INVALID.with_operand(OperandId::RAX))?;
        if flag.swap(true, Ordering::AcqRel) {
            return Err(TdxStatus::SYS_LP_INIT_DONE);
        }
        Ok(TdxStatus::SUCCESS)
    }

    /// Value of a global metadata field.
    pub(super) fn sys_field(&self, id: u64) -> Option<u64> {
        let l = &self.cfg.limits;
        let cpuid_n = CPUID_CONFIG.len() as u64;
        Some(match id {
            f::TDX_FEATURES0 => l.tdx_features0,
            f::MAJOR_VERSION => VERSION.0,
            f::MINOR_VERSION => VERSION.1,
            f::UPDATE_VERSION => VERSION.2,
            f::NUM_CMRS => 1,
            f::CMR_BASE => self.cfg.phys_base.0,
            f::CMR_SIZE => self.cfg.phys_size,
            f::MAX_TDMRS => u64::from(l.max_tdmrs),
            f::MAX_RESERVED_PER_TDMR => u64::from(l.max_reserved_per_tdmr),
            f::PAMT_4K_ENTRY_SIZE | f::PAMT_2M_ENTRY_SIZE | f::PAMT_1G_ENTRY_SIZE => {
                PAMT_ENTRY_SIZE
            }
            f::TDR_BASE_SIZE => 4096,
            f::TDCS_BASE_SIZE => u64::from(l.tdcs_pages) * 4096,
            f::TDVPS_BASE_SIZE => u64::from(l.tdvps_pages) * 4096,
            f::ATTRIBUTES_FIXED0 => attributes::SUPPORTED,
            f::ATTRIBUTES_FIXED1 => 0,
            f::XFAM_FIXED0 => XFAM_FIXED0,
            f::XFAM_FIXED1 => XFAM_FIXED1,
            f::NUM_CPUID_CONFIG => cpuid_n,
            f::MAX_VCPUS_PER_TD => u64::from(l.max_vcpus_per_td),
            crate::metadata::NUM_TD_HKIDS => u64::from(self.cfg.num_hkids.saturating_sub(1)),
            _ if (f::CPUID_CONFIG_LEAVES..f::CPUID_CONFIG_LEAVES + cpuid_n).contains(&id) => {
                CPUID_CONFIG.get((id - f::CPUID_CONFIG_LEAVES) as usize)?.0
            }
            _ if (f::CPUID_CONFIG_VALUES..f::CPUID_CONFIG_VALUES + 2 * cpuid_n).contains(&id) => {
                let i = (id - f::CPUID_CONFIG_VALUES) as usize;
                let m = CPUID_CONFIG.get(i / 2)?.1;
                if i.is_multiple_of(2) {
                    u64::from(m[0]) | u64::from(m[1]) << 32
                } else {
                    u64::from(m[2]) | u64::from(m[3]) << 32
                }
            }
            _ => return None,
        })
    }

    /// Every readable global field ID, in RDALL order.
    fn sys_field_ids(&self) -> Vec<u64> {
        let mut v = alloc::vec![
            f::TDX_FEATURES0,
            f::MAJOR_VERSION,
            f::MINOR_VERSION,
            f::UPDATE_VERSION,
            f::NUM_CMRS,
            f::CMR_BASE,
            f::CMR_SIZE,
            f::MAX_TDMRS,
            f::MAX_RESERVED_PER_TDMR,
            f::PAMT_4K_ENTRY_SIZE,
            f::PAMT_2M_ENTRY_SIZE,
            f::PAMT_1G_ENTRY_SIZE,
            f::TDR_BASE_SIZE,
            f::TDCS_BASE_SIZE,
            f::TDVPS_BASE_SIZE,
            f::ATTRIBUTES_FIXED0,
            f::ATTRIBUTES_FIXED1,
            f::XFAM_FIXED0,
            f::XFAM_FIXED1,
            f::NUM_CPUID_CONFIG,
            f::MAX_VCPUS_PER_TD,
            crate::metadata::NUM_TD_HKIDS,
        ];
        for i in 0..CPUID_CONFIG.len() as u64 {
            v.push(f::CPUID_CONFIG_LEAVES + i);
        }
        for i in 0..2 * CPUID_CONFIG.len() as u64 {
            v.push(f::CPUID_CONFIG_VALUES + i);
        }
        v
    }

    pub(super) fn leaf_sys_rd(&self, r: &mut Regs) -> LeafResult {
        if self.sys_state() == SysState::Uninitialized {
            return Err(TdxStatus::SYS_NOT_READY);
        }
        let id = r.rdx;
        let value = self
            .sys_field(id)
            .ok_or(TdxStatus::METADATA_FIELD_ID_INCORRECT.with_operand(OperandId::RDX))?;
        r.r8 = value;
        // RDX returns the next field ID (-1 after the last).
        let ids = self.sys_field_ids();
        r.rdx = ids
            .iter()
            .position(|&x| x == id)
            .and_then(|i| ids.get(i + 1).copied())
            .unwrap_or(u64::MAX);
        Ok(TdxStatus::SUCCESS)
    }

    /// TDH.SYS.RDALL (simplified list format): RDX = 4 KiB-aligned output page, R8 = first
    /// field ID (0 = from the start). The page receives a u64 count N followed by N
    /// `(field ID, value)` u64 pairs (at most 255); R8 returns the next field ID or -1.
    pub(super) fn leaf_sys_rdall(&self, r: &mut Regs) -> LeafResult {
        if self.sys_state() == SysState::Uninitialized {
            return Err(TdxStatus::SYS_NOT_READY);
        }
        let page = self.check_page_hpa(r.rdx, OperandId::RDX)?;
        if !self.pamt.in_range(page, 4096) {
            return Err(TdxStatus::OPERAND_ADDR_RANGE_ERROR.with_operand(OperandId::RDX));
        }
        let ids = self.sys_field_ids();
        let start = if r.r8 == 0 {
            0
        } else {
            ids.iter()
                .position(|&x| x == r.r8)
                .ok_or(TdxStatus::METADATA_FIELD_ID_INCORRECT.with_operand(OperandId::R8))?
        };
        let mut out = alloc::vec![0u8; 4096];
        let mut n = 0usize;
        for &id in ids.iter().skip(start).take(255) {
            let v = self.sys_field(id).unwrap_or(0);
            let off = 8 + n * 16;
            out[off..off + 8].copy_from_slice(&id.to_le_bytes());
            out[off + 8..off + 16].copy_from_slice(&v.to_le_bytes());
            n += 1;
        }
        out[0..8].copy_from_slice(&(n as u64).to_le_bytes());
        self.mem.write(tdx_abi::Hpa(page), &out);
        r.r8 = ids.get(start + n).copied().unwrap_or(u64::MAX);
        Ok(TdxStatus::SUCCESS)
    }

    pub(super) fn leaf_sys_config(&self, r: &mut Regs) -> LeafResult {
        let _g = self
            .sys
            .lock
            .try_lock(LockMode::Exclusive)
            .ok_or(TdxStatus::OPERAND_BUSY.with_operand(OperandId::SYS))?;
        match self.sys_state() {
            SysState::Uninitialized => return Err(TdxStatus::SYS_STATE_INCORRECT),
            SysState::SysInitDone => {}
            _ => return Err(TdxStatus::SYS_CONFIG_NOT_PENDING),
        }
        if !self.sys.lp_init.iter().all(|b| b.load(Ordering::Acquire)) {
            return Err(TdxStatus::SYS_LP_INIT_NOT_DONE);
        }
        let count = r.rdx;
        if count == 0 || count > u64::from(self.cfg.limits.max_tdmrs) {
            return Err(TdxStatus::OPERAND_INVALID.with_operand(OperandId::RDX));
        }
        if !r.rcx.is_multiple_of(512) || r.rcx >> self.cfg.hkid_shift != 0 {
            return Err(TdxStatus::OPERAND_INVALID.with_operand(OperandId::RCX));
        }
        let global = r.r8;
        let global_ok = u16::try_from(global)
            .ok()
            .and_then(|h| self.kot_entry(h).map(|_| h));
        let Some(global) = global_ok else {
            return Err(TdxStatus::OPERAND_INVALID.with_operand(OperandId::R8));
        };
        let mut pa_array = alloc::vec![0u8; count as usize * 8];
        self.read_phys(r.rcx, &mut pa_array, OperandId::RCX)?;

        let cmr = (
            self.cfg.phys_base.0,
            self.cfg.phys_base.0 + self.cfg.phys_size,
        );
        let in_cmr = |start: u64, size: u64| start >= cmr.0 && size <= cmr.1 - start.min(cmr.1);
        let align = self.cfg.limits.tdmr_alignment.max(4096);
        let mut tdmrs: Vec<TdmrRange> = Vec::new();
        let mut pamts: Vec<(u64, u64, u32)> = Vec::new();
        for i in 0..count as usize {
            let idx = i as u32;
            let mut pa_bytes = [0u8; 8];
            pa_bytes.copy_from_slice(&pa_array[i * 8..i * 8 + 8]);
            let info_pa = u64::from_le_bytes(pa_bytes);
            if !info_pa.is_multiple_of(512) || info_pa >> self.cfg.hkid_shift != 0 {
                return Err(TdxStatus::OPERAND_INVALID.with_operand(OperandId::TDMR_INFO_PA));
            }
            let mut info = [0u8; TDMR_INFO_SIZE];
            self.read_phys(info_pa, &mut info, OperandId::TDMR_INFO_PA)?;
            let q = |k: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&info[k * 8..k * 8 + 8]);
                u64::from_le_bytes(b)
            };
            let (base, size) = (q(0), q(1));
            let bad_tdmr = || TdxStatus::INVALID_TDMR.with_operand(tdx_abi::OperandId(idx));
            if size == 0
                || !base.is_multiple_of(align)
                || !size.is_multiple_of(align)
                || base.checked_add(size).is_none()
            {
                return Err(bad_tdmr());
            }
            if base
                .checked_add(size)
                .is_some_and(|e| e >> self.cfg.hkid_shift != 0)
            {
                return Err(bad_tdmr());
            }
            if let Some(prev) = tdmrs.last()
                && base < prev.base + prev.size
            {
                return Err(TdxStatus::NON_ORDERED_TDMR.with_operand(tdx_abi::OperandId(idx)));
            }
            // Reserved areas: (offset, size) pairs; a zero size ends the list.
            let mut reserved: Vec<(u64, u64)> = Vec::new();
            let op = tdx_abi::OperandId(idx);
            for k in 0..16usize {
                let (off, rsize) = (q(8 + 2 * k), q(9 + 2 * k));
                if rsize == 0 {
                    break;
                }
                if k as u32 >= self.cfg.limits.max_reserved_per_tdmr
                    || !off.is_multiple_of(4096)
                    || !rsize.is_multiple_of(4096)
                    || off.checked_add(rsize).is_none_or(|e| e > size)
                {
                    return Err(TdxStatus::INVALID_RESERVED_IN_TDMR.with_operand(op));
                }
                if let Some(&(pstart, psize)) = reserved.last()
                    && base + off < pstart + psize
                {
                    return Err(TdxStatus::NON_ORDERED_RESERVED_IN_TDMR.with_operand(op));
                }
                reserved.push((base + off, rsize));
            }
            // Non-reserved parts of the TDMR must be inside the CMR.
            let mut cursor = base;
            for &(rs, rl) in reserved.iter().chain(core::iter::once(&(base + size, 0))) {
                if rs > cursor && !in_cmr(cursor, rs - cursor) {
                    return Err(TdxStatus::TDMR_OUTSIDE_CMRS.with_operand(op));
                }
                cursor = rs + rl;
            }
            for (k, ps) in [PamtPageSize::S1G, PamtPageSize::S2M, PamtPageSize::S4K]
                .into_iter()
                .enumerate()
            {
                let (pbase, psize) = (q(2 + 2 * k), q(3 + 2 * k));
                if !pbase.is_multiple_of(4096)
                    || !psize.is_multiple_of(4096)
                    || psize < pamt_array_size(size, ps)
                    || pbase
                        .checked_add(psize)
                        .is_none_or(|e| e >> self.cfg.hkid_shift != 0)
                {
                    return Err(TdxStatus::INVALID_PAMT.with_operand(op));
                }
                if !in_cmr(pbase, psize) {
                    return Err(TdxStatus::PAMT_OUTSIDE_CMRS.with_operand(op));
                }
                pamts.push((pbase, psize, idx));
            }
            tdmrs.push(TdmrRange {
                base,
                size,
                reserved,
            });
        }
        // PAMT arrays must not overlap each other nor any non-reserved part of a TDMR.
        let overlaps = |a: u64, al: u64, b: u64, bl: u64| a < b + bl && b < a + al;
        for (i, &(pb, pl, idx)) in pamts.iter().enumerate() {
            let op = tdx_abi::OperandId(idx);
            if pamts
                .iter()
                .enumerate()
                .any(|(j, &(qb, ql, _))| j != i && overlaps(pb, pl, qb, ql))
            {
                return Err(TdxStatus::PAMT_OVERLAP.with_operand(op));
            }
            for t in &tdmrs {
                // Walk the PAMT range page by page at 4 KiB granularity only where it meets
                // the TDMR; covered iff every byte is in a reserved area.
                if overlaps(pb, pl, t.base, t.size) {
                    let start = pb.max(t.base);
                    let end = (pb + pl).min(t.base + t.size);
                    let mut cur = start;
                    while cur < end {
                        match t
                            .reserved
                            .iter()
                            .find(|&&(rs, rl)| cur >= rs && cur < rs + rl)
                        {
                            Some(&(rs, rl)) => cur = rs + rl,
                            None => return Err(TdxStatus::PAMT_OVERLAP.with_operand(op)),
                        }
                    }
                }
            }
        }
        *self.sys.tdmr_next.lock() = tdmrs.iter().map(|t| (t.base, t.size, t.base)).collect();
        self.pamt.configure(tdmrs);
        self.sys.global_hkid.store(global, Ordering::Release);
        if let Some(e) = self.kot_entry(global) {
            e.state.store(KotState::Global as u8, Ordering::Release);
        }
        self.set_sys_state(SysState::Configured);
        Ok(TdxStatus::SUCCESS)
    }

    pub(super) fn leaf_sys_key_config(&self, lp: u32) -> LeafResult {
        match self.sys_state() {
            SysState::Configured => {}
            SysState::Uninitialized | SysState::SysInitDone => {
                return Err(TdxStatus::SYS_STATE_INCORRECT);
            }
            _ => return Err(TdxStatus::SYS_KEY_CONFIG_NOT_PENDING),
        }
        let bit = 1u64 << self.package_of(lp);
        let prev = self.sys.key_config_pkgs.fetch_or(bit, Ordering::AcqRel);
        if prev & bit != 0 {
            return Err(TdxStatus::SYS_KEY_CONFIG_NOT_PENDING);
        }
        if (prev | bit) == self.all_packages_mask() {
            self.set_sys_state(SysState::KeysConfigured);
        }
        Ok(TdxStatus::SUCCESS)
    }

    pub(super) fn leaf_sys_tdmr_init(&self, r: &mut Regs) -> LeafResult {
        let state = self.sys_state();
        if !matches!(state, SysState::KeysConfigured | SysState::Ready) {
            return Err(TdxStatus::SYS_STATE_INCORRECT);
        }
        let mut tdmrs = self.sys.tdmr_next.lock();
        let t = tdmrs
            .iter_mut()
            .find(|t| t.0 == r.rcx)
            .ok_or(TdxStatus::OPERAND_INVALID.with_operand(OperandId::RCX))?;
        let end = t.0 + t.1;
        if t.2 >= end {
            r.rdx = end;
            return Ok(TdxStatus::TDMR_ALREADY_INITIALIZED);
        }
        t.2 =
            (t.2.saturating_add(self.cfg.limits.tdmr_init_chunk.max(4096))).min(end);
        r.rdx = t.2;
        if tdmrs.iter().all(|t| t.2 >= t.0 + t.1) {
            self.set_sys_state(SysState::Ready);
        }
        Ok(TdxStatus::SUCCESS)
    }
}
