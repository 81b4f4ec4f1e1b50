//! Fault points on storage writes. Fail points are global to a process, so this test has a test
//! binary of its own: configured beside the unit tests, it failed whichever test wrote at the
//! same moment.

#![cfg(feature = "failpoints")]

use raft::prelude::Entry;
use rdb_storage::{Engine, Error, Ident, RaftStorage, StateMachine};

fn entry(index: u64) -> Entry {
    Entry {
        index,
        term: 1,
        ..Default::default()
    }
}

#[test]
fn fault_points_fail_storage_writes_with_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    engine
        .bootstrap_or_check(
            Ident {
                cluster_id: 1,
                node_id: 1,
            },
            &[1, 2, 3],
            &[],
        )
        .unwrap();
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let mut s = RaftStorage::open(engine.clone(), logger).unwrap();
    let mut sm = StateMachine::new(engine, 1000).unwrap();
    let scenario = fail::FailScenario::setup();
    fail::cfg("storage-append", "return(disk on fire)").unwrap();
    let e = s.append(&[entry(1)], None).unwrap_err();
    assert!(e.to_string().contains("disk on fire"), "{e}");
    fail::remove("storage-append");
    s.append(&[entry(1)], None).unwrap();
    fail::cfg("storage-apply", "return").unwrap();
    assert!(matches!(sm.apply(&[entry(1)]), Err(Error::Injected(_))));
    scenario.teardown();
}
