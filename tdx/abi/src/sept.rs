//! S-EPT entry states as reported by the module (`sept_state_lookup`, public values in
//! RDX bits 15:8 of an S-EPT error or of TDH.MEM.SEPT.RD).

/// Public S-EPT entry state.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum SeptState {
    /// No mapping.
    Free = 0,
    /// Leaf blocked (TDB): no new TLB entries; removal pending tracking.
    Blocked = 1,
    /// Leaf added by PAGE.AUG, waiting for the guest's TDG.MEM.PAGE.ACCEPT.
    Pending = 2,
    /// Pending leaf that was then blocked.
    PendingBlocked = 3,
    /// Leaf mapped and usable by the guest.
    Mapped = 4,
    /// Removed by PAGE.REMOVE in a way that still occupies the slot (AUG may reuse it).
    Removed = 5,
    /// Write-blocked leaf (migration).
    BlockedW = 8,
    /// Pending write-blocked leaf (migration).
    PendingBlockedW = 16,
    /// Non-leaf entry, blocked.
    NlBlocked = 129,
    /// Non-leaf entry pointing to an S-EPT page.
    NlMapped = 132,
}

impl SeptState {
    /// Decodes a public state value.
    pub const fn from_public(v: u8) -> Option<SeptState> {
        Some(match v {
            0 => SeptState::Free,
            1 => SeptState::Blocked,
            2 => SeptState::Pending,
            3 => SeptState::PendingBlocked,
            4 => SeptState::Mapped,
            5 => SeptState::Removed,
            8 => SeptState::BlockedW,
            16 => SeptState::PendingBlockedW,
            129 => SeptState::NlBlocked,
            132 => SeptState::NlMapped,
            _ => return None,
        })
    }
    /// Whether the state is a leaf state (maps a page).
    pub const fn is_leaf(self) -> bool {
        matches!(
            self,
            SeptState::Blocked
                | SeptState::Pending
                | SeptState::PendingBlocked
                | SeptState::Mapped
                | SeptState::BlockedW
                | SeptState::PendingBlockedW
        )
    }
    /// Whether the state is one of the blocked states.
    pub const fn is_blocked(self) -> bool {
        matches!(
            self,
            SeptState::Blocked | SeptState::PendingBlocked | SeptState::NlBlocked
        )
    }
}

/// The "level + state" word a S-EPT error or SEPT.RD returns in RDX:
/// bits 2:0 level, bits 15:8 public state, bits 17:16 VM index.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SeptLevelState(pub u64);

impl SeptLevelState {
    /// Packs a level and a state (VM index 0).
    pub const fn new(level: u8, state: SeptState) -> Self {
        SeptLevelState((level as u64 & 7) | ((state as u64) << 8))
    }
    /// Level bits 2:0.
    pub const fn level(self) -> u8 {
        (self.0 & 7) as u8
    }
    /// Decoded public state, if valid.
    pub const fn state(self) -> Option<SeptState> {
        SeptState::from_public(((self.0 >> 8) & 0xFF) as u8)
    }
}

/// Bit positions of the S-EPT entry (`ia32e_sept_t` in intel/tdx-module
/// `src/common/x86_defs/x86_defs.h`). The architectural entry the module returns in RCX
/// (`set_arch_septe_details_in_vmm_regs`) carries only RWX, MT, IPAT, PS, the HPA (leaves)
/// and SUPPRESS_VE; TDEL, HP, TDB and TDP are the module's internal bits.
pub mod entry_bits {
    /// Read permission (bit 0).
    pub const R: u64 = 1 << 0;
    /// Write permission (bit 1).
    pub const W: u64 = 1 << 1;
    /// Execute permission (bit 2).
    pub const X: u64 = 1 << 2;
    /// Read/write/execute permissions (bits 2:0).
    pub const RWX: u64 = 0b111;
    /// Memory type WB (6) in bits 5:3, as every leaf is mapped.
    pub const MT_WB: u64 = 6 << 3;
    /// Ignore PAT (bit 6), set in every leaf.
    pub const IPAT: u64 = 1 << 6;
    /// Leaf (PS) bit 7: set in every leaf entry, 4 KiB ones included (part of the module's
    /// state encoding), clear in non-leaf entries.
    pub const LEAF: u64 = 1 << 7;
    /// TDEL: per-entry lock (bit 11).
    pub const TDEL: u64 = 1 << 11;
    /// HPA field mask (bits 51:12).
    pub const HPA_MASK: u64 = 0x000F_FFFF_FFFF_F000;
    /// HP: host priority (bit 52).
    pub const HP: u64 = 1 << 52;
    /// TDB: blocked (bit 55).
    pub const TDB: u64 = 1 << 55;
    /// TDP: pending (bit 56).
    pub const TDP: u64 = 1 << 56;
    /// SUPPRESS_VE (bit 63).
    pub const SUPPRESS_VE: u64 = 1 << 63;
}
