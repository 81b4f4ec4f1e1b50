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

/// A learner added on store 3 and removed before its first snapshot: store 3 made it
/// uninitialized (a leader's message, once PD listed it), and its leader never sends to it
/// again. PD's answer that no longer lists it drops it in the next turn, with a tombstone, so
/// neither the leader's message nor PD's older view that still lists it makes it again. While
/// PD lists it (at any `conf_ver`) it stays.
#[test]
fn an_uninitialized_peer_pd_no_longer_lists_is_dropped_and_never_made_again() {
    use raft::prelude::MessageType;
    let dir = tempfile::tempdir().expect("dir");
    let mut s = open(dir.path(), 3);
    // Region 2 with voters 21, 22 on stores 1, 2 and learner 23 on store 3.
    let mut added = region_of(2, b"m", b"");
    added.peers[2].learner = true;
    added.epoch = Some(RegionEpoch {
        version: 2,
        conf_ver: 2,
    });
    s.step(leader_message(2, MessageType::MsgAppend, 23))
        .expect("step");
    assert_eq!(s.advance().expect("advance").confirm, vec![2]);
    s.confirm_region(&added);
    s.step(leader_message(2, MessageType::MsgAppend, 23))
        .expect("step");
    assert!(
        s.core(2).is_some() && s.region(2).is_none(),
        "store 3 made the learner uninitialized"
    );
    s.advance().expect("advance");

    // PD still lists the peer: at the same membership, and once promoted (a later conf_ver).
    let mut promoted = added.clone();
    promoted.peers[2].learner = false;
    promoted.epoch = Some(RegionEpoch {
        version: 2,
        conf_ver: 3,
    });
    for listed in [&added, &promoted] {
        s.confirm_region(listed);
        let out = s.advance().expect("advance");
        assert!(out.destroyed.is_empty(), "{:?}", out.destroyed);
        assert_eq!(s.region_ids(), vec![2], "a peer PD lists was dropped");
    }

    // The learner is removed before its first snapshot.
    let mut removed = added.clone();
    removed.peers.truncate(2);
    removed.epoch = Some(RegionEpoch {
        version: 2,
        conf_ver: 3,
    });
    s.confirm_region(&removed);
    let out = s.advance().expect("advance");
    assert_eq!(out.destroyed, vec![2]);
    assert!(s.region_ids().is_empty(), "the removed peer stayed");
    assert_eq!(s.engine().tombstone(2).expect("read"), Some(23));

    // Neither the leader's message nor PD's older view makes it again.
    s.step(leader_message(2, MessageType::MsgAppend, 23))
        .expect("step");
    s.advance().expect("advance");
    s.confirm_region(&added);
    s.step(leader_message(2, MessageType::MsgHeartbeat, 23))
        .expect("step");
    s.advance().expect("advance");
    assert!(
        s.region_ids().is_empty() && s.core(2).is_none(),
        "a removed peer was made again"
    );
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

mod merge;
