//! Merging two adjacent regions of this store's (specs/017-merge): the checks and proposal of
//! a PrepareMerge, and the driver that carries a prepared merge on from the source's leader.
//!
//! Every step is an entry in one region's log (`rdb_storage::region::merge`); this module
//! only decides when to propose them. The driver runs on the store that leads the source,
//! every [`MERGE_CHECK_TICKS`]; the source's merge state is in its own records, so a new
//! leader elsewhere takes over where the old one was.

use prost::Message as _;
use rdb_proto::command::{command::Op, Command, CommitMerge, PrepareMerge, RollbackMerge};
use rdb_storage::region::{self, merge::adjacent, Region};
use slog::{info, warn};

use super::{RegionError, RequestRefused, StoreCore};
use crate::raft_core::{Refusal, RequestId};

/// Ticks between two looks of the driver at the merges this store leads.
pub const MERGE_CHECK_TICKS: u64 = 5;

/// Ticks before the driver proposes a commit or a rollback for the same source again (the
/// first may have been lost with a leader; a second one that finds the first applied is
/// refused at apply, changing nothing).
const MERGE_PROPOSE_AGAIN_TICKS: u64 = 100;

/// Request ids of the driver's own proposals: above any a caller hands out, so their answers
/// are told apart (and only logged).
pub(super) const DRIVER_REQUESTS: RequestId = 1 << 63;

/// The stores of a region's voters, sorted; `None` if it has a learner.
fn voter_stores(r: &Region) -> Option<Vec<u64>> {
    if r.peers.iter().any(|p| p.learner) {
        return None;
    }
    let mut v: Vec<u64> = r.peers.iter().map(|p| p.store_id).collect();
    v.sort_unstable();
    Some(v)
}

fn encode(op: Op) -> Vec<u8> {
    Command {
        op: Some(op),
        ..Default::default()
    }
    .encode_to_vec()
}

impl StoreCore {
    /// Proposes merging region `source` into the adjacent region `target`, as request `id`
    /// (answered once the source applied the prepare). Refused, with nothing proposed, unless
    /// this store leads the source and hosts the target, the two are adjacent with their
    /// voters on the same stores and no learners, the source is not merging already and has
    /// no membership change pending, and the target has a leader.
    pub fn prepare_merge(
        &mut self,
        source: u64,
        target: u64,
        id: RequestId,
    ) -> Result<(), RequestRefused> {
        let invalid = |m: String| RequestRefused::Region(RegionError::Invalid(m));
        let src = self
            .region(source)
            .ok_or(RequestRefused::Region(RegionError::NotFound(source)))?
            .clone();
        let tgt = self
            .region(target)
            .ok_or(RequestRefused::Region(RegionError::NotFound(target)))?
            .clone();
        if source == target || !adjacent(&src, &tgt) {
            return Err(invalid(format!(
                "region {source} is not adjacent to region {target}"
            )));
        }
        match (voter_stores(&src), voter_stores(&tgt)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(_), Some(_)) => {
                return Err(invalid(format!(
                    "regions {source} and {target} have peers on different stores"
                )))
            }
            _ => {
                return Err(invalid(format!(
                    "region {source} or {target} has a learner; merge needs voters only"
                )))
            }
        }
        let core = &self.regions[&source].core;
        core.leader_check().map_err(RequestRefused::Core)?;
        if core.replica().app().merging().is_some() {
            return Err(invalid(format!("region {source} is merging already")));
        }
        if core.replica().has_pending_conf() {
            return Err(RequestRefused::Core(Refusal::Unavailable(format!(
                "region {source} has a membership change pending"
            ))));
        }
        if self.regions[&target].core.replica().leader_id() == 0 {
            return Err(RequestRefused::Core(Refusal::Unavailable(format!(
                "region {target} has no leader"
            ))));
        }
        let (se, te) = (region::epoch(&src), region::epoch(&tgt));
        let data = encode(Op::PrepareMerge(PrepareMerge {
            target_id: target,
            target_version: te.version,
            target_conf_ver: te.conf_ver,
            version: se.version,
            conf_ver: se.conf_ver,
        }));
        if let Some(r) = self.regions.get_mut(&source) {
            r.core.propose(id, data);
        }
        info!(self.logger, "merge proposed"; "source" => source, "target" => target,
            "source_version" => se.version, "target_version" => te.version);
        Ok(())
    }

    /// Whether region `id` is the source of a merge here: it takes no request (the client
    /// retries; after the merge, the target holds its keys).
    pub(super) fn merging_into(&self, id: u64) -> Option<u64> {
        let state = self.regions.get(&id)?.core.replica().app().merging()?;
        Some(state.prepare.as_ref().map_or(0, |p| p.target_id))
    }

    /// Carries on every merge whose source this store leads (see the module docs), and tells
    /// every source replica a waiting commit names that its group committed the prepare.
    pub(super) fn drive_merges(&mut self) {
        // A target's commit waits for its source here: the prepare index is committed in the
        // source's group, and every source peer had it in its log before the commit was
        // proposed, so the source replica may apply up to it from its own log.
        let waiting: Vec<(u64, u64)> = self
            .regions
            .values()
            .filter_map(|r| r.core.replica().app().waiting_for())
            .collect();
        for (source, index) in waiting {
            if let Some(r) = self.regions.get_mut(&source) {
                if !r.core.replica().is_installing() {
                    r.core.learn_commit(index);
                }
            }
        }
        if !self.ticks.is_multiple_of(MERGE_CHECK_TICKS) {
            return;
        }
        let led: Vec<(u64, rdb_proto::command::MergeState)> = self
            .regions
            .iter()
            .filter(|(_, r)| r.core.replica().is_leader())
            .filter_map(|(&id, r)| Some((id, *r.core.replica().app().merging()?)))
            .collect();
        let ticks = self.ticks;
        self.merge_proposed
            .retain(|_, at| ticks.saturating_sub(*at) < MERGE_PROPOSE_AGAIN_TICKS);
        for (source, state) in led {
            if !self.merge_proposed.contains_key(&source) {
                self.drive_merge(source, &state);
            }
        }
    }

    fn drive_merge(&mut self, source: u64, state: &rdb_proto::command::MergeState) {
        let Some(p) = state.prepare else { return };
        let Some(src) = self.region(source).cloned() else {
            return;
        };
        let target = p.target_id;
        let Some(tgt) = self.region(target).cloned() else {
            // Every store of the source hosts the target until the merge is over.
            warn!(self.logger, "merge waits: the target is not hosted here";
                "source" => source, "target" => target);
            return;
        };
        let te = region::epoch(&tgt);
        let expected = (p.target_version, p.target_conf_ver);
        if (te.version, te.conf_ver) != expected {
            if region::contains(&tgt, &src.start_key) {
                // The target applied the commit here already; this source goes with it.
                return;
            }
            // The target moved on without the source: no commit can apply any more.
            info!(self.logger, "merge rolled back: the target changed"; "source" => source,
                "target" => target, "target_version" => te.version);
            let data = encode(Op::RollbackMerge(RollbackMerge {
                prepare_index: state.index,
            }));
            let id = self.driver_request();
            if let Some(r) = self.regions.get_mut(&source) {
                r.core.propose(id, data);
            }
            self.merge_proposed.insert(source, self.ticks);
            return;
        }
        let target_leads_here = self
            .regions
            .get(&target)
            .is_some_and(|r| r.core.replica().is_leader());
        if !target_leads_here {
            // Both lead on one store: the source's leadership goes where the target's is.
            let Some(leader) = self.leader_of(target) else {
                return;
            };
            let Some(to) = src.peers.iter().find(|p| p.store_id == leader.store_id) else {
                return;
            };
            if to.store_id != self.store_id {
                let to = to.id;
                let _ = self.transfer_leader(source, to);
            }
            return;
        }
        let r = &self.regions[&source].core;
        let caught_up = src.peers.iter().all(|peer| {
            r.replica()
                .matched(peer.id)
                .is_some_and(|m| m >= state.index)
        });
        if !caught_up || r.replica().applied_index() < state.index {
            return;
        }
        let data = encode(Op::CommitMerge(CommitMerge {
            source_id: source,
            source_start: src.start_key.clone(),
            source_end: src.end_key.clone(),
            source_version: region::epoch(&src).version,
            prepare_index: state.index,
            target_version: te.version,
            target_conf_ver: te.conf_ver,
        }));
        let id = self.driver_request();
        info!(self.logger, "merge commit proposed"; "source" => source, "target" => target,
            "prepare_index" => state.index);
        if let Some(r) = self.regions.get_mut(&target) {
            r.core.propose(id, data);
        }
        self.merge_proposed.insert(source, self.ticks);
    }

    fn driver_request(&mut self) -> RequestId {
        self.driver_requests += 1;
        DRIVER_REQUESTS + self.driver_requests
    }

    /// Drops at once the peers of the regions that region `id` took over in its last apply
    /// (their state went in the merge's batch): nothing of theirs may run later in this turn.
    pub(super) fn take_merged(&mut self, id: u64, merged: &mut Vec<(u64, u64)>) {
        let Some(r) = self.regions.get_mut(&id) else {
            return;
        };
        for source in r.core.app_mut().take_merges() {
            if let Some(gone) = self.regions.remove(&source) {
                info!(self.logger, "region merged into another"; "region" => source,
                    "target" => id, "peer" => gone.peer_id);
            }
            self.hashes.remove(source);
            self.merge_proposed.remove(&source);
            // Its reads in flight end with it (the store's caller answers them as gone).
            self.reads.retain(|_, (region, _, _)| *region != source);
            merged.push((source, id));
        }
    }

    /// After the turn's writes: clears what a merged source's last appends wrote after the
    /// merge's batch, drops a snapshot it was receiving, and reports both regions.
    pub(super) fn finish_merges(
        &mut self,
        merged: Vec<(u64, u64)>,
        out: &mut super::StoreOutput,
    ) -> Result<(), crate::raft_core::CoreError> {
        for (source, target) in merged {
            self.engine
                .clear_merged_source(source)
                .map_err(crate::raft_core::CoreError::storage)?;
            if let Some((_, desc)) = self.pending_snapshots.remove(&source) {
                let dir = crate::transport::region_snap_dir(&self.engine.snap_dir(), source);
                let _ = std::fs::remove_file(desc.path_in(&dir));
            }
            out.destroyed.push(source);
            out.merged.push(target);
        }
        Ok(())
    }

    /// Takes the answers to the driver's own proposals out of the turn's replies, logging
    /// the refused ones.
    pub(super) fn log_driver_replies(&mut self, out: &mut super::StoreOutput) {
        if self.driver_requests == 0 {
            return;
        }
        let logger = &self.logger;
        out.replies.retain(|(region, id, result)| {
            if *id <= DRIVER_REQUESTS {
                return true;
            }
            if let Err(e) = result {
                info!(logger, "merge step not applied"; "region" => region, "why" => ?e);
            }
            false
        });
    }

    /// A snapshot of region `id` whose range covers a region hosted here whole, at a newer
    /// version, comes from after that region was merged into it (a region's range grows only
    /// by a merge, and its version then passes the merged region's): the hosted one is stale
    /// (its store's replica of `id` lagged past the merge's commit, and gets the snapshot
    /// instead). It is dropped in the next turn, as a removed peer is, and the snapshot, sent
    /// again, then fits.
    pub(super) fn drop_merged_under(&mut self, id: u64, msg: &raft::prelude::Message) {
        let Some(view) = self.region_engine(id) else {
            return;
        };
        let Ok(meta) = rdb_storage::snapshot::region_meta_of(&view, msg.get_snapshot()) else {
            return;
        };
        if meta.id != id {
            return;
        }
        let version = region::epoch(&meta).version;
        let covered = |o: &Region| {
            meta.start_key <= o.start_key
                && (meta.end_key.is_empty() || (!o.end_key.is_empty() && o.end_key <= meta.end_key))
        };
        let stale: Vec<u64> = self
            .regions
            .iter()
            .filter(|(&other, r)| other != id && !r.core.replica().is_installing())
            .filter_map(|(&other, r)| Some((other, r.core.replica().app().region()?)))
            .filter(|(_, o)| covered(o) && region::epoch(o).version < version)
            .map(|(other, _)| other)
            .collect();
        for other in stale {
            if !self.stale.contains(&other) {
                info!(self.logger, "region merged away: a snapshot of the region it merged into \
                    covers it"; "region" => other, "into" => id, "version" => version);
                self.stale.push(other);
            }
        }
    }
}
