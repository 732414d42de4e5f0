//! Host-side SEAMCALL leaf numbers (TDX module 1.5 ABI, `tdx_api_defs.h` leaf enum; identical
//! numbers in Linux `arch/x86/include/asm/tdx.h`).

/// A host-side SEAMCALL leaf (RAX bits 15:0 on input).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u16)]
#[allow(missing_docs)] // the names are the spec's names
pub enum Leaf {
    VpEnter = 0,
    MngAddCx = 1,
    MemPageAdd = 2,
    MemSeptAdd = 3,
    VpAddCx = 4,
    MemPageRelocate = 5,
    MemPageAug = 6,
    MemRangeBlock = 7,
    MngKeyConfig = 8,
    MngCreate = 9,
    VpCreate = 10,
    MngRd = 11,
    MemRd = 12,
    MngWr = 13,
    MemWr = 14,
    MemPageDemote = 15,
    MrExtend = 16,
    MrFinalize = 17,
    VpFlush = 18,
    MngVpFlushDone = 19,
    MngKeyFreeId = 20,
    MngInit = 21,
    VpInit = 22,
    MemPagePromote = 23,
    PhymemPageRdmd = 24,
    MemSeptRd = 25,
    VpRd = 26,
    MngKeyReclaimId = 27,
    PhymemPageReclaim = 28,
    MemPageRemove = 29,
    MemSeptRemove = 30,
    SysKeyConfig = 31,
    SysInfo = 32,
    SysInit = 33,
    SysRd = 34,
    SysLpInit = 35,
    SysTdmrInit = 36,
    SysRdAll = 37,
    MemTrack = 38,
    MemRangeUnblock = 39,
    PhymemCacheWb = 40,
    PhymemPageWbinvd = 41,
    MemSeptWr = 42,
    VpWr = 43,
    SysLpShutdown = 44,
    SysConfig = 45,
}

impl Leaf {
    /// Every leaf, in number order.
    pub const ALL: [Leaf; 46] = {
        use Leaf::*;
        [
            VpEnter,
            MngAddCx,
            MemPageAdd,
            MemSeptAdd,
            VpAddCx,
            MemPageRelocate,
            MemPageAug,
            MemRangeBlock,
            MngKeyConfig,
            MngCreate,
            VpCreate,
            MngRd,
            MemRd,
            MngWr,
            MemWr,
            MemPageDemote,
            MrExtend,
            MrFinalize,
            VpFlush,
            MngVpFlushDone,
            MngKeyFreeId,
            MngInit,
            VpInit,
            MemPagePromote,
            PhymemPageRdmd,
            MemSeptRd,
            VpRd,
            MngKeyReclaimId,
            PhymemPageReclaim,
            MemPageRemove,
            MemSeptRemove,
            SysKeyConfig,
            SysInfo,
            SysInit,
            SysRd,
            SysLpInit,
            SysTdmrInit,
            SysRdAll,
            MemTrack,
            MemRangeUnblock,
            PhymemCacheWb,
            PhymemPageWbinvd,
            MemSeptWr,
            VpWr,
            SysLpShutdown,
            SysConfig,
        ]
    };

    /// The leaf number.
    pub const fn number(self) -> u16 {
        self as u16
    }

    /// Decodes a leaf number.
    pub fn from_number(n: u16) -> Option<Leaf> {
        Self::ALL.get(usize::from(n)).copied()
    }

    /// The spec's name, e.g. `TDH.MEM.PAGE.AUG`.
    pub const fn name(self) -> &'static str {
        use Leaf::*;
        match self {
            VpEnter => "TDH.VP.ENTER",
            MngAddCx => "TDH.MNG.ADDCX",
            MemPageAdd => "TDH.MEM.PAGE.ADD",
            MemSeptAdd => "TDH.MEM.SEPT.ADD",
            VpAddCx => "TDH.VP.ADDCX",
            MemPageRelocate => "TDH.MEM.PAGE.RELOCATE",
            MemPageAug => "TDH.MEM.PAGE.AUG",
            MemRangeBlock => "TDH.MEM.RANGE.BLOCK",
            MngKeyConfig => "TDH.MNG.KEY.CONFIG",
            MngCreate => "TDH.MNG.CREATE",
            VpCreate => "TDH.VP.CREATE",
            MngRd => "TDH.MNG.RD",
            MemRd => "TDH.MEM.RD",
            MngWr => "TDH.MNG.WR",
            MemWr => "TDH.MEM.WR",
            MemPageDemote => "TDH.MEM.PAGE.DEMOTE",
            MrExtend => "TDH.MR.EXTEND",
            MrFinalize => "TDH.MR.FINALIZE",
            VpFlush => "TDH.VP.FLUSH",
            MngVpFlushDone => "TDH.MNG.VPFLUSHDONE",
            MngKeyFreeId => "TDH.MNG.KEY.FREEID",
            MngInit => "TDH.MNG.INIT",
            VpInit => "TDH.VP.INIT",
            MemPagePromote => "TDH.MEM.PAGE.PROMOTE",
            PhymemPageRdmd => "TDH.PHYMEM.PAGE.RDMD",
            MemSeptRd => "TDH.MEM.SEPT.RD",
            VpRd => "TDH.VP.RD",
            MngKeyReclaimId => "TDH.MNG.KEY.RECLAIMID",
            PhymemPageReclaim => "TDH.PHYMEM.PAGE.RECLAIM",
            MemPageRemove => "TDH.MEM.PAGE.REMOVE",
            MemSeptRemove => "TDH.MEM.SEPT.REMOVE",
            SysKeyConfig => "TDH.SYS.KEY.CONFIG",
            SysInfo => "TDH.SYS.INFO",
            SysInit => "TDH.SYS.INIT",
            SysRd => "TDH.SYS.RD",
            SysLpInit => "TDH.SYS.LP.INIT",
            SysTdmrInit => "TDH.SYS.TDMR.INIT",
            SysRdAll => "TDH.SYS.RDALL",
            MemTrack => "TDH.MEM.TRACK",
            MemRangeUnblock => "TDH.MEM.RANGE.UNBLOCK",
            PhymemCacheWb => "TDH.PHYMEM.CACHE.WB",
            PhymemPageWbinvd => "TDH.PHYMEM.PAGE.WBINVD",
            MemSeptWr => "TDH.MEM.SEPT.WR",
            VpWr => "TDH.VP.WR",
            SysLpShutdown => "TDH.SYS.LP.SHUTDOWN",
            SysConfig => "TDH.SYS.CONFIG",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip() {
        for (i, leaf) in Leaf::ALL.iter().enumerate() {
            assert_eq!(usize::from(leaf.number()), i, "{}", leaf.name());
            assert_eq!(Leaf::from_number(leaf.number()), Some(*leaf));
        }
        assert_eq!(Leaf::MemPageAug.number(), 6);
        assert_eq!(Leaf::MemTrack.number(), 38);
        assert_eq!(Leaf::SysConfig.number(), 45);
        assert_eq!(Leaf::from_number(46), None);
    }
}
