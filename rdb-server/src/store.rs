//! A PD-mode store's regions (specs/009-regions): many Raft groups over one RocksDB,
//! driven as one.
//!
//! [`StoreCore`] holds a [`Core`] per region hosted here and routes to them: peer messages by
//! region id, client requests by region id, epoch and keys. Each turn ([`StoreCore::advance`])
//! runs every region's Ready up to its write, syncs the store's WAL once for all of them, and
//! only then finishes every Ready: no vote, append response or answer leaves before that one
//! fsync, however many regions wrote. A split applied by a region starts the new region's
//! peer in the same turn (on the store that led the parent, it campaigns at once).
//!
//! A region's snapshot installs on a thread of its own (`RaftStorage::start_snapshot_install`):
//! the turn it arrives in only starts it, and the region's replica holds that Ready, silent
//! (`Replica::is_installing`), until a later turn finds the install over and finishes it.
//! Every other region goes on meanwhile, and reads of other regions' keys are served (only
//! reads of the range being loaded are refused, see `rdb_storage::installs`).
//!
//! Like [`Core`], it has no clock, thread or socket: the caller ticks it, feeds it messages and
//! requests, and sends what [`StoreOutput`] holds. Tests drive several stores in one process
//! over real RocksDB directories.

use std::collections::{BTreeMap, HashMap};

use raft::prelude::Message;
use rdb_proto::command::{MemberContext, MemberRecord};
use rdb_storage::region::{self, Peer, Region, RegionEpoch};
use rdb_storage::snapshot::SnapshotDescriptor;
use rdb_storage::{AppendBatch, CommandResult, Engine, RaftStorage, StateMachine};
use slog::{debug, info, o, warn, Logger};

use crate::raft_core::{
    Answer, Core, CoreConfig, CoreError, MemberStep, MessageSink, Refusal, RequestId,
};
use hashes::{RegionHashes, StoreHashes};

/// The core of one region, as a store runs it.
pub type RegionCore = Core<RaftStorage, StateMachine>;

/// A Raft message between two peers of a region, with what routing it needs.
#[derive(Debug, Clone)]
pub struct RegionMessage {
    /// The region the message belongs to.
    pub region_id: u64,
    /// The store holding the sending peer.
    pub from_store: u64,
    /// The store holding the receiving peer.
    pub to_store: u64,
    /// The sender's epoch of the region.
    pub epoch: RegionEpoch,
    /// The raft-rs message; its `from` and `to` are peer ids.
    pub msg: Message,
}

/// Why a client request cannot go to a region here. The client refreshes its region map and
/// retries elsewhere; nothing was proposed.
#[derive(Debug, Clone, PartialEq)]
pub enum RegionError {
    /// This store hosts no peer of the region.
    NotFound(u64),
    /// The request's epoch is not the region's: its range or peers changed. `current` holds
    /// the region as it is here and the region a split made from it, when this store has it.
    EpochNotMatch {
        /// The regions that now cover what the client's region covered, as known here.
        current: Vec<Region>,
    },
    /// The request cannot apply to the region as it is (a membership change that would put
    /// two of its peers on one store, or names no store for a new peer).
    Invalid(String),
    /// A key of the request lies outside the region's range.
    KeyNotInRegion {
        /// The key.
        key: Vec<u8>,
        /// The region as it is here.
        region: Box<Region>,
    },
    /// The region is merging into `target` (specs/017-merge): it takes no request until the
    /// merge is over (then the target holds its keys) or rolled back.
    Merging {
        /// The region asked.
        region: u64,
        /// The region it merges into.
        target: u64,
    },
}

/// Why a request to a region was refused at once.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestRefused {
    /// The region is not here or does not take the request.
    Region(RegionError),
    /// The region's core refused it (not its leader, no such peer, ...).
    Core(Refusal),
}

/// A client's answer, with the region it came from (to name its leader).
pub type RegionReply = (u64, RequestId, Result<Answer<CommandResult>, Refusal>);

/// What one turn produced for the caller.
#[derive(Debug, Default)]
pub struct StoreOutput {
    /// Messages to other stores, in order. Their writes are durable.
    pub messages: Vec<RegionMessage>,
    /// Answers to client requests: (region, request, outcome).
    pub replies: Vec<RegionReply>,
    /// Regions created on this store in this turn (by splits).
    pub created: Vec<u64>,
    /// Whether the turn synced the WAL (some region wrote entries or a new term or vote).
    pub synced: bool,
    /// How many regions' writes that one sync made durable.
    pub regions_synced: usize,
    /// Regions whose log was compacted below an index this turn, to reclaim disk space.
    pub compacted: Vec<(u64, u64)>,
    /// Reads whose barrier completed after their region changed under them (a split took
    /// their keys, or the epoch moved on): refused instead of answered, see [`StoreCore::read`].
    pub refused_reads: Vec<(RequestId, RegionError)>,
    /// Regions to ask PD about: ones a leader's message named that this store does not host,
    /// and hosted ones without a leader for a while. The caller asks PD about each and passes
    /// what it says to [`StoreCore::confirm_region`], which lets the next such message create
    /// the peer (see [`StoreCore::step`]), or drops a peer PD no longer has.
    pub confirm: Vec<u64>,
    /// Regions whose membership changed this turn (a conf change applied, or a snapshot
    /// installed): their leader tells PD at once.
    pub membership_changed: Vec<u64>,
    /// Regions whose peer here a membership change removed this turn, or that a merge folded
    /// into another region here: gone from this store.
    pub destroyed: Vec<u64>,
    /// Regions that took over another region here this turn (the targets of merges): their
    /// leader tells PD at once.
    pub merged: Vec<u64>,
}

/// A region hosted here.
struct RegionPeer {
    core: RegionCore,
    /// This store's peer id in the region.
    peer_id: u64,
    /// The store of every peer heard from: an uninitialized region has no meta to say where
    /// its leader is, yet must answer it.
    heard: HashMap<u64, u64>,
    /// Ticks in a row in which no message came from the leader (while not leading): no
    /// leader is known, or the known one stopped sending (as it does to a peer it removed).
    leaderless: u64,
}

/// The regions of one store over one RocksDB database, driven together; see the module docs.
pub struct StoreCore {
    store_id: u64,
    engine: Engine,
    cfg: CoreConfig,
    dedup_window: u64,
    regions: BTreeMap<u64, RegionPeer>,
    /// Every region's appends of the current turn, written as one batch (see `advance`).
    appends: AppendBatch,
    /// Read barriers in flight: the region, epoch and keys each was checked against.
    reads: HashMap<RequestId, (u64, RegionEpoch, Vec<Vec<u8>>)>,
    /// Messages for regions this store does not host (dropped), for status and tests.
    dropped: u64,
    /// Messages a region refused before raft-rs saw them (see `Core::step`).
    refused: u64,
    /// Snapshots stepped but not installed yet, with the range each covers: a snapshot that
    /// overlaps one of them is refused like one that overlaps a hosted region. Two overlapping
    /// snapshots stepped in one turn would both install (an uninitialized region has no range
    /// to clash with yet), the older one's keys over the newer one's (TiKV keeps pending
    /// snapshot ranges for the same reason). A snapshot being installed in the background stays
    /// here until its install is over.
    pending_snapshots: BTreeMap<u64, (Region, SnapshotDescriptor)>,
    /// Peers PD confirmed that a leader may create here uninitialized: region -> (peer id,
    /// the tick of the confirmation). Unused ones are forgotten after `CONFIRMED_TICKS`.
    confirmed: HashMap<u64, (u64, u64)>,
    /// Regions asked about (see [`StoreOutput::confirm`]), with the tick they were asked at.
    asked: HashMap<u64, u64>,
    /// Regions to ask about in the next turn's output.
    pending_asks: Vec<u64>,
    /// Ticks so far: the store's only clock, for asking again.
    ticks: u64,
    /// Every hosted region's hash results, for the KV service (see [`hashes`]).
    hashes: StoreHashes,
    /// Removed peers' user data to delete, each once its tick comes (see `destroy`).
    garbage: Vec<(u64, Region)>,
    /// Regions whose peer here PD says was removed, to drop in the next turn.
    stale: Vec<u64>,
    /// Request ids the merge driver used so far (see `merge::DRIVER_REQUESTS`).
    driver_requests: u64,
    /// Merge sources the driver proposed a commit or rollback for, with the tick it did.
    merge_proposed: HashMap<u64, u64>,
    logger: Logger,
}

/// Ticks between the removal of a peer and the deletion of its user data: a read whose barrier
/// passed before the removal may still be reading it (reads take at most a request's
/// deadline, far less than this).
pub const GARBAGE_TICKS: u64 = 600;

/// Uninitialized peers a store hosts at most: each costs a RocksDB write and a ticked RawNode,
/// and only a leader that PD vouches for can create one.
const MAX_UNINIT: usize = 256;
/// Regions asked about at once (see [`StoreOutput::confirm`]).
const MAX_ASKED: usize = 64;
/// Ticks without a message from a leader after which a hosted region is asked about (and
/// again as often): a learner never campaigns, so one removed without hearing so still names
/// its old leader.
const LEADERLESS_ASK_TICKS: u64 = 40;
/// Ticks before a region is asked about again.
const ASK_AGAIN_TICKS: u64 = 10;
/// Ticks a confirmation waits for its leader's next message before it is forgotten.
const CONFIRMED_TICKS: u64 = 100;
/// Snapshots a store installs at once (each on a thread of its own, see
/// [`StoreCore::advance`]); more are dropped before they are stepped, and sent again later.
const MAX_INSTALLS: usize = 4;

impl StoreCore {
    /// Opens every region with state in `engine` (a PD-mode store's database) and logs as
    /// `logger` (which should name the store). `cfg` is the
    /// template of each region's core (its replica id is set per region).
    pub fn open(
        engine: Engine,
        store_id: u64,
        cfg: CoreConfig,
        dedup_window: u64,
        logger: &Logger,
    ) -> Result<StoreCore, CoreError> {
        let mut store = StoreCore {
            store_id,
            engine,
            cfg,
            dedup_window,
            regions: BTreeMap::new(),
            appends: AppendBatch::default(),
            reads: HashMap::new(),
            dropped: 0,
            refused: 0,
            pending_asks: Vec::new(),
            pending_snapshots: BTreeMap::new(),
            confirmed: HashMap::new(),
            asked: HashMap::new(),
            ticks: 0,
            hashes: StoreHashes::default(),
            garbage: Vec::new(),
            stale: Vec::new(),
            driver_requests: 0,
            merge_proposed: HashMap::new(),
            // The caller's logger names the store already.
            logger: logger.clone(),
        };
        for id in store.engine.region_ids().map_err(CoreError::storage)? {
            let view = store.engine.region(id).map_err(CoreError::storage)?;
            if view.region_meta().map_err(CoreError::storage)?.is_some() {
                store.start_region(id)?;
                continue;
            }
            // Uninitialized. One that recorded a term or a vote starts again as it was: it
            // must not vote twice in a term. One that did not is dropped; its leader's next
            // message makes it again.
            let hs = view.hard_state().map_err(CoreError::storage)?;
            let peer = view.uninit_peer().map_err(CoreError::storage)?;
            match (peer, hs) {
                (Some(peer_id), Some(hs)) if hs.term > 0 || hs.vote > 0 => {
                    let logger = store.start_peer(view, id, peer_id)?;
                    info!(logger, "uninitialized region started again"; "term" => hs.term,
                        "vote" => hs.vote);
                }
                _ => store
                    .engine
                    .destroy_uninit_region(id)
                    .map_err(CoreError::storage)?,
            }
        }
        // Removed peers' data left by the last run: no read can be running on it now.
        for g in store.engine.garbage().map_err(CoreError::storage)? {
            store.collect(&g)?;
        }
        Ok(store)
    }

    /// Creates `region` on this store (the bootstrap of region 1, or a peer PD placed here)
    /// and starts its peer.
    pub fn create_region(&mut self, region: &Region) -> Result<(), CoreError> {
        self.engine
            .create_region(region)
            .map_err(CoreError::storage)?;
        self.start_region(region.id)
    }

    fn start_region(&mut self, id: u64) -> Result<(), CoreError> {
        let view = self.engine.region(id).map_err(CoreError::storage)?;
        let meta = view
            .region_meta()
            .map_err(CoreError::storage)?
            .ok_or_else(|| {
                CoreError::storage(rdb_storage::Error::Corrupt(format!("region {id}")))
            })?;
        let peer_id = meta
            .peers
            .iter()
            .find(|p| p.store_id == self.store_id)
            .map(|p| p.id)
            .ok_or_else(|| {
                CoreError::storage(rdb_storage::Error::Corrupt(format!(
                    "region {id} has no peer on store {}",
                    self.store_id
                )))
            })?;
        let logger = self.start_peer(view, id, peer_id)?;
        info!(logger, "region started"; "start" => ?meta.start_key, "end" => ?meta.end_key,
            "version" => region::epoch(&meta).version);
        Ok(())
    }

    /// Opens the Raft storage and state machine of region `id`'s view as peer `peer_id` and
    /// adds the peer; returns its logger.
    fn start_peer(&mut self, view: Engine, id: u64, peer_id: u64) -> Result<Logger, CoreError> {
        let logger = self.logger.new(o!("region" => id, "peer" => peer_id));
        let mut storage =
            RaftStorage::open(view.clone(), logger.clone()).map_err(CoreError::storage)?;
        storage.defer_appends(self.appends.clone());
        storage.install_in_background();
        let sm = StateMachine::new(view.clone(), self.dedup_window).map_err(CoreError::storage)?;
        let results = sm.hashes();
        let mut cfg = self.cfg.clone();
        cfg.replica.id = peer_id;
        let core = Core::new(&cfg, storage, sm, &logger)?;
        self.regions.insert(
            id,
            RegionPeer {
                core,
                peer_id,
                heard: HashMap::new(),
                leaderless: 0,
            },
        );
        self.hashes.insert(
            id,
            RegionHashes {
                results,
                engine: view,
            },
        );
        Ok(logger)
    }

    /// Starts an uninitialized peer `peer_id` of region `id`, which a message from its leader
    /// named (see [`StoreCore::step`]).
    fn start_uninit(&mut self, id: u64, peer_id: u64) -> Result<(), CoreError> {
        let view = self
            .engine
            .create_uninit_region(id, peer_id)
            .map_err(CoreError::storage)?;
        let logger = self.start_peer(view, id, peer_id)?;
        info!(
            logger,
            "uninitialized region created for its leader's message"
        );
        Ok(())
    }

    /// This store's id.
    pub fn store_id(&self) -> u64 {
        self.store_id
    }

    /// Every hosted region's hash results, kept up to date as peers start and go: for the
    /// service that answers `Hash`.
    pub fn hashes(&self) -> StoreHashes {
        self.hashes.clone()
    }

    /// The store's database (every region's view shares it).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Ids of the regions hosted here, in order.
    pub fn region_ids(&self) -> Vec<u64> {
        self.regions.keys().copied().collect()
    }

    /// Where each hosted region's log ends (0 for an uninitialized one), for the durable-index
    /// check at start (see `Engine::check_region_durable_indexes`).
    pub fn log_ends(&self) -> BTreeMap<u64, u64> {
        self.regions
            .iter()
            .map(|(&id, r)| (id, r.core.replica().log_bounds().1))
            .collect()
    }

    /// A region's meta as applied here.
    pub fn region(&self, id: u64) -> Option<&Region> {
        self.regions.get(&id)?.core.replica().app().region()
    }

    /// A region's core, for status.
    pub fn core(&self, id: u64) -> Option<&RegionCore> {
        Some(&self.regions.get(&id)?.core)
    }

    /// The region hosted here whose range holds `key`.
    pub fn region_for_key(&self, key: &[u8]) -> Option<&Region> {
        self.regions
            .values()
            .filter_map(|r| r.core.replica().app().region())
            .find(|m| region::contains(m, key))
    }

    /// Whether region `id` is installing a snapshot in the background (see
    /// [`StoreCore::advance`]): it serves nothing until the install is over.
    pub fn is_installing(&self, id: u64) -> bool {
        self.regions
            .get(&id)
            .is_some_and(|r| r.core.replica().is_installing())
    }

    /// Messages dropped because their region is not hosted here (or cannot take them now).
    pub fn dropped_messages(&self) -> u64 {
        self.dropped
    }

    /// Messages a region refused before raft-rs saw them: no legitimate peer sends them.
    pub fn refused_messages(&self) -> u64 {
        self.refused
    }

    /// Advances every region's clock by one tick.
    pub fn tick(&mut self) {
        self.ticks += 1;
        let ticks = self.ticks;
        self.confirmed
            .retain(|_, &mut (_, at)| ticks.saturating_sub(at) < CONFIRMED_TICKS);
        let mut leaderless = Vec::new();
        for (&id, r) in self.regions.iter_mut() {
            r.core.tick();
            if r.core.replica().is_leader() {
                r.leaderless = 0;
            } else {
                r.leaderless += 1;
                if r.leaderless % LEADERLESS_ASK_TICKS == 0 {
                    leaderless.push(id);
                }
            }
        }
        // A peer with no leader for long may have been removed without hearing so: PD knows.
        let mut asks = std::mem::take(&mut self.pending_asks);
        for id in leaderless {
            self.ask(id, &mut asks);
        }
        self.pending_asks = asks;
        self.drive_merges();
    }

    /// Checks that a request for `keys` may go to region `id` at `epoch`.
    pub fn check(&self, id: u64, epoch: &RegionEpoch, keys: &[&[u8]]) -> Result<(), RegionError> {
        let meta = self.region(id).ok_or(RegionError::NotFound(id))?;
        if region::epoch(meta) != *epoch {
            let mut current = vec![meta.clone()];
            // After a split, the other half starts where this one now ends.
            if !meta.end_key.is_empty() {
                if let Some(next) = self.region_for_key(&meta.end_key) {
                    current.push(next.clone());
                }
            }
            return Err(RegionError::EpochNotMatch { current });
        }
        if let Some(k) = keys.iter().find(|k| !region::contains(meta, k)) {
            return Err(RegionError::KeyNotInRegion {
                key: k.to_vec(),
                region: Box::new(meta.clone()),
            });
        }
        if let Some(target) = self.merging_into(id) {
            return Err(RegionError::Merging { region: id, target });
        }
        Ok(())
    }

    /// Proposes an encoded command for request `id` to region `region_id`, once [`Self::check`]
    /// passes for its keys; the answer comes in a later [`StoreOutput`].
    pub fn propose(
        &mut self,
        region_id: u64,
        epoch: &RegionEpoch,
        keys: &[&[u8]],
        id: RequestId,
        data: Vec<u8>,
    ) -> Result<(), RegionError> {
        self.check(region_id, epoch, keys)?;
        if let Some(r) = self.regions.get_mut(&region_id) {
            r.core.propose(id, data);
        }
        Ok(())
    }

    /// Asks region `region_id` for a linearizable read barrier for request `id`.
    ///
    /// The barrier completes once this peer applied up to the leader's read index, and that
    /// may apply a split that moves `keys` to another region, whose writes this store may not
    /// have applied yet. So the keys and epoch are checked again when it completes: a read
    /// whose region changed is refused (in [`StoreOutput::refused_reads`]) and the client
    /// retries at the right region.
    pub fn read(
        &mut self,
        region_id: u64,
        epoch: &RegionEpoch,
        keys: &[&[u8]],
        id: RequestId,
    ) -> Result<(), RegionError> {
        self.check(region_id, epoch, keys)?;
        if let Some(r) = self.regions.get_mut(&region_id) {
            r.core.read(id);
            let keys = keys.iter().map(|k| k.to_vec()).collect();
            self.reads.insert(id, (region_id, *epoch, keys));
        }
        Ok(())
    }

    /// Proposes splitting region `region_id` at `split_key` into a new region with the given
    /// ids (one peer id per peer of the region, in its order), as request `id`.
    pub fn propose_split(
        &mut self,
        region_id: u64,
        split_key: &[u8],
        new_region_id: u64,
        new_peer_ids: &[u64],
        id: RequestId,
    ) -> Result<(), RegionError> {
        let meta = self
            .region(region_id)
            .ok_or(RegionError::NotFound(region_id))?;
        let cmd = rdb_proto::command::Command {
            op: Some(rdb_proto::command::command::Op::Split(
                rdb_proto::command::Split {
                    split_key: split_key.to_vec(),
                    new_region_id,
                    new_peer_ids: new_peer_ids.to_vec(),
                    version: region::epoch(meta).version,
                },
            )),
            ..Default::default()
        };
        let epoch = region::epoch(meta);
        self.propose(
            region_id,
            &epoch,
            &[split_key],
            id,
            prost::Message::encode_to_vec(&cmd),
        )
    }

    /// The transport finished (or failed) sending region `region_id`'s snapshot to peer `to`.
    pub fn report_snapshot(&mut self, region_id: u64, to: u64, ok: bool) {
        if let Some(r) = self.regions.get_mut(&region_id) {
            r.core.report_snapshot(to, ok);
        }
    }

    /// The transport cannot reach store `store`: every region's peer there is unreachable.
    pub fn report_unreachable_store(&mut self, store: u64) {
        for r in self.regions.values_mut() {
            let peers: Vec<u64> = r
                .core
                .replica()
                .app()
                .region()
                .map(|m| {
                    m.peers
                        .iter()
                        .filter(|p| p.store_id == store)
                        .map(|p| p.id)
                        .collect()
                })
                .unwrap_or_default();
            for p in peers {
                r.core.report_unreachable(p);
            }
        }
    }

    /// A region's view of the database (for chores off the Raft thread, as compacting its
    /// log files).
    pub fn region_engine(&self, region_id: u64) -> Option<Engine> {
        Some(
            self.regions
                .get(&region_id)?
                .core
                .replica()
                .store()
                .engine()
                .clone(),
        )
    }

    /// The store id of a region's peer, if the region is hosted here and has that peer.
    pub fn store_of(&self, region_id: u64, peer_id: u64) -> Option<u64> {
        self.region(region_id)?
            .peers
            .iter()
            .find(|p| p.id == peer_id)
            .map(|p| p.store_id)
    }

    /// The peer leading a region, as known here.
    pub fn leader_of(&self, region_id: u64) -> Option<Peer> {
        let r = self.regions.get(&region_id)?;
        let leader = r.core.replica().leader_id();
        let store_id = self.store_of(region_id, leader)?;
        Some(Peer {
            id: leader,
            store_id,
            learner: false,
        })
    }
}

/// Whether two regions' ranges overlap (an empty end is unbounded).
fn overlaps(a: &Region, b: &Region) -> bool {
    let before_end = |k: &[u8], end: &[u8]| end.is_empty() || k < end;
    before_end(&a.start_key, &b.end_key) && before_end(&b.start_key, &a.end_key)
}

pub mod hashes;
mod inbound;
mod outbox;
use outbox::outbox;
mod members;
pub mod merge;
pub mod serve;
mod turn;

#[cfg(test)]
mod tests;
