//! Regions split under writes on three stores: routing and refusals by epoch and range, a read
//! whose keys a split moved while it waited, and a store that got the parent by snapshot.

use super::*;

#[test]
fn regions_split_under_writes_route_by_epoch_and_range_and_replicas_stay_identical() {
    let mut st = Stores::new();
    for i in 0..20 {
        let k = format!("k{i:02}");
        assert!(matches!(
            st.put(1, 9, i + 1, &k, "v1"),
            CommandResult::Put { .. }
        ));
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
    assert!(matches!(st.answer(w1), CommandResult::Put { .. }));
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
    assert!(matches!(
        st.put(2, 9, 200, "k15", "v3"),
        CommandResult::Put { .. }
    ));
    assert!(matches!(
        st.put(2, 9, 201, "k12", "v3"),
        CommandResult::Put { .. }
    ));
    assert!(matches!(
        st.put(2, 9, 13, "k12", "v1"),
        CommandResult::Put { .. }
    ));
    assert!(matches!(
        st.put(1, 9, 202, "k01", "v3"),
        CommandResult::Put { .. }
    ));

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
fn a_read_whose_keys_a_split_moved_while_it_waited_is_refused_not_served_stale() {
    let mut st = Stores::new();
    assert!(matches!(
        st.put(1, 1, 1, "x", "old"),
        CommandResult::Put { .. }
    ));
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
    assert!(matches!(
        st.put(2, 1, 2, "x", "new"),
        CommandResult::Put { .. }
    ));
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
        assert!(matches!(
            st.put(region, 5, written + 1, &k, "v"),
            CommandResult::Put { .. }
        ));
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
