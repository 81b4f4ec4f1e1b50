//! Regions over one RocksDB (specs/009-regions): separate logs and Raft state, key ranges
//! enforced at apply, splits, and snapshots that carry one region only.

use raft::prelude::Entry;
use raft::{GetEntriesContext, Storage};
use rdb_proto::command::command::Op;
use rdb_proto::command::{Delete, Split};

use crate::region::{self, Peer, Region, RegionEpoch, REGION_INIT_INDEX, REGION_INIT_TERM};
use crate::tests::{cmd, entry, logger, put};
use crate::{CommandResult, Engine, RaftStorage, StateMachine};

const WINDOW: u64 = 1000;

fn region(id: u64, start: &str, end: &str, version: u64, peers: &[(u64, u64)]) -> Region {
    Region {
        id,
        start_key: start.into(),
        end_key: end.into(),
        epoch: Some(RegionEpoch {
            version,
            conf_ver: 1,
        }),
        peers: peers
            .iter()
            .map(|&(id, store_id)| Peer {
                id,
                store_id,
                learner: false,
            })
            .collect(),
    }
}

fn split(at: &str, new_region_id: u64, new_peer_ids: &[u64], version: u64) -> Op {
    Op::Split(Split {
        split_key: at.into(),
        new_region_id,
        new_peer_ids: new_peer_ids.to_vec(),
        version,
    })
}

/// Applies one command per entry, from `first`, returning each result.
fn apply(
    sm: &mut StateMachine,
    first: u64,
    cmds: &[Vec<u8>],
) -> Vec<Result<CommandResult, String>> {
    let entries: Vec<Entry> = cmds
        .iter()
        .enumerate()
        .map(|(i, c)| entry(first + i as u64, REGION_INIT_TERM, c))
        .collect();
    sm.apply(&entries)
        .expect("apply")
        .into_iter()
        .map(|a| a.result.expect("a command"))
        .collect()
}

fn user_keys(engine: &Engine) -> Vec<String> {
    engine
        .scan(b"", b"", usize::MAX, usize::MAX)
        .expect("scan")
        .kvs
        .into_iter()
        .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
        .collect()
}

#[test]
fn regions_of_one_store_keep_separate_logs_and_raft_state_across_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Engine::open(dir.path()).expect("open");
        let r1 = store
            .create_region(&region(1, "", "m", 1, &[(11, 1), (12, 2)]))
            .expect("region 1");
        let r2 = store
            .create_region(&region(2, "m", "", 1, &[(21, 1)]))
            .expect("region 2");
        assert!(
            store
                .create_region(&region(2, "m", "", 1, &[(21, 1)]))
                .is_err(),
            "a region is created once"
        );
        let mut s1 = RaftStorage::open(r1, logger()).expect("storage 1");
        let mut s2 = RaftStorage::open(r2, logger()).expect("storage 2");
        for s in [&s1, &s2] {
            assert_eq!(s.first_index().unwrap(), REGION_INIT_INDEX + 1);
            assert_eq!(s.last_index().unwrap(), REGION_INIT_INDEX);
            assert_eq!(s.term(REGION_INIT_INDEX).unwrap(), REGION_INIT_TERM);
        }
        let ents = |n: u64, tag: &str| -> Vec<Entry> {
            (6..6 + n)
                .map(|i| entry(i, REGION_INIT_TERM, tag.as_bytes()))
                .collect()
        };
        s1.append(&ents(3, "one"), None).expect("append 1");
        s2.append(&ents(7, "two"), None).expect("append 2");
        assert_eq!(s1.last_index().unwrap(), 8);
        assert_eq!(s2.last_index().unwrap(), 12);
        // Region 1 rewrites its tail: region 2's log must not lose anything.
        s1.append(&[entry(7, 6, b"new")], None).expect("overwrite");
        assert_eq!(s1.last_index().unwrap(), 7);
        assert_eq!(s2.last_index().unwrap(), 12);
        s2.compact(9, 12).expect("compact 2");
        assert_eq!(s1.first_index().unwrap(), 6, "region 1 keeps its log");
    }
    let store = Engine::open(dir.path()).expect("reopen");
    assert_eq!(store.region_ids().expect("ids"), vec![1, 2]);
    let s1 = RaftStorage::open(store.region(1).expect("view 1"), logger()).expect("storage 1");
    let s2 = RaftStorage::open(store.region(2).expect("view 2"), logger()).expect("storage 2");
    assert_eq!(
        (s1.first_index().unwrap(), s1.last_index().unwrap()),
        (6, 7)
    );
    assert_eq!(
        (s2.first_index().unwrap(), s2.last_index().unwrap()),
        (9, 12)
    );
    let e = s1
        .entries(6, 8, None, GetEntriesContext::empty(false))
        .expect("entries");
    assert_eq!((&e[0].data[..], &e[1].data[..]), (&b"one"[..], &b"new"[..]));
    let e = s2
        .entries(9, 13, None, GetEntriesContext::empty(false))
        .expect("entries");
    assert!(e.iter().all(|e| &e.data[..] == b"two"));
    assert_eq!(s1.initial_state().unwrap().conf_state.voters, vec![11, 12]);
    assert_eq!(s2.initial_state().unwrap().conf_state.voters, vec![21]);
}

#[test]
fn a_write_outside_the_region_is_refused_at_apply() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Engine::open(dir.path()).expect("open");
    let view = store
        .create_region(&region(3, "b", "d", 1, &[(31, 1)]))
        .expect("region");
    let mut sm = StateMachine::new(view, WINDOW).expect("sm");
    let results = apply(
        &mut sm,
        6,
        &[
            cmd(0, 0, put("b", "1")),
            cmd(0, 0, put("d", "no")),
            cmd(0, 0, put("a", "no")),
            cmd(0, 0, put("c\u{ff}", "2")),
        ],
    );
    assert!(matches!(results[0], Ok(CommandResult::Put { .. })));
    assert!(matches!(&results[1], Err(e) if e.contains("key not in region")));
    assert!(matches!(&results[2], Err(e) if e.contains("key not in region")));
    assert!(matches!(results[3], Ok(CommandResult::Put { .. })));
    assert_eq!(user_keys(&store), vec!["b", "c\u{ff}"]);
    assert_eq!(sm.engine().apply_state().expect("apply").index, 9);
}

#[test]
fn a_split_divides_the_range_bumps_both_epochs_and_keeps_retries_at_most_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Engine::open(dir.path()).expect("open");
    let view = store
        .create_region(&region(1, "", "", 1, &[(11, 1), (12, 2), (13, 3)]))
        .expect("region");
    let mut sm = StateMachine::new(view, WINDOW).expect("sm");
    let results = apply(
        &mut sm,
        6,
        &[
            cmd(9, 1, put("a", "1")),
            cmd(9, 2, put("x", "first")),
            cmd(9, 3, put("x", "second")),
            // Stale version, key at the start, key outside: all refused, nothing changes.
            cmd(0, 0, split("m", 2, &[21, 22, 23], 0)),
            cmd(0, 0, split("", 2, &[21, 22, 23], 1)),
            cmd(0, 0, split("m", 2, &[21, 22], 1)),
            cmd(0, 0, split("m", 2, &[21, 22, 23], 1)),
            cmd(0, 0, put("x", "late")),
            cmd(9, 1, put("a", "1")),
        ],
    );
    assert!(results[..3]
        .iter()
        .all(|r| matches!(r, Ok(CommandResult::Put { .. }))));
    for r in &results[3..6] {
        assert!(r.is_err(), "bad split applied: {r:?}");
    }
    assert_eq!(results[6], Ok(CommandResult::Split { new_region: 2 }));
    assert!(
        matches!(&results[7], Err(e) if e.contains("key not in region")),
        "a write to the other half after the split: {:?}",
        results[7]
    );
    assert!(
        matches!(results[8], Ok(CommandResult::Put { .. })),
        "a retry on the left half"
    );

    let left = sm.region().expect("left").clone();
    assert_eq!(
        (&left.start_key[..], &left.end_key[..]),
        (&b""[..], &b"m"[..])
    );
    assert_eq!(region::epoch(&left).version, 2);
    let right_view = store.region(2).expect("view 2");
    let right = right_view.region_meta().expect("meta").expect("a region");
    assert_eq!(
        (&right.start_key[..], &right.end_key[..]),
        (&b"m"[..], &b""[..])
    );
    assert_eq!(region::epoch(&right).version, 2);
    assert_eq!(
        right
            .peers
            .iter()
            .map(|p| (p.id, p.store_id))
            .collect::<Vec<_>>(),
        vec![(21, 1), (22, 2), (23, 3)]
    );
    let s2 = RaftStorage::open(right_view.clone(), logger()).expect("storage 2");
    assert_eq!(s2.last_index().unwrap(), REGION_INIT_INDEX);
    assert_eq!(
        s2.initial_state().unwrap().conf_state.voters,
        vec![21, 22, 23]
    );

    // The new region: a retry of a write the parent applied before the split (the client
    // did not hear the answer, and now routes "x" here) is answered from the copied record
    // and does not write again.
    let mut sm2 = StateMachine::new(right_view, WINDOW).expect("sm 2");
    let results = apply(
        &mut sm2,
        6,
        &[
            cmd(9, 2, put("x", "first")),
            cmd(0, 0, put("a", "no")),
            cmd(
                0,
                0,
                Op::Delete(Delete {
                    key: "y".into(),
                    condition: None,
                }),
            ),
        ],
    );
    assert!(matches!(results[0], Ok(CommandResult::Put { .. })));
    assert!(results[1].is_err(), "the left half's key in the right half");
    assert_eq!(
        results[2],
        Ok(CommandResult::Delete {
            existed: false,
            revision: 3
        }),
        "the new region goes on from the parent's revisions (three puts before the split)"
    );
    assert_eq!(store.get(b"x").expect("get"), Some(b"second".to_vec()));
    assert_eq!(store.get(b"a").expect("get"), Some(b"1".to_vec()));
}

#[test]
fn a_split_survives_a_reopen_with_both_halves_consistent() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Engine::open(dir.path()).expect("open");
        let view = store
            .create_region(&region(1, "", "", 1, &[(11, 1)]))
            .expect("region");
        let mut sm = StateMachine::new(view, WINDOW).expect("sm");
        let results = apply(
            &mut sm,
            6,
            &[
                cmd(0, 0, put("c", "1")),
                cmd(0, 0, split("k", 5, &[51], 1)),
                cmd(0, 0, put("d", "2")),
            ],
        );
        assert_eq!(results[1], Ok(CommandResult::Split { new_region: 5 }));
        crate::tests::sync(sm.engine());
    }
    let store = Engine::open(dir.path()).expect("reopen");
    assert_eq!(store.region_ids().expect("ids"), vec![1, 5]);
    let left = store.region(1).expect("view 1");
    let right = store.region(5).expect("view 5");
    for v in [&left, &right] {
        v.check_consistency().expect("apply records agree");
    }
    assert_eq!(left.apply_state().expect("apply").index, 8);
    assert_eq!(right.apply_state().expect("apply").index, REGION_INIT_INDEX);
    let sm = StateMachine::new(left, WINDOW).expect("sm");
    assert_eq!(&sm.region().expect("meta").end_key[..], b"k");
}

#[test]
fn a_region_snapshot_carries_its_range_only_and_installs_beside_other_regions() {
    let src_dir = tempfile::tempdir().expect("tempdir");
    let src = Engine::open(src_dir.path()).expect("open");
    let view = src
        .create_region(&region(1, "", "", 1, &[(11, 1), (12, 2)]))
        .expect("region");
    let mut sm = StateMachine::new(view, WINDOW).expect("sm");
    apply(
        &mut sm,
        6,
        &[
            cmd(0, 0, put("a", "1")),
            cmd(4, 1, put("p", "2")),
            cmd(0, 0, split("m", 2, &[21, 22], 1)),
        ],
    );
    let right_src = src.region(2).expect("view 2");
    let mut sm2 = StateMachine::new(right_src.clone(), WINDOW).expect("sm 2");
    apply(
        &mut sm2,
        6,
        &[cmd(0, 0, put("q", "3")), cmd(0, 0, put("z", "4"))],
    );
    let snap = crate::snapshot::build(&right_src).expect("build");
    assert_eq!(snap.get_metadata().index, 7);
    assert_eq!(snap.get_metadata().get_conf_state().voters, vec![21, 22]);

    // Another store holds region 1 (with a key of its own) and an empty peer of region 2.
    let dst_dir = tempfile::tempdir().expect("tempdir");
    let dst = Engine::open(dst_dir.path()).expect("open");
    let d1 = dst
        .create_region(&region(1, "", "m", 2, &[(11, 1), (12, 2)]))
        .expect("region 1");
    let mut dsm1 = StateMachine::new(d1, WINDOW).expect("sm");
    apply(&mut dsm1, 6, &[cmd(0, 0, put("b", "left"))]);
    let d2 = dst
        .create_region(&region(2, "m", "", 2, &[(21, 1), (22, 2)]))
        .expect("region 2");
    let desc = crate::snapshot::SnapshotDescriptor::decode(&snap.data).expect("descriptor");
    std::fs::create_dir_all(d2.snap_dir()).expect("snap dir");
    std::fs::copy(
        desc.path_in(&right_src.snap_dir()),
        desc.path_in(&d2.snap_dir()),
    )
    .expect("copy file");
    let mut s2 = RaftStorage::open(d2.clone(), logger()).expect("storage");
    s2.apply_snapshot(&snap, None).expect("install");
    assert_eq!(user_keys(&dst), vec!["b", "p", "q", "z"]);
    assert_eq!(d2.apply_state().expect("apply").index, 7);
    d2.check_consistency().expect("consistent");
    // The copied dedup record came along: a retry of (4, 1) is not applied again.
    let mut dsm2 = StateMachine::new(d2, WINDOW).expect("sm");
    apply(
        &mut dsm2,
        8,
        &[cmd(0, 0, put("p", "new")), cmd(4, 1, put("p", "2"))],
    );
    assert_eq!(dst.get(b"p").expect("get"), Some(b"new".to_vec()));
}

#[test]
fn a_region_whose_log_ends_below_its_recorded_durable_index_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Engine::open(dir.path()).expect("open");
    store
        .create_region(&region(1, "", "m", 1, &[(11, 1)]))
        .expect("region 1");
    store
        .create_region(&region(2, "m", "", 1, &[(21, 1)]))
        .expect("region 2");
    let ends = |pairs: &[(u64, u64)]| pairs.iter().copied().collect();
    // Nothing recorded yet: any start is fine.
    store
        .check_region_durable_indexes(&ends(&[(1, 6)]))
        .unwrap();
    store
        .record_region_durable_indexes(&ends(&[(1, 40), (2, 30), (3, 20)]))
        .unwrap();
    assert_eq!(
        store.recorded_region_indexes().unwrap(),
        ends(&[(1, 40), (2, 30), (3, 20)])
    );
    // At or past the records; region 3 is not hosted (a split's child the parent's log
    // replays, or a removed peer).
    store
        .check_region_durable_indexes(&ends(&[(1, 40), (2, 35)]))
        .unwrap();
    match store.check_region_durable_indexes(&ends(&[(1, 40), (2, 29)])) {
        Err(
            e @ crate::Error::RegionRolledBack {
                region: 2,
                log_end: 29,
                recorded: 30,
            },
        ) => {
            let text = e.to_string();
            assert!(
                text.contains("region 2") && text.contains("29") && text.contains("30"),
                "{text}"
            );
        }
        other => panic!("a rolled-back region was accepted: {other:?}"),
    }
    // Region 2's peer here is removed, and a later peer of it waits uninitialized: no rollback.
    store.destroy_region(2, 21).expect("destroy");
    store
        .check_region_durable_indexes(&ends(&[(1, 40), (2, 0)]))
        .unwrap();
    // Region 1 uninitialized without a tombstone: its state was lost.
    assert!(store
        .check_region_durable_indexes(&ends(&[(1, 0)]))
        .is_err());
}
