//! What a TD being created holds before the TDX module knows it, as one reservation that
//! gives everything back when dropped: the KeyID, the private-memory backing, the S-EPT page
//! cache and the control pages (TDR, TDCS, per vCPU TDVPR and TDCX).
//!
//! The reservation ends when TDH.MNG.CREATE succeeds: from then on the module owns the TDR,
//! and only the teardown path (reclaim through the module) may give pages back.

use alloc::sync::Arc;
use alloc::vec::Vec;

use tdx_abi::Hpa;

use super::HostError;
use super::hkids::HkidAllocator;
use super::memory::{self, SeptPageCache, TdBacking};
use crate::pool::{MemoryPool, MemoryUse};

/// Control pages of a TD being created.
pub(crate) struct ControlPages {
    pub(crate) tdr: Hpa,
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
pub(crate) struct TdReservation {
    pool: Arc<MemoryPool>,
    hkids: Arc<HkidAllocator>,
    hkid: Option<u16>,
    backing: Option<TdBacking>,
    cache: Option<SeptPageCache>,
    control: Option<ControlPages>,
}

/// What a consumed reservation hands over.
pub(crate) struct Reserved {
    pub(crate) backing: TdBacking,
    pub(crate) cache: SeptPageCache,
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
        let sept_pages = memory::sept_pages_bound(gpa_ranges, 3);
        r.cache =
            Some(SeptPageCache::allocate(pool, sept_pages).map_err(|_| HostError::OutOfMemory)?);
        r.control = Some(alloc_control(pool, vcpus, sizes)?);
        Ok(r)
    }

    /// The TDR page (for TDH.MNG.CREATE).
    pub(crate) fn tdr(&self) -> Option<Hpa> {
        self.control.as_ref().map(|c| c.tdr)
    }

    /// The KeyID.
    pub(crate) fn hkid(&self) -> Option<u16> {
        self.hkid
    }

    /// Ends the reservation: the module now knows the TD.
    pub(crate) fn consume(mut self) -> Option<Reserved> {
        // The KeyID stays the TD's (the teardown path gives it back after KEY.FREEID).
        self.hkid.take()?;
        Some(Reserved {
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

    #[test]
    fn a_consumed_reservation_keeps_what_it_holds() {
        let pool = Arc::new(MemoryPool::new(Hpa(1 << 30), 64 << 20).unwrap());
        let hkids = Arc::new(HkidAllocator::new(16, 3));
        let before = pool.stats();
        let r = TdReservation::new(&pool, &hkids, &[(0, 4 << 20)], false, 1, sizes()).unwrap();
        let tdr = r.tdr().unwrap();
        let reserved = r.consume().unwrap();
        assert_eq!(reserved.control.tdr, tdr);
        assert_eq!(reserved.control.vcpus[0].1.len(), 5);
        assert_ne!(pool.stats(), before);
        assert_eq!(hkids.free(), 1);
    }
}
