//! Mirror tables: a radix tree shaped like the S-EPT (512 entries a table, 9 GFN bits a level).
//!
//! Two kinds of tables keep the bulk of the memory at exactly one `u64` per 4 KiB slot:
//! [`PtTable`] holds the 4 KiB-level entries and nothing else (4096 bytes for 512 GFNs);
//! [`DirTable`] holds the entries of the higher levels plus one set-once child slot per entry
//! ([`OnceBox`], one pointer). A child is created lazily by the thread that froze the parent
//! entry, with every entry `FROZEN`; it is reset to empty only once the module has the matching
//! S-EPT page (SEPT.ADD succeeded) or filled with the demoted leaves. A child is never freed
//! while the manager lives, so a thread that read a parent entry a while ago can still look at
//! the child safely: a detached child (its parent became a huge leaf after a promotion) has all
//! entries `FROZEN`, which sends that thread back to the root. Reusing the same child for the
//! same GFN range keeps the tree bounded: at most one table per slot ever exists.
//!
//! Tables come from the global allocator. On the host that is the normal heap; on the
//! appliance the runtime must give runner CPUs an allocator that does not call firmware (a
//! heap carved out at boot), exactly as it must for S-EPT pages.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::mem::size_of;

use once_cell::race::OnceBox;

use super::entry::FROZEN;
use super::sync::AtomicU64;

/// Entries per table.
pub(crate) const FANOUT: usize = 512;

/// Index of `gfn` in a table whose entries are at `level` (module numbering).
#[inline]
pub(crate) const fn index(gfn: u64, level: u32) -> usize {
    ((gfn >> (9 * level)) as usize) & (FANOUT - 1)
}

fn frozen_entries() -> Box<[AtomicU64]> {
    (0..FANOUT).map(|_| AtomicU64::new(FROZEN)).collect()
}

/// A table of 4 KiB-level entries.
pub(crate) struct PtTable {
    /// One entry per 4 KiB GFN.
    pub(crate) entries: [AtomicU64; FANOUT],
}

impl PtTable {
    /// A table with every entry frozen (not yet backed by an S-EPT page).
    pub(crate) fn new_frozen() -> Box<PtTable> {
        Box::new(PtTable {
            entries: core::array::from_fn(|_| AtomicU64::new(FROZEN)),
        })
    }

    /// Bytes this table occupies.
    pub(crate) const BYTES: usize = size_of::<PtTable>();
}

/// Children of a [`DirTable`]: directory tables above the 2 MiB level, 4 KiB tables at it.
enum Children {
    Dirs(Box<[OnceBox<DirTable>]>),
    Pts(Box<[OnceBox<PtTable>]>),
}

/// A table of entries at level 1 (2 MiB) or above, with one lazily created child per entry.
pub(crate) struct DirTable {
    /// One entry per slot: empty, frozen, non-leaf or huge leaf.
    pub(crate) entries: Box<[AtomicU64]>,
    children: Children,
}

impl DirTable {
    /// A table whose entries are at `entry_level` (>= 1), every entry frozen.
    pub(crate) fn new_frozen(entry_level: u32) -> Box<DirTable> {
        let children = if entry_level >= 2 {
            Children::Dirs(
                (0..FANOUT)
                    .map(|_| OnceBox::new())
                    .collect::<Vec<_>>()
                    .into(),
            )
        } else {
            Children::Pts(
                (0..FANOUT)
                    .map(|_| OnceBox::new())
                    .collect::<Vec<_>>()
                    .into(),
            )
        };
        Box::new(DirTable {
            entries: frozen_entries(),
            children,
        })
    }

    /// Bytes this table occupies (entries, child slots, header).
    pub(crate) const BYTES: usize =
        size_of::<DirTable>() + FANOUT * (size_of::<AtomicU64>() + size_of::<OnceBox<PtTable>>());

    /// The directory child at `idx`, if this table has directory children and it exists.
    #[inline]
    pub(crate) fn child_dir(&self, idx: usize) -> Option<&DirTable> {
        match &self.children {
            Children::Dirs(c) => c.get(idx)?.get(),
            Children::Pts(_) => None,
        }
    }

    /// The 4 KiB child at `idx`, if this table is at level 1 and it exists.
    #[inline]
    pub(crate) fn child_pt(&self, idx: usize) -> Option<&PtTable> {
        match &self.children {
            Children::Pts(c) => c.get(idx)?.get(),
            Children::Dirs(_) => None,
        }
    }

    /// Gets or creates the child at `idx`; returns it and the bytes newly allocated. Only the
    /// thread holding the parent entry frozen calls this, so the creation never races.
    pub(crate) fn child_or_create(
        &self,
        idx: usize,
        entry_level: u32,
    ) -> Option<(Child<'_>, usize)> {
        match &self.children {
            Children::Dirs(c) => {
                let slot = c.get(idx)?;
                let mut created = 0;
                let t = slot.get_or_init(|| {
                    created = DirTable::BYTES;
                    DirTable::new_frozen(entry_level - 1)
                });
                Some((Child::Dir(t), created))
            }
            Children::Pts(c) => {
                let slot = c.get(idx)?;
                let mut created = 0;
                let t = slot.get_or_init(|| {
                    created = PtTable::BYTES;
                    PtTable::new_frozen()
                });
                Some((Child::Pt(t), created))
            }
        }
    }

    /// The existing child at `idx`, whichever kind it is.
    #[inline]
    pub(crate) fn child(&self, idx: usize) -> Option<Child<'_>> {
        match &self.children {
            Children::Dirs(c) => c.get(idx)?.get().map(Child::Dir),
            Children::Pts(c) => c.get(idx)?.get().map(Child::Pt),
        }
    }
}

/// A reference to a child table of either kind.
#[derive(Clone, Copy)]
pub(crate) enum Child<'a> {
    /// A directory table (entries at level >= 1).
    Dir(&'a DirTable),
    /// A 4 KiB table.
    Pt(&'a PtTable),
}

impl<'a> Child<'a> {
    /// The child's entries.
    pub(crate) fn entries(self) -> &'a [AtomicU64] {
        match self {
            Child::Dir(d) => &d.entries,
            Child::Pt(p) => &p.entries,
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn pt_tables_cost_one_u64_per_gfn() {
        let (pt, dir) = (PtTable::BYTES, DirTable::BYTES);
        assert_eq!(pt, 4096);
        // Directory tables: entries + child pointers + a small header.
        assert!(dir <= 8192 + 64, "{dir}");
    }

    #[test]
    fn index_takes_nine_bits_per_level() {
        let gfn = (3 << 27) | (5 << 18) | (7 << 9) | 11;
        assert_eq!(index(gfn, 0), 11);
        assert_eq!(index(gfn, 1), 7);
        assert_eq!(index(gfn, 2), 5);
        assert_eq!(index(gfn, 3), 3);
    }

    #[test]
    fn children_are_created_once_and_frozen() {
        let dir = DirTable::new_frozen(1);
        assert!(dir.child_pt(3).is_none());
        let (c, bytes) = dir.child_or_create(3, 1).expect("slot");
        assert_eq!(bytes, PtTable::BYTES);
        assert!(
            c.entries()
                .iter()
                .all(|e| e.load(core::sync::atomic::Ordering::Relaxed) == FROZEN)
        );
        let (_, again) = dir.child_or_create(3, 1).expect("slot");
        assert_eq!(again, 0);
        assert!(dir.child_pt(3).is_some());
        assert!(dir.child_dir(3).is_none());
        let top = DirTable::new_frozen(3);
        let (c, bytes) = top.child_or_create(0, 3).expect("slot");
        assert_eq!(bytes, DirTable::BYTES);
        assert!(matches!(c, Child::Dir(_)));
    }
}
