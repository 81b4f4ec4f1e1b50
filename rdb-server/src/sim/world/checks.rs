//! The end of a run: when the stores have converged, and what must hold then.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};

use rdb_storage::region::{self, Region};

use super::{store_index, Stats, World};
use crate::sim::linearizability::{self, CheckResult, Outcome};
use crate::store::StoreCore;

impl World {
    /// Every store's regions: range, role, term, leader, indexes.
    pub(super) fn positions(&self) -> String {
        let mut s = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(st) = &n.store else {
                let _ = writeln!(s, "s{} down", i + 1);
                continue;
            };
            for id in st.region_ids() {
                let Some(c) = st.core(id) else { continue };
                let r = c.replica();
                let range = st.region(id).map_or("uninitialized".into(), |m| {
                    format!(
                        "[{}, {}) v{} c{}",
                        String::from_utf8_lossy(&m.start_key),
                        String::from_utf8_lossy(&m.end_key),
                        region::epoch(m).version,
                        region::epoch(m).conf_ver
                    )
                });
                let _ = writeln!(
                    s,
                    "s{} region {id} {range}: peer {} {:?} term {} leader {} commit {} applied {} \
                     last {} matched {:?}",
                    i + 1,
                    r.id(),
                    r.role(),
                    r.term(),
                    r.leader_id(),
                    r.commit_index(),
                    r.applied_index(),
                    r.log_bounds().1,
                    r.progress()
                );
            }
            let _ = writeln!(
                s,
                "s{}: {} messages dropped, {} refused",
                i + 1,
                st.dropped_messages(),
                st.refused_messages()
            );
        }
        if let Some(pd) = &self.pd {
            let _ = write!(s, "PD: removed stores {:?}\n{}", pd.removed, pd.describe());
        }
        s
    }

    /// The store leading region `id` (the one of the highest term, if several think so).
    pub(super) fn leader(&self, id: u64) -> Option<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let c = n.store.as_ref()?.core(id)?;
                c.replica().is_leader().then(|| (c.replica().term(), i))
            })
            .max()
            .map(|(_, i)| i)
    }

    /// Every region some store hosts initialized, as its leader has it.
    pub(super) fn regions(&self) -> BTreeMap<u64, Option<Region>> {
        let mut out = BTreeMap::new();
        for n in &self.nodes {
            let Some(st) = &n.store else { continue };
            for id in st.region_ids() {
                if st.region(id).is_some() {
                    out.entry(id).or_insert(None);
                }
            }
        }
        for (id, meta) in out.iter_mut() {
            *meta = self
                .leader(*id)
                .and_then(|l| self.nodes[l].store.as_ref()?.region(*id).cloned());
        }
        out
    }

    /// Every store up (but those lost for good); with PD, every region fully replicated on
    /// the stores that remain; every region led by one peer, its members (voters and learners) all
    /// on their stores, applied to the same index, out of any joint configuration; no store
    /// hosting a peer its region does not have; no client busy.
    pub(super) fn converged(&self) -> bool {
        let running = |i: usize| !self.lost.contains(&i);
        if (0..self.nodes.len()).any(|i| running(i) && self.nodes[i].store.is_none()) {
            return false;
        }
        if !self.fully_replicated() {
            return false;
        }
        for (id, meta) in self.regions() {
            let Some(meta) = meta else { return false };
            let mut applied = BTreeSet::new();
            let mut leaders = 0;
            for (i, n) in self.nodes.iter().enumerate() {
                if !running(i) {
                    continue;
                }
                let Some(st) = &n.store else { return false };
                let member = meta.peers.iter().find(|p| p.store_id == st.store_id());
                let Some(c) = st.core(id) else {
                    if member.is_some() {
                        return false;
                    }
                    continue;
                };
                if member.is_none_or(|p| p.id != c.replica().id()) {
                    return false;
                }
                let r = c.replica();
                if r.applied_index() != r.commit_index()
                    || r.log_bounds().1 != r.commit_index()
                    || !r.conf_state().voters_outgoing.is_empty()
                {
                    return false;
                }
                leaders += usize::from(r.is_leader());
                applied.insert(r.applied_index());
            }
            if leaders != 1 || applied.len() != 1 {
                return false;
            }
        }
        self.clients.iter().all(|c| c.pending.is_none())
    }

    pub(super) fn check(&mut self) -> Result<Stats, String> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let regions = self.regions();
        for (id, meta) in &regions {
            let meta = meta.as_ref().ok_or(format!("region {id} has no leader"))?;
            // Within the region, every replica: the same applied index, the same data in its
            // range, the same live dedup records (those past their window may be compacted
            // away on one and not yet on another).
            let mut first: Option<(usize, RegionState)> = None;
            for p in &meta.peers {
                let i = store_index(p.store_id);
                let st = self.nodes[i].store.as_ref().ok_or("a store is down")?;
                let state = region_state(st, meta, self.sc.dedup_window)?;
                match &first {
                    None => first = Some((i, state)),
                    Some((j, s0)) => {
                        if let Some(diff) = s0.differs(&state) {
                            return Err(format!(
                                "region {id}: s{} and s{} differ: {diff}",
                                j + 1,
                                i + 1
                            ));
                        }
                    }
                }
            }
            if let Some((_, s)) = first {
                self.stats.applied += s.applied;
                format!("{id}{s:?}").hash(&mut h);
            }
        }
        self.stats.regions = regions.len();
        self.stats.ops = self.history.len();
        for v in self.history.iter().filter(|v| v.condition.is_some()) {
            match v.call.outcome {
                Outcome::Cas(true) | Outcome::Delete => self.stats.conditional.1 += 1,
                Outcome::Cas(false) | Outcome::Refused => {}
                _ => continue,
            }
            self.stats.conditional.0 += 1;
        }
        format!("{:?}", self.history).hash(&mut h);
        self.stats.fingerprint = h.finish();
        revisions_fit(&self.written)?;
        match linearizability::check_versioned(&self.history, 2_000_000) {
            CheckResult::Linearizable => Ok(self.stats.clone()),
            CheckResult::Illegal(v) => Err(format!("history is not linearizable:\n{v}")),
            CheckResult::Unknown { key } => {
                Err(format!("the checker ran out of budget on key {key}"))
            }
        }
    }
}

/// The revisions acknowledged writes got fit real time (specs/018-versions): two writes that
/// changed one key never share a revision, and a write that completed before another of the
/// same key was invoked got the smaller one (whatever splits and merges moved the key).
/// `written` holds (key, invoke, complete, revision).
fn revisions_fit(written: &[(String, u64, u64, u64)]) -> Result<(), String> {
    let mut by_key: std::collections::BTreeMap<&str, Vec<(u64, u64, u64)>> = Default::default();
    for (key, invoke, complete, rev) in written {
        by_key
            .entry(key.as_str())
            .or_default()
            .push((*invoke, *complete, *rev));
    }
    for (key, writes) in by_key {
        for (i, a) in writes.iter().enumerate() {
            for b in &writes[i + 1..] {
                let (first, then) = if a.1 < b.0 {
                    (a, b)
                } else if b.1 < a.0 {
                    (b, a)
                } else if a.2 == b.2 {
                    return Err(format!(
                        "two writes of key {key} got revision {} (concurrent ones)",
                        a.2
                    ));
                } else {
                    continue;
                };
                if first.2 >= then.2 {
                    return Err(format!(
                        "key {key}: a write acknowledged at revision {} completed before \
                         another was invoked that got revision {}",
                        first.2, then.2
                    ));
                }
            }
        }
    }
    Ok(())
}

/// One replica of a region as the end of a run compares it.
#[derive(Debug, PartialEq, Eq)]
struct RegionState {
    applied: u64,
    /// The replica hash (every record the group owns, with versions and the history reads
    /// at or above its compacted revision may need), as of now.
    hash: (u64, u64),
    data: Vec<(Vec<u8>, Vec<u8>)>,
    dedup: Vec<(Vec<u8>, Vec<u8>)>,
}

impl RegionState {
    /// What differs from `other`, for the failure.
    fn differs(&self, other: &RegionState) -> Option<String> {
        if self.applied != other.applied {
            return Some(format!("applied {} vs {}", self.applied, other.applied));
        }
        let show = |a: &[(Vec<u8>, Vec<u8>)], b: &[(Vec<u8>, Vec<u8>)]| {
            a.iter()
                .filter(|kv| !b.contains(kv))
                .take(5)
                .map(|(k, v)| {
                    format!(
                        "{}={}",
                        String::from_utf8_lossy(k),
                        String::from_utf8_lossy(v)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        if self.data != other.data {
            return Some(format!(
                "data at applied index {}: only in the first: {}; only in the second: {}",
                self.applied,
                show(&self.data, &other.data),
                show(&other.data, &self.data)
            ));
        }
        if self.hash != other.hash {
            return Some(format!(
                "replica hash at applied index {}: {:x} over {} records vs {:x} over {}",
                self.applied, self.hash.0, self.hash.1, other.hash.0, other.hash.1
            ));
        }
        if self.dedup != other.dedup {
            return Some(format!(
                "live dedup records at applied index {}: {} vs {}",
                self.applied,
                self.dedup.len(),
                other.dedup.len()
            ));
        }
        None
    }
}

/// Region `meta`'s replica on store `st`.
fn region_state(st: &StoreCore, meta: &Region, window: u64) -> Result<RegionState, String> {
    let sid = st.store_id();
    let applied = st.core(meta.id).map_or(0, |c| c.replica().applied_index());
    let data = st
        .engine()
        .scan(&meta.start_key, &meta.end_key, usize::MAX, usize::MAX)
        .map_err(|e| format!("s{sid} cannot scan: {e}"))?
        .kvs;
    let mut prefix = rdb_storage::keys::region_prefix(meta.id);
    prefix.push(rdb_storage::keys::DEDUP_PREFIX);
    let dedup = st
        .engine()
        .app_records(&prefix)
        .map_err(|e| format!("s{sid} cannot read dedup records: {e}"))?
        .into_iter()
        .filter(|(k, v)| !rdb_storage::dedup::is_dead(k, v, applied, window))
        .collect();
    let view = st
        .engine()
        .region(meta.id)
        .map_err(|e| format!("s{sid} cannot open region {}: {e}", meta.id))?;
    let own = view
        .region_meta()
        .map_err(|e| format!("s{sid} cannot read region {}: {e}", meta.id))?;
    let hash = rdb_storage::state_machine::replica_hash(&view, own.as_ref(), applied, window)
        .map_err(|e| format!("s{sid} cannot hash region {}: {e}", meta.id))?;
    Ok(RegionState {
        applied,
        hash,
        data,
        dedup,
    })
}

#[cfg(test)]
mod tests {
    use super::revisions_fit;

    #[test]
    fn revisions_that_go_back_in_real_time_or_repeat_are_caught() {
        let w = |invoke, complete, rev| ("k".to_string(), invoke, complete, rev);
        // In order, and two concurrent writes in either order: fine.
        assert!(revisions_fit(&[w(0, 10, 1), w(20, 30, 3), w(21, 29, 2)]).is_ok());
        // A later write with a smaller revision.
        let e = revisions_fit(&[w(0, 10, 5), w(20, 30, 4)]).expect_err("went back");
        assert!(e.contains("revision 5") && e.contains("revision 4"), "{e}");
        // Two concurrent writes of one key with one revision.
        assert!(revisions_fit(&[w(0, 10, 5), w(5, 15, 5)]).is_err());
        // Other keys do not constrain each other.
        assert!(revisions_fit(&[w(0, 10, 5), ("j".into(), 20, 30, 4)]).is_ok());
    }
}
