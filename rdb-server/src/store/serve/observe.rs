//! What a store's task keeps an eye on beside its turns, as a config-file node does (see
//! [`crate::upkeep`]): each region's durable index, recorded off the Raft thread so a start
//! from a rolled-back directory is refused; and slow-disk and apply-lag warnings.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use slog::{warn, Logger};

use crate::store::StoreCore;
use crate::upkeep::{DurableRecorder, Warnings};

/// What the store task watches; see the module docs.
pub(in crate::store) struct Observer {
    /// Writes every region's applied index beside the database (see
    /// `Engine::record_region_durable_indexes`).
    recorder: DurableRecorder<BTreeMap<u64, u64>>,
    warnings: Warnings,
}

impl Observer {
    /// An observer that has recorded nothing yet.
    pub(in crate::store) fn new() -> Self {
        Observer {
            recorder: DurableRecorder::new(BTreeMap::new()),
            warnings: Warnings::default(),
        }
    }

    /// After a turn that took `turn`: the turn histogram, and warnings about a slow turn or
    /// a slow synced write of the store's WAL.
    pub(in crate::store) fn turn(&mut self, turn: Duration, logger: &Logger) {
        self.warnings.turn(turn, logger);
    }

    /// On a tick: the lag warning (for the region furthest behind) and the durable-index
    /// record.
    pub(in crate::store) fn tick(&mut self, core: &StoreCore, logger: &Logger) {
        let mut worst: Option<(u64, u64, u64)> = None;
        let mut applied = BTreeMap::new();
        for id in core.region_ids() {
            let Some(c) = core.core(id) else { continue };
            let r = c.replica();
            let (commit, index) = (r.commit_index(), r.applied_index());
            if worst.is_none_or(|(_, c, a)| commit.saturating_sub(index) > c.saturating_sub(a)) {
                worst = Some((id, commit, index));
            }
            if index > 0 {
                applied.insert(id, index);
            }
        }
        if let Some((region, commit, index)) = worst {
            self.warnings.lag(Some(region), commit, index, logger);
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
    }

    /// Waits for a record under way (on the way out: it holds the database).
    pub(in crate::store) fn join(&mut self) {
        self.recorder.join();
    }
}
