//! Region snapshots on three stores: overlapping snapshots in one turn, a store that keeps
//! serving its other regions while one installs in the background, a crash mid-install, and a
//! snapshot that is never stepped.

use super::*;

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
    assert!(matches!(
        st.put(1, 7, 1, "u", "v0"),
        CommandResult::Put { .. }
    ));
    split(&mut st, 1, "m", 2);
    // Region 2's snapshot to the away store, [m, end) as of now, is captured.
    st.cut.retain(|c| c.0 != 2);
    st.hold = vec![(2, away)];
    st.until("region 2's snapshot for the away store is captured", |st| {
        !st.held.is_empty()
    });
    st.cut.push((2, away));
    // Region 2 writes "u" and splits it off to region 3, which writes it again.
    assert!(matches!(
        st.put(2, 7, 2, "u", "v1"),
        CommandResult::Put { .. }
    ));
    split(&mut st, 2, "t", 3);
    assert!(matches!(
        st.put(3, 7, 3, "u", "v2"),
        CommandResult::Put { .. }
    ));
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
        assert!(matches!(
            st.put(1, 8, written, "a", "w"),
            CommandResult::Put { .. }
        ));
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
        assert!(matches!(
            st.put(1, 1, i + 1, &k, "old"),
            CommandResult::Put { .. }
        ));
    }
    split(&mut st, 1, "m", 2);
    assert!(matches!(
        st.put(2, 1, 100, "x", "1"),
        CommandResult::Put { .. }
    ));
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
        assert!(matches!(
            st.put(1, 2, written, &k, "new"),
            CommandResult::Put { .. }
        ));
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
        assert!(matches!(
            st.put(2, 3, i + 1, &k, "during"),
            CommandResult::Put { .. }
        ));
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

/// PD saying a store's peer was removed (or merged away) while that peer installs a snapshot
/// leaves it alone until the install is over: dropping it took the file from under the
/// install, which failed the store (seen in the repair benchmark, where PD removed a learner
/// whose first snapshot was being installed).
#[test]
fn a_peer_installing_a_snapshot_is_not_dropped_from_under_the_install() {
    let settings = short_log();
    let (mut st, away, held) = installing_region_one(&settings);
    let s = st.store(away);
    let mut gone = s.region(1).cloned().expect("region 1's meta");
    let epoch = gone.epoch.get_or_insert_with(Default::default);
    epoch.conf_ver += 1;
    let covering_version = epoch.version + 1;
    gone.peers.retain(|p| p.store_id != away);
    s.confirm_region(&gone);
    let mut covering = gone.clone();
    covering.id = 99;
    if let Some(e) = covering.epoch.as_mut() {
        e.version = covering_version;
    }
    s.confirm_covered(1, &covering);
    drop(held);
    st.until("the store installed region 1", |st| {
        !st.store(away).is_installing(1)
    });
    assert!(
        st.store(away).core(1).is_some(),
        "the peer was dropped during its install"
    );
}
