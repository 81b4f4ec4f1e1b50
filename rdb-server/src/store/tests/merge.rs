//! Merges on three stores in one process (specs/017-merge): a split undone by a merge under
//! writes, refusals, a source replica that never heard its prepare committed, and restarts.

use super::*;

/// Region 1 `["", "k10")` and region 2 `["k10", "")` after a split, with k00..k19 written
/// (client 9, seq i + 1 for k{i}).
fn split_at_k10() -> Stores {
    split_at_k10_with(&Settings::default())
}

fn split_at_k10_with(settings: &Settings) -> Stores {
    let mut st = Stores::with_settings(settings);
    for i in 0..20u64 {
        let k = format!("k{i:02}");
        assert!(matches!(
            st.put(1, 9, i + 1, &k, "v1"),
            CommandResult::Put { .. }
        ));
    }
    let leader = st.leader(1);
    let req = st.next_request;
    st.next_request += 1;
    st.store(leader)
        .propose_split(1, b"k10", 2, &[21, 22, 23], req)
        .expect("split proposed");
    assert_eq!(st.answer(req), CommandResult::Split { new_region: 2 });
    st.until("every store hosts region 2", |st| {
        st.stores.iter().flatten().all(|s| s.region(2).is_some())
    });
    st
}

/// Asks the leader of `source` to merge it into `target`; returns the request id.
fn propose_merge(st: &mut Stores, source: u64, target: u64) -> u64 {
    let leader = st.leader(source);
    let req = st.next_request;
    st.next_request += 1;
    st.store(leader)
        .prepare_merge(source, target, req)
        .expect("merge proposed");
    req
}

fn merged_everywhere(st: &Stores) -> bool {
    st.stores.iter().flatten().all(|s| {
        s.region_ids() == vec![1]
            && s.region(1)
                .is_some_and(|r| r.start_key.is_empty() && r.end_key.is_empty())
    })
}

#[test]
fn a_merge_folds_the_source_into_the_target_on_every_store_and_survives_a_restart() {
    let mut st = split_at_k10();
    assert!(matches!(
        st.put(2, 9, 100, "k15", "v2"),
        CommandResult::Put { .. }
    ));
    let (l1, l2) = (st.leader(1), st.leader(2));
    let v1 = st.epoch(l1, 1).version;
    let v2 = st.epoch(l2, 2).version;
    let req = propose_merge(&mut st, 2, 1);
    assert_eq!(st.answer(req), CommandResult::MergePrepared { target: 1 });
    st.until(
        "the source is gone and the target covers everything",
        |st| merged_everywhere(st),
    );
    let l1 = st.leader(1);
    assert_eq!(
        st.epoch(l1, 1).version,
        v1.max(v2 + 1) + 1,
        "one past both versions (the source's after its prepare)"
    );
    for s in st.stores.iter().flatten() {
        assert_eq!(
            s.engine().tombstone(2).expect("tombstone"),
            Some(rdb_storage::region::merge::MERGED_TOMBSTONE)
        );
    }
    // The target serves the source's keys; a retry of a write the source applied is
    // answered from the record the merge moved, and writes nothing.
    assert!(matches!(
        st.put(1, 9, 200, "k17", "v3"),
        CommandResult::Put { .. }
    ));
    assert!(matches!(
        st.put(1, 9, 100, "k15", "v-retry"),
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
    assert_eq!(get("k15").as_deref(), Some("v2"), "the retry wrote again");
    assert_eq!(get("k17").as_deref(), Some("v3"));
    assert_eq!(data[0].len(), 20, "k00..k19, nothing lost or added");

    // Every store restarted: still one region, over every key.
    let settings = Settings::default();
    for id in 1..=3u64 {
        st.stores[id as usize - 1] = None;
        let dir = st.dirs[id as usize - 1].path().to_path_buf();
        st.stores[id as usize - 1] = Some(reopen(&dir, id, &settings));
    }
    assert!(merged_everywhere(&st), "{}", st.dump());
    assert!(matches!(
        st.put(1, 9, 300, "k05", "v4"),
        CommandResult::Put { .. }
    ));
}

#[test]
fn a_source_replica_that_missed_the_prepare_s_commit_catches_up_from_its_own_log() {
    let mut st = split_at_k10();
    let (l1, l2) = (st.leader(1), st.leader(2));
    let lag = (1..=3)
        .find(|s| *s != l1 && *s != l2)
        .expect("a third store");
    let req = propose_merge(&mut st, 2, 1);
    // Once the lagging store's source replica has the prepare in its log, it hears nothing
    // more of the source: not that the prepare committed, nor anything after.
    let mut prepare_index = 0;
    st.until("the lagging store has the prepare", |st| {
        let r = st.store(l2).core(2).expect("source").replica();
        if prepare_index == 0 && r.app().merging().is_some() {
            prepare_index = r.app().merging().expect("merging").index;
        }
        let peer = 20 + lag;
        prepare_index > 0 && r.matched(peer).is_some_and(|m| m >= prepare_index)
    });
    st.cut.push((2, lag));
    let lagging = st.store(lag).core(2).expect("source").replica();
    assert!(
        lagging.commit_index() < prepare_index,
        "the scenario needs a replica that never heard the commit: commit {} prepare {}",
        lagging.commit_index(),
        prepare_index
    );
    assert_eq!(st.answer(req), CommandResult::MergePrepared { target: 1 });
    st.until(
        "the source is gone and the target covers everything",
        |st| merged_everywhere(st),
    );
    let data = st.converged();
    assert!(data.windows(2).all(|w| w[0] == w[1]), "replicas differ");
    assert_eq!(data[0].len(), 20);
}

#[test]
fn a_merge_is_refused_when_the_regions_do_not_fit() {
    let mut st = split_at_k10();
    let l2 = st.leader(2);
    let req = st.next_request;
    let refused = |r: Result<(), RequestRefused>, what: &str| match r {
        Err(RequestRefused::Region(RegionError::Invalid(m))) => {
            assert!(m.contains(what), "{m}")
        }
        other => panic!("{other:?}"),
    };
    refused(st.store(l2).prepare_merge(2, 2, req), "not adjacent");
    // A follower of the source does not propose (it names the leader once it knows it).
    let follower = (1..=3).find(|s| *s != l2).expect("follower");
    let r = st.store(follower).prepare_merge(2, 1, req);
    assert!(
        matches!(
            r,
            Err(RequestRefused::Core(
                Refusal::NotLeader { .. } | Refusal::Unavailable(_)
            ))
        ),
        "{r:?}"
    );
    assert!(matches!(
        st.store(l2).prepare_merge(2, 7, req),
        Err(RequestRefused::Region(RegionError::NotFound(7)))
    ));

    // While merging, the source takes no request: on the leader that answered, which applied
    // the prepare (the commit needs rounds more).
    let req = propose_merge(&mut st, 2, 1);
    assert_eq!(st.answer(req), CommandResult::MergePrepared { target: 1 });
    let epoch = st.epoch(l2, 2);
    assert_eq!(
        st.store(l2).check(2, &epoch, &[b"k12"]),
        Err(RegionError::Merging {
            region: 2,
            target: 1
        })
    );
    refused(st.store(l2).prepare_merge(2, 1, req + 1), "merging already");
    st.until("merged", |st| merged_everywhere(st));
}

#[test]
fn a_merge_whose_target_changed_is_rolled_back_and_the_source_serves_again() {
    let mut st = split_at_k10();
    let (l1, l2) = (st.leader(1), st.leader(2));
    let lag = (1..=3)
        .find(|s| *s != l1 && *s != l2)
        .expect("a third store");
    // One source peer hears nothing: it never has the prepare, so no commit is proposed.
    st.cut.push((2, lag));
    let req = propose_merge(&mut st, 2, 1);
    assert_eq!(st.answer(req), CommandResult::MergePrepared { target: 1 });
    // The target splits meanwhile: no commit can apply any more.
    let l1 = st.leader(1);
    let split = st.next_request;
    st.next_request += 1;
    st.store(l1)
        .propose_split(1, b"k05", 3, &[31, 32, 33], split)
        .expect("split proposed");
    assert_eq!(st.answer(split), CommandResult::Split { new_region: 3 });
    st.until("the source rolled back its merge", |st| {
        st.stores.iter().flatten().any(|s| {
            s.core(2)
                .is_some_and(|c| c.replica().is_leader() && c.replica().app().merging().is_none())
        })
    });
    st.cut.clear();
    assert!(matches!(
        st.put(2, 9, 500, "k12", "v9"),
        CommandResult::Put { .. }
    ));
    let data = st.converged();
    assert!(data.windows(2).all(|w| w[0] == w[1]), "replicas differ");
    for s in st.stores.iter().flatten() {
        assert_eq!(s.region_ids(), vec![1, 2, 3], "store {}", s.store_id());
        assert!(s
            .core(2)
            .is_some_and(|c| c.replica().app().merging().is_none()));
    }
}

#[test]
fn a_target_replica_that_missed_the_merge_takes_a_snapshot_over_its_stale_source() {
    let settings = short_log();
    let mut st = split_at_k10_with(&settings);
    let (l1, l2) = (st.leader(1), st.leader(2));
    let lag = (1..=3)
        .find(|s| *s != l1 && *s != l2)
        .expect("a third store");
    // The lagging store hears all of the source (its replica prepares) and none of the target.
    st.cut.push((1, lag));
    let req = propose_merge(&mut st, 2, 1);
    assert_eq!(st.answer(req), CommandResult::MergePrepared { target: 1 });
    st.until("the other stores merged", |st| {
        st.stores
            .iter()
            .flatten()
            .filter(|s| s.store_id() != lag)
            .all(|s| s.region_ids() == vec![1])
    });
    // The merged region's log moves on past what the lagging store could replay.
    for i in 0..20u64 {
        let k = format!("k{:02}", i);
        assert!(matches!(
            st.put(1, 9, 1000 + i, &k, "v5"),
            CommandResult::Put { .. }
        ));
    }
    assert!(
        st.store(lag).region(2).is_some(),
        "the stale source is still there"
    );
    st.cut.clear();
    st.until("merged everywhere", |st| merged_everywhere(st));
    let data = st.converged();
    assert!(data.windows(2).all(|w| w[0] == w[1]), "replicas differ");
    assert_eq!(data[0].len(), 20);
}
