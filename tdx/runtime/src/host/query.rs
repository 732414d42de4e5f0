//! Read-only views of the host for the API: host info, metrics, TDs, measurements, console.

use super::*;

impl Host {
    /// Types `bytes` into TD `id`'s consoles (the UART and, for a kernel-booting TD, the
    /// virtio console; [`TdShared::type_input`]); returns how many fit (each holds a few KiB
    /// of backlog). Only a running TD takes input.
    pub fn type_console(&self, id: TdId, bytes: &[u8]) -> Result<usize, HostError> {
        let td = self.tds.get(&id).ok_or(HostError::TdNotFound(id))?;
        let state = td.lifecycle.state();
        if state != TdState::Running {
            return Err(HostError::InvalidTransition {
                from: state,
                action: "type into the console of",
            });
        }
        Ok(td.shared.type_input(bytes))
    }

    /// Host-wide information.
    pub fn info(&self) -> HostInfo {
        let stats = self.pool.stats();
        let tds_by_state = TdState::ALL
            .iter()
            .map(|s| {
                let n = self
                    .tds
                    .values()
                    .filter(|t| t.lifecycle.state() == *s)
                    .count();
                (*s, n as u32)
            })
            .collect();
        HostInfo {
            module_kind: self.module_kind().as_str(),
            guest_engine: self.guest_engine(false).as_str(),
            module_version: self.limits.version.clone(),
            max_vcpus_per_td: self.limits.max_vcpus_per_td,
            hkids_total: self.hkids.total(),
            hkids_free: self.hkids.free(),
            cpus: self.platform.cpus(),
            runners: self.runners.len() as u32,
            memory_total: stats.total_pages * PAGE_SIZE_4K,
            memory_free: stats.free_pages * PAGE_SIZE_4K,
            tds_by_state,
            bringup: self.bringup.steps().to_vec(),
        }
    }

    /// How bring-up went, step by step.
    pub fn bringup_steps(&self) -> &[BringupStep] {
        self.bringup.steps()
    }

    /// Counters.
    pub fn metrics(&self) -> HostMetrics {
        let mut seamcalls = self.retired.seamcalls.clone();
        self.main_counters.add_to(&mut seamcalls);
        let mut faults = self.retired.faults;
        let mut busy = self.retired.busy;
        for td in self.tds.values() {
            td.seam_counters.add_to(&mut seamcalls);
            let c = self.td_counters(td);
            faults += c.faults;
            busy += c.busy_retries;
        }
        let stats = self.pool.stats();
        HostMetrics {
            seamcalls,
            faults,
            busy_retries: busy,
            pool_bytes_by_use: MemoryUse::ALL
                .iter()
                .map(|u| (u.name(), stats.used_by(*u) * PAGE_SIZE_4K))
                .collect(),
            pool_total: stats.total_pages * PAGE_SIZE_4K,
            pool_free: stats.free_pages * PAGE_SIZE_4K,
            leaked_pages: self.retired.leaked_pages
                + self.tds.values().map(|t| t.leaked_pages).sum::<u64>(),
            guest_exits: self.module.software().map(|m| m.guest_exit_stats()),
        }
    }

    /// One TD's counters: exits, faults, BUSY retries, conversions, leaks, console bytes.
    pub(super) fn td_counters(&self, td: &Td) -> TdCounters {
        let s = td.shared.sept.stats();
        let c = &td.shared.counters;
        let ld = |a: &core::sync::atomic::AtomicU64| a.load(core::sync::atomic::Ordering::Relaxed);
        TdCounters {
            exits: ld(&c.exits),
            ept_violations: ld(&c.ept_violations),
            faults: s.faults,
            busy_retries: s.retries_busy + s.zap_busy_retries + ld(&c.busy_retries),
            conversions: ld(&c.conversions),
            shared_conversion_bytes: ld(&c.shared_conversion_bytes),
            shared_conversion_ns: ld(&c.shared_conversion_ns),
            demotions: s.demotions,
            leaked_pages: td.leaked_pages + s.leaked_pages_4k + s.leaked_sept_pages,
            console_bytes: td.shared.console.total(),
        }
    }

    /// The API view of one TD.
    pub(super) fn td_info(&self, id: TdId, td: &Td) -> TdInfo {
        let s = td.shared.sept.stats();
        let pages_2m = (s.mapped_2m + s.promotions).saturating_sub(s.unmapped_2m + s.demotions);
        let pages_4k =
            (s.mapped_4k + 512 * s.demotions).saturating_sub(s.unmapped_4k + 512 * s.promotions);
        TdInfo {
            id,
            name: td.name.clone(),
            image: td.image.clone(),
            state: td.lifecycle.state(),
            vcpus: td.vcpus,
            memory_mib: td.memory_mib,
            attributes: td.attributes,
            huge_pages: td.shared.huge_pages,
            build_progress: td.build.as_ref().map(|b| (b.next_page(), b.page_count())),
            mapped: MappedPages {
                pages_4k,
                pages_2m,
                pages_1g: 0,
            },
            counters: self.td_counters(td),
            reason: td.reason.clone(),
            created_ms: td.created_ms,
            engine: td.engine,
        }
    }

    /// Every TD.
    pub fn tds(&self) -> Vec<TdInfo> {
        self.tds
            .iter()
            .map(|(id, td)| self.td_info(*id, td))
            .collect()
    }

    /// One TD.
    pub fn td(&self, id: TdId) -> Result<TdInfo, HostError> {
        self.tds
            .get(&id)
            .map(|td| self.td_info(id, td))
            .ok_or(HostError::TdNotFound(id))
    }

    /// Measurement registers (read from the module).
    pub fn measurement(&self, id: TdId) -> Result<Measurement, HostError> {
        use tdx_abi::metadata::td as f;
        let td = self.tds.get(&id).ok_or(HostError::TdNotFound(id))?;
        if td.lifecycle.state() == TdState::Destroying {
            return Err(HostError::InvalidTransition {
                from: TdState::Destroying,
                action: "measure",
            });
        }
        let rd48 = |base: u64| -> Result<[u8; 48], HostError> {
            let mut out = [0u8; 48];
            for (i, chunk) in out.chunks_mut(8).enumerate() {
                let v = RetryBusy(&*self.main)
                    .mng_rd(td.tdr, base + i as u64)
                    .map_err(HostError::Module)?;
                chunk.copy_from_slice(&v.to_le_bytes());
            }
            Ok(out)
        };
        let finalized = td.mrtd.is_some();
        Ok(Measurement {
            mrtd: if finalized { rd48(f::MRTD)? } else { [0; 48] },
            rtmr: [
                rd48(f::RTMR)?,
                rd48(f::RTMR + f::MR_ELEMENTS)?,
                rd48(f::RTMR + 2 * f::MR_ELEMENTS)?,
                rd48(f::RTMR + 3 * f::MR_ELEMENTS)?,
            ],
            mrconfigid: rd48(f::MRCONFIGID)?,
            mrowner: rd48(f::MROWNER)?,
            mrownerconfig: rd48(f::MROWNERCONFIG)?,
            finalized,
        })
    }

    /// Console output from `offset`.
    pub fn console(
        &self,
        id: TdId,
        offset: u64,
        max_bytes: usize,
    ) -> Result<ConsoleChunk, HostError> {
        let td = self.tds.get(&id).ok_or(HostError::TdNotFound(id))?;
        let (start, data) = td.shared.console.read(offset, max_bytes);
        let next_offset = start + data.len() as u64;
        Ok(ConsoleChunk {
            offset: start,
            data,
            next_offset,
        })
    }
}
