//! What a store's task keeps an eye on beside its turns, as a config-file node does (see
//! [`crate::upkeep`]): each region's durable index, recorded off the Raft thread so a start
//! from a rolled-back directory is refused.

use std::collections::BTreeMap;
use std::time::Instant;

use slog::{warn, Logger};

use crate::store::StoreCore;
use crate::upkeep::DurableRecorder;

/// What the store task watches; see the module docs.
pub(in crate::store) struct Observer {
    /// Writes every region's applied index beside the database (see
    /// `Engine::record_region_durable_indexes`).
    recorder: DurableRecorder<BTreeMap<u64, u64>>,
}

impl Observer {
    /// An observer that has recorded nothing yet.
    pub(in crate::store) fn new() -> Self {
        Observer {
            recorder: DurableRecorder::new(BTreeMap::new()),
        }
    }

    /// On a tick: the durable-index record.
    pub(in crate::store) fn tick(&mut self, core: &StoreCore, logger: &Logger) {
        let mut applied = BTreeMap::new();
        for id in core.region_ids() {
            let Some(c) = core.core(id) else { continue };
            let index = c.replica().applied_index();
            if index > 0 {
                applied.insert(id, index);
            }
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
