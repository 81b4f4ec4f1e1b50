//! Merging two adjacent regions (specs/017-merge): the checks each step applies with, and the
//! one write batch in which a target replica takes over its store's source replica.
//!
//! User data is one keyspace for every region of a store, so a merge moves no user key: the
//! target's meta grows over the source's range, the source's live dedup records move under the
//! target's prefix, and the source's log, Raft state and own records go, leaving a tombstone.

use prost::Message as _;
use rdb_proto::command::{CommitMerge, MergeState, PrepareMerge};
use rocksdb::WriteBatch;

use super::{epoch, Region, RegionEpoch};
use crate::dedup;
use crate::engine::Engine;
use crate::keys::{self, Space, CF_DATA, CF_RAFT_LOG, CF_RAFT_STATE};
use crate::{Error, Index, Result};

/// The tombstone a merged source leaves: no peer id is above it, so no message recreates it.
pub const MERGED_TOMBSTONE: u64 = u64::MAX;

/// Whether two regions' ranges touch end to start, in either order.
pub fn adjacent(a: &Region, b: &Region) -> bool {
    touches(&a.end_key, &b.start_key) || touches(&b.end_key, &a.start_key)
}

/// An end key and a start key that meet (an empty end is unbounded and meets nothing).
fn touches(end: &[u8], start: &[u8]) -> bool {
    !end.is_empty() && end == start
}

/// The source after applying `p`: refused (the same on every replica) if the source is
/// merging already or its epoch is not the one `p` was proposed at; otherwise its version is
/// bumped, so requests routed before the prepare are told the region changed.
pub fn plan_prepare(
    source: &Region,
    merging: Option<&MergeState>,
    p: &PrepareMerge,
) -> std::result::Result<Region, String> {
    if merging.is_some() {
        return Err(format!("region {} is merging already", source.id));
    }
    let ep = epoch(source);
    if (p.version, p.conf_ver) != (ep.version, ep.conf_ver) {
        return Err(format!(
            "epoch not match: merge proposed at version {} conf_ver {}, region {} is at {} {}",
            p.version, p.conf_ver, source.id, ep.version, ep.conf_ver
        ));
    }
    if p.target_id == source.id || p.target_id == 0 {
        return Err(format!("region {} cannot merge into itself", source.id));
    }
    let mut out = source.clone();
    out.epoch = Some(RegionEpoch {
        version: ep.version + 1,
        conf_ver: ep.conf_ver,
    });
    Ok(out)
}

/// The source region a commit names, as its prepare left it.
pub fn commit_source(c: &CommitMerge) -> Region {
    Region {
        id: c.source_id,
        start_key: c.source_start.clone(),
        end_key: c.source_end.clone(),
        epoch: Some(RegionEpoch {
            version: c.source_version,
            conf_ver: 0,
        }),
        peers: Vec::new(),
    }
}

/// The target after applying `c`: its range covers both, its version is one past the larger
/// of the two, its peers and `conf_ver` stay. Refused (the same on every replica) if the
/// target's epoch is not the one the commit expects, or the ranges are not adjacent.
pub fn plan_commit(target: &Region, c: &CommitMerge) -> std::result::Result<Region, String> {
    let ep = epoch(target);
    if (c.target_version, c.target_conf_ver) != (ep.version, ep.conf_ver) {
        return Err(format!(
            "epoch not match: merge of region {} expects region {} at version {} conf_ver {}, \
             it is at {} {}",
            c.source_id, target.id, c.target_version, c.target_conf_ver, ep.version, ep.conf_ver
        ));
    }
    let source = commit_source(c);
    if source.id == target.id || !adjacent(&source, target) {
        return Err(format!(
            "region {} is not adjacent to region {}",
            source.id, target.id
        ));
    }
    let mut out = target.clone();
    if touches(&source.end_key, &target.start_key) {
        out.start_key = source.start_key;
    } else {
        out.end_key = source.end_key;
    }
    out.epoch = Some(RegionEpoch {
        version: ep.version.max(c.source_version) + 1,
        conf_ver: ep.conf_ver,
    });
    Ok(out)
}

impl Engine {
    /// This region's merge state (see [`keys::REGION_MERGE_SUFFIX`]); `None` for a static node
    /// and for a region that is not merging.
    pub fn merge_state(&self) -> Result<Option<MergeState>> {
        let Space::Region(id) = self.space() else {
            return Ok(None);
        };
        self.db()
            .get_cf(self.cf(CF_DATA), keys::region_merge_key(id))?
            .map(|v| {
                MergeState::decode(v.as_slice())
                    .map_err(|e| Error::Corrupt(format!("undecodable merge state: {e}")))
            })
            .transpose()
    }

    /// Region `id`'s applied index on this store, if the region has state here.
    pub fn region_applied(&self, id: u64) -> Result<Option<Index>> {
        let k = Space::Region(id).state_key(keys::APPLY_STATE_KEY);
        Ok(self
            .db()
            .get_cf(self.cf(CF_RAFT_STATE), k)?
            .and_then(|v| keys::decode_pair(&v))
            .map(|(index, _)| index))
    }

    /// Removes what a merged source left outside the batch that merged it (log entries and
    /// hard state its last turn wrote after that batch), keeping its tombstone. Idempotent.
    pub fn clear_merged_source(&self, id: u64) -> Result<()> {
        if self.tombstone(id)? != Some(MERGED_TOMBSTONE) {
            return Ok(());
        }
        let mut wb = WriteBatch::default();
        remove_source(self, &mut wb, id);
        self.write(wb, false)
    }
}

/// Adds to `wb` the deletion of region `id`'s log, Raft state and own records in `data`, and
/// its merged tombstone (after the range deletes, so it survives them).
fn remove_source(engine: &Engine, wb: &mut WriteBatch, id: u64) {
    let space = Space::Region(id);
    let (lo, hi) = space.log_bounds();
    wb.delete_range_cf(engine.cf(CF_RAFT_LOG), lo, hi);
    wb.delete_range_cf(
        engine.cf(CF_RAFT_STATE),
        keys::region_prefix(id),
        keys::region_prefix_end(id),
    );
    wb.delete_range_cf(
        engine.cf(CF_DATA),
        keys::region_prefix(id),
        keys::region_prefix_end(id),
    );
    wb.put_cf(
        engine.cf(CF_RAFT_STATE),
        space.state_key(keys::TOMBSTONE_KEY),
        MERGED_TOMBSTONE.to_be_bytes(),
    );
}

/// Adds a merge to `wb` (the target's apply batch at `index`): the target's new meta, the
/// source's dedup records live at its prepare index moved under the target's prefix (re-dated
/// to `index`; a record the target has already stays as it is), and the source's removal. The
/// source's records must be final (it applied its prepare) and the target's earlier writes in
/// the database (the caller commits its earlier batch first).
pub(crate) fn merge_batch(
    engine: &Engine,
    wb: &mut WriteBatch,
    merged: &Region,
    source_id: u64,
    prepare_index: Index,
    index: Index,
    window: u64,
) -> Result<()> {
    let data = engine.cf(CF_DATA);
    wb.put_cf(
        data,
        keys::region_meta_key(merged.id),
        merged.encode_to_vec(),
    );
    for item in dedup::moved_records(engine, source_id, prepare_index, window, merged.id, index) {
        let (key, rec) = item?;
        if engine.db().get_cf(data, &key)?.is_some() {
            continue;
        }
        wb.put_cf(data, key, rec);
    }
    // The merged region goes on above both regions' revisions (specs/018-versions), and keeps
    // the larger compacted revision: reads below it may miss history from either half.
    let revisions = |id: u64| {
        let record = engine
            .db()
            .get_cf(data, Space::Region(id).revisions_key())?;
        crate::mvcc::decode_revisions(record.as_deref())
    };
    let (target, source) = (revisions(merged.id)?, revisions(source_id)?);
    let revs = crate::mvcc::Revisions {
        last: target.last.max(source.last),
        compacted: target.compacted.max(source.compacted),
    };
    if revs != target {
        wb.put_cf(
            data,
            Space::Region(merged.id).revisions_key(),
            crate::mvcc::encode_revisions(revs),
        );
    }
    remove_source(engine, wb, source_id);
    Ok(())
}
