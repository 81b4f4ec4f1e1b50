//! Durability on three stores: a restarted store reopens every region and catches up, and one
//! fsync covers every region's writes of a turn.

use super::*;

#[test]
fn a_restarted_store_reopens_every_region_and_catches_up() {
    let mut st = Stores::new();
    assert!(matches!(
        st.put(1, 1, 1, "a", "1"),
        CommandResult::Put { .. }
    ));
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
        assert!(matches!(
            st.put(region, 1, 10 + i, &k, "w"),
            CommandResult::Put { .. }
        ));
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
