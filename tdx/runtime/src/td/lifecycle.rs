//! The TD lifecycle state machine: which state a TD is in and which events may move it.
//!
//! The runtime changes a TD's state only through [`transition`] (or [`TdLifecycle::apply`]),
//! so every illegal request (start a TD that is still building, destroy a running TD, ...) is
//! refused in one place with a typed error. The table [`TRANSITIONS`] is the whole definition;
//! any `(state, event)` pair not in it is illegal.
//!
//! | from \ event | legal events → next state |
//! |---|---|
//! | `Created`    | `BeginBuild` → Building; `Fail` → Failed; `Bug` → Bugged; `Destroy` → Destroying |
//! | `Building`   | `Finalize` → Runnable; `Fail` → Failed; `Bug` → Bugged |
//! | `Runnable`   | `Start` → Running; `RequestStop` → Stopped; `Bug` → Bugged; `Destroy` → Destroying |
//! | `Running`    | `RequestStop` → Stopping; `GuestShutdown` → Stopped; `Fail` → Failed; `Bug` → Bugged |
//! | `Stopping`   | `VcpusStopped` → Stopped; `GuestShutdown` → Stopped; `Fail` → Failed; `Bug` → Bugged |
//! | `Stopped`    | `Bug` → Bugged; `Destroy` → Destroying |
//! | `Failed`     | `Bug` → Bugged; `Destroy` → Destroying |
//! | `Bugged`     | `Bug` → Bugged; `Destroy` → Destroying |
//! | `Destroying` | `TeardownDone` → Destroyed; `Bug` → Bugged |
//! | `Destroyed`  | none (terminal) |
//!
//! Meanings: *Created* — TDR/TDCS exist and the key is configured, nothing added yet;
//! *Building* — TDH.MNG.INIT done, pages being PAGE.ADDed/MR.EXTENDed; *Runnable* —
//! TDH.MR.FINALIZE done; *Running* — vCPU runners entering the TD; *Stopping* — runners
//! asked to stop, waiting for them to leave; *Stopped* — no vCPU runs and none will again
//! (TDs cannot be resumed after their vCPUs were torn down); *Failed* — the build or the guest
//! failed in an expected way (build error, guest triple fault); *Bugged* — the host saw an
//! unexpected TDX module status or broken invariant (KVM's `KVM_BUG_ON` analogue): no
//! SEAMCALL except teardown is issued, and pages that could not be reclaimed stay leaked;
//! *Destroying* — teardown job running (VP.FLUSH, CACHE.WB, KEY.FREEID, RECLAIM);
//! *Destroyed* — everything reclaimed.
//!
//! Destroying a `Building`, `Running` or `Stopping` TD is illegal on purpose: the caller first
//! fails the build or stops the vCPUs, so teardown never races a build step or a vCPU.
//! `Bug` is legal from every state but `Destroyed` (and repeats harmlessly in `Bugged`), because
//! any SEAMCALL anywhere may return something unexpected.

use core::fmt;

/// Lifecycle state of a TD.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum TdState {
    /// Control structures created, key configured, nothing added.
    Created,
    /// Initial memory being added and measured.
    Building,
    /// Measurement finalized; vCPUs may be started.
    Runnable,
    /// vCPUs are being run.
    Running,
    /// vCPUs asked to stop; waiting for them to leave the TD.
    Stopping,
    /// No vCPU runs; the TD can only be destroyed.
    Stopped,
    /// The build or the guest failed (expected failure class).
    Failed,
    /// Host-side invariant broken; only teardown is allowed.
    Bugged,
    /// Teardown in progress.
    Destroying,
    /// All resources reclaimed (terminal).
    Destroyed,
}

impl TdState {
    /// Every state.
    pub const ALL: [TdState; 10] = [
        TdState::Created,
        TdState::Building,
        TdState::Runnable,
        TdState::Running,
        TdState::Stopping,
        TdState::Stopped,
        TdState::Failed,
        TdState::Bugged,
        TdState::Destroying,
        TdState::Destroyed,
    ];

    /// Lower-case name, as the management API reports it.
    pub const fn name(self) -> &'static str {
        match self {
            TdState::Created => "created",
            TdState::Building => "building",
            TdState::Runnable => "runnable",
            TdState::Running => "running",
            TdState::Stopping => "stopping",
            TdState::Stopped => "stopped",
            TdState::Failed => "failed",
            TdState::Bugged => "bugged",
            TdState::Destroying => "destroying",
            TdState::Destroyed => "destroyed",
        }
    }

    /// No event leaves this state.
    pub const fn is_terminal(self) -> bool {
        matches!(self, TdState::Destroyed)
    }

    /// vCPU runners may enter the TD (TDH.VP.ENTER).
    pub const fn may_enter_vcpus(self) -> bool {
        matches!(self, TdState::Running)
    }

    /// Build operations (PAGE.ADD, MR.EXTEND, MR.FINALIZE) may be issued.
    pub const fn accepts_build_ops(self) -> bool {
        matches!(self, TdState::Building)
    }

    /// The TD still owns module/pool resources that teardown must reclaim.
    pub const fn holds_resources(self) -> bool {
        !matches!(self, TdState::Destroyed)
    }
}

impl fmt::Display for TdState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Something that happened to a TD.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum TdEvent {
    /// TDH.MNG.INIT succeeded; initial memory is about to be added.
    BeginBuild,
    /// TDH.MR.FINALIZE succeeded.
    Finalize,
    /// vCPU runners started.
    Start,
    /// A stop was requested (API or host shutdown).
    RequestStop,
    /// Every vCPU runner left the TD after a stop request.
    VcpusStopped,
    /// The guest powered off; every vCPU has exited.
    GuestShutdown,
    /// The build or the guest failed (build error, triple fault, fatal TDVMCALL).
    Fail,
    /// Unexpected module status / broken invariant.
    Bug,
    /// Teardown was requested.
    Destroy,
    /// Teardown finished.
    TeardownDone,
}

impl TdEvent {
    /// Every event.
    pub const ALL: [TdEvent; 10] = [
        TdEvent::BeginBuild,
        TdEvent::Finalize,
        TdEvent::Start,
        TdEvent::RequestStop,
        TdEvent::VcpusStopped,
        TdEvent::GuestShutdown,
        TdEvent::Fail,
        TdEvent::Bug,
        TdEvent::Destroy,
        TdEvent::TeardownDone,
    ];

    /// Lower-case name for logs and events.
    pub const fn name(self) -> &'static str {
        match self {
            TdEvent::BeginBuild => "begin_build",
            TdEvent::Finalize => "finalize",
            TdEvent::Start => "start",
            TdEvent::RequestStop => "request_stop",
            TdEvent::VcpusStopped => "vcpus_stopped",
            TdEvent::GuestShutdown => "guest_shutdown",
            TdEvent::Fail => "fail",
            TdEvent::Bug => "bug",
            TdEvent::Destroy => "destroy",
            TdEvent::TeardownDone => "teardown_done",
        }
    }
}

impl fmt::Display for TdEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An event that is not legal in the current state.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
#[error("event {event} is not allowed in state {from}")]
pub struct LifecycleError {
    /// State the TD was in.
    pub from: TdState,
    /// Event refused.
    pub event: TdEvent,
}

/// Every legal transition: `(from, event, to)`. See the module docs for the same table in
/// prose.
pub const TRANSITIONS: &[(TdState, TdEvent, TdState)] = {
    use TdEvent as E;
    use TdState as S;
    &[
        (S::Created, E::BeginBuild, S::Building),
        (S::Created, E::Fail, S::Failed),
        (S::Created, E::Bug, S::Bugged),
        (S::Created, E::Destroy, S::Destroying),
        (S::Building, E::Finalize, S::Runnable),
        (S::Building, E::Fail, S::Failed),
        (S::Building, E::Bug, S::Bugged),
        (S::Runnable, E::Start, S::Running),
        (S::Runnable, E::RequestStop, S::Stopped),
        (S::Runnable, E::Bug, S::Bugged),
        (S::Runnable, E::Destroy, S::Destroying),
        (S::Running, E::RequestStop, S::Stopping),
        (S::Running, E::GuestShutdown, S::Stopped),
        (S::Running, E::Fail, S::Failed),
        (S::Running, E::Bug, S::Bugged),
        (S::Stopping, E::VcpusStopped, S::Stopped),
        (S::Stopping, E::GuestShutdown, S::Stopped),
        (S::Stopping, E::Fail, S::Failed),
        (S::Stopping, E::Bug, S::Bugged),
        (S::Stopped, E::Bug, S::Bugged),
        (S::Stopped, E::Destroy, S::Destroying),
        (S::Failed, E::Bug, S::Bugged),
        (S::Failed, E::Destroy, S::Destroying),
        (S::Bugged, E::Bug, S::Bugged),
        (S::Bugged, E::Destroy, S::Destroying),
        (S::Destroying, E::TeardownDone, S::Destroyed),
        (S::Destroying, E::Bug, S::Bugged),
    ]
};

/// The state `event` moves a TD in state `from` to, or why it may not.
pub fn transition(from: TdState, event: TdEvent) -> Result<TdState, LifecycleError> {
    TRANSITIONS
        .iter()
        .find(|(f, e, _)| *f == from && *e == event)
        .map(|(_, _, to)| *to)
        .ok_or(LifecycleError { from, event })
}

/// A TD's current lifecycle state with checked updates.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TdLifecycle {
    state: TdState,
}

impl Default for TdLifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl TdLifecycle {
    /// A freshly created TD.
    pub const fn new() -> Self {
        Self {
            state: TdState::Created,
        }
    }

    /// The current state.
    pub const fn state(&self) -> TdState {
        self.state
    }

    /// Applies `event`; on error the state is unchanged.
    pub fn apply(&mut self, event: TdEvent) -> Result<TdState, LifecycleError> {
        let next = transition(self.state, event)?;
        if next != self.state {
            log::debug!("TD lifecycle: {} --{}--> {}", self.state, event, next);
        }
        self.state = next;
        Ok(next)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use alloc::collections::{BTreeMap, BTreeSet};
    use alloc::vec::Vec;

    /// The legal-transition matrix written out independently of [`TRANSITIONS`]: rows are
    /// states in [`TdState::ALL`] order, columns events in [`TdEvent::ALL`] order
    /// (BeginBuild Finalize Start RequestStop VcpusStopped GuestShutdown Fail Bug Destroy
    /// TeardownDone); a cell is the target state's first letters or `-` for illegal.
    const MATRIX: &str = "
        created:    bui -   -   -   -   -   fai bug des -
        building:   -   run -   -   -   -   fai bug -   -
        runnable:   -   -   run sto -   -   -   bug des -
        running:    -   -   -   sto -   sto fai bug -   -
        stopping:   -   -   -   -   sto sto fai bug -   -
        stopped:    -   -   -   -   -   -   -   bug des -
        failed:     -   -   -   -   -   -   -   bug des -
        bugged:     -   -   -   -   -   -   -   bug des -
        destroying: -   -   -   -   -   -   -   bug -   des
        destroyed:  -   -   -   -   -   -   -   -   -   -
    ";

    #[test]
    fn every_pair_matches_the_documented_matrix() {
        let rows: Vec<Vec<&str>> = MATRIX
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows.len(), TdState::ALL.len());
        let mut legal = 0;
        for (row, from) in rows.iter().zip(TdState::ALL) {
            assert_eq!(row[0].trim_end_matches(':'), from.name());
            assert_eq!(row.len(), 1 + TdEvent::ALL.len());
            for (cell, event) in row[1..].iter().zip(TdEvent::ALL) {
                let got = transition(from, event);
                if *cell == "-" {
                    assert_eq!(got, Err(LifecycleError { from, event }), "{from} + {event}");
                } else {
                    let to = got.unwrap_or_else(|e| panic!("{e}"));
                    // Stopping/Stopped share a prefix; compare against the state's name.
                    assert!(to.name().starts_with(cell), "{from} + {event} -> {to}");
                    if *cell == "sto" {
                        let expected = if (from, event) == (TdState::Running, TdEvent::RequestStop)
                        {
                            TdState::Stopping
                        } else {
                            TdState::Stopped
                        };
                        assert_eq!(to, expected, "{from} + {event}");
                    }
                    if *cell == "run" {
                        let expected = if event == TdEvent::Start {
                            TdState::Running
                        } else {
                            TdState::Runnable
                        };
                        assert_eq!(to, expected);
                    }
                    if *cell == "des" {
                        let expected = if event == TdEvent::TeardownDone {
                            TdState::Destroyed
                        } else {
                            TdState::Destroying
                        };
                        assert_eq!(to, expected);
                    }
                    legal += 1;
                }
            }
        }
        assert_eq!(legal, TRANSITIONS.len());
    }

    #[test]
    fn table_is_deterministic() {
        let keys: BTreeSet<(TdState, TdEvent)> =
            TRANSITIONS.iter().map(|(f, e, _)| (*f, *e)).collect();
        assert_eq!(
            keys.len(),
            TRANSITIONS.len(),
            "duplicate (state, event) entry"
        );
    }

    fn successors() -> BTreeMap<TdState, Vec<TdState>> {
        let mut map: BTreeMap<TdState, Vec<TdState>> = BTreeMap::new();
        for (f, _, t) in TRANSITIONS {
            map.entry(*f).or_default().push(*t);
        }
        map
    }

    fn reachable_from(start: TdState) -> BTreeSet<TdState> {
        let succ = successors();
        let mut seen = BTreeSet::from([start]);
        let mut todo = alloc::vec![start];
        while let Some(s) = todo.pop() {
            for t in succ.get(&s).into_iter().flatten() {
                if seen.insert(*t) {
                    todo.push(*t);
                }
            }
        }
        seen
    }

    #[test]
    fn graph_properties() {
        // Every state is reachable from Created.
        assert_eq!(reachable_from(TdState::Created).len(), TdState::ALL.len());
        for s in TdState::ALL {
            // No trap: Destroyed is reachable from everywhere.
            assert!(
                reachable_from(s).contains(&TdState::Destroyed),
                "{s} cannot be destroyed"
            );
            // Any state but Destroyed can be marked bugged.
            assert_eq!(transition(s, TdEvent::Bug).is_ok(), !s.is_terminal(), "{s}");
            if let Ok(next) = transition(s, TdEvent::Bug) {
                assert_eq!(next, TdState::Bugged);
            }
            // Only Destroyed is terminal.
            assert_eq!(
                TdEvent::ALL.iter().all(|e| transition(s, *e).is_err()),
                s.is_terminal()
            );
            // Teardown never races vCPUs or a build step.
            if matches!(s, TdState::Building | TdState::Running | TdState::Stopping) {
                assert!(transition(s, TdEvent::Destroy).is_err());
            }
        }
        // Only Running lets vCPUs in; only Building accepts build ops.
        assert_eq!(
            TdState::ALL.iter().filter(|s| s.may_enter_vcpus()).count(),
            1
        );
        assert!(TdState::Building.accepts_build_ops());
        assert!(!TdState::Destroyed.holds_resources());
        assert!(TdState::Bugged.holds_resources());
    }

    #[test]
    fn lifecycle_paths() {
        let mut td = TdLifecycle::new();
        for (event, state) in [
            (TdEvent::BeginBuild, TdState::Building),
            (TdEvent::Finalize, TdState::Runnable),
            (TdEvent::Start, TdState::Running),
            (TdEvent::RequestStop, TdState::Stopping),
            (TdEvent::VcpusStopped, TdState::Stopped),
            (TdEvent::Destroy, TdState::Destroying),
            (TdEvent::TeardownDone, TdState::Destroyed),
        ] {
            assert_eq!(td.apply(event), Ok(state));
            assert_eq!(td.state(), state);
        }
        // A refused event leaves the state alone.
        assert_eq!(
            td.apply(TdEvent::Start),
            Err(LifecycleError {
                from: TdState::Destroyed,
                event: TdEvent::Start
            })
        );
        assert_eq!(td.state(), TdState::Destroyed);

        // Build failure, then a bug during teardown, then teardown retried.
        let mut td = TdLifecycle::default();
        td.apply(TdEvent::BeginBuild).unwrap();
        assert!(td.apply(TdEvent::Destroy).is_err());
        td.apply(TdEvent::Fail).unwrap();
        td.apply(TdEvent::Destroy).unwrap();
        assert_eq!(td.apply(TdEvent::Bug), Ok(TdState::Bugged));
        assert_eq!(td.apply(TdEvent::Bug), Ok(TdState::Bugged));
        td.apply(TdEvent::Destroy).unwrap();
        assert_eq!(td.apply(TdEvent::TeardownDone), Ok(TdState::Destroyed));
    }

    #[test]
    fn error_message_names_state_and_event() {
        let e = transition(TdState::Running, TdEvent::Destroy).unwrap_err();
        assert_eq!(
            alloc::format!("{e}"),
            "event destroy is not allowed in state running"
        );
    }
}
