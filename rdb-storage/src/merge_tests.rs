//! Merges of two regions of one store (specs/017-merge): the source freezes at its prepare,
//! the target takes it over in one batch, a commit that does not fit is refused, and a
//! rollback lets the source serve again.

use raft::prelude::Entry;
use rdb_proto::command::command::Op;
use rdb_proto::command::{CommitMerge, Delete, PrepareMerge, RollbackMerge};

use crate::region::merge::MERGED_TOMBSTONE;
use crate::region::{Peer, Region, RegionEpoch, REGION_INIT_TERM};
use crate::tests::{cmd, entry, put};
use crate::{Applied, CommandResult, Engine, StateMachine};

const WINDOW: u64 = 1000;

fn region(id: u64, start: &str, end: &str, peer: u64) -> Region {
    Region {
        id,
        start_key: start.into(),
        end_key: end.into(),
        epoch: Some(RegionEpoch {
            version: 1,
            conf_ver: 1,
        }),
        peers: vec![Peer {
            id: peer,
            store_id: 1,
            learner: false,
        }],
    }
}

/// Target region 1 `["", "m")` and source region 2 `["m", "")` on one store.
fn two_regions(store: &Engine) -> (StateMachine, StateMachine) {
    let target = store.create_region(&region(1, "", "m", 11)).expect("1");
    let source = store.create_region(&region(2, "m", "", 21)).expect("2");
    (
        StateMachine::new(target, WINDOW).expect("sm 1"),
        StateMachine::new(source, WINDOW).expect("sm 2"),
    )
}

fn prepare(version: u64) -> Op {
    Op::PrepareMerge(PrepareMerge {
        target_id: 1,
        target_version: 1,
        target_conf_ver: 1,
        version,
        conf_ver: 1,
    })
}

fn commit(prepare_index: u64, target_version: u64, start: &str, end: &str) -> Op {
    Op::CommitMerge(CommitMerge {
        source_id: 2,
        source_start: start.into(),
        source_end: end.into(),
        source_version: 2,
        prepare_index,
        target_version,
        target_conf_ver: 1,
    })
}

fn delete(k: &str) -> Op {
    Op::Delete(Delete {
        key: k.into(),
        condition: None,
    })
}

fn entries(first: u64, cmds: &[Vec<u8>]) -> Vec<Entry> {
    cmds.iter()
        .enumerate()
        .map(|(i, c)| entry(first + i as u64, REGION_INIT_TERM, c))
        .collect()
}

fn results(applied: Vec<Applied>) -> Vec<Result<CommandResult, String>> {
    applied
        .into_iter()
        .map(|a| a.result.expect("a command"))
        .collect()
}

#[test]
fn a_prepared_source_refuses_writes_and_the_target_takes_it_over_in_one_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Engine::open(dir.path()).expect("open");
    let (mut target, mut source) = two_regions(&store);
    let r = results(
        source
            .apply(&entries(
                6,
                &[
                    cmd(0, 0, put("n", "1")),
                    cmd(9, 1, delete("n")),
                    cmd(0, 0, prepare(0)),
                    cmd(0, 0, prepare(1)),
                    cmd(0, 0, put("o", "late")),
                    cmd(0, 0, prepare(2)),
                ],
            ))
            .expect("apply source"),
    );
    assert_eq!(
        r[1],
        Ok(CommandResult::Delete {
            existed: true,
            revision: 2
        })
    );
    assert!(
        matches!(&r[2], Err(e) if e.contains("epoch not match")),
        "{:?}",
        r[2]
    );
    assert_eq!(r[3], Ok(CommandResult::MergePrepared { target: 1 }));
    assert!(
        matches!(&r[4], Err(e) if e.contains("region merging")),
        "{:?}",
        r[4]
    );
    assert!(
        matches!(&r[5], Err(e) if e.contains("merging already")),
        "{:?}",
        r[5]
    );
    let prepared = source.region().expect("meta").clone();
    assert_eq!(prepared.epoch.expect("epoch").version, 2);
    assert_eq!(source.merging().expect("merging").index, 9);

    let r = results(
        target
            .apply(&entries(
                6,
                &[
                    cmd(0, 0, put("a", "1")),
                    cmd(0, 0, commit(9, 7, "m", "")),
                    cmd(0, 0, commit(9, 1, "x", "z")),
                    cmd(0, 0, commit(9, 1, "m", "")),
                    cmd(9, 1, delete("n")),
                    cmd(0, 0, put("p", "2")),
                ],
            ))
            .expect("apply target"),
    );
    assert!(matches!(r[0], Ok(CommandResult::Put { .. })));
    assert!(
        matches!(&r[1], Err(e) if e.contains("epoch not match")),
        "{:?}",
        r[1]
    );
    assert!(
        matches!(&r[2], Err(e) if e.contains("not adjacent")),
        "{:?}",
        r[2]
    );
    assert_eq!(r[3], Ok(CommandResult::Merged { source: 2 }));
    assert_eq!(
        r[4],
        Ok(CommandResult::Delete {
            existed: true,
            revision: 2
        }),
        "a retry of a request the source applied is answered from its moved record"
    );
    assert_eq!(
        r[5],
        Ok(CommandResult::Put { revision: 3 }),
        "the target owns the source's keys, and goes on above both regions' revisions (its \
         own last was 1, the source's 2)"
    );
    let merged = target.region().expect("meta").clone();
    assert_eq!(
        (merged.start_key.as_slice(), merged.end_key.as_slice()),
        (&b""[..], &b""[..])
    );
    assert_eq!(
        merged.epoch.expect("epoch").version,
        3,
        "one past both versions"
    );
    assert_eq!(target.take_merges(), vec![2]);
    assert_eq!(
        store.region_ids().expect("ids"),
        vec![1],
        "the source is gone"
    );
    assert_eq!(
        store.tombstone(2).expect("tombstone"),
        Some(MERGED_TOMBSTONE)
    );
    let reopened = store.region(1).expect("view").region_meta().expect("meta");
    assert_eq!(reopened, Some(merged));
}

#[test]
fn a_commit_waits_until_the_store_s_source_replica_applied_the_prepare() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Engine::open(dir.path()).expect("open");
    let (mut target, mut source) = two_regions(&store);
    let log = entries(
        6,
        &[cmd(0, 0, put("a", "1")), cmd(0, 0, commit(7, 1, "m", ""))],
    );
    let done = target.apply(&log).expect("apply target");
    assert_eq!(done.len(), 1, "the apply stops before the commit");
    assert_eq!(target.waiting_for(), Some((2, 7)));
    assert_eq!(target.engine().apply_state().expect("applied").index, 6);
    assert_eq!(store.region_ids().expect("ids"), vec![1, 2]);

    source
        .apply(&entries(
            6,
            &[cmd(0, 0, put("n", "1")), cmd(0, 0, prepare(1))],
        ))
        .expect("apply source");
    let r = results(target.apply(&log[1..]).expect("apply target again"));
    assert_eq!(r, vec![Ok(CommandResult::Merged { source: 2 })]);
    assert_eq!(target.waiting_for(), None);
    assert_eq!(store.region_ids().expect("ids"), vec![1]);
}

#[test]
fn a_rollback_lets_the_source_serve_again_at_a_new_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Engine::open(dir.path()).expect("open");
    let (_, mut source) = two_regions(&store);
    let rollback = |prepare_index| Op::RollbackMerge(RollbackMerge { prepare_index });
    let r = results(
        source
            .apply(&entries(
                6,
                &[
                    cmd(0, 0, rollback(6)),
                    cmd(0, 0, prepare(1)),
                    cmd(0, 0, rollback(6)),
                    cmd(0, 0, rollback(7)),
                    cmd(0, 0, put("n", "1")),
                ],
            ))
            .expect("apply"),
    );
    assert!(r[0].is_err(), "nothing to roll back: {:?}", r[0]);
    assert!(r[2].is_err(), "another merge's rollback: {:?}", r[2]);
    assert_eq!(r[3], Ok(CommandResult::MergeRolledBack));
    assert!(matches!(r[4], Ok(CommandResult::Put { .. })));
    assert!(source.merging().is_none());
    let meta = store.region(2).expect("view").region_meta().expect("meta");
    assert_eq!(meta.and_then(|m| m.epoch).map(|e| e.version), Some(3));
    assert_eq!(
        store.region(2).expect("view").merge_state().expect("state"),
        None
    );
}
