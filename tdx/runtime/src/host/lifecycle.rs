//! TD lifecycle on the main CPU: state transitions with their events, bugged and failed
//! TDs, start/stop/destroy, and the jobs [`Host::step`] advances (build, graceful stop,
//! teardown).

use super::*;

impl Host {
    /// Applies `event` to TD `id` and records the change. Refusals are returned unchanged.
    pub(super) fn apply(
        &mut self,
        id: TdId,
        event: TdEvent,
        now: u64,
    ) -> Result<TdState, HostError> {
        let Some(td) = self.tds.get_mut(&id) else {
            return Err(HostError::TdNotFound(id));
        };
        let from = td.lifecycle.state();
        let to = td
            .lifecycle
            .apply(event)
            .map_err(|e| HostError::InvalidTransition {
                from: e.from,
                action: event.name(),
            })?;
        let name = td.name.clone();
        if from != to {
            log::info!("host: TD {} ({name}): {from} -> {to}", id.0);
            self.push_event(now, EventKind::TdState { id, name, from, to });
        }
        Ok(to)
    }

    /// Marks TD `id` bugged with `reason` (logged once per TD).
    pub(super) fn bug_td(&mut self, id: TdId, reason: String, now: u64) {
        let Some(td) = self.tds.get_mut(&id) else {
            return;
        };
        if td.reason.is_none() {
            log::error!("host: TD {} ({}) bugged: {reason}", id.0, td.name);
            td.reason = Some(reason.clone());
        }
        td.shared.halt();
        td.build = None;
        self.push_event(now, EventKind::TdBugged { id, reason });
        let _ = self.apply(id, TdEvent::Bug, now);
    }

    /// Marks TD `id` failed with `reason`.
    pub(super) fn fail_td(&mut self, id: TdId, reason: String, now: u64) {
        let Some(td) = self.tds.get_mut(&id) else {
            return;
        };
        if td.reason.is_none() {
            log::warn!("host: TD {} ({}) failed: {reason}", id.0, td.name);
            td.reason = Some(reason);
        }
        td.shared.halt();
        td.build = None;
        let _ = self.apply(id, TdEvent::Fail, now);
    }

    /// Runnable → Running (the runners start entering its vCPUs).
    pub fn start_td(&mut self, id: TdId, now_ms: u64) -> Result<Transition, HostError> {
        let td = self.tds.get(&id).ok_or(HostError::TdNotFound(id))?;
        match td.lifecycle.state() {
            TdState::Running => return Ok(Transition::AlreadyDone),
            TdState::Bugged => return Err(HostError::TdBugged(id)),
            _ => {}
        }
        self.apply(id, TdEvent::Start, now_ms)?;
        if let Some(td) = self.tds.get(&id) {
            td.shared
                .run
                .store(RUN_GO, core::sync::atomic::Ordering::SeqCst);
            for v in &td.shared.vcpus.vcpus {
                self.platform.kick_cpu(v.cpu);
            }
        }
        Ok(Transition::Started)
    }

    /// Stops a TD. Graceful: asks the guest and forces the TD off after `timeout_ms` if it
    /// has not gone. A TD that boots a kernel is asked through its ACPI power button (the
    /// guest powers off when it is ready); a firmware-only TD, which has no button, treats
    /// every vCPU that halts (an idle guest, or a declared workload that has finished) as
    /// powered off. Forced: stop entering now and kick the vCPUs out.
    pub fn stop_td(
        &mut self,
        id: TdId,
        mode: StopMode,
        now_ms: u64,
    ) -> Result<Transition, HostError> {
        let td = self.tds.get_mut(&id).ok_or(HostError::TdNotFound(id))?;
        match td.lifecycle.state() {
            TdState::Stopped => Ok(Transition::AlreadyDone),
            TdState::Stopping => {
                if mode.force {
                    td.shared.halt();
                }
                Ok(Transition::Started)
            }
            TdState::Running => {
                if mode.force {
                    td.shared.halt();
                } else {
                    if !td.shared.press_power_button() {
                        td.shared
                            .run
                            .store(RUN_GRACEFUL, core::sync::atomic::Ordering::SeqCst);
                        td.shared.vcpus.kick_all();
                    }
                    td.stop_deadline = Some(now_ms.saturating_add(mode.timeout_ms));
                }
                self.apply(id, TdEvent::RequestStop, now_ms)?;
                Ok(Transition::Started)
            }
            TdState::Runnable => {
                td.shared.halt();
                self.apply(id, TdEvent::RequestStop, now_ms)?;
                Ok(Transition::Started)
            }
            from => Err(HostError::InvalidTransition {
                from,
                action: "stop",
            }),
        }
    }

    /// Any state → Destroying → removed. A building TD is failed first; a running one is
    /// force-stopped first. Teardown runs in [`Host::step`].
    pub fn destroy_td(&mut self, id: TdId, now_ms: u64) -> Result<Transition, HostError> {
        let td = self.tds.get_mut(&id).ok_or(HostError::TdNotFound(id))?;
        if td.destroy_requested {
            return Ok(Transition::AlreadyDone);
        }
        td.destroy_requested = true;
        td.destroy_started_ms = now_ms;
        td.shared.halt();
        match td.lifecycle.state() {
            TdState::Destroying | TdState::Destroyed => return Ok(Transition::AlreadyDone),
            TdState::Building => {
                td.build = None;
                if td.reason.is_none() {
                    td.reason = Some(String::from("destroyed while building"));
                }
                self.apply(id, TdEvent::Fail, now_ms)?;
                self.apply(id, TdEvent::Destroy, now_ms)?;
            }
            TdState::Running => {
                self.apply(id, TdEvent::RequestStop, now_ms)?;
            }
            TdState::Stopping => {}
            _ => {
                self.apply(id, TdEvent::Destroy, now_ms)?;
            }
        }
        Ok(Transition::Started)
    }

    /// Advances long jobs (TD builds, stops, teardowns) by a bounded slice and applies what
    /// the runners reported; returns true if work remains.
    pub fn step(&mut self, now_ms: u64) -> bool {
        self.ensure_runners();
        let ids: Vec<TdId> = self.tds.keys().copied().collect();
        let mut work = false;
        for id in ids {
            work |= self.step_td(id, now_ms);
        }
        work
    }

    pub(super) fn step_td(&mut self, id: TdId, now: u64) -> bool {
        let Some(td) = self.tds.get(&id) else {
            return false;
        };
        let state = td.lifecycle.state();
        match state {
            TdState::Building => {
                self.build_step(id, now);
                true
            }
            TdState::Running | TdState::Stopping => {
                let quiescent = td.shared.quiescent();
                if let Some(outcome) = td.shared.outcome() {
                    if !quiescent {
                        return true;
                    }
                    let reason = alloc::format!("{outcome}");
                    match outcome {
                        td::GuestOutcome::Shutdown
                        | td::GuestOutcome::PoweredOff
                        | td::GuestOutcome::Reset => {
                            let _ = self.apply(id, TdEvent::GuestShutdown, now);
                        }
                        td::GuestOutcome::Bugged(_) => self.bug_td(id, reason, now),
                        _ => self.fail_td(id, reason, now),
                    }
                    return true;
                }
                if state == TdState::Stopping {
                    if quiescent {
                        let _ = self.apply(id, TdEvent::VcpusStopped, now);
                    } else if td.stop_deadline.is_some_and(|d| now >= d)
                        && td.shared.run.load(core::sync::atomic::Ordering::SeqCst) != RUN_HALT
                    {
                        log::info!("host: TD {}: graceful stop timed out; forcing", id.0);
                        td.shared.halt();
                    }
                    return true;
                }
                false
            }
            TdState::Destroying => {
                self.teardown_step(id, now);
                true
            }
            _ => {
                if td.destroy_requested {
                    let _ = self.apply(id, TdEvent::Destroy, now);
                    return true;
                }
                false
            }
        }
    }
}
