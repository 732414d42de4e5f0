//! CPU topology from x2APIC IDs: which physical package, core and SMT thread each logical CPU
//! is, derived the way Intel defines it (Intel 64 and IA-32 Architectures Software
//! Developer's Manual, Vol. 3A §10.12 "Extended xAPIC (x2APIC)", "Hierarchical mapping of
//! processor topology"; Vol. 2A, CPUID leaves 0BH and 1FH; "Intel 64 Architecture Processor
//! Topology Enumeration" white paper).
//!
//! An x2APIC ID is a bit field: the lowest bits number the SMT threads of a core, the next
//! ones the cores (and, with leaf 1FH, modules, tiles and dies) of a package, the rest the
//! package. CPUID leaf 1FH (preferred when it is valid) or else 0BH enumerates the levels,
//! one sub-leaf each: ECX[15:8] is the level type and EAX[4:0] the number of bits to shift an
//! x2APIC ID right to get the ID of the next level up. So `x2APIC ID >> (shift of the last
//! level below the package)` is the package ID, and CPUs with the same package ID share a
//! package, however the firmware numbers them and whatever holes disabled cores leave.
//!
//! The TDX host needs this to run TDH.SYS.KEY.CONFIG and TDH.PHYMEM.CACHE.WB once per
//! physical package (Intel TDX Module 1.5 base architecture specification; Linux
//! `arch/x86/virt/vmx/tdx/tdx.c`, `config_global_keyid`). Everything here is pure: the
//! appliance reads the BSP's CPUID and every CPU's x2APIC ID and hands them over.

use alloc::vec::Vec;
use core::fmt;

/// The four output registers of one CPUID execution.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidRegs {
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}

/// A logical processor's x2APIC ID (CPUID.0BH/1FH:EDX on that processor; SDM Vol. 3A
/// §10.12.8.1 "Consistency of APIC IDs and CPUID").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct X2ApicId(pub u32);

impl fmt::Display for X2ApicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A physical package's ID: the x2APIC ID shifted right by the package shift (the same for
/// every logical CPU of the package; IDs need not be dense).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PackageId(pub u32);

/// A core's ID within its package: the x2APIC ID bits between the SMT shift and the package
/// shift (so with leaf 1FH it also holds the module, tile and die bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CoreId(pub u32);

/// A logical processor's SMT (hyper-thread) ID within its core: the x2APIC ID bits below the
/// SMT shift.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SmtId(pub u32);

/// The CPUID leaf that enumerated the topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopologyLeaf {
    /// Leaf 1FH, "V2 Extended Topology Enumeration" (SDM Vol. 2A, CPUID).
    V2,
    /// Leaf 0BH, "Extended Topology Enumeration".
    Extended,
}

impl TopologyLeaf {
    /// The leaf number (0x1F or 0xB).
    pub const fn leaf(self) -> u32 {
        match self {
            TopologyLeaf::V2 => 0x1F,
            TopologyLeaf::Extended => 0xB,
        }
    }
}

/// A topology level's type (CPUID.1FH/0BH:ECX[15:8] of its sub-leaf; SDM Vol. 2A, CPUID,
/// "V2 Extended Topology Enumeration Leaf").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LevelType {
    /// 1: SMT (logical processors of a core).
    Smt,
    /// 2: core.
    Core,
    /// 3: module (leaf 1FH only).
    Module,
    /// 4: tile (leaf 1FH only).
    Tile,
    /// 5: die (leaf 1FH only).
    Die,
    /// Any other non-zero type (a later level type; the SDM tells software to treat unknown
    /// types as levels between the known ones and the package).
    Other(u8),
}

impl LevelType {
    fn from_raw(raw: u8) -> LevelType {
        match raw {
            1 => LevelType::Smt,
            2 => LevelType::Core,
            3 => LevelType::Module,
            4 => LevelType::Tile,
            5 => LevelType::Die,
            other => LevelType::Other(other),
        }
    }
}

/// One enumerated level: its type and the right shift to the next level's ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopologyLevel {
    /// The level's type.
    pub kind: LevelType,
    /// CPUID EAX[4:0]: bits to shift an x2APIC ID right to get the next level's ID.
    pub shift: u32,
}

/// Why the topology could not be derived.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// Neither leaf 1FH nor leaf 0BH is valid (the maximum basic leaf is lower, or sub-leaf
    /// 0 reports no logical processors or no SMT level).
    #[error("the CPU enumerates no extended topology (CPUID leaf 0x1F or 0xB)")]
    NoExtendedTopology,
    /// Sub-leaf 0 is not the SMT level.
    #[error("CPUID leaf {leaf:#x} sub-leaf 0 is not the SMT level")]
    FirstLevelNotSmt {
        /// The leaf.
        leaf: u32,
    },
    /// A level shifts fewer bits than the level below it.
    #[error("CPUID leaf {leaf:#x} sub-leaf {subleaf}: shift {shift} is below the previous level's")]
    ShiftDecreases {
        /// The leaf.
        leaf: u32,
        /// The offending sub-leaf.
        subleaf: u32,
        /// Its shift.
        shift: u32,
    },
    /// More sub-leaves than any defined topology has.
    #[error("CPUID leaf {leaf:#x} enumerates more than {MAX_LEVELS} levels")]
    TooManyLevels {
        /// The leaf.
        leaf: u32,
    },
    /// No logical CPU was given.
    #[error("no logical CPUs")]
    NoCpus,
    /// Two logical CPUs reported the same x2APIC ID.
    #[error("CPUs {first} and {second} both report x2APIC ID {id}")]
    DuplicateApicId {
        /// The ID.
        id: X2ApicId,
        /// The first CPU index with it.
        first: u32,
        /// The second.
        second: u32,
    },
}

/// Most sub-leaves read (SMT, core, module, tile, die, die group and a margin).
pub const MAX_LEVELS: usize = 8;

/// The bit layout of x2APIC IDs, read from the BSP's CPUID (every package of a platform has
/// the same layout: SDM Vol. 3A §10.12.8.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopologyShifts {
    leaf: TopologyLeaf,
    levels: Vec<TopologyLevel>,
}

/// Whether `leaf` is a valid topology leaf: enumerated, sub-leaf 0 reports logical
/// processors (EBX[15:0] != 0) and is the SMT level (the check of the topology white paper
/// and of Linux `arch/x86/kernel/cpu/topology_ext.c`).
fn leaf_valid(max_basic_leaf: u32, leaf: u32, cpuid: &dyn Fn(u32, u32) -> CpuidRegs) -> bool {
    if max_basic_leaf < leaf {
        return false;
    }
    let r = cpuid(leaf, 0);
    r.ebx & 0xFFFF != 0 && (r.ecx >> 8) & 0xFF != 0
}

impl TopologyShifts {
    /// Reads the levels from CPUID: leaf 1FH when valid, else 0BH, sub-leaves from 0 until
    /// the level type is 0 (invalid). `max_basic_leaf` is CPUID.0:EAX; `cpuid(leaf,
    /// subleaf)` executes CPUID (or replays a recorded dump).
    pub fn from_cpuid(
        max_basic_leaf: u32,
        cpuid: &dyn Fn(u32, u32) -> CpuidRegs,
    ) -> Result<TopologyShifts, TopologyError> {
        let leaf = if leaf_valid(max_basic_leaf, 0x1F, cpuid) {
            TopologyLeaf::V2
        } else if leaf_valid(max_basic_leaf, 0xB, cpuid) {
            TopologyLeaf::Extended
        } else {
            return Err(TopologyError::NoExtendedTopology);
        };
        let mut levels = Vec::new();
        for subleaf in 0..=MAX_LEVELS as u32 {
            let r = cpuid(leaf.leaf(), subleaf);
            let kind = ((r.ecx >> 8) & 0xFF) as u8;
            if kind == 0 {
                return TopologyShifts::from_levels(leaf, levels);
            }
            levels.push(TopologyLevel {
                kind: LevelType::from_raw(kind),
                shift: r.eax & 0x1F,
            });
        }
        Err(TopologyError::TooManyLevels { leaf: leaf.leaf() })
    }

    /// Checks enumerated levels (lowest first): the first is SMT, shifts never decrease.
    pub fn from_levels(
        leaf: TopologyLeaf,
        levels: Vec<TopologyLevel>,
    ) -> Result<TopologyShifts, TopologyError> {
        match levels.first() {
            Some(l) if l.kind == LevelType::Smt => {}
            Some(_) => return Err(TopologyError::FirstLevelNotSmt { leaf: leaf.leaf() }),
            None => return Err(TopologyError::NoExtendedTopology),
        }
        if levels.len() > MAX_LEVELS {
            return Err(TopologyError::TooManyLevels { leaf: leaf.leaf() });
        }
        for (i, pair) in levels.windows(2).enumerate() {
            if let [below, above] = pair
                && above.shift < below.shift
            {
                return Err(TopologyError::ShiftDecreases {
                    leaf: leaf.leaf(),
                    subleaf: i as u32 + 1,
                    shift: above.shift,
                });
            }
        }
        Ok(TopologyShifts { leaf, levels })
    }

    /// The leaf the levels came from.
    pub fn leaf(&self) -> TopologyLeaf {
        self.leaf
    }

    /// The levels, lowest (SMT) first.
    pub fn levels(&self) -> &[TopologyLevel] {
        &self.levels
    }

    /// Bits of the SMT ID (the SMT level's shift).
    pub fn smt_shift(&self) -> u32 {
        self.levels.first().map_or(0, |l| l.shift)
    }

    /// Bits below the package ID (the last level's shift).
    pub fn package_shift(&self) -> u32 {
        self.levels.last().map_or(0, |l| l.shift)
    }

    /// Where the logical CPU with x2APIC ID `id` sits.
    pub fn locate(&self, id: X2ApicId) -> CpuLocation {
        let smt = self.smt_shift();
        let pkg = self.package_shift();
        let below = |shift: u32| id.0 & low_mask(shift);
        CpuLocation {
            apic_id: id,
            package: PackageId(id.0.checked_shr(pkg).unwrap_or(0)),
            core: CoreId(below(pkg).checked_shr(smt).unwrap_or(0)),
            smt: SmtId(below(smt)),
        }
    }
}

/// The low `bits` bits set.
fn low_mask(bits: u32) -> u32 {
    1u32.checked_shl(bits).map_or(u32::MAX, |b| b - 1)
}

/// A logical CPU's place in the topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuLocation {
    /// Its x2APIC ID.
    pub apic_id: X2ApicId,
    /// Its package.
    pub package: PackageId,
    /// Its core within the package.
    pub core: CoreId,
    /// Its thread within the core.
    pub smt: SmtId,
}

/// A logical CPU whose package grouping by another source (UEFI MP Services'
/// `EFI_CPU_PHYSICAL_LOCATION.Package`) differs from the x2APIC-ID derivation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackageDisagreement {
    /// The CPU index.
    pub cpu: u32,
    /// Its x2APIC ID.
    pub apic_id: X2ApicId,
    /// The package the x2APIC ID says.
    pub derived: PackageId,
    /// The package number the other source says.
    pub reported: u32,
}

/// The logical CPUs of a platform (index = the runtime's CPU number, CPU 0 the main CPU)
/// and their packages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    cpus: Vec<CpuLocation>,
    /// Per CPU: its package's index in `packages`.
    package_index: Vec<u32>,
    /// Package IDs in order of first appearance (CPU 0's first).
    packages: Vec<PackageId>,
}

impl Topology {
    /// Locates every CPU (`apic_ids[n]` is CPU `n`'s x2APIC ID) with `shifts`.
    pub fn new(shifts: &TopologyShifts, apic_ids: &[X2ApicId]) -> Result<Topology, TopologyError> {
        if apic_ids.is_empty() {
            return Err(TopologyError::NoCpus);
        }
        let mut sorted: Vec<(X2ApicId, u32)> = apic_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, i as u32))
            .collect();
        sorted.sort_unstable();
        for pair in sorted.windows(2) {
            if let [(a, first), (b, second)] = pair
                && a == b
            {
                return Err(TopologyError::DuplicateApicId {
                    id: *a,
                    first: *first,
                    second: *second,
                });
            }
        }
        let cpus: Vec<CpuLocation> = apic_ids.iter().map(|id| shifts.locate(*id)).collect();
        let (package_index, packages) = dense(cpus.iter().map(|c| c.package));
        Ok(Topology {
            cpus,
            package_index,
            packages,
        })
    }

    /// Every CPU's location, by CPU index.
    pub fn cpus(&self) -> &[CpuLocation] {
        &self.cpus
    }

    /// The package IDs, in order of first appearance (CPU 0's package first).
    pub fn packages(&self) -> &[PackageId] {
        &self.packages
    }

    /// Per CPU, its package numbered densely from 0 in order of first appearance (what
    /// `Platform::package_of` reports).
    pub fn package_indices(&self) -> &[u32] {
        &self.package_index
    }

    /// Distinct cores (package, core pairs).
    pub fn cores(&self) -> usize {
        let mut cores: Vec<(PackageId, CoreId)> =
            self.cpus.iter().map(|c| (c.package, c.core)).collect();
        cores.sort_unstable();
        cores.dedup();
        cores.len()
    }

    /// The lowest-numbered CPU of each package, CPU 0's package first: where per-package
    /// SEAMCALLs run.
    pub fn one_cpu_per_package(&self) -> Vec<u32> {
        let mut seen = Vec::new();
        let mut out = Vec::new();
        for (cpu, &p) in self.package_index.iter().enumerate() {
            if !seen.contains(&p) {
                seen.push(p);
                out.push(cpu as u32);
            }
        }
        out
    }

    /// The CPUs whose package grouping in `reported` (per CPU index, any numbering) differs
    /// from this one. Two numberings agree when they partition the CPUs alike, so labels
    /// are compared after numbering both densely in order of first appearance.
    pub fn disagreements(&self, reported: &[u32]) -> Vec<PackageDisagreement> {
        let (theirs, _) = dense(reported.iter().copied());
        self.cpus
            .iter()
            .zip(&self.package_index)
            .enumerate()
            .filter(|(i, (_, ours))| theirs.get(*i) != Some(*ours))
            .map(|(i, (loc, _))| PackageDisagreement {
                cpu: i as u32,
                apic_id: loc.apic_id,
                derived: loc.package,
                reported: reported.get(i).copied().unwrap_or(u32::MAX),
            })
            .collect()
    }
}

/// Numbers `labels` densely from 0 in order of first appearance; returns the per-item
/// numbers and the distinct labels in that order.
pub fn dense<T: PartialEq + Copy>(labels: impl Iterator<Item = T>) -> (Vec<u32>, Vec<T>) {
    let mut distinct: Vec<T> = Vec::new();
    let numbers = labels
        .map(|l| match distinct.iter().position(|d| *d == l) {
            Some(i) => i as u32,
            None => {
                distinct.push(l);
                distinct.len() as u32 - 1
            }
        })
        .collect();
    (numbers, distinct)
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests;
