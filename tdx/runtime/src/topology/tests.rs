//! Topology derivation against APIC-ID layouts and CPUID topology leaves shaped like real
//! platforms: the leaf values follow what these CPUs enumerate (SDM Vol. 2A, CPUID leaves
//! 0BH/1FH) and the x2APIC ID layouts how firmware numbers their processors.

use super::*;
use alloc::vec;

/// A replayed CPUID: `(leaf, subleaf, regs)` entries; anything else reads as an invalid
/// sub-leaf (level type 0), as the CPU answers past the last level.
struct Dump {
    max_basic_leaf: u32,
    entries: Vec<(u32, u32, CpuidRegs)>,
}

impl Dump {
    fn shifts(&self) -> Result<TopologyShifts, TopologyError> {
        TopologyShifts::from_cpuid(self.max_basic_leaf, &|leaf, sub| {
            self.entries
                .iter()
                .find(|(l, s, _)| *l == leaf && *s == sub)
                .map_or(
                    CpuidRegs {
                        ecx: sub & 0xFF,
                        ..CpuidRegs::default()
                    },
                    |(_, _, r)| *r,
                )
        })
    }
}

/// A level sub-leaf: `shift`, logical processors at this level, type, sub-leaf index.
fn level(shift: u32, count: u32, kind: u32, sub: u32) -> CpuidRegs {
    CpuidRegs {
        eax: shift,
        ebx: count,
        ecx: kind << 8 | sub,
        edx: 0,
    }
}

/// x2APIC ID of `(package, core, thread)` with SMT shift `smt` and package shift `pkg`.
fn apic(package: u32, core: u32, thread: u32, smt: u32, pkg: u32) -> X2ApicId {
    X2ApicId(package << pkg | core << smt | thread)
}

fn ids(raw: &[u32]) -> Vec<X2ApicId> {
    raw.iter().map(|&r| X2ApicId(r)).collect()
}

#[test]
fn one_socket_32_cores_with_ht_contiguous() {
    // Ice Lake-SP class: max basic leaf 0x1B (no leaf 0x1F); leaf 0xB: SMT shift 1, core
    // level shift 6 (32 cores need 5 bits).
    let dump = Dump {
        max_basic_leaf: 0x1B,
        entries: vec![(0xB, 0, level(1, 2, 1, 0)), (0xB, 1, level(6, 64, 2, 1))],
    };
    let shifts = dump.shifts().expect("leaf 0xB");
    assert_eq!(shifts.leaf(), TopologyLeaf::Extended);
    assert_eq!((shifts.smt_shift(), shifts.package_shift()), (1, 6));
    let apic_ids: Vec<X2ApicId> = (0..64).map(X2ApicId).collect();
    let t = Topology::new(&shifts, &apic_ids).expect("topology");
    assert_eq!(t.packages(), &[PackageId(0)]);
    assert_eq!(t.cores(), 32);
    assert!(t.package_indices().iter().all(|&p| p == 0));
    assert_eq!(t.one_cpu_per_package(), vec![0]);
    let c = t.cpus()[37];
    assert_eq!(
        (c.package, c.core, c.smt),
        (PackageId(0), CoreId(18), SmtId(1))
    );
    assert!(t.disagreements(&[0; 64]).is_empty());
}

/// Sapphire Rapids 2S x 56 cores with HT: leaf 0x1F (and 0xB) SMT shift 1, core level shift
/// 7: package 0 is x2APIC IDs 0x00-0x6F, package 1 0x80-0xEF; 0x70-0x7F and 0xF0-0xFF do
/// not exist.
fn sapphire_rapids_2s() -> (Dump, Vec<X2ApicId>) {
    let dump = Dump {
        max_basic_leaf: 0x20,
        entries: vec![
            (0x1F, 0, level(1, 2, 1, 0)),
            (0x1F, 1, level(7, 112, 2, 1)),
            (0xB, 0, level(1, 2, 1, 0)),
            (0xB, 1, level(7, 112, 2, 1)),
        ],
    };
    let mut apic_ids = Vec::new();
    for package in 0..2 {
        for core in 0..56 {
            for thread in 0..2 {
                apic_ids.push(apic(package, core, thread, 1, 7));
            }
        }
    }
    (dump, apic_ids)
}

#[test]
fn two_socket_sapphire_rapids_with_a_gap_between_packages() {
    let (dump, apic_ids) = sapphire_rapids_2s();
    let shifts = dump.shifts().expect("leaf 0x1F");
    assert_eq!(shifts.leaf(), TopologyLeaf::V2);
    assert_eq!(shifts.package_shift(), 7);
    assert_eq!(apic_ids[111], X2ApicId(0x6F));
    assert_eq!(apic_ids[112], X2ApicId(0x80));
    assert_eq!(apic_ids[223], X2ApicId(0xEF));
    let t = Topology::new(&shifts, &apic_ids).expect("topology");
    assert_eq!(t.packages(), &[PackageId(0), PackageId(1)]);
    assert_eq!(t.cores(), 112);
    assert_eq!(t.one_cpu_per_package(), vec![0, 112]);
    assert_eq!(t.package_indices()[111], 0);
    assert_eq!(t.package_indices()[112], 1);
    let last = t.cpus()[223];
    assert_eq!(
        (last.package, last.core, last.smt),
        (PackageId(1), CoreId(55), SmtId(1))
    );
    // MP Services numbering the packages 0 and 1 (or anything else, consistently) agrees.
    let mut firmware = vec![0u32; 112];
    firmware.extend([1u32; 112]);
    assert!(t.disagreements(&firmware).is_empty());
    let relabelled: Vec<u32> = firmware.iter().map(|p| 7 - p).collect();
    assert!(t.disagreements(&relabelled).is_empty());
}

#[test]
fn a_firmware_that_puts_every_cpu_in_one_package_disagrees_on_the_second() {
    let (dump, apic_ids) = sapphire_rapids_2s();
    let t = Topology::new(&dump.shifts().expect("shifts"), &apic_ids).expect("topology");
    let wrong = t.disagreements(&[0; 224]);
    assert_eq!(wrong.len(), 112);
    assert_eq!(
        wrong[0],
        PackageDisagreement {
            cpu: 112,
            apic_id: X2ApicId(0x80),
            derived: PackageId(1),
            reported: 0,
        }
    );
    // A list shorter than the CPUs disagrees on the CPUs it does not cover.
    let short = t.disagreements(&[0; 112]);
    assert_eq!(short.len(), 112);
    assert_eq!(short[0].reported, u32::MAX);
}

#[test]
fn second_socket_first_with_disabled_cores_and_threads_interleaved() {
    // Skylake-SP class, 2 sockets of a 10-core die with 8 cores enabled: leaf 0xB SMT shift
    // 1, core level shift 5; the disabled cores leave holes in the core IDs. The BSP is on
    // socket 1 and the firmware lists every first thread (socket 1, then 0) before every
    // second thread.
    let dump = Dump {
        max_basic_leaf: 0x16,
        entries: vec![(0xB, 0, level(1, 2, 1, 0)), (0xB, 1, level(5, 16, 2, 1))],
    };
    let shifts = dump.shifts().expect("leaf 0xB");
    let enabled = [0u32, 1, 2, 4, 8, 9, 10, 12];
    let mut apic_ids = Vec::new();
    for thread in 0..2 {
        for package in [1u32, 0] {
            for &core in &enabled {
                apic_ids.push(apic(package, core, thread, 1, 5));
            }
        }
    }
    assert_eq!(apic_ids[0], X2ApicId(0x20));
    let t = Topology::new(&shifts, &apic_ids).expect("topology");
    // Dense numbering follows the BSP: its package (ID 1) is package 0.
    assert_eq!(t.packages(), &[PackageId(1), PackageId(0)]);
    assert_eq!(t.one_cpu_per_package(), vec![0, 8]);
    assert_eq!(t.cores(), 16);
    assert_eq!(t.package_indices()[16], 0, "socket 1's second threads");
    assert_eq!(t.package_indices()[24], 1, "socket 0's second threads");
    let c = t.cpus()[31];
    assert_eq!(c.apic_id, X2ApicId(0x19)); // socket 0, core 12, thread 1
    assert_eq!(
        (c.package, c.core, c.smt),
        (PackageId(0), CoreId(12), SmtId(1))
    );
    // The same machine with HT disabled: only even IDs, one thread per core.
    let no_ht: Vec<X2ApicId> = apic_ids[..16].to_vec();
    let t = Topology::new(&shifts, &no_ht).expect("topology");
    assert_eq!((t.packages().len(), t.cores()), (2, 16));
}

#[test]
fn leaf_0x1f_with_a_die_level_takes_the_last_level_as_package_shift() {
    // Cascade Lake-AP class: two dies of 28 cores per package. Leaf 0x1F: SMT 1, core 6,
    // die 7; leaf 0xB folds the die into its core level.
    let dump = Dump {
        max_basic_leaf: 0x1F,
        entries: vec![
            (0x1F, 0, level(1, 2, 1, 0)),
            (0x1F, 1, level(6, 56, 2, 1)),
            (0x1F, 2, level(7, 112, 5, 2)),
            (0xB, 0, level(1, 2, 1, 0)),
            (0xB, 1, level(7, 112, 2, 1)),
        ],
    };
    let shifts = dump.shifts().expect("leaf 0x1F");
    assert_eq!(shifts.leaf(), TopologyLeaf::V2);
    assert_eq!(
        shifts.levels().iter().map(|l| l.kind).collect::<Vec<_>>(),
        vec![LevelType::Smt, LevelType::Core, LevelType::Die]
    );
    assert_eq!(shifts.package_shift(), 7);
    // Die 1 of package 0 (bit 6) is still package 0; bit 7 is package 1.
    let t = Topology::new(&shifts, &ids(&[0x00, 0x41, 0x80, 0xC1])).expect("topology");
    assert_eq!(t.package_indices(), &[0, 0, 1, 1]);
    assert_eq!(t.cpus()[1].core, CoreId(0x20));
}

#[test]
fn an_invalid_leaf_0x1f_falls_back_to_leaf_0xb() {
    // A hypervisor that raises the maximum leaf but leaves 0x1F empty.
    let dump = Dump {
        max_basic_leaf: 0x1F,
        entries: vec![(0xB, 0, level(1, 2, 1, 0)), (0xB, 1, level(4, 16, 2, 1))],
    };
    let shifts = dump.shifts().expect("leaf 0xB");
    assert_eq!(
        (shifts.leaf(), shifts.package_shift()),
        (TopologyLeaf::Extended, 4)
    );
}

#[test]
fn one_cpu_vm() {
    // QEMU with one vCPU: leaf 0xB with zero shifts, x2APIC ID 0.
    let dump = Dump {
        max_basic_leaf: 0xD,
        entries: vec![(0xB, 0, level(0, 1, 1, 0)), (0xB, 1, level(0, 1, 2, 1))],
    };
    let shifts = dump.shifts().expect("leaf 0xB");
    assert_eq!((shifts.smt_shift(), shifts.package_shift()), (0, 0));
    let t = Topology::new(&shifts, &[X2ApicId(0)]).expect("topology");
    assert_eq!((t.packages(), t.cores()), (&[PackageId(0)][..], 1));
    assert_eq!(t.one_cpu_per_package(), vec![0]);
    assert!(t.disagreements(&[0]).is_empty());
    // Zero shifts on a multi-CPU VM put every vCPU in a package of its own.
    let t = Topology::new(&shifts, &ids(&[0, 1, 2])).expect("topology");
    assert_eq!(t.package_indices(), &[0, 1, 2]);
}

#[test]
fn cpus_without_a_topology_leaf_are_refused() {
    let old = Dump {
        max_basic_leaf: 0x4,
        entries: vec![(0xB, 0, level(1, 2, 1, 0))],
    };
    assert_eq!(old.shifts(), Err(TopologyError::NoExtendedTopology));
    let hidden = Dump {
        max_basic_leaf: 0xD,
        entries: vec![],
    };
    assert_eq!(hidden.shifts(), Err(TopologyError::NoExtendedTopology));
}

#[test]
fn malformed_levels_and_apic_ids_are_refused() {
    let core_first = Dump {
        max_basic_leaf: 0xB,
        entries: vec![(0xB, 0, level(4, 8, 2, 0))],
    };
    assert_eq!(
        core_first.shifts(),
        Err(TopologyError::FirstLevelNotSmt { leaf: 0xB })
    );
    let decreasing = Dump {
        max_basic_leaf: 0xB,
        entries: vec![(0xB, 0, level(2, 4, 1, 0)), (0xB, 1, level(1, 2, 2, 1))],
    };
    assert_eq!(
        decreasing.shifts(),
        Err(TopologyError::ShiftDecreases {
            leaf: 0xB,
            subleaf: 1,
            shift: 1
        })
    );
    let endless = Dump {
        max_basic_leaf: 0xB,
        entries: (0..=MAX_LEVELS as u32)
            .map(|s| (0xB, s, level(s, 1, if s == 0 { 1 } else { 2 }, s)))
            .collect(),
    };
    assert_eq!(
        endless.shifts(),
        Err(TopologyError::TooManyLevels { leaf: 0xB })
    );
    let shifts = TopologyShifts::from_levels(
        TopologyLeaf::Extended,
        vec![
            TopologyLevel {
                kind: LevelType::Smt,
                shift: 1,
            },
            TopologyLevel {
                kind: LevelType::Core,
                shift: 4,
            },
        ],
    )
    .expect("levels");
    assert_eq!(Topology::new(&shifts, &[]), Err(TopologyError::NoCpus));
    assert_eq!(
        Topology::new(&shifts, &ids(&[0, 1, 2, 1])),
        Err(TopologyError::DuplicateApicId {
            id: X2ApicId(1),
            first: 1,
            second: 3
        })
    );
}

#[test]
fn wide_shifts_do_not_overflow() {
    let shifts = TopologyShifts::from_levels(
        TopologyLeaf::V2,
        vec![
            TopologyLevel {
                kind: LevelType::Smt,
                shift: 31,
            },
            TopologyLevel {
                kind: LevelType::Other(6),
                shift: 32,
            },
        ],
    )
    .expect("levels");
    let loc = shifts.locate(X2ApicId(u32::MAX));
    assert_eq!(loc.package, PackageId(0));
    assert_eq!(loc.smt, SmtId(u32::MAX >> 1));
    assert_eq!(loc.core, CoreId(1));
}
