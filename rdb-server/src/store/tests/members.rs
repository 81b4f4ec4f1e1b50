//! Membership changes through a region's own log: a region moves to a new store by learner
//! promotion and removal.

use super::*;

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
