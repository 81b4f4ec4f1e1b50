//! Three stores in one process over real RocksDB directories, with messages passed by hand
//! (`Stores`): regions elect, serve, split under writes, route and refuse by epoch and range,
//! install snapshots, change members and merge, and a restarted store catches up on every
//! region. The harness and the helpers several topics share are here; the tests are in
//! `tests/`, one file per topic.

use prost::Message as _;
use rdb_proto::command::{command::Op, Command, Put};
use rdb_storage::region::{Peer, Region, RegionEpoch};
use rdb_storage::{CommandResult, Engine};

use super::*;
use crate::config::Settings;
use crate::raft_core::Answer;

/// Rounds a condition may take; one round is one tick, one delivery of every message and one
/// turn of every store, so this is about 50 election timeouts.
const ROUNDS: usize = 500;

struct Stores {
    dirs: Vec<tempfile::TempDir>,
    stores: Vec<Option<StoreCore>>,
    inflight: Vec<RegionMessage>,
    replies: Vec<RegionReply>,
    refused_reads: Vec<(RequestId, RegionError)>,
    /// Messages dropped on delivery: (region, to store).
    cut: Vec<(u64, u64)>,
    /// Snapshots kept back on delivery, (region, to store): their file reaches the receiver's
    /// folder and the sender hears they arrived, but the message waits in `held`.
    hold: Vec<(u64, u64)>,
    held: Vec<RegionMessage>,
    /// Whether rounds advance the clock (off: only messages move things).
    ticking: bool,
    next_request: u64,
    /// Turns in which one sync covered several regions' writes.
    shared_syncs: usize,
}

fn logger() -> Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

fn open(dir: &std::path::Path, store_id: u64) -> StoreCore {
    open_with(dir, store_id, &Settings::default())
}

fn open_with(dir: &std::path::Path, store_id: u64, settings: &Settings) -> StoreCore {
    let engine = Engine::open(dir).expect("open");
    let cfg = crate::node::core_config(0, settings);
    StoreCore::open(engine, store_id, cfg, settings.dedup_window, &logger()).expect("store")
}

/// Reopens a store's directory, waiting for background threads (a snapshot being built) to let
/// go of the database.
fn reopen(dir: &std::path::Path, store_id: u64, settings: &Settings) -> StoreCore {
    for _ in 0..200 {
        if let Ok(engine) = Engine::open(dir) {
            let cfg = crate::node::core_config(0, settings);
            return StoreCore::open(engine, store_id, cfg, settings.dedup_window, &logger())
                .expect("store");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("store {store_id}'s database stayed locked");
}

fn region_one() -> Region {
    Region {
        id: 1,
        start_key: Vec::new(),
        end_key: Vec::new(),
        epoch: Some(RegionEpoch {
            version: 1,
            conf_ver: 1,
        }),
        peers: (1..=3)
            .map(|s| Peer {
                id: 10 + s,
                store_id: s,
                learner: false,
            })
            .collect(),
    }
}

fn put_cmd(client: u64, seq: u64, k: &str, v: &str) -> Vec<u8> {
    Command {
        client_id: client,
        seq,
        stamp: 0,
        op: Some(Op::Put(Put {
            key: k.into(),
            value: v.into(),
        })),
    }
    .encode_to_vec()
}

impl Stores {
    fn new() -> Stores {
        Self::with_settings(&Settings::default())
    }

    fn with_settings(settings: &Settings) -> Stores {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("dir")).collect();
        let mut stores = Vec::new();
        for (i, d) in dirs.iter().enumerate() {
            let mut s = open_with(d.path(), i as u64 + 1, settings);
            s.create_region(&region_one()).expect("bootstrap");
            stores.push(Some(s));
        }
        Stores {
            dirs,
            stores,
            inflight: Vec::new(),
            replies: Vec::new(),
            refused_reads: Vec::new(),
            cut: Vec::new(),
            hold: Vec::new(),
            held: Vec::new(),
            ticking: true,
            next_request: 1,
            shared_syncs: 0,
        }
    }

    fn store(&mut self, id: u64) -> &mut StoreCore {
        self.stores[id as usize - 1].as_mut().expect("store is up")
    }

    /// One round: deliver what is in flight, tick, and run a turn on every live store.
    fn round(&mut self) {
        let mut reports = Vec::new();
        for m in std::mem::take(&mut self.inflight) {
            let snapshot = m.msg.get_msg_type() == raft::prelude::MessageType::MsgSnapshot;
            if self.cut.contains(&(m.region_id, m.to_store)) {
                if snapshot {
                    reports.push((m.from_store, m.region_id, m.msg.to, false));
                }
                continue;
            }
            if snapshot {
                // What the transport and the peer service do: the file goes to the receiver's
                // folder for the region first, and the sender always hears how it went (raft
                // sends that follower nothing else until it does).
                let copied = self.copy_snapshot(&m);
                reports.push((m.from_store, m.region_id, m.msg.to, copied));
                if !copied {
                    continue;
                }
                if self.hold.contains(&(m.region_id, m.to_store)) {
                    self.held.push(m);
                    continue;
                }
            }
            if let Some(s) = self.stores[m.to_store as usize - 1].as_mut() {
                s.step(m).expect("step");
            }
        }
        for (store, region, to, ok) in reports {
            if let Some(s) = self.stores[store as usize - 1].as_mut() {
                s.report_snapshot(region, to, ok);
            }
        }
        let mut asked = Vec::new();
        for s in self.stores.iter_mut().flatten() {
            if self.ticking {
                s.tick();
            }
            let out = s.advance().expect("advance");
            if out.regions_synced > 1 {
                self.shared_syncs += 1;
            }
            self.inflight.extend(out.messages);
            self.replies.extend(out.replies);
            self.refused_reads.extend(out.refused_reads);
            asked.extend(out.confirm.into_iter().map(|r| (s.store_id(), r)));
        }
        for (store, region) in asked {
            self.answer_as_pd(store, region);
        }
    }

    /// What PD does for a store that asks about a region a leader named: it answers with the
    /// region as its leader reported it (here: as any store that has it initialized has it).
    fn answer_as_pd(&mut self, store: u64, region: u64) {
        let known = self
            .stores
            .iter()
            .flatten()
            .filter_map(|s| s.region(region))
            .max_by_key(|r| {
                let e = rdb_storage::region::epoch(r);
                (e.version, e.conf_ver)
            })
            .cloned();
        if let (Some(r), Some(s)) = (known, self.stores[store as usize - 1].as_mut()) {
            s.confirm_region(&r);
        }
    }

    /// Copies the file of a snapshot message from the sender's folder to the receiver's;
    /// false if either store is down or the file is gone.
    fn copy_snapshot(&self, m: &RegionMessage) -> bool {
        let (Some(from), Some(to)) = (
            self.stores[m.from_store as usize - 1].as_ref(),
            self.stores[m.to_store as usize - 1].as_ref(),
        ) else {
            return false;
        };
        let Ok(desc) =
            rdb_storage::snapshot::SnapshotDescriptor::decode(&m.msg.get_snapshot().data)
        else {
            return false;
        };
        let src = crate::transport::region_snap_dir(&from.engine().snap_dir(), m.region_id);
        let dst = crate::transport::region_snap_dir(&to.engine().snap_dir(), m.region_id);
        std::fs::create_dir_all(&dst).is_ok()
            && std::fs::copy(desc.path_in(&src), desc.path_in(&dst)).is_ok()
    }

    /// Runs rounds until `done`. Gives up after `ROUNDS` rounds and 10 s, whichever is later:
    /// snapshots are built on threads of their own, which a loaded machine runs late, so past
    /// `ROUNDS` the rounds go on a millisecond apart to let them.
    fn until(&mut self, what: &str, mut done: impl FnMut(&mut Stores) -> bool) {
        let started = std::time::Instant::now();
        let mut rounds = 0;
        while !done(self) {
            let late = rounds >= ROUNDS;
            assert!(
                !late || started.elapsed() < std::time::Duration::from_secs(10),
                "not within {ROUNDS} rounds and 10 s: {what}\n{}",
                self.dump()
            );
            self.round();
            rounds += 1;
            if late {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }

    /// The store leading region `id`, once one does.
    fn leader(&mut self, id: u64) -> u64 {
        let mut found = 0;
        self.until(&format!("region {id} has a leader"), |st| {
            found = st
                .stores
                .iter()
                .flatten()
                .find(|s| s.core(id).is_some_and(|c| c.replica().is_leader()))
                .map_or(0, |s| s.store_id());
            found != 0
        });
        found
    }

    fn epoch(&mut self, store: u64, region: u64) -> RegionEpoch {
        rdb_storage::region::epoch(self.store(store).region(region).expect("region"))
    }

    /// Proposes a put to region `id` through its leader and waits for the answer.
    fn put(&mut self, id: u64, client: u64, seq: u64, k: &str, v: &str) -> CommandResult {
        let leader = self.leader(id);
        let epoch = self.epoch(leader, id);
        let req = self.next_request;
        self.next_request += 1;
        self.store(leader)
            .propose(id, &epoch, &[k.as_bytes()], req, put_cmd(client, seq, k, v))
            .expect("routed");
        self.answer(req)
    }

    fn answer(&mut self, req: u64) -> CommandResult {
        let mut got = None;
        self.until(&format!("request {req} answered"), |st| {
            if let Some(i) = st.replies.iter().position(|r| r.1 == req) {
                got = Some(st.replies.remove(i).2);
            }
            got.is_some()
        });
        match got {
            Some(Ok(Answer::Written(r))) => r,
            other => panic!("request {req}: {other:?}"),
        }
    }

    /// Every live store's user data, once all of them applied the same index in every
    /// region they host.
    /// Every store's regions: id, range and version (or uninitialized), role, applied/commit.
    fn dump(&self) -> String {
        let mut out = String::new();
        for s in self.stores.iter().flatten() {
            for id in s.region_ids() {
                let c = s.core(id).expect("core");
                let r = c.replica();
                let meta = s.region(id).map_or("uninitialized".to_string(), |m| {
                    format!(
                        "[{:?}, {:?}) v{}",
                        String::from_utf8_lossy(&m.start_key),
                        String::from_utf8_lossy(&m.end_key),
                        rdb_storage::region::epoch(m).version
                    )
                });
                out.push_str(&format!(
                    "store {} region {id}: {meta} peer {} {:?} term {} leader {} applied {} commit {} log {:?}\n",
                    s.store_id(),
                    r.id(),
                    r.role(),
                    r.term(),
                    r.leader_id(),
                    r.applied_index(),
                    r.commit_index(),
                    r.log_bounds()
                ));
            }
        }
        out
    }

    fn converged(&mut self) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let started = std::time::Instant::now();
        let mut rounds = 0;
        while !self.all_applied() {
            let late = rounds >= ROUNDS * 4;
            assert!(
                !late || started.elapsed() < std::time::Duration::from_secs(30),
                "the stores did not converge:\n{}",
                self.dump()
            );
            self.round();
            rounds += 1;
            if late {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        self.stores
            .iter()
            .flatten()
            .map(|s| {
                s.engine()
                    .scan(b"", b"", usize::MAX, usize::MAX)
                    .expect("scan")
                    .kvs
            })
            .collect()
    }

    fn all_applied(&mut self) -> bool {
        let done = |st: &mut Stores| {
            let ids: Vec<u64> = st
                .stores
                .iter()
                .flatten()
                .flat_map(|s| s.region_ids())
                .collect();
            ids.iter().all(|&id| {
                let applied: Vec<u64> = st
                    .stores
                    .iter()
                    .flatten()
                    .filter_map(|s| s.core(id).map(|c| c.replica().applied_index()))
                    .collect();
                let commit = st
                    .stores
                    .iter()
                    .flatten()
                    .filter_map(|s| s.core(id).map(|c| c.replica().commit_index()))
                    .max()
                    .unwrap_or(0);
                applied.len() == st.stores.iter().flatten().count()
                    && applied.iter().all(|&a| a == commit)
            })
        };
        done(self)
    }
}

/// Splits region `parent` at `key` into `new` (with peer ids `new * 10 + store`) through its
/// leader, and waits for the answer.
fn split(st: &mut Stores, parent: u64, key: &str, new: u64) {
    let leader = st.leader(parent);
    let req = st.next_request;
    st.next_request += 1;
    let peers: Vec<u64> = (1..=3).map(|s| new * 10 + s).collect();
    st.store(leader)
        .propose_split(parent, key.as_bytes(), new, &peers, req)
        .expect("split");
    assert_eq!(st.answer(req), CommandResult::Split { new_region: new });
}

/// Settings for [`snapshot::installing_region_one`] and a merge's tests: a short log, so
/// region 1 compacts quickly.
fn short_log() -> Settings {
    Settings {
        snapshot_threshold: 8,
        catch_up_entries: 1,
        ..Settings::default()
    }
}

/// A leader's message from the network for region `region`, to this store's peer `to`.
fn leader_message(region: u64, ty: raft::prelude::MessageType, to: u64) -> RegionMessage {
    let mut m = raft::prelude::Message::default();
    m.set_msg_type(ty);
    m.from = to + 1_000;
    m.to = to;
    m.term = 6;
    RegionMessage {
        region_id: region,
        from_store: 2,
        to_store: 3,
        epoch: RegionEpoch::default(),
        msg: m,
    }
}

mod durability;
mod members;
mod merge;
mod snapshot;
mod split;
mod uninitialized;
