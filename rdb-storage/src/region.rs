//! Regions of a PD-mode store (specs/009-regions): many Raft groups over one RocksDB.
//!
//! Each region is a Raft group of its own whose log, Raft state and own records carry its id
//! ([`keys::Space::Region`]); user data stays shared under `d`, and a region owns the user keys
//! of its range `[start_key, end_key)`. The region's *meta* (`rdb.pd.Region`: range, epoch,
//! peers) is a record of its own in `data`, written by the apply batch that changes it, so a
//! snapshot carries it and every replica changes it at the same log index.
//!
//! A region is created on a store by [`Engine::create_region`] (the bootstrap of region 1, or
//! a peer that PD placed on this store) or by the apply of a split in its parent's batch
//! ([`split_batch`]): either way its log starts after [`REGION_INIT_INDEX`], so a replica that
//! has nothing yet is told apart and gets a snapshot.

use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::{ConfState, HardState};
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch};

pub use rdb_proto::pd::{Peer, Region, RegionEpoch};

use crate::dedup;
use crate::engine::Engine;
use crate::keys::{self, Space, CF_DATA, CF_RAFT_STATE};
use crate::{Error, Index, Result, Term};

pub mod merge;
pub(crate) use merge::merge_batch;

/// Index and term a new region's state starts at (TiKV's `RAFT_INIT_LOG_INDEX`/`TERM`): its
/// first entry is `REGION_INIT_INDEX + 1`.
pub const REGION_INIT_INDEX: Index = 5;
/// Term of the state a new region starts with.
pub const REGION_INIT_TERM: Term = 5;

/// File beside a store's database holding each region's last index known to be durable.
const REGION_DURABLE_FILE: &str = "RDB_REGION_DURABLE_INDEX";

/// Decodes a stored region meta record.
pub fn decode_meta(v: &[u8]) -> Result<Region> {
    Region::decode(v).map_err(|e| Error::Corrupt(format!("undecodable region meta: {e}")))
}

/// The region a config-file cluster is: region `id` over every key, at epoch (1, 1), with one
/// voter per node, each on the store of its own id (a node is a store hosting that region).
pub fn whole_range_region(id: u64, nodes: &[u64]) -> Region {
    Region {
        id,
        start_key: Vec::new(),
        end_key: Vec::new(),
        epoch: Some(RegionEpoch {
            version: 1,
            conf_ver: 1,
        }),
        peers: nodes
            .iter()
            .map(|&n| Peer {
                id: n,
                store_id: n,
                learner: false,
            })
            .collect(),
    }
}

/// Whether `key` lies in the region's range `[start_key, end_key)` (empty end: no bound).
pub fn contains(region: &Region, key: &[u8]) -> bool {
    key >= region.start_key.as_slice()
        && (region.end_key.is_empty() || key < region.end_key.as_slice())
}

/// Whether `outer`'s range holds all of `inner`'s (an empty end is no bound).
pub fn covers(outer: &Region, inner: &Region) -> bool {
    outer.start_key <= inner.start_key
        && (outer.end_key.is_empty()
            || (!inner.end_key.is_empty() && inner.end_key <= outer.end_key))
}

/// The region's epoch, or the zero epoch if the record lacks one.
pub fn epoch(region: &Region) -> RegionEpoch {
    region.epoch.unwrap_or_default()
}

/// A region's peers as its first conf state: voters, and learners for peers marked so.
fn conf_state_of(region: &Region) -> ConfState {
    let ids = |learner: bool| {
        let mut v: Vec<u64> = region
            .peers
            .iter()
            .filter(|p| p.learner == learner)
            .map(|p| p.id)
            .collect();
        v.sort_unstable();
        v
    };
    ConfState {
        voters: ids(false),
        learners: ids(true),
        ..Default::default()
    }
}

/// The region after a membership change: its peers are those of `cs` (the configuration
/// raft-rs switched to, both halves while joint), each on the store it had or the one `added`
/// names, learners marked, and the epoch's `conf_ver` raised by one. Deterministic in the
/// entry and the meta, so every replica records the same region.
pub fn with_conf_change(region: &Region, cs: &ConfState, added: &[(u64, u64)]) -> Region {
    let mut ids: Vec<u64> = cs
        .voters
        .iter()
        .chain(&cs.voters_outgoing)
        .chain(&cs.learners)
        .chain(&cs.learners_next)
        .copied()
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let store_of = |id: u64| {
        region
            .peers
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.store_id)
            .or_else(|| added.iter().find(|a| a.0 == id).map(|a| a.1))
            .unwrap_or(0)
    };
    let learner = |id: u64| {
        !cs.voters.contains(&id) && !cs.voters_outgoing.contains(&id) && cs.learners.contains(&id)
    };
    let mut epoch = epoch(region);
    epoch.conf_ver += 1;
    Region {
        peers: ids
            .into_iter()
            .map(|id| Peer {
                id,
                store_id: store_of(id),
                learner: learner(id),
            })
            .collect(),
        epoch: Some(epoch),
        ..region.clone()
    }
}

/// Adds to `wb` the whole initial state of `region` on this store: hard state, conf state
/// (the region's peers as voters), apply and truncated state at [`REGION_INIT_INDEX`], the
/// apply record and the meta record.
pub(crate) fn put_initial_state(
    engine: &Engine,
    wb: &mut WriteBatch,
    region: &Region,
) -> Result<()> {
    let space = Space::Region(region.id);
    let state = engine.cf(CF_RAFT_STATE);
    let data = engine.cf(CF_DATA);
    let cs = conf_state_of(region);
    let hs = HardState {
        term: REGION_INIT_TERM,
        commit: REGION_INIT_INDEX,
        ..Default::default()
    };
    let init = keys::encode_pair(REGION_INIT_INDEX, REGION_INIT_TERM);
    wb.put_cf(
        state,
        space.state_key(keys::HARD_STATE_KEY),
        hs.write_to_bytes()?,
    );
    wb.put_cf(
        state,
        space.state_key(keys::CONF_STATE_KEY),
        cs.write_to_bytes()?,
    );
    wb.put_cf(
        state,
        space.state_key(keys::INITIAL_CONF_STATE_KEY),
        cs.write_to_bytes()?,
    );
    wb.put_cf(state, space.state_key(keys::APPLY_STATE_KEY), init);
    wb.put_cf(state, space.state_key(keys::TRUNCATED_STATE_KEY), init);
    wb.put_cf(data, space.data_apply_key(), init);
    wb.put_cf(
        data,
        keys::region_meta_key(region.id),
        region.encode_to_vec(),
    );
    Ok(())
}

impl Engine {
    /// Creates the initial state of `region` on this store in one synced write (the bootstrap
    /// of region 1, or a peer PD placed here) and returns the region's view. Refuses a region
    /// that already has state here, or one with id 0, no peers, or duplicate peer ids.
    pub fn create_region(&self, region: &Region) -> Result<Engine> {
        self.create_region_with_members(region, &[])
    }

    /// [`Engine::create_region`], with the addresses of the region's members (a config-file
    /// cluster's region 1, whose nodes are its peers) recorded in the same write.
    pub fn create_region_with_members(
        &self,
        region: &Region,
        members: &[crate::MemberRecord],
    ) -> Result<Engine> {
        check_region(region)?;
        if self
            .db()
            .get_cf(
                self.cf(CF_RAFT_STATE),
                Space::Region(region.id).state_key(keys::CONF_STATE_KEY),
            )?
            .is_some()
        {
            return Err(Error::Corrupt(format!(
                "region {} already has state on this store",
                region.id
            )));
        }
        let mut wb = WriteBatch::default();
        put_initial_state(self, &mut wb, region)?;
        for m in members {
            wb.put_cf(
                self.cf(CF_DATA),
                keys::region_member_key(region.id, m.id),
                prost::Message::encode_to_vec(m),
            );
        }
        self.write(wb, true)?;
        self.region(region.id)
    }

    /// The ids of every region with Raft state on this store, in order.
    pub fn region_ids(&self) -> Result<Vec<u64>> {
        Ok(self
            .region_records(keys::CONF_STATE_KEY)?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// Every region's record `name` in `raft_state` (`b'r'` + id + `name`), by region id.
    fn region_records(&self, name: &[u8]) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(vec![keys::REGION_PREFIX + 1]);
        let it = self.db().iterator_cf_opt(
            self.cf(CF_RAFT_STATE),
            ro,
            IteratorMode::From(&[keys::REGION_PREFIX], Direction::Forward),
        );
        for item in it {
            let (k, v) = item?;
            if k.len() == 9 + name.len() && k.ends_with(name) {
                let id: [u8; 8] = k[1..9]
                    .try_into()
                    .map_err(|_| Error::Corrupt("region key too short".into()))?;
                out.push((u64::from_be_bytes(id), v.to_vec()));
            }
        }
        Ok(out)
    }

    /// This region's meta as applied (range, epoch, peers); `None` for a static node's view
    /// and for an uninitialized region (see [`Engine::create_uninit_region`]).
    pub fn region_meta(&self) -> Result<Option<Region>> {
        let Space::Region(id) = self.space() else {
            return Ok(None);
        };
        match self
            .db()
            .get_cf(self.cf(CF_DATA), keys::region_meta_key(id))?
        {
            Some(v) => Ok(Some(decode_meta(&v)?)),
            None if self.apply_state()?.index == 0 => Ok(None),
            None => Err(Error::Corrupt(format!("region {id} has no meta record"))),
        }
    }

    /// Creates an *uninitialized* region `id` on this store, as peer `peer_id`: empty Raft state
    /// (no voters, no log, nothing applied, no meta), the state of a peer a leader reached
    /// before this store learnt of the region (it missed the split that made it, having
    /// received its parent by snapshot). The leader sends it a snapshot, which brings the
    /// range, meta and data. The peer id is recorded, so that a restart brings the peer back
    /// with any term and vote it recorded since ([`Engine::uninit_peer`]). Returns the view.
    pub fn create_uninit_region(&self, id: u64, peer_id: u64) -> Result<Engine> {
        let space = Space::Region(id);
        let state = self.cf(CF_RAFT_STATE);
        if self
            .db()
            .get_cf(state, space.state_key(keys::CONF_STATE_KEY))?
            .is_some()
        {
            return Err(Error::Corrupt(format!(
                "region {id} already has state on this store"
            )));
        }
        let zero = keys::encode_pair(0, 0);
        let mut wb = WriteBatch::default();
        wb.put_cf(
            state,
            space.state_key(keys::HARD_STATE_KEY),
            HardState::default().write_to_bytes()?,
        );
        wb.put_cf(
            state,
            space.state_key(keys::CONF_STATE_KEY),
            ConfState::default().write_to_bytes()?,
        );
        wb.put_cf(state, space.state_key(keys::APPLY_STATE_KEY), zero);
        wb.put_cf(state, space.state_key(keys::TRUNCATED_STATE_KEY), zero);
        wb.put_cf(
            state,
            space.state_key(keys::UNINIT_PEER_KEY),
            peer_id.to_be_bytes(),
        );
        wb.put_cf(self.cf(CF_DATA), space.data_apply_key(), zero);
        // Unsynced: if a crash loses it, the next message from the leader makes it again. Its
        // first vote is synced with its hard state, and this write is in the WAL before it.
        self.write(wb, false)?;
        self.region(id)
    }

    /// The peer id an uninitialized region of this view was created as (see
    /// [`Engine::create_uninit_region`]); `None` for other views.
    pub fn uninit_peer(&self) -> Result<Option<u64>> {
        let Space::Region(_) = self.space() else {
            return Ok(None);
        };
        match self.db().get_cf(
            self.cf(CF_RAFT_STATE),
            self.state_key(keys::UNINIT_PEER_KEY),
        )? {
            None => Ok(None),
            Some(v) => {
                let b: [u8; 8] = v
                    .as_slice()
                    .try_into()
                    .map_err(|_| Error::Corrupt("uninitialized peer record".into()))?;
                Ok(Some(u64::from_be_bytes(b)))
            }
        }
    }

    /// Removes every trace of region `id` from this store (an uninitialized region found at
    /// start, which the next message from its leader recreates). Refuses an initialized one.
    pub fn destroy_uninit_region(&self, id: u64) -> Result<()> {
        if self.region(id)?.region_meta()?.is_some() {
            return Err(Error::Corrupt(format!(
                "region {id} is initialized and cannot be dropped"
            )));
        }
        let space = Space::Region(id);
        let mut wb = WriteBatch::default();
        let (lo, hi) = space.log_bounds();
        wb.delete_range_cf(self.cf(crate::keys::CF_RAFT_LOG), lo, hi);
        wb.delete_range_cf(
            self.cf(CF_RAFT_STATE),
            keys::region_prefix(id),
            keys::region_prefix_end(id),
        );
        wb.delete_range_cf(
            self.cf(CF_DATA),
            keys::region_prefix(id),
            keys::region_prefix_end(id),
        );
        self.write(wb, true)
    }
}

impl Engine {
    /// Removes region `id`'s peer `peer_id` from this store after a membership change removed
    /// it: its log, Raft state and own records go in one synced write that leaves a tombstone
    /// (the peer id: no message for it or an older peer recreates the region, so a peer that
    /// voted never votes again) and, if it was initialized, a garbage record (its last meta,
    /// for its range). Its user data stays until [`Engine::collect_garbage`], which the store
    /// calls once no read that began before the removal can still be running. Returns the
    /// last meta; None for a peer removed before its first snapshot (it holds no user data).
    pub fn destroy_region(&self, id: u64, peer_id: u64) -> Result<Option<Region>> {
        let meta = self.region(id)?.region_meta()?;
        let space = Space::Region(id);
        let state = self.cf(CF_RAFT_STATE);
        let mut wb = WriteBatch::default();
        let (lo, hi) = space.log_bounds();
        wb.delete_range_cf(self.cf(keys::CF_RAFT_LOG), lo, hi);
        wb.delete_range_cf(state, keys::region_prefix(id), keys::region_prefix_end(id));
        wb.delete_range_cf(
            self.cf(CF_DATA),
            keys::region_prefix(id),
            keys::region_prefix_end(id),
        );
        // After the range deletes in the same batch: these survive them.
        wb.put_cf(
            state,
            space.state_key(keys::TOMBSTONE_KEY),
            peer_id.to_be_bytes(),
        );
        if let Some(meta) = &meta {
            wb.put_cf(
                state,
                space.state_key(keys::GARBAGE_KEY),
                meta.encode_to_vec(),
            );
        }
        self.write(wb, true)?;
        Ok(meta)
    }

    /// The peer id region `id` had on this store when a membership change removed it, if one
    /// did (see [`Engine::destroy_region`]).
    pub fn tombstone(&self, id: u64) -> Result<Option<u64>> {
        let k = Space::Region(id).state_key(keys::TOMBSTONE_KEY);
        match self.db().get_cf(self.cf(CF_RAFT_STATE), k)? {
            None => Ok(None),
            Some(v) => {
                let b: [u8; 8] = v
                    .as_slice()
                    .try_into()
                    .map_err(|_| Error::Corrupt(format!("tombstone of region {id}")))?;
                Ok(Some(u64::from_be_bytes(b)))
            }
        }
    }

    /// Records, outside RocksDB, the index each hosted region's log reached durably (its
    /// applied index: applied entries are in the synced log), as [`Engine::record_durable_index`]
    /// does for a node's one group: one file for the store, replaced whole every few seconds
    /// off the Raft thread. [`Engine::check_region_durable_indexes`] refuses a start from a
    /// database that is behind it.
    pub fn record_region_durable_indexes(
        &self,
        indexes: &std::collections::BTreeMap<u64, Index>,
    ) -> Result<()> {
        let text: String = indexes
            .iter()
            .map(|(region, index)| format!("{region} {index}\n"))
            .collect();
        self.write_beside(REGION_DURABLE_FILE, &text)
    }

    /// The indexes [`Engine::record_region_durable_indexes`] recorded last, by region.
    pub fn recorded_region_indexes(&self) -> Result<std::collections::BTreeMap<u64, Index>> {
        let Some(text) = self.read_beside(REGION_DURABLE_FILE)? else {
            return Ok(Default::default());
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let mut it = l.split_whitespace().map(str::parse::<u64>);
                match (it.next(), it.next(), it.next()) {
                    (Some(Ok(region)), Some(Ok(index)), None) => Ok((region, index)),
                    _ => Err(Error::Corrupt(format!(
                        "{REGION_DURABLE_FILE} has a line that is not a region and an index: {l}"
                    ))),
                }
            })
            .collect()
    }

    /// Refuses to start a store whose regions' logs end below the indexes recorded by
    /// [`Engine::record_region_durable_indexes`] (`log_ends`: every region hosted here, by id;
    /// an uninitialized one ends at 0): its database was rolled back (an old copy put back, a
    /// MANIFEST cut). A recorded region that is not hosted any more is no rollback: either a
    /// membership change removed it (it has a tombstone) or a split created it and its
    /// parent's log replays the split (a rollback past that split shows in the parent). Nor
    /// is an uninitialized region with a tombstone: a later peer of a region whose earlier
    /// peer here was removed, waiting for its snapshot.
    pub fn check_region_durable_indexes(
        &self,
        log_ends: &std::collections::BTreeMap<u64, Index>,
    ) -> Result<()> {
        for (region, recorded) in self.recorded_region_indexes()? {
            let Some(&log_end) = log_ends.get(&region) else {
                continue;
            };
            let re_added = log_end == 0 && self.tombstone(region)?.is_some();
            if log_end < recorded && !re_added {
                return Err(Error::RegionRolledBack {
                    region,
                    log_end,
                    recorded,
                });
            }
        }
        Ok(())
    }

    /// The last metas of removed peers whose user data is still to be deleted.
    pub fn garbage(&self) -> Result<Vec<Region>> {
        self.region_records(keys::GARBAGE_KEY)?
            .iter()
            .map(|(_, v)| decode_meta(v))
            .collect()
    }

    /// Deletes the user data of removed peer `garbage` (from [`Engine::garbage`]) in the parts
    /// of its range that `keep` (the ranges of regions hosted or being installed here) does not
    /// cover, and its garbage record, in one write.
    pub fn collect_garbage(&self, garbage: &Region, keep: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
        let data = self.cf(CF_DATA);
        let mut wb = WriteBatch::default();
        for (lo, hi) in uncovered(&garbage.start_key, &garbage.end_key, keep) {
            let (dlo, dhi) = keys::data_range(&lo, &hi);
            wb.delete_range_cf(data, dlo, dhi);
            let (hlo, hhi) = crate::mvcc::history_range(&lo, &hi)?;
            wb.delete_range_cf(data, hlo, hhi);
        }
        wb.delete_cf(
            self.cf(CF_RAFT_STATE),
            Space::Region(garbage.id).state_key(keys::GARBAGE_KEY),
        );
        self.write(wb, false)
    }
}

/// The parts of `[start, end)` (an empty end: unbounded) that no range of `keep` covers.
fn uncovered(start: &[u8], end: &[u8], keep: &[(Vec<u8>, Vec<u8>)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut keep: Vec<&(Vec<u8>, Vec<u8>)> = keep.iter().collect();
    keep.sort();
    let mut out = Vec::new();
    let mut from = start.to_vec();
    let mut done = false;
    for (lo, hi) in keep {
        let before_end = |k: &[u8]| end.is_empty() || k < end;
        if !before_end(lo) {
            break;
        }
        if !hi.is_empty() && hi.as_slice() <= from.as_slice() {
            continue;
        }
        if lo.as_slice() > from.as_slice() {
            out.push((from.clone(), lo.clone()));
        }
        if hi.is_empty() {
            done = true;
            break;
        }
        from = hi.clone();
    }
    if !done && (end.is_empty() || from.as_slice() < end) {
        out.push((from, end.to_vec()));
    }
    out
}

/// Whose a PD-mode store's directory is: recorded when the store claims its id, checked at
/// every start, and stamped (the cluster id) on every message to other stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreIdent {
    /// The PD cluster the store belongs to (PD mints it when its group first starts); 0 in a
    /// directory written before stores recorded it.
    pub cluster_id: u64,
    /// The store's id, which PD allocated.
    pub store_id: u64,
    /// A random secret the store minted with its id: PD moves the store to another address
    /// only for a registration that carries it. 0 before stores recorded one.
    pub token: u64,
}

impl Engine {
    /// Other stores' addresses as this store last learnt them from PD, as (id, peer address,
    /// client address): a store that restarts while PD is away still reaches its peers and
    /// names their leaders to clients.
    pub fn store_addrs(&self) -> Result<Vec<(u64, String, String)>> {
        let mut upper = keys::STORE_ADDR_PREFIX.to_vec();
        upper.push(0xff);
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(upper);
        let it = self.db().iterator_cf_opt(
            self.cf(CF_RAFT_STATE),
            ro,
            IteratorMode::From(keys::STORE_ADDR_PREFIX, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in it {
            let (k, v) = item?;
            let id: [u8; 8] = k
                .get(keys::STORE_ADDR_PREFIX.len()..)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| Error::Corrupt("store address key".into()))?;
            let text = std::str::from_utf8(&v)
                .map_err(|_| Error::Corrupt("store address is not UTF-8".into()))?;
            let (peer, client) = text.split_once('\n').unwrap_or((text, text));
            out.push((u64::from_be_bytes(id), peer.to_string(), client.to_string()));
        }
        Ok(out)
    }

    /// Records store `id`'s peer and client addresses (see [`Engine::store_addrs`]);
    /// unsynced: losing them only means asking PD again.
    pub fn record_store_addr(&self, id: u64, peer: &str, client: &str) -> Result<()> {
        let mut key = keys::STORE_ADDR_PREFIX.to_vec();
        key.extend_from_slice(&id.to_be_bytes());
        let mut wb = WriteBatch::default();
        wb.put_cf(self.cf(CF_RAFT_STATE), key, format!("{peer}\n{client}"));
        self.write(wb, false)
    }
}

fn check_region(region: &Region) -> Result<()> {
    let bad = |m: String| Err(Error::Corrupt(m));
    if region.id == 0 {
        return bad("region id 0".into());
    }
    if region.peers.is_empty() {
        return bad(format!("region {} has no peers", region.id));
    }
    let mut ids: Vec<u64> = region.peers.iter().map(|p| p.id).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() != region.peers.len() || ids.first() == Some(&0) {
        return bad(format!(
            "region {} has duplicate or zero peer ids",
            region.id
        ));
    }
    if !region.end_key.is_empty() && region.end_key <= region.start_key {
        return bad(format!("region {} has an empty range", region.id));
    }
    Ok(())
}

/// What a split at `index` changes, computed from the parent's meta as applied: the parent
/// keeps `[start, split_key)`, the new region takes `[split_key, end)`, and both get the next
/// epoch version. Refused (deterministically, the same on every replica) if the epoch moved on
/// since the split was proposed, the key is not strictly inside the range, or the ids do not
/// fit the parent's peers.
pub fn plan_split(
    parent: &Region,
    split: &rdb_proto::command::Split,
) -> std::result::Result<(Region, Region), String> {
    let ep = epoch(parent);
    if split.version != ep.version {
        return Err(format!(
            "epoch not match: split proposed at version {}, region {} is at {}",
            split.version, parent.id, ep.version
        ));
    }
    let key = split.split_key.as_slice();
    if key <= parent.start_key.as_slice() || !contains(parent, key) {
        return Err(format!(
            "split key {:?} is not strictly inside region {}",
            String::from_utf8_lossy(key),
            parent.id
        ));
    }
    if split.new_region_id == 0
        || split.new_region_id == parent.id
        || split.new_peer_ids.len() != parent.peers.len()
        || split.new_peer_ids.contains(&0)
    {
        return Err(format!(
            "split of region {} names bad ids for the new region",
            parent.id
        ));
    }
    let next = RegionEpoch {
        version: ep.version + 1,
        conf_ver: ep.conf_ver,
    };
    let mut left = parent.clone();
    left.end_key = key.to_vec();
    left.epoch = Some(next);
    let right = Region {
        id: split.new_region_id,
        start_key: key.to_vec(),
        end_key: parent.end_key.clone(),
        epoch: Some(next),
        peers: parent
            .peers
            .iter()
            .zip(&split.new_peer_ids)
            .map(|(p, &id)| Peer {
                id,
                store_id: p.store_id,
                learner: p.learner,
            })
            .collect(),
    };
    check_region(&right).map_err(|e| e.to_string())?;
    Ok((left, right))
}

/// Adds a split to `wb` (the parent's apply batch at `index`): the parent's new meta, the new
/// region's whole initial state, and a copy of the parent's dedup records that are live at
/// `index`, re-dated to the new region's first index, so a write retried against the new
/// region after the split is still applied at most once. The parent's records must all be
/// in the database (the caller commits its earlier batch first).
pub(crate) fn split_batch(
    engine: &Engine,
    wb: &mut WriteBatch,
    left: &Region,
    right: &Region,
    index: Index,
    window: u64,
) -> Result<()> {
    let data = engine.cf(CF_DATA);
    wb.put_cf(data, keys::region_meta_key(left.id), left.encode_to_vec());
    // The new region may exist here already: created uninitialized by a message from its
    // leader (which applied the split first), or even initialized by that leader's snapshot.
    // An initialized one (or one being initialized) is newer than the split: leave it. An
    // uninitialized one gets the initial state, keeping any term and vote it already cast (a
    // term never goes back).
    let child = Space::Region(right.id);
    let existing = engine.db().get_cf(
        engine.cf(CF_RAFT_STATE),
        child.state_key(keys::HARD_STATE_KEY),
    )?;
    // A snapshot being installed initializes it: the install may have cleared the meta
    // record and not loaded it yet, and finishes (at the next start, after a crash) either way.
    let initialized = engine
        .db()
        .get_cf(data, keys::region_meta_key(right.id))?
        .is_some()
        || engine
            .db()
            .get_cf(
                engine.cf(CF_RAFT_STATE),
                child.state_key(keys::PENDING_SNAPSHOT_KEY),
            )?
            .is_some();
    if initialized {
        return Ok(());
    }
    put_initial_state(engine, wb, right)?;
    // The new region goes on from the parent's revisions, so neither half ever records a
    // revision below one a key of its range already has (specs/018-versions).
    if let Some(revs) = engine
        .db()
        .get_cf(data, Space::Region(left.id).revisions_key())?
    {
        wb.put_cf(data, child.revisions_key(), revs);
    }
    if let Some(v) = existing {
        let old = HardState::parse_from_bytes(&v)?;
        if old.term > REGION_INIT_TERM {
            let hs = HardState {
                term: old.term,
                vote: old.vote,
                commit: REGION_INIT_INDEX,
                ..Default::default()
            };
            wb.put_cf(
                engine.cf(CF_RAFT_STATE),
                child.state_key(keys::HARD_STATE_KEY),
                hs.write_to_bytes()?,
            );
        }
    }
    for item in dedup::moved_records(engine, left.id, index, window, right.id, REGION_INIT_INDEX) {
        let (key, rec) = item?;
        wb.put_cf(data, key, rec);
    }
    Ok(())
}

/// Bounds of everything a group's snapshot or hash covers in `data`: the whole family for a
/// static node; a region's own records, and the user keys of its range with their history.
pub(crate) fn owned_ranges(space: Space, meta: Option<&Region>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    match (space, meta) {
        (Space::Node, _) => Ok(vec![(
            keys::DATA_CF_FIRST.to_vec(),
            keys::DATA_CF_END.to_vec(),
        )]),
        (Space::Region(id), Some(meta)) => Ok(vec![
            (keys::region_prefix(id), keys::region_prefix_end(id)),
            keys::data_range(&meta.start_key, &meta.end_key),
            crate::mvcc::history_range(&meta.start_key, &meta.end_key)?,
        ]),
        (Space::Region(id), None) => Err(Error::Corrupt(format!("region {id} has no meta record"))),
    }
}
