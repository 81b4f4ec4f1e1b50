//! Three stores in one process over real RocksDB directories, with messages passed by hand:
//! regions elect, serve, split under writes, route and refuse by epoch and range, and a
//! restarted store catches up on every region.

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

#[test]
fn regions_split_under_writes_route_by_epoch_and_range_and_replicas_stay_identical() {
    let mut st = Stores::new();
    for i in 0..20 {
        let k = format!("k{i:02}");
        assert_eq!(st.put(1, 9, i + 1, &k, "v1"), CommandResult::Put);
    }
    let leader = st.leader(1);
    let old_epoch = st.epoch(leader, 1);
    // A split proposed beside writes to both future halves, in the same turn.
    let (split_req, w1, w2) = (st.next_request, st.next_request + 1, st.next_request + 2);
    st.next_request += 3;
    let s = st.store(leader);
    s.propose_split(1, b"k10", 2, &[21, 22, 23], split_req)
        .expect("split proposed");
    s.propose(1, &old_epoch, &[b"k03"], w1, put_cmd(9, 100, "k03", "v2"))
        .expect("routed");
    s.propose(1, &old_epoch, &[b"k13"], w2, put_cmd(9, 101, "k13", "v2"))
        .expect("routed");
    assert_eq!(st.answer(split_req), CommandResult::Split { new_region: 2 });
    assert_eq!(st.answer(w1), CommandResult::Put);
    // Proposed before the split and ordered after it in the log: refused at apply, on every
    // replica alike, so it never lands in the wrong region.
    let refused = loop {
        if let Some(i) = st.replies.iter().position(|r| r.1 == w2) {
            break st.replies.remove(i).2;
        }
        st.round();
    };
    assert!(
        matches!(&refused, Err(Refusal::Rejected(m)) if m.contains("key not in region")),
        "{refused:?}"
    );

    // Every store hosts both halves, and region 2 elects.
    st.until("every store hosts region 2", |st| {
        st.stores.iter().flatten().all(|s| s.region(2).is_some())
    });
    let l2 = st.leader(2);
    let left = st.store(leader).region(1).expect("left").clone();
    let right = st.store(l2).region(2).expect("right").clone();
    assert_eq!(
        (&left.start_key[..], &left.end_key[..]),
        (&b""[..], &b"k10"[..])
    );
    assert_eq!(
        (&right.start_key[..], &right.end_key[..]),
        (&b"k10"[..], &b""[..])
    );

    // Routing: the old epoch, a key of the other half, a region this store lacks.
    let s = st.store(leader);
    match s.propose(1, &old_epoch, &[b"k01"], 999, put_cmd(0, 0, "k01", "x")) {
        Err(RegionError::EpochNotMatch { current }) => {
            let ids: Vec<u64> = current.iter().map(|r| r.id).collect();
            assert_eq!(ids, vec![1, 2], "both halves come back");
        }
        other => panic!("stale epoch accepted: {other:?}"),
    }
    let new_epoch = rdb_storage::region::epoch(&left);
    assert!(matches!(
        s.propose(1, &new_epoch, &[b"k15"], 999, put_cmd(0, 0, "k15", "x")),
        Err(RegionError::KeyNotInRegion { .. })
    ));
    assert_eq!(s.check(7, &new_epoch, &[]), Err(RegionError::NotFound(7)));

    // Both halves take writes. A retry in region 2 of a write region 1 applied before the
    // split is answered from the record the split copied, and writes nothing.
    assert_eq!(st.put(2, 9, 200, "k15", "v3"), CommandResult::Put);
    assert_eq!(st.put(2, 9, 201, "k12", "v3"), CommandResult::Put);
    assert_eq!(st.put(2, 9, 13, "k12", "v1"), CommandResult::Put);
    assert_eq!(st.put(1, 9, 202, "k01", "v3"), CommandResult::Put);

    let data = st.converged();
    assert!(data.windows(2).all(|w| w[0] == w[1]), "replicas differ");
    let get = |k: &str| {
        data[0]
            .iter()
            .find(|(key, _)| key == k.as_bytes())
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(get("k12").as_deref(), Some("v3"), "the retry wrote again");
    assert_eq!(get("k03").as_deref(), Some("v2"));
    assert_eq!(
        get("k13").as_deref(),
        Some("v1"),
        "the refused write landed"
    );
    assert_eq!(get("k15").as_deref(), Some("v3"));
    assert_eq!(data[0].len(), 20, "k00..k19, nothing else");
}

#[test]
fn a_restarted_store_reopens_every_region_and_catches_up() {
    let mut st = Stores::new();
    assert_eq!(st.put(1, 1, 1, "a", "1"), CommandResult::Put);
    let leader = st.leader(1);
    let req = st.next_request;
    st.next_request += 1;
    st.store(leader)
        .propose_split(1, b"m", 2, &[21, 22, 23], req)
        .expect("split");
    assert_eq!(st.answer(req), CommandResult::Split { new_region: 2 });
    st.until("every store hosts region 2", |st| {
        st.stores.iter().flatten().all(|s| s.region(2).is_some())
    });
    // Take down a store that leads neither region, write to both, bring it back.
    let l2 = st.leader(2);
    let down = (1..=3)
        .find(|&s| s != leader && s != l2)
        .expect("a follower store");
    st.stores[down as usize - 1] = None;
    for i in 0..30 {
        let k = format!("{}{i:02}", if i % 2 == 0 { "b" } else { "x" });
        let region = if i % 2 == 0 { 1 } else { 2 };
        assert_eq!(st.put(region, 1, 10 + i, &k, "w"), CommandResult::Put);
    }
    let dir = st.dirs[down as usize - 1].path().to_path_buf();
    st.stores[down as usize - 1] = Some(open(&dir, down));
    assert_eq!(st.store(down).region_ids(), vec![1, 2]);
    let data = st.converged();
    assert!(data.windows(2).all(|w| w[0] == w[1]), "replicas differ");
    assert_eq!(data[0].len(), 31);
}

#[test]
fn one_fsync_makes_every_region_s_writes_of_a_turn_durable() {
    let mut st = Stores::new();
    let leader = st.leader(1);
    let req = st.next_request;
    st.next_request += 1;
    st.store(leader)
        .propose_split(1, b"m", 2, &[21, 22, 23], req)
        .expect("split");
    assert_eq!(st.answer(req), CommandResult::Split { new_region: 2 });
    st.leader(2);
    st.shared_syncs = 0;
    // Writes to both regions in the same turns: wherever the leaders are, followers append
    // both regions' entries in one turn and sync once for them.
    for i in 0..10u64 {
        let (r1, r2) = (st.next_request, st.next_request + 1);
        st.next_request += 2;
        let (l1, l2) = (st.leader(1), st.leader(2));
        let (e1, e2) = (st.epoch(l1, 1), st.epoch(l2, 2));
        st.store(l1)
            .propose(1, &e1, &[b"a"], r1, put_cmd(3, 2 * i + 1, "a", "1"))
            .expect("routed");
        st.store(l2)
            .propose(2, &e2, &[b"z"], r2, put_cmd(3, 2 * i + 2, "z", "2"))
            .expect("routed");
        st.answer(r1);
        st.answer(r2);
    }
    assert!(
        st.shared_syncs >= 10,
        "only {} turns synced several regions at once",
        st.shared_syncs
    );
}

#[test]
fn a_read_whose_keys_a_split_moved_while_it_waited_is_refused_not_served_stale() {
    let mut st = Stores::new();
    assert_eq!(st.put(1, 1, 1, "x", "old"), CommandResult::Put);
    let leader = st.leader(1);
    let lagging = (1..=3).find(|&s| s != leader).expect("a follower store");
    st.converged();
    // The lagging store hears nothing while region 1 splits and region 2 overwrites "x".
    st.cut = (1..=2).map(|r| (r, lagging)).collect();
    let req = st.next_request;
    st.next_request += 1;
    st.store(leader)
        .propose_split(1, b"m", 2, &[21, 22, 23], req)
        .expect("split");
    assert_eq!(st.answer(req), CommandResult::Split { new_region: 2 });
    assert_eq!(st.put(2, 1, 2, "x", "new"), CommandResult::Put);
    // Region 1 reaches it again, region 2 still does not. It still has the old epoch, so a
    // read of "x" is routed to region 1 there and passes the first check.
    st.cut = vec![(2, lagging)];
    let old_epoch = st.epoch(lagging, 1);
    // No clock from here: the barrier is answered and the lagging store catches up through
    // messages alone, so no read round times out and no election starts.
    st.ticking = false;
    let read = st.next_request;
    st.next_request += 1;
    st.store(lagging)
        .read(1, &old_epoch, &[b"x"], read)
        .expect("routed to region 1 at its old epoch");
    st.until("the read's barrier completes", |st| {
        st.refused_reads.iter().any(|(id, _)| *id == read) || st.replies.iter().any(|r| r.1 == read)
    });
    // Its data for "x" is stale: answering the read would have returned "old".
    assert_eq!(
        st.store(lagging).engine().get(b"x").expect("get"),
        Some(b"old".to_vec())
    );
    if let Some(r) = st.replies.iter().find(|r| r.1 == read) {
        panic!("the read was answered from a region that no longer holds its key: {r:?}");
    }
    match st.refused_reads.iter().find(|(id, _)| *id == read) {
        Some((_, RegionError::EpochNotMatch { current })) => {
            assert_eq!(&current[0].end_key[..], b"m")
        }
        other => panic!("expected EpochNotMatch, got {other:?}"),
    }
}

#[test]
fn a_store_that_got_the_parent_by_snapshot_gets_the_split_region_from_its_leader() {
    // A short log: the parent compacts past its split while one store is away, so that store
    // gets the parent by snapshot and never applies the split itself.
    let settings = Settings {
        snapshot_threshold: 4,
        catch_up_entries: 1,
        ..Settings::default()
    };
    let mut st = Stores::with_settings(&settings);
    let leader = st.leader(1);
    let away = (1..=3).find(|&s| s != leader).expect("a follower store");
    st.cut = (1..=2).map(|r| (r, away)).collect();
    let req = st.next_request;
    st.next_request += 1;
    st.store(leader)
        .propose_split(1, b"m", 2, &[21, 22, 23], req)
        .expect("split");
    assert_eq!(st.answer(req), CommandResult::Split { new_region: 2 });
    // Write to both halves until every store that took part compacted region 1 past the
    // split (the leader keeps the log for a follower it heard lately, so it takes a while).
    let compacted = |st: &mut Stores| {
        (1..=3u64).filter(|&s| s != away).all(|s| {
            st.store(s)
                .core(1)
                .is_some_and(|c| c.replica().log_bounds().0 > 8)
        })
    };
    let mut written = 0u64;
    while written < 12 || !compacted(&mut st) {
        assert!(written < 200, "region 1 never compacted:\n{}", st.dump());
        let (region, k) = if written.is_multiple_of(2) {
            (1, format!("a{written}"))
        } else {
            (2, format!("x{written}"))
        };
        assert_eq!(st.put(region, 5, written + 1, &k, "v"), CommandResult::Put);
        written += 1;
    }
    assert!(st.store(away).region(2).is_none());
    st.cut.clear();
    st.until(
        "the store that was away hosts region 2, initialized",
        |st| st.store(away).region(2).is_some(),
    );
    let data = st.converged();
    assert!(data.windows(2).all(|w| w[0] == w[1]), "replicas differ");
    assert_eq!(data[0].len(), written as usize);
    let meta = st.store(away).region(2).expect("region 2").clone();
    assert_eq!(&meta.start_key[..], b"m");
    assert_eq!(
        &st.store(away).region(1).expect("region 1").end_key[..],
        b"m"
    );
    // It restarts with both.
    let dir = st.dirs[away as usize - 1].path().to_path_buf();
    st.stores[away as usize - 1] = None;
    st.stores[away as usize - 1] = Some(open_with(&dir, away, &settings));
    assert_eq!(st.store(away).region_ids(), vec![1, 2]);
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

#[test]
fn two_overlapping_snapshots_stepped_in_one_turn_do_not_both_install() {
    // Region 1's log is compacted past its split, so the store that was away gets region 1 by
    // snapshot; regions 2 and 3 keep their logs.
    let settings = Settings {
        snapshot_threshold: 40,
        catch_up_entries: 1,
        ..Settings::default()
    };
    let mut st = Stores::with_settings(&settings);
    let leader = st.leader(1);
    let away = (1..=3).find(|&s| s != leader).expect("a follower store");
    st.cut = (1..=3).map(|r| (r, away)).collect();
    assert_eq!(st.put(1, 7, 1, "u", "v0"), CommandResult::Put);
    split(&mut st, 1, "m", 2);
    // Region 2's snapshot to the away store, [m, end) as of now, is captured.
    st.cut.retain(|c| c.0 != 2);
    st.hold = vec![(2, away)];
    st.until("region 2's snapshot for the away store is captured", |st| {
        !st.held.is_empty()
    });
    st.cut.push((2, away));
    // Region 2 writes "u" and splits it off to region 3, which writes it again.
    assert_eq!(st.put(2, 7, 2, "u", "v1"), CommandResult::Put);
    split(&mut st, 2, "t", 3);
    assert_eq!(st.put(3, 7, 3, "u", "v2"), CommandResult::Put);
    st.cut.retain(|c| c.0 != 3);
    st.hold = vec![(3, away)];
    st.until("region 3's snapshot for the away store is captured", |st| {
        st.held.len() == 2
    });
    st.cut.push((3, away));
    st.hold.clear();
    // Region 1 compacts past its split on every store that took part (the leader keeps the
    // log a while for a follower it heard lately), and only region 1 reaches the away store
    // again: it installs region 1 as [start, m), leaving regions 2 and 3 uninitialized there.
    let compacted = |st: &mut Stores| {
        (1..=3u64).filter(|&s| s != away).all(|s| {
            st.store(s)
                .core(1)
                .is_some_and(|c| c.replica().log_bounds().0 > 10)
        })
    };
    let mut written = 0;
    while !compacted(&mut st) {
        assert!(written < 400, "region 1 never compacted:\n{}", st.dump());
        written += 1;
        assert_eq!(st.put(1, 8, written, "a", "w"), CommandResult::Put);
    }
    st.cut.retain(|c| c.0 != 1);
    st.until("the away store installed region 1 after its split", |st| {
        st.store(away)
            .region(1)
            .is_some_and(|r| r.end_key == b"m".to_vec())
    });
    assert!(st.store(away).region(2).is_none() && st.store(away).region(3).is_none());
    // Both captured snapshots, region 2's [m, end) and region 3's [t, end), in one turn; then
    // every message goes through again.
    let held = std::mem::take(&mut st.held);
    assert_eq!(
        held.iter().map(|m| m.region_id).collect::<Vec<_>>(),
        vec![2, 3]
    );
    st.cut.clear();
    st.inflight.splice(0..0, held);
    st.round();
    let data = st.converged();
    assert!(
        data.windows(2).all(|w| w[0] == w[1]),
        "replicas differ:\n{:?}\n{}",
        data,
        st.dump()
    );
    let u = data[0]
        .iter()
        .find(|(k, _)| k == b"u")
        .map(|(_, v)| v.clone());
    assert_eq!(u.as_deref(), Some(&b"v2"[..]));
}

/// Holds every snapshot load into one store's database at its first stop (after it cleared the
/// range it replaces; see `rdb_storage::snapshot::load_fail_point`) until released. After
/// 30 s it lets them go by itself, so that a store that installs on its Raft thread (the
/// caller's thread here) fails its test instead of hanging it.
struct HeldLoads {
    point: String,
    /// Whether a load reached the stop, and whether the loads may go on.
    state: std::sync::Arc<(AtomicBool, AtomicBool)>,
}

use std::sync::atomic::{AtomicBool, Ordering};

impl HeldLoads {
    fn new(data_dir: &std::path::Path) -> HeldLoads {
        let point = rdb_storage::snapshot::load_fail_point(data_dir);
        let state = std::sync::Arc::new((AtomicBool::new(false), AtomicBool::new(false)));
        let st = state.clone();
        fail::cfg_callback(point.as_str(), move || {
            st.0.store(true, Ordering::Release);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while !st.1.load(Ordering::Acquire) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        })
        .expect("fail point");
        HeldLoads { point, state }
    }

    /// Whether a load is held (or was).
    fn reached(&self) -> bool {
        self.state.0.load(Ordering::Acquire)
    }
}

impl Drop for HeldLoads {
    fn drop(&mut self) {
        self.state.1.store(true, Ordering::Release);
        fail::remove(&self.point);
    }
}

/// Regions 1 (`[start, m)`, keys `a00`..`a19`) and 2 (`[m, end)`), with the store that leads
/// region 2 cut off from region 1 while region 1's log is compacted past it; then the cut
/// heals with that store's loads held (see [`HeldLoads`]) until it is installing region 1's
/// snapshot. Returns the stores, that store, and the hold.
fn installing_region_one(settings: &Settings) -> (Stores, u64, HeldLoads) {
    let mut st = Stores::with_settings(settings);
    for i in 0..20 {
        let k = format!("a{i:02}");
        assert_eq!(st.put(1, 1, i + 1, &k, "old"), CommandResult::Put);
    }
    split(&mut st, 1, "m", 2);
    assert_eq!(st.put(2, 1, 100, "x", "1"), CommandResult::Put);
    let away = st.leader(2);
    let behind = st
        .store(away)
        .core(1)
        .expect("region 1")
        .replica()
        .log_bounds()
        .1;
    st.cut = vec![(1, away)];
    // Region 1 goes on without it: once it stops leading there (it hears no quorum), another
    // store leads.
    st.until("another store leads region 1", |st| {
        let leaders: Vec<u64> = st
            .stores
            .iter()
            .flatten()
            .filter(|s| s.core(1).is_some_and(|c| c.replica().is_leader()))
            .map(|s| s.store_id())
            .collect();
        leaders.len() == 1 && leaders[0] != away
    });
    let compacted = |st: &mut Stores| {
        (1..=3u64).filter(|&s| s != away).all(|s| {
            st.store(s)
                .core(1)
                .is_some_and(|c| c.replica().log_bounds().0 > behind + 1)
        })
    };
    let mut written = 0;
    while !compacted(&mut st) {
        assert!(written < 400, "region 1 never compacted:\n{}", st.dump());
        written += 1;
        let k = format!("a{:02}", written % 20);
        assert_eq!(st.put(1, 2, written, &k, "new"), CommandResult::Put);
    }
    let held = HeldLoads::new(st.dirs[away as usize - 1].path());
    st.cut.clear();
    st.until("the store's load of region 1 is held half way", |_| {
        held.reached()
    });
    assert!(st.store(away).is_installing(1));
    assert_eq!(st.leader(2), away, "it still leads region 2");
    (st, away, held)
}

/// Whether a read was refused because a snapshot install overlapped it.
fn installing<T>(r: rdb_storage::Result<T>) -> bool {
    matches!(r, Err(rdb_storage::Error::SnapshotInstalling))
}

/// Settings for [`installing_region_one`]: a short log, so region 1 compacts quickly.
fn short_log() -> Settings {
    Settings {
        snapshot_threshold: 8,
        catch_up_entries: 1,
        ..Settings::default()
    }
}

#[test]
fn a_store_installing_a_snapshot_keeps_leading_and_serving_its_other_regions() {
    let settings = short_log();
    let (mut st, away, held) = installing_region_one(&settings);
    // Region 2, led by that store, takes writes while region 1's load is held half way.
    let before = st
        .store(away)
        .core(2)
        .expect("region 2")
        .replica()
        .applied_index();
    for i in 0..10 {
        let k = format!("x{i}");
        assert_eq!(st.put(2, 3, i + 1, &k, "during"), CommandResult::Put);
    }
    assert_eq!(st.leader(2), away, "it kept region 2's leadership");
    let s = st.store(away);
    assert!(s.is_installing(1), "region 1 is still being installed");
    assert!(
        s.core(2).expect("region 2").replica().applied_index() >= before + 10,
        "region 2 applied its writes during the install"
    );
    drop(held);
    st.until("the store installed region 1", |st| {
        !st.store(away).is_installing(1)
    });
    let data = st.converged();
    assert!(data.windows(2).all(|w| w[0] == w[1]), "replicas differ");
    assert_eq!(data[0].len(), 20 + 1 + 10);
}

#[test]
fn a_read_of_the_region_being_installed_is_refused_and_a_read_of_another_is_served() {
    let settings = short_log();
    let (mut st, away, held) = installing_region_one(&settings);
    // Reads of user data: the range being loaded is refused (half of it is cleared now), the
    // other region's keys are served, and so is a scan of them; a scan that crosses into the
    // range being loaded is refused.
    let engine = st.store(away).engine().clone();
    assert!(installing(engine.get(b"a03")));
    assert!(installing(engine.get_many(&[b"a03".to_vec()])));
    assert!(installing(engine.scan(b"", b"", usize::MAX, usize::MAX)));
    assert_eq!(
        engine.get(b"x").expect("region 2's key"),
        Some(b"1".to_vec())
    );
    let page = engine
        .scan(b"m", b"", usize::MAX, usize::MAX)
        .expect("region 2's range");
    assert_eq!(page.kvs, vec![(b"x".to_vec(), b"1".to_vec())]);
    // Reads routed to the regions: the one being installed is refused (its leader's store
    // serves it); the other is served.
    let (r1, r2) = (st.next_request, st.next_request + 1);
    st.next_request += 2;
    let (e1, e2) = (st.epoch(away, 1), st.epoch(away, 2));
    let s = st.store(away);
    s.read(1, &e1, &[b"a03"], r1).expect("routed");
    s.read(2, &e2, &[b"x"], r2).expect("routed");
    st.until("both reads are answered", |st| {
        [r1, r2]
            .iter()
            .all(|r| st.replies.iter().any(|a| a.1 == *r))
    });
    let answer = |st: &Stores, r: u64| st.replies.iter().find(|a| a.1 == r).map(|a| a.2.clone());
    assert!(
        matches!(
            answer(&st, r1),
            Some(Err(Refusal::NotLeader { .. } | Refusal::Unavailable(_)))
        ),
        "{:?}",
        answer(&st, r1)
    );
    assert!(
        matches!(answer(&st, r2), Some(Ok(Answer::ReadReady { .. }))),
        "{:?}",
        answer(&st, r2)
    );
    assert!(st.store(away).is_installing(1));
    drop(held);
    st.until("the store installed region 1", |st| {
        !st.store(away).is_installing(1)
    });
    st.converged();
    let engine = st.store(away).engine().clone();
    assert_eq!(engine.get(b"a03").expect("read"), Some(b"new".to_vec()));
}

#[test]
fn a_crash_in_the_middle_of_a_background_install_is_finished_at_start() {
    let settings = short_log();
    let (mut st, away, held) = installing_region_one(&settings);
    let (index, _) = st
        .store(away)
        .core(1)
        .and_then(|c| c.replica().installing_snapshot())
        .expect("installing");
    // The store goes down while the load is held after clearing the range: dropping it stops
    // the load at its next step, as a crash would.
    st.stores[away as usize - 1] = None;
    drop(held);
    let dir = st.dirs[away as usize - 1].path().to_path_buf();
    st.stores[away as usize - 1] = Some(reopen(&dir, away, &settings));
    // Opening the region finished the install: it starts at the snapshot's index.
    assert!(!st.store(away).is_installing(1));
    assert_eq!(
        st.store(away)
            .core(1)
            .expect("region 1")
            .replica()
            .applied_index(),
        index,
        "the start finished the install"
    );
    let data = st.converged();
    assert!(data.windows(2).all(|w| w[0] == w[1]), "replicas differ");
    assert_eq!(data[0].len(), 20 + 1);
}

#[test]
fn an_uninitialized_peer_that_voted_remembers_its_vote_across_a_restart() {
    use raft::prelude::{Message, MessageType};
    let dir = tempfile::tempdir().expect("dir");
    let region = Region {
        id: 2,
        start_key: b"m".to_vec(),
        end_key: Vec::new(),
        epoch: Some(RegionEpoch {
            version: 2,
            conf_ver: 1,
        }),
        peers: (1..=3)
            .map(|s| Peer {
                id: 20 + s,
                store_id: s,
                learner: false,
            })
            .collect(),
    };
    let msg = |ty: MessageType, from: u64, term: u64| {
        let mut m = Message::default();
        m.set_msg_type(ty);
        m.from = from;
        m.to = 23;
        m.term = term;
        RegionMessage {
            region_id: 2,
            from_store: from - 20,
            to_store: 3,
            epoch: RegionEpoch::default(),
            msg: m,
        }
    };
    // What store 3 answers a vote request from `from` at `term`: whether it granted it.
    let vote = |s: &mut StoreCore, from: u64, term: u64| {
        s.step(msg(MessageType::MsgRequestVote, from, term))
            .expect("step");
        let out = s.advance().expect("advance");
        out.messages
            .iter()
            .find(|m| m.msg.get_msg_type() == MessageType::MsgRequestVoteResponse)
            .map(|m| !m.msg.reject)
            .expect("a vote response")
    };
    let mut s = open(dir.path(), 3);
    // A leader's heartbeat names region 2: nothing is created until PD vouches for it.
    s.step(msg(MessageType::MsgHeartbeat, 21, 6)).expect("step");
    assert!(s.core(2).is_none(), "a message alone created a region");
    assert_eq!(s.advance().expect("advance").confirm, vec![2]);
    s.confirm_region(&region);
    s.step(msg(MessageType::MsgHeartbeat, 21, 6)).expect("step");
    assert!(
        s.core(2).is_some() && s.region(2).is_none(),
        "uninitialized"
    );
    s.advance().expect("advance");
    // The leader falls silent for long enough that a candidate may be heard.
    for _ in 0..10 * Settings::default().election_ticks {
        s.tick();
    }
    s.advance().expect("advance");
    assert!(
        vote(&mut s, 22, 7),
        "votes for the first candidate of term 7"
    );
    drop(s);

    let mut s = reopen(dir.path(), 3, &Settings::default());
    let r = s.core(2).expect("the uninitialized peer is back").replica();
    assert_eq!((r.term(), r.id()), (7, 23));
    assert!(
        !vote(&mut s, 21, 7),
        "voted twice in term 7: once before the restart, once after"
    );
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

/// Region `id` over `[start, end)` with peers `id * 10 + store` on stores 1 to 3.
fn region_of(id: u64, start: &[u8], end: &[u8]) -> Region {
    Region {
        id,
        start_key: start.to_vec(),
        end_key: end.to_vec(),
        epoch: Some(RegionEpoch {
            version: 2,
            conf_ver: 1,
        }),
        peers: (1..=3)
            .map(|s| Peer {
                id: id * 10 + s,
                store_id: s,
                learner: false,
            })
            .collect(),
    }
}

#[test]
fn uninitialized_peers_need_pd_to_vouch_for_them_and_are_bounded_in_number() {
    use raft::prelude::MessageType;
    let dir = tempfile::tempdir().expect("dir");
    let mut s = open(dir.path(), 3);
    // Leaders' heartbeats name many regions; PD confirms some of them.
    let named = 300u64;
    for id in 1..=named {
        s.step(leader_message(id, MessageType::MsgHeartbeat, id * 10 + 3))
            .expect("step");
    }
    assert!(
        s.region_ids().is_empty(),
        "a message alone created a region"
    );
    let asked = s.advance().expect("advance").confirm;
    assert_eq!(asked.len(), MAX_ASKED, "regions asked about at once");
    // Asked again only after a while.
    s.step(leader_message(1, MessageType::MsgHeartbeat, 13))
        .expect("step");
    assert!(s.advance().expect("advance").confirm.is_empty());
    for id in 1..=named {
        let k = format!("k{id:04}");
        s.confirm_region(&region_of(id, k.as_bytes(), b""));
    }
    // A peer id PD did not name for this store creates nothing.
    s.step(leader_message(7, MessageType::MsgHeartbeat, 999))
        .expect("step");
    assert!(s.core(7).is_none());
    for id in 1..=named {
        s.step(leader_message(id, MessageType::MsgHeartbeat, id * 10 + 3))
            .expect("step");
    }
    assert_eq!(
        s.region_ids().len(),
        MAX_UNINIT,
        "uninitialized peers at most"
    );
    s.advance().expect("advance");
}

#[test]
fn a_snapshot_that_is_not_stepped_leaves_no_file_behind() {
    use raft::prelude::MessageType;
    let mut st = Stores::new();
    let leader = st.leader(1);
    split(&mut st, 1, "m", 2);
    // A snapshot of region 2 built by its leader, as it would arrive at store 3 for a region
    // PD never named for it, and for a range that region 1 (hosted there) still covers.
    let l2 = st.leader(2);
    let view = st.store(l2).region_engine(2).expect("region 2");
    let snap = rdb_storage::snapshot::build(&view).expect("snapshot");
    let desc = SnapshotDescriptor::decode(&snap.data).expect("descriptor");
    let src = crate::transport::region_snap_dir(&st.store(l2).engine().snap_dir(), 2);
    let receiver = (1..=3).find(|&s| s != leader && s != l2).unwrap_or(leader);
    let dst_dir = crate::transport::region_snap_dir(&st.store(receiver).engine().snap_dir(), 9);
    std::fs::create_dir_all(&dst_dir).expect("dir");
    let dst = desc.path_in(&dst_dir);
    std::fs::copy(desc.path_in(&src), &dst).expect("copy");
    let mut m = leader_message(9, MessageType::MsgSnapshot, 93);
    m.to_store = receiver;
    m.msg.set_snapshot(snap);
    st.store(receiver).step(m).expect("step");
    assert!(
        !dst.exists(),
        "the file of a dropped snapshot is still there"
    );
    assert!(
        !dst_dir.exists(),
        "the folder of a region not hosted is still there"
    );
}

/// Rounds an attempt may go unanswered before its client tries again (a restart loses what was
/// in flight at that store; a cut may hold it).
const ATTEMPT_ROUNDS: u64 = 40;
/// Rounds a client keeps at one operation before it gives up.
const OP_ROUNDS: u64 = 400;
/// Applied entries a request id is remembered for in [`simulate`]: small, so that records die
/// and compaction drops them within a run, and retries come near the end of the window.
const SIM_WINDOW: u64 = 20;
/// Entries a region may append between a client's look at its log and the proposal it makes
/// right after (the other clients' proposals of the round, a split, a leader's empty entry).
const WINDOW_MARGIN: u64 = 8;

/// An operation of one client of [`simulate`], in flight.
struct SimOp {
    op: crate::sim::linearizability::Op,
    /// A write's encoded command, the same for every attempt: its request id (client id, seq)
    /// is what makes a retry apply at most once.
    cmd: Option<Vec<u8>>,
    seq: u64,
    invoke: u64,
    /// The attempt waited on: its request, store, and the round it was sent in.
    attempt: Option<(RequestId, u64, u64)>,
    /// When to send the next attempt, while none is waited on.
    retry_at: u64,
    /// Whether an attempt was proposed that may have applied.
    maybe_applied: bool,
    /// Each region's highest commit index when the operation began: no attempt lands at or
    /// below it.
    floors: HashMap<u64, u64>,
    /// Regions attempts were proposed to.
    regions: std::collections::BTreeSet<u64>,
}

/// Each region's highest commit index and highest last log index over the live stores.
fn region_indexes(st: &Stores) -> HashMap<u64, (u64, u64)> {
    let mut out: HashMap<u64, (u64, u64)> = HashMap::new();
    for s in st.stores.iter().flatten() {
        for id in s.region_ids() {
            let Some(c) = s.core(id) else { continue };
            let e = out.entry(id).or_default();
            e.0 = e.0.max(c.replica().commit_index());
            e.1 = e.1.max(c.replica().log_bounds().1);
        }
    }
    out
}

/// Whether a write that may have applied can be sent again to region `target`, so that if it
/// did apply, the retry still finds its request id's record: wherever the first apply was (a
/// region attempts went to), wherever a split copied the record (a region made since the
/// operation began; copies are dated at its first index) and wherever the retry lands, the
/// retry's entry must come within the window of the record (the static simulation's clients
/// bound their retries the same way, and `rdb-client` by time).
fn within_window(p: &SimOp, target: u64, indexes: &HashMap<u64, (u64, u64)>) -> bool {
    indexes.iter().all(|(id, &(_, last))| {
        let floor = p.floors.get(id).copied();
        let concerned = *id == target || p.regions.contains(id) || floor.is_none();
        !concerned || last + WINDOW_MARGIN <= floor.unwrap_or(0) + SIM_WINDOW
    })
}

/// Every live (not yet expired) dedup record of region `id` at store `s`.
fn live_dedup_records(s: &StoreCore, id: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut prefix = rdb_storage::keys::region_prefix(id);
    prefix.push(rdb_storage::keys::DEDUP_PREFIX);
    let applied = s.core(id).map_or(0, |c| c.replica().applied_index());
    s.engine()
        .app_records(&prefix)
        .expect("dedup records")
        .into_iter()
        .filter(|(k, v)| !rdb_storage::dedup::is_dead(k, v, applied, SIM_WINDOW))
        .collect()
}

/// A randomized run of three stores with splits under faults, checked for linearizability and
/// at-most-once application.
///
/// Four clients each keep one get/put/cas/delete in flight on keys `k0`..`k3`, routed the way a
/// client with a region cache would: to a random store, for the region that store says holds
/// the key, at that region's epoch there. A write carries a request id (client id, seq); one
/// whose outcome is unknown (indeterminate, or unanswered because its store restarted) is sent
/// again with the same id, to a random store, which after a split may route it to another
/// region than the first attempt, as long as the retry stays within the dedup window (kept
/// small). A CAS usually expects the value last seen, so most of them swap: one applied twice
/// answers "not swapped" while its value is there to be read, which the linearizability check
/// refuses. Meanwhile a nemesis splits regions at random points between and around the keys,
/// and the region of a write waiting to be sent again so that the write's key moves; drops,
/// duplicates, delays and reorders messages, cuts stores off, restarts stores (the store is
/// dropped and reopened from its directory) and compacts a store's data (dropping dedup
/// records past their window). Every operation is recorded with the rounds it began and ended
/// in; at the end the network heals, every key is read once more, the history must be
/// linearizable and the stores must hold the same data and the same live dedup records.
///
/// Planted bugs it catches (checked by hand, 2026-12-07): no dedup at all (5 of seeds 1-8),
/// no copy of dedup records at a split (3 of seeds 1-12), a dedup horizon that lets
/// compaction drop records still in their window (11 of seeds 1-12).
fn simulate(seed: u64, rounds: usize) {
    use crate::sim::linearizability::{check, CheckResult, Op, Operation, Outcome};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use rdb_proto::command::command::Op as Op2;
    use rdb_proto::command::{Cas, Delete};

    let mut rng = StdRng::seed_from_u64(seed);
    let settings = Settings {
        snapshot_threshold: 30,
        catch_up_entries: 5,
        dedup_window: SIM_WINDOW,
        ..Settings::default()
    };
    let mut st = Stores::with_settings(&settings);
    const KEYS: usize = 4;
    const CLIENTS: usize = 4;
    let mut ops: Vec<Option<SimOp>> = (0..CLIENTS).map(|_| None).collect();
    // Every attempt sent: its client and operation (by seq).
    let mut attempts: HashMap<RequestId, (usize, u64)> = HashMap::new();
    let mut history: Vec<Operation> = Vec::new();
    let mut seq = [0u64; CLIENTS];
    // The value of each key as last seen by any client, for CAS expectations.
    let mut seen: HashMap<String, Option<String>> = HashMap::new();
    let mut next_region = 100u64;
    let mut held: Vec<(usize, RegionMessage)> = Vec::new();
    let (mut splits, mut restarts, mut compactions) = (0, 0, 0);
    // Writes sent again after an attempt that may have applied; those whose attempts went to
    // more than one region; and those that ran out of window.
    let (mut retried, mut moved, mut out_of_window) = (0, 0, 0);
    let finish = |history: &mut Vec<Operation>,
                  seen: &mut HashMap<String, Option<String>>,
                  c: usize,
                  p: SimOp,
                  outcome: Outcome,
                  round: u64| {
        let key = p.op.key().to_string();
        match (&p.op, &outcome) {
            (_, Outcome::Get(v)) => {
                seen.insert(key, v.clone());
            }
            (Op::Put { value, .. }, Outcome::Put) => {
                seen.insert(key, Some(value.clone()));
            }
            (Op::Cas { new, .. }, Outcome::Cas(true)) => {
                seen.insert(key, Some(new.clone()));
            }
            (_, Outcome::Delete) => {
                seen.insert(key, None);
            }
            _ => {}
        }
        history.push(Operation {
            client: c as u64,
            op: p.op,
            outcome,
            invoke: p.invoke,
            complete: round,
        });
    };
    for round in 0..rounds as u64 {
        // Clients: begin an operation, or send the next attempt of one.
        for c in 0..CLIENTS {
            if ops[c].is_none() {
                let k = rng.gen_range(0..KEYS);
                let key = format!("k{k}");
                seq[c] += 1;
                let s = seq[c];
                let value = format!("c{c}-{s}");
                let roll: f64 = rng.gen();
                let (op, cmd) = if roll < 0.4 {
                    (Op::Get { key: key.clone() }, None)
                } else if roll < 0.65 {
                    (
                        Op::Put {
                            key: key.clone(),
                            value: value.clone(),
                        },
                        Some(put_cmd(c as u64 + 1, s, &key, &value)),
                    )
                } else if roll < 0.9 {
                    // Mostly what was seen last, so that most swaps succeed.
                    let expected = match seen.get(&key) {
                        Some(v) if rng.gen_bool(0.8) => v.clone(),
                        _ if rng.gen_bool(0.3) => None,
                        _ => Some(format!(
                            "c{}-{}",
                            rng.gen_range(0..CLIENTS),
                            rng.gen_range(1..=s)
                        )),
                    };
                    let cmd = Command {
                        client_id: c as u64 + 1,
                        seq: s,
                        op: Some(Op2::Cas(Cas {
                            key: key.clone().into_bytes(),
                            expected: expected.clone().map(String::into_bytes),
                            new_value: value.clone().into_bytes(),
                        })),
                    };
                    (
                        Op::Cas {
                            key: key.clone(),
                            expected,
                            new: value,
                        },
                        Some(cmd.encode_to_vec()),
                    )
                } else {
                    let cmd = Command {
                        client_id: c as u64 + 1,
                        seq: s,
                        op: Some(Op2::Delete(Delete {
                            key: key.clone().into_bytes(),
                        })),
                    };
                    (Op::Delete { key: key.clone() }, Some(cmd.encode_to_vec()))
                };
                let floors = region_indexes(&st)
                    .into_iter()
                    .map(|(id, (commit, _))| (id, commit))
                    .collect();
                ops[c] = Some(SimOp {
                    op,
                    cmd,
                    seq: s,
                    invoke: round,
                    attempt: None,
                    retry_at: round,
                    maybe_applied: false,
                    floors,
                    regions: std::collections::BTreeSet::new(),
                });
            }
            let Some(p) = ops[c].as_mut() else { continue };
            if let Some((_, _, sent)) = p.attempt {
                if round < sent + ATTEMPT_ROUNDS {
                    continue;
                }
                // No answer: the store restarted, or a cut holds the request.
                p.attempt = None;
                p.maybe_applied |= p.cmd.is_some();
                if p.cmd.is_none() {
                    let p = ops[c].take().expect("pending");
                    finish(&mut history, &mut seen, c, p, Outcome::Failed, round);
                    continue;
                }
            }
            if p.retry_at > round {
                continue;
            }
            let store = rng.gen_range(1..=3u64);
            let Some(s) = st.stores[store as usize - 1].as_ref() else {
                p.retry_at = round + 1;
                continue;
            };
            let key = p.op.key().to_string();
            let Some(region) = s.region_for_key(key.as_bytes()).cloned() else {
                p.retry_at = round + rng.gen_range(1..=3);
                continue;
            };
            let out_of_time = round >= p.invoke + OP_ROUNDS;
            if out_of_time
                || (p.maybe_applied && !within_window(p, region.id, &region_indexes(&st)))
            {
                if !out_of_time {
                    out_of_window += 1;
                }
                let p = ops[c].take().expect("pending");
                let outcome = if p.maybe_applied {
                    Outcome::Indeterminate
                } else {
                    Outcome::Failed
                };
                finish(&mut history, &mut seen, c, p, outcome, round);
                continue;
            }
            let epoch = rdb_storage::region::epoch(&region);
            let req = st.next_request;
            st.next_request += 1;
            let s = st.stores[store as usize - 1].as_mut().expect("up");
            let routed = match &p.cmd {
                Some(data) => s.propose(region.id, &epoch, &[key.as_bytes()], req, data.clone()),
                None => s.read(region.id, &epoch, &[key.as_bytes()], req),
            };
            match routed {
                Ok(()) => {
                    if p.maybe_applied {
                        retried += 1;
                        if !p.regions.is_empty() && !p.regions.contains(&region.id) {
                            moved += 1;
                        }
                    }
                    p.regions.insert(region.id);
                    p.attempt = Some((req, store, round));
                    attempts.insert(req, (c, p.seq));
                }
                Err(_) if p.cmd.is_some() => p.retry_at = round + rng.gen_range(1..=3),
                Err(_) => {
                    let p = ops[c].take().expect("pending");
                    finish(&mut history, &mut seen, c, p, Outcome::Failed, round);
                }
            }
        }
        // Nemesis.
        let roll: f64 = rng.gen();
        let unsure: Vec<String> = ops
            .iter()
            .flatten()
            .filter(|p| p.maybe_applied && p.attempt.is_none())
            .map(|p| p.op.key().to_string())
            .collect();
        let target = (!unsure.is_empty() && rng.gen_bool(0.05))
            .then(|| unsure[rng.gen_range(0..unsure.len())].clone());
        if roll < 0.02 || target.is_some() {
            // A split by a leader: of the region of a write that may have applied and waits
            // to be sent again, just past the region's start, so that the write's key moves
            // to the new region before the retry; else at a random point between or around
            // the keys.
            let random = format!(
                "k{}{}",
                rng.gen_range(0..KEYS),
                ["", "~", "5"][rng.gen_range(0..3)]
            );
            for s in st.stores.iter_mut().flatten() {
                let at = target.as_deref().unwrap_or(&random);
                let Some(r) = s.region_for_key(at.as_bytes()).cloned() else {
                    continue;
                };
                if !s.core(r.id).is_some_and(|c| c.replica().is_leader()) {
                    continue;
                }
                let at = match &target {
                    // Between the region's start and the key (none if the key is the start).
                    Some(key) if r.start_key.is_empty() => b"a".to_vec(),
                    Some(_) => [&r.start_key[..], b"~"].concat(),
                    None => random.clone().into_bytes(),
                };
                if r.start_key == at || target.as_ref().is_some_and(|k| at >= k.as_bytes().to_vec())
                {
                    break;
                }
                let ids: Vec<u64> = (1..=3).map(|i| next_region + i).collect();
                let req = 1 << 40 | next_region;
                if s.propose_split(r.id, &at, next_region, &ids, req).is_ok() {
                    splits += 1;
                }
                next_region += 10;
                break;
            }
        } else if roll < 0.03 {
            let victim = rng.gen_range(1..=3u64);
            let dir = st.dirs[victim as usize - 1].path().to_path_buf();
            // Requests in flight there get no answer: their clients try again.
            st.stores[victim as usize - 1] = None;
            st.stores[victim as usize - 1] = Some(reopen(&dir, victim, &settings));
            restarts += 1;
        } else if roll < 0.05 {
            // Cut a store off from some regions only: it falls behind on those and not on the
            // others, as a busy or partly partitioned store would.
            let victim = rng.gen_range(1..=3u64);
            st.cut = (1..next_region + 10)
                .filter(|_| rng.gen_bool(0.5))
                .map(|r| (r, victim))
                .collect();
        } else if roll < 0.08 {
            st.cut.clear();
        } else if roll < 0.085 {
            // Compaction drops the dedup records past their window (flushing first).
            let victim = rng.gen_range(1..=3u64);
            if let Some(s) = st.stores[victim as usize - 1].as_ref() {
                s.engine().compact_data();
                compactions += 1;
            }
        }
        // The network: drop, duplicate, delay, reorder.
        let mut msgs = std::mem::take(&mut st.inflight);
        // Snapshots are not lost silently: the transport reports every one (see `round`).
        msgs.retain(|m| {
            m.msg.get_msg_type() == raft::prelude::MessageType::MsgSnapshot || !rng.gen_bool(0.03)
        });
        let dups: Vec<RegionMessage> = msgs
            .iter()
            .filter(|_| rng.gen_bool(0.02))
            .cloned()
            .collect();
        msgs.extend(dups);
        let mut now = Vec::new();
        for m in msgs {
            if rng.gen_bool(0.1) {
                held.push((rng.gen_range(1..5), m));
            } else {
                now.push(m);
            }
        }
        held.retain_mut(|(wait, m)| {
            *wait -= 1;
            if *wait == 0 {
                now.push(m.clone());
                false
            } else {
                true
            }
        });
        for i in (1..now.len()).rev() {
            if rng.gen_bool(0.2) {
                let j = rng.gen_range(0..=i);
                now.swap(i, j);
            }
        }
        st.inflight = now;
        st.round();
        // Answers: a success answers the operation whichever attempt it came from; a refusal
        // matters only for the attempt waited on.
        let replies = std::mem::take(&mut st.replies);
        let refused = std::mem::take(&mut st.refused_reads)
            .into_iter()
            .map(|(req, _)| (req, Err(Refusal::Unavailable("region changed".into()))));
        let answers = replies
            .into_iter()
            .map(|(_, req, a)| (req, a))
            .chain(refused);
        for (req, answer) in answers {
            let Some((c, s)) = attempts.remove(&req) else {
                continue;
            };
            let Some(p) = ops[c].as_mut().filter(|p| p.seq == s) else {
                continue;
            };
            let current = p.attempt.is_some_and(|(a, _, _)| a == req);
            let outcome = match (answer, &p.op) {
                (Ok(Answer::ReadReady { .. }), Op::Get { key }) => {
                    let store = p.attempt.map_or(0, |(_, s, _)| s as usize);
                    match st
                        .stores
                        .get(store.wrapping_sub(1))
                        .and_then(Option::as_ref)
                    {
                        Some(s) => Outcome::Get(
                            s.engine()
                                .get(key.as_bytes())
                                .expect("read")
                                .map(|v| String::from_utf8_lossy(&v).into_owned()),
                        ),
                        None => Outcome::Failed,
                    }
                }
                (Ok(Answer::Written(CommandResult::Put)), Op::Put { .. }) => Outcome::Put,
                (Ok(Answer::Written(CommandResult::Delete { .. })), Op::Delete { .. }) => {
                    Outcome::Delete
                }
                (Ok(Answer::Written(CommandResult::Cas { succeeded, .. })), Op::Cas { .. }) => {
                    Outcome::Cas(succeeded)
                }
                (Ok(other), op) => panic!("seed {seed}: answer {other:?} to {op:?}"),
                (Err(Refusal::Rejected(m)), _) if !m.starts_with("key not in region") => {
                    panic!("seed {seed}: a valid command was rejected: {m}")
                }
                (Err(e), _) => {
                    // Proposed, so it may have applied (unless it was refused before it was).
                    if p.cmd.is_some() && matches!(e, Refusal::Indeterminate(_)) {
                        p.maybe_applied = true;
                    }
                    if !current {
                        continue;
                    }
                    p.attempt = None;
                    if p.cmd.is_some() {
                        // Longer after an unknown outcome, so that a split may come between.
                        let most = if p.maybe_applied { 12 } else { 3 };
                        p.retry_at = round + rng.gen_range(1..=most);
                        continue;
                    }
                    Outcome::Failed
                }
            };
            let p = ops[c].take().expect("pending");
            finish(&mut history, &mut seen, c, p, outcome, round);
        }
    }
    // Heal; a write still in flight may have applied.
    st.cut.clear();
    st.inflight.extend(held.into_iter().map(|(_, m)| m));
    for (c, p) in ops.iter_mut().enumerate() {
        let Some(p) = p.take() else { continue };
        let outcome = if p.cmd.is_some() && (p.maybe_applied || p.attempt.is_some()) {
            Outcome::Indeterminate
        } else {
            Outcome::Failed
        };
        finish(&mut history, &mut seen, c, p, outcome, rounds as u64);
    }
    let data = st.converged();
    assert!(
        data.windows(2).all(|w| w[0] == w[1]),
        "seed {seed}: replicas differ"
    );
    // Every region's live dedup records, as a split copied them or a snapshot carried them,
    // are the same on every store.
    let live: Vec<&StoreCore> = st.stores.iter().flatten().collect();
    for id in live[0].region_ids() {
        let first = live_dedup_records(live[0], id);
        for s in &live[1..] {
            assert_eq!(
                live_dedup_records(s, id),
                first,
                "seed {seed}: stores {} and {} hold different dedup records of region {id}",
                live[0].store_id(),
                s.store_id()
            );
        }
    }
    // Final reads, through the leaders.
    let end = rounds as u64 + 1000;
    for k in 0..KEYS {
        let key = format!("k{k}");
        let v = data[0]
            .iter()
            .find(|(kk, _)| kk == key.as_bytes())
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
        history.push(Operation {
            client: 99,
            op: Op::Get { key },
            outcome: Outcome::Get(v),
            invoke: end,
            complete: end,
        });
    }
    let acked = history
        .iter()
        .filter(|o| !matches!(o.outcome, Outcome::Failed | Outcome::Indeterminate))
        .count();
    let swapped = history
        .iter()
        .filter(|o| o.outcome == Outcome::Cas(true))
        .count();
    assert!(acked > 20, "seed {seed}: only {acked} operations completed");
    let summary = format!(
        "{} ops ({acked} completed, {swapped} swaps), {splits} splits proposed, {restarts} \
         restarts, {compactions} compactions; {retried} writes sent again after an unknown \
         outcome ({moved} to another region), {out_of_window} given up at the window",
        history.len()
    );
    match check(&history, 2_000_000) {
        CheckResult::Linearizable => {}
        CheckResult::Illegal(v) => {
            panic!("seed {seed} ({summary}): not linearizable:\n{v}")
        }
        other => panic!("seed {seed}: checker gave up: {other:?}"),
    }
    let regions = st.stores[0].as_ref().map_or(0, |s| s.region_ids().len());
    eprintln!("seed {seed}: {summary}, {regions} regions");
}

#[test]
fn simulated_stores_split_under_faults_and_stay_linearizable() {
    let first: u64 = std::env::var("RDB_STORE_SIM_FIRST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let seeds: u64 = std::env::var("RDB_STORE_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    for seed in first..first + seeds {
        simulate(seed, 1000);
    }
}

/// Proposes a membership change of region `id` at its leader and waits for its answer.
fn change_members(
    st: &mut Stores,
    id: u64,
    steps: &[MemberStep],
    added: &[(u64, u64)],
) -> Result<Answer<CommandResult>, Refusal> {
    let leader = st.leader(id);
    let req = st.next_request;
    st.next_request += 1;
    let added: Vec<MemberRecord> = added
        .iter()
        .map(|&(id, store_id)| MemberRecord {
            id,
            store_id,
            ..Default::default()
        })
        .collect();
    st.store(leader)
        .change_members(id, req, steps, &added)
        .expect("the region is here");
    let mut got = None;
    st.until(&format!("membership change {req} answered"), |st| {
        if let Some(i) = st.replies.iter().position(|r| r.1 == req) {
            got = Some(st.replies.remove(i).2);
        }
        got.is_some()
    });
    got.expect("answered")
}

/// A region moves to a new store through its own log: a learner added on a fourth store gets
/// the data by snapshot, is promoted once caught up, and the peer on store 1 is removed. Every
/// remaining replica's meta names the new peers (learner flags, a `conf_ver` raised per change);
/// store 1 drops the region at once, keeps a tombstone so that a stale leader's message (even
/// one PD vouches for) never makes it again, and deletes its data `GARBAGE_TICKS` later.
#[test]
fn a_region_moves_to_a_new_store_by_learner_promotion_and_removal() {
    let mut st = Stores::new();
    st.dirs.push(tempfile::tempdir().expect("dir"));
    let fourth = open(st.dirs[3].path(), 4);
    st.stores.push(Some(fourth));
    for i in 0..30u64 {
        st.put(1, 1, i + 1, &format!("k{i:02}"), "v");
    }

    // A second peer on a store that has one is refused before it reaches the log.
    let leader = st.leader(1);
    let other = if leader == 1 { 2 } else { 1 };
    let e = st.store(leader).change_members(
        1,
        999,
        &[MemberStep::AddLearner(40)],
        &[MemberRecord {
            id: 40,
            store_id: other,
            ..Default::default()
        }],
    );
    assert!(matches!(e, Err(RegionError::Invalid(_))), "{e:?}");

    let r = change_members(&mut st, 1, &[MemberStep::AddLearner(14)], &[(14, 4)]);
    assert!(matches!(r, Ok(Answer::MembershipChanged { .. })), "{r:?}");
    st.until("the leader saw the learner on store 4 catch up", |st| {
        let leader = st.leader(1);
        let r = st.store(leader).core(1).expect("leader").replica();
        r.matched(14).is_some_and(|m| m >= r.commit_index())
    });
    let learner = st.store(4).region(1).cloned().expect("meta");
    assert!(learner.peers.iter().any(|p| p.id == 14 && p.learner));
    let r = change_members(&mut st, 1, &[MemberStep::Promote(14)], &[]);
    assert!(matches!(r, Ok(Answer::MembershipChanged { .. })), "{r:?}");

    // Leadership to the new peer; then store 1's peer goes while store 1 hears nothing, so it
    // never learns the removal from the log: it finds out from PD once it has had no leader
    // for a while.
    let leader = st.leader(1);
    st.store(leader).transfer_leader(1, 14).expect("transfer");
    st.until("the new peer leads", |st| {
        st.store(4).core(1).is_some_and(|c| c.replica().is_leader())
    });
    let removed_meta = st.store(1).region(1).cloned().expect("meta");
    st.cut.push((1, 1));
    let r = change_members(&mut st, 1, &[MemberStep::Remove(11)], &[]);
    assert!(matches!(r, Ok(Answer::MembershipChanged { .. })), "{r:?}");
    st.cut.clear();
    assert!(st.store(1).region(1).is_some());
    st.until("store 1 dropped region 1", |st| {
        st.store(1).region(1).is_none()
    });
    assert_eq!(st.store(1).engine().tombstone(1).expect("read"), Some(11));
    st.until("every remaining replica applied the removal", |st| {
        (2..=4).all(|s| {
            st.store(s)
                .region(1)
                .is_some_and(|m| region::epoch(m).conf_ver == 4)
        })
    });
    for s in 2..=4 {
        let meta = st.store(s).region(1).cloned().expect("meta");
        let peers: Vec<(u64, u64, bool)> = meta
            .peers
            .iter()
            .map(|p| (p.id, p.store_id, p.learner))
            .collect();
        assert_eq!(
            peers,
            vec![(12, 2, false), (13, 3, false), (14, 4, false)],
            "store {s}"
        );
    }

    // A stale leader's heartbeat for the removed peer, with PD vouching for it from an old
    // view, does not bring the region back.
    st.store(1).confirm_region(&removed_meta);
    st.store(1)
        .step(leader_message(
            1,
            raft::prelude::MessageType::MsgHeartbeat,
            11,
        ))
        .expect("step");
    st.round();
    assert!(st.store(1).region(1).is_none() && st.store(1).core(1).is_none());

    // Writes go on without store 1; its copy of the data goes once no read can be using it.
    st.put(1, 1, 100, "after", "v");
    let data = |st: &mut Stores, s: u64| {
        st.store(s)
            .engine()
            .scan(b"", b"", usize::MAX, usize::MAX)
            .expect("scan")
            .kvs
            .len()
    };
    assert_eq!(
        data(&mut st, 1),
        30,
        "store 1's data went before any read could end"
    );
    for _ in 0..GARBAGE_TICKS + 1 {
        st.round();
    }
    assert_eq!(data(&mut st, 1), 0, "store 1 kept the removed peer's data");
    assert_eq!(data(&mut st, 4), 31);
}
