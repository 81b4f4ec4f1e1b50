//! What a store's task keeps an eye on beside its turns, as a config-file node does (see
//! [`crate::upkeep`]): each region's durable index, recorded off the Raft thread so a start
//! from a rolled-back directory is refused; slow-disk and apply-lag warnings; and the store's
//! gauges, which count its regions by role and keep the largest lag rather than a time series
//! per region (a store of one region, as a config-file node is, also has its group's gauges).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use raft::StateRole;
use slog::{warn, Logger};

use crate::store::StoreCore;
use crate::upkeep::{DiskSampler, DurableRecorder, Warnings};

/// The `role` label of `rdb_store_regions` for each kind of peer.
const ROLES: [&str; 4] = ["leader", "follower", "learner", "candidate"];

/// What the store task watches; see the module docs.
pub(in crate::store) struct Observer {
    /// Writes every region's applied index beside the database (see
    /// `Engine::record_region_durable_indexes`).
    recorder: DurableRecorder<BTreeMap<u64, u64>>,
    warnings: Warnings,
    disk: DiskSampler,
    /// Each region's leader (peer id) at the last look, to count leader changes.
    leaders: HashMap<u64, u64>,
}

impl Observer {
    /// An observer that has recorded nothing yet.
    pub(in crate::store) fn new() -> Self {
        Observer {
            recorder: DurableRecorder::new(BTreeMap::new()),
            warnings: Warnings::default(),
            disk: DiskSampler::default(),
            leaders: HashMap::new(),
        }
    }

    /// After a turn that took `turn`: the turn histogram, and warnings about a slow turn or
    /// a slow synced write of the store's WAL.
    pub(in crate::store) fn turn(&mut self, turn: Duration, logger: &Logger) {
        self.warnings.turn(turn, logger);
    }

    /// On a tick: the region gauges, leader changes, the lag warning (for the region furthest
    /// behind), the durable-index record and the disk gauges.
    pub(in crate::store) fn tick(&mut self, core: &StoreCore, logger: &Logger) {
        let m = crate::metrics::metrics();
        let mut counts = [0i64; ROLES.len()];
        let mut worst: Option<(u64, u64, u64)> = None;
        let mut applied = BTreeMap::new();
        let ids = core.region_ids();
        for &id in &ids {
            let Some(c) = core.core(id) else { continue };
            let r = c.replica();
            let role = match r.role() {
                StateRole::Leader => 0,
                _ if r.is_learner(r.id()) => 2,
                StateRole::Follower => 1,
                StateRole::Candidate | StateRole::PreCandidate => 3,
            };
            counts[role] += 1;
            let (commit, index) = (r.commit_index(), r.applied_index());
            if worst.is_none_or(|(_, c, a)| commit.saturating_sub(index) > c.saturating_sub(a)) {
                worst = Some((id, commit, index));
            }
            if index > 0 {
                applied.insert(id, index);
            }
            let leader = r.leader_id();
            let before = self.leaders.insert(id, leader);
            if leader != 0 && before != Some(leader) {
                m.leader_changes.inc();
            }
        }
        self.leaders.retain(|id, _| ids.binary_search(id).is_ok());
        if let [only] = ids[..] {
            // One region (a config-file node's): the gauges of its Raft group, as a node of
            // one group has them.
            if let Some(c) = core.core(only) {
                let r = c.replica();
                let (first, last) = r.log_bounds();
                m.term.set(r.term() as i64);
                m.is_leader.set(i64::from(r.is_leader()));
                m.role.set(crate::node::role_metric(r.role()));
                m.commit_index.set(r.commit_index() as i64);
                m.applied_index.set(r.applied_index() as i64);
                m.log_first_index.set(first as i64);
                m.log_entries.set((last + 1).saturating_sub(first) as i64);
            }
        }
        for (role, n) in ROLES.iter().zip(counts) {
            m.store_regions.with_label_values(&[role]).set(n);
        }
        let (lag_region, commit, index) = worst.unwrap_or_default();
        m.store_max_apply_lag
            .set(commit.saturating_sub(index) as i64);
        if worst.is_some() {
            self.warnings.lag(Some(lag_region), commit, index, logger);
        }
        let (engine, log) = (core.engine().clone(), logger.clone());
        self.recorder.offer(
            Instant::now(),
            || applied,
            move |indexes| {
                if let Err(e) = engine.record_region_durable_indexes(&indexes) {
                    warn!(log, "cannot record the regions' durable indexes";
                        "regions" => indexes.len(), "error" => %e);
                }
            },
        );
        self.disk.sample(core.engine());
    }

    /// Waits for a record under way (on the way out: it holds the database).
    pub(in crate::store) fn join(&mut self) {
        self.recorder.join();
    }
}
