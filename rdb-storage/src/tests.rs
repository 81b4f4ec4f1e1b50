//! Contract tests for the storage layer.

use prost::Message as _;
use raft::prelude::{Entry, HardState, Snapshot};
use raft::{GetEntriesContext, Storage, StorageError};
use rdb_proto::command::{command::Op, Cas, Command, Delete, Put};

use crate::snapshot::{IncomingSnapshot, SnapshotDescriptor};
use crate::{CommandResult, Engine, Error, Ident, RaftStorage, StateMachine};

pub(crate) const IDENT: Ident = Ident {
    cluster_id: 7,
    node_id: 1,
};

pub(crate) fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

pub(crate) fn open(dir: &std::path::Path) -> (Engine, RaftStorage) {
    let engine = Engine::open(dir).expect("open");
    engine
        .bootstrap_or_check(IDENT, &[1, 2, 3], &[])
        .expect("bootstrap");
    let storage = RaftStorage::open(engine.clone(), logger()).expect("raft storage");
    (engine, storage)
}

pub(crate) fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
    Entry {
        index,
        term,
        data: data.to_vec().into(),
        ..Default::default()
    }
}

pub(crate) fn cmd(client_id: u64, seq: u64, op: Op) -> Vec<u8> {
    Command {
        client_id,
        seq,
        op: Some(op),
        stamp: 0,
    }
    .encode_to_vec()
}

pub(crate) fn put(k: &str, v: &str) -> Op {
    Op::Put(Put {
        key: k.into(),
        value: v.into(),
    })
}

/// A synced write (as the next log append would be): apply batches before it become durable.
pub(crate) fn sync(engine: &Engine) {
    engine
        .write(rocksdb::WriteBatch::default(), true)
        .expect("synced write");
}

pub(crate) fn dedup_records(engine: &Engine) -> usize {
    engine
        .db()
        .iterator_cf(
            engine.cf(crate::keys::CF_DATA),
            rocksdb::IteratorMode::Start,
        )
        .filter(|r| matches!(r, Ok((k, _)) if k[0] == crate::keys::DEDUP_PREFIX))
        .count()
}

fn ctx() -> GetEntriesContext {
    GetEntriesContext::empty(false)
}

fn is_err(r: raft::Result<impl std::fmt::Debug>, want: StorageError) -> bool {
    matches!(r, Err(raft::Error::Store(e)) if e == want)
}

#[test]
fn fresh_storage_is_empty_and_bootstrapped_with_voters() {
    let dir = tempfile::tempdir().unwrap();
    let (_, s) = open(dir.path());
    assert_eq!(s.first_index().unwrap(), 1);
    assert_eq!(s.last_index().unwrap(), 0);
    assert_eq!(s.term(0).unwrap(), 0);
    let st = s.initial_state().unwrap();
    assert_eq!(st.conf_state.voters, vec![1, 2, 3]);
    assert_eq!(st.hard_state, HardState::default());
}

#[test]
fn entries_term_and_bounds_follow_the_storage_contract() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut s) = open(dir.path());
    let ents: Vec<Entry> = (1..=10)
        .map(|i| entry(i, 1 + i / 5, b"0123456789"))
        .collect();
    s.append(&ents, None).unwrap();
    assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (1, 10));
    assert_eq!(s.term(4).unwrap(), 1);
    assert_eq!(s.term(5).unwrap(), 2);
    assert!(is_err(s.term(11), StorageError::Unavailable));
    assert_eq!(s.entries(3, 7, None, ctx()).unwrap().len(), 4);
    assert!(s.entries(3, 3, None, ctx()).unwrap().is_empty());
    // max_size: always at least one entry, then stop before exceeding the limit.
    let one = s.entries(1, 11, 1, ctx()).unwrap();
    assert_eq!(one.len(), 1);
    let size = |e: &Entry| protobuf::Message::compute_size(e) as u64;
    let two = s.entries(1, 11, size(&ents[0]) * 2, ctx()).unwrap();
    assert_eq!(two.len(), 2);

    s.compact(6, 10).unwrap();
    assert_eq!(s.first_index().unwrap(), 6);
    assert_eq!(
        s.term(5).unwrap(),
        2,
        "term(first_index - 1) must survive compaction"
    );
    assert!(is_err(s.term(4), StorageError::Compacted));
    assert!(is_err(
        s.entries(5, 8, None, ctx()),
        StorageError::Compacted
    ));
    assert_eq!(s.entries(6, 11, None, ctx()).unwrap()[0].index, 6);
    // Compaction never passes the applied index.
    s.compact(10, 7).unwrap();
    assert_eq!(s.first_index().unwrap(), 8);
}

#[test]
#[should_panic(expected = "out of bound")]
fn entries_past_last_index_plus_one_panics_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut s) = open(dir.path());
    s.append(&[entry(1, 1, b"")], None).unwrap();
    let _ = s.entries(1, 3, None, ctx());
}

#[test]
fn conflicting_append_replaces_the_suffix_on_disk_and_in_cache() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_, mut s) = open(dir.path());
        let ents: Vec<Entry> = (1..=5).map(|i| entry(i, 1, b"a")).collect();
        s.append(&ents, None).unwrap();
        s.append(&[entry(3, 2, b"b")], None).unwrap();
        assert_eq!(s.last_index().unwrap(), 3);
        assert_eq!(s.term(3).unwrap(), 2);
        assert!(is_err(s.term(4), StorageError::Unavailable));
    }
    let (_, s) = open(dir.path());
    assert_eq!(
        s.last_index().unwrap(),
        3,
        "stale suffix must be gone after reopen"
    );
    assert_eq!(s.entries(1, 4, None, ctx()).unwrap()[2].data.as_ref(), b"b");
}

#[test]
fn reopen_recovers_hard_state_log_and_data_from_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (engine, mut s) = open(dir.path());
        let hs = HardState {
            term: 3,
            vote: 2,
            commit: 2,
            ..Default::default()
        };
        let ents = vec![
            entry(1, 3, &cmd(1, 1, put("k", "v1"))),
            entry(2, 3, &cmd(1, 2, put("k", "v2"))),
        ];
        s.append(&ents, Some(&hs)).unwrap();
        let mut sm = StateMachine::new(engine, 1000).unwrap();
        sm.apply(&ents).unwrap();
        // Closing does not flush memtables while the WAL is on, so reopening replays the WAL.
        // (kill -9 of a real process is covered by the multi-process suite in tests/.)
        drop((sm, s));
    }
    let engine = Engine::open(dir.path()).unwrap_or_else(|e| panic!("reopen: {e}"));
    engine.bootstrap_or_check(IDENT, &[1, 2, 3], &[]).unwrap();
    let s = RaftStorage::open(engine.clone(), logger()).unwrap();
    let hs = s.initial_state().unwrap().hard_state;
    assert_eq!((hs.term, hs.vote, hs.commit), (3, 2, 2));
    assert_eq!(s.last_index().unwrap(), 2);
    assert_eq!(engine.apply_state().unwrap().index, 2);
    assert_eq!(engine.get(b"k").unwrap().as_deref(), Some(&b"v2"[..]));
}

#[test]
fn a_gap_in_the_retained_log_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (engine, mut s) = open(dir.path());
        let hs = HardState {
            term: 2,
            commit: 1,
            ..Default::default()
        };
        // Big entries, as batch puts make them: the check walks their keys only.
        let big = vec![7u8; 256 * 1024];
        let ents: Vec<Entry> = (1..=8).map(|i| entry(i, 2, &big)).collect();
        s.append(&ents, Some(&hs)).unwrap();
        let space = engine.space();
        engine
            .db()
            .delete_cf(engine.cf(crate::keys::CF_RAFT_LOG), space.log_key(5))
            .unwrap();
    }
    let engine = Engine::open(dir.path()).unwrap();
    engine.bootstrap_or_check(IDENT, &[1, 2, 3], &[]).unwrap();
    match RaftStorage::open(engine, logger()) {
        Err(Error::Corrupt(m)) => assert!(m.contains("7 entries between 1 and 8"), "{m}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a log with a gap opened"),
    }
}

#[test]
fn applied_index_never_runs_ahead_of_the_data_it_describes() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, mut s) = open(dir.path());
    let ents: Vec<Entry> = (1..=50)
        .map(|i| entry(i, 1, &cmd(9, i, put(&format!("k{i}"), "v"))))
        .collect();
    s.append(&ents, None).unwrap();
    let mut sm = StateMachine::new(engine.clone(), 1000).unwrap();
    for chunk in ents.chunks(7) {
        sm.apply(chunk).unwrap();
        let applied = engine.apply_state().unwrap().index;
        // Every key up to the applied index is present, none beyond it.
        for i in 1..=50u64 {
            let present = engine.get(format!("k{i}").as_bytes()).unwrap().is_some();
            assert_eq!(present, i <= applied, "key {i} vs applied {applied}");
        }
    }
}

#[test]
fn identity_is_checked_and_membership_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let engine = Engine::open(dir.path()).unwrap();
    let other = Ident {
        cluster_id: 7,
        node_id: 2,
    };
    assert!(matches!(
        engine.bootstrap_or_check(other, &[1, 2, 3], &[]),
        Err(Error::WrongIdentity { .. })
    ));
    // The stored membership wins over the configured one, and is not rewritten.
    engine.bootstrap_or_check(IDENT, &[1, 2], &[]).unwrap();
    assert_eq!(engine.conf_state().unwrap().unwrap().voters, vec![1, 2, 3]);
    assert_eq!(engine.initial_voters().unwrap(), vec![1, 2, 3]);
    assert_eq!(engine.ident().unwrap(), Some(IDENT));
}

#[test]
fn commands_apply_with_cas_semantics_and_retries_apply_once() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _) = open(dir.path());
    let mut sm = StateMachine::new(engine.clone(), 1000).unwrap();
    let cas = |expected: Option<&str>, new: &str| {
        Op::Cas(Cas {
            key: "c".into(),
            expected: expected.map(Into::into),
            new_value: new.into(),
            condition: None,
        })
    };
    let ents = vec![
        entry(1, 1, b""),
        entry(2, 1, &cmd(5, 1, cas(None, "a"))),
        entry(3, 1, &cmd(5, 2, cas(None, "b"))),
        entry(4, 1, &cmd(5, 3, cas(Some("a"), "c"))),
        // A retry of seq 1: must not apply again even though its precondition holds now.
        entry(
            5,
            1,
            &cmd(
                5,
                1,
                Op::Delete(Delete {
                    key: "c".into(),
                    condition: None,
                }),
            ),
        ),
        entry(
            6,
            1,
            &cmd(
                0,
                0,
                Op::Delete(Delete {
                    key: "c".into(),
                    condition: None,
                }),
            ),
        ),
        entry(7, 1, b"\xff\xff not a command"),
    ];
    let out = sm.apply(&ents).unwrap();
    let results: Vec<_> = out.iter().map(|a| a.result.clone()).collect();
    assert_eq!(results[0], None);
    // Each change gets the next revision; a failed swap reports the last one.
    let cas_result = |succeeded, current: Option<&str>, revision| {
        Some(Ok(CommandResult::Cas {
            succeeded,
            current: current.map(|c| c.as_bytes().to_vec()),
            revision,
            current_meta: current.map(|_| crate::mvcc::Meta {
                create_revision: 1,
                mod_revision: 1,
                version: 1,
            }),
        }))
    };
    assert_eq!(results[1], cas_result(true, None, 1));
    assert_eq!(results[2], cas_result(false, Some("a"), 1));
    assert_eq!(results[3], cas_result(true, None, 2));
    assert_eq!(
        results[4],
        cas_result(true, None, 1),
        "a retried id returns the recorded result"
    );
    assert_eq!(
        results[5],
        Some(Ok(CommandResult::Delete {
            existed: true,
            revision: 3
        }))
    );
    assert!(matches!(results[6], Some(Err(_))));
    assert_eq!(engine.get(b"c").unwrap(), None);
    assert_eq!(engine.apply_state().unwrap().index, 7);
}

#[test]
fn dedup_records_expire_after_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _) = open(dir.path());
    let mut sm = StateMachine::new(engine.clone(), 10).unwrap();
    let ents: Vec<Entry> = (1..=100)
        .map(|i| entry(i, 1, &cmd(3, i, put("k", &i.to_string()))))
        .collect();
    for chunk in ents.chunks(5) {
        sm.apply(chunk).unwrap();
    }
    // The write path deletes nothing: compaction drops dead records, and only once the applied
    // index that killed them is durable.
    engine.compact_data();
    assert_eq!(
        dedup_records(&engine),
        100,
        "unsynced apply batches killed records"
    );
    sync(&engine);
    engine.compact_data();
    let records = dedup_records(&engine);
    assert!(
        records <= 15,
        "dedup records must stay bounded, found {records}"
    );
    assert!(
        records >= 10,
        "the last window must be kept, found {records}"
    );
}

#[test]
fn a_pinned_view_keeps_the_records_live_at_its_index() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _) = open(dir.path());
    let mut sm = StateMachine::new(engine.clone(), 10).unwrap();
    let ents: Vec<Entry> = (1..=60)
        .map(|i| entry(i, 1, &cmd(3, i, put("k", "v"))))
        .collect();
    sm.apply(&ents[..20]).unwrap();
    sync(&engine);
    let pin = engine.dedup_horizon().pin();
    sm.apply(&ents[20..]).unwrap();
    sync(&engine);
    engine.compact_data();
    // Live at 20 (the pin): records written after index 10.
    assert_eq!(dedup_records(&engine), 50);
    drop(pin);
    engine.compact_data();
    assert_eq!(dedup_records(&engine), 10);
}

#[test]
fn replicas_that_compacted_at_different_times_hash_the_same() {
    use rdb_proto::command::HashPoint;
    let log: Vec<Entry> = (1..=41u64)
        .map(|i| match i {
            41 => entry(i, 1, &cmd(0, 0, Op::HashPoint(HashPoint {}))),
            _ => entry(i, 1, &cmd(5, i, put(&format!("k{}", i % 7), "v"))),
        })
        .collect();
    let mut hashes = Vec::new();
    for compact in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (engine, _) = open(dir.path());
        let mut sm = StateMachine::new(engine.clone(), 10).unwrap();
        sm.apply(&log[..40]).unwrap();
        sync(&engine);
        if compact {
            engine.compact_data();
        }
        let before = dedup_records(&engine);
        assert_eq!(before, if compact { 10 } else { 40 });
        sm.apply(&log[40..]).unwrap();
        let results = sm.hashes();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let done = loop {
            match results.lock().unwrap().get(&41).cloned() {
                Some(crate::HashState::Computing) | None => {}
                Some(other) => break other,
            }
            assert!(std::time::Instant::now() < deadline, "hash never finished");
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        hashes.push(done);
    }
    assert!(matches!(hashes[0], crate::HashState::Done { .. }));
    assert_eq!(hashes[0], hashes[1]);
}

#[test]
fn scan_is_ordered_bounded_and_limited() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _) = open(dir.path());
    let mut sm = StateMachine::new(engine.clone(), 1000).unwrap();
    let ents: Vec<Entry> = ["b", "a", "d", "c", "e"]
        .iter()
        .enumerate()
        .map(|(i, k)| entry(i as u64 + 1, 1, &cmd(0, 0, put(k, k))))
        .collect();
    sm.apply(&ents).unwrap();
    let page = engine.scan(b"b", b"e", 10, usize::MAX).unwrap();
    let keys: Vec<_> = page.kvs.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(keys, vec![b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]);
    assert!(!page.more);
    let page = engine.scan(b"", b"", 2, usize::MAX).unwrap();
    assert_eq!(page.kvs.len(), 2);
    assert!(page.more);
}

/// Ships the file of a snapshot built on `src` into `dst`'s snapshot folder the way the
/// transport does: in chunks, through [`IncomingSnapshot`].
fn ship(src: &Engine, dst: &Engine, snap: &Snapshot) -> std::path::PathBuf {
    let desc = SnapshotDescriptor::decode(&snap.data).unwrap();
    let mut from = std::fs::File::open(desc.path_in(&src.snap_dir())).unwrap();
    let mut inc = IncomingSnapshot::create(&dst.snap_dir(), desc, u64::MAX).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = std::io::Read::read(&mut from, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        inc.write(&buf[..n]).unwrap();
    }
    inc.finish().unwrap()
}

/// A source with 20 puts applied at term 2 by client 4, and its snapshot.
fn snapshot_source(dir: &std::path::Path) -> (Engine, RaftStorage, Snapshot) {
    let (src, mut src_log) = open(dir);
    let ents: Vec<Entry> = (1..=20)
        .map(|i| entry(i, 2, &cmd(4, i, put(&format!("k{i:02}"), "v"))))
        .collect();
    src_log.append(&ents, None).unwrap();
    let mut sm = StateMachine::new(src.clone(), 1000).unwrap();
    sm.apply(&ents).unwrap();
    let snap = crate::snapshot::build(&src).unwrap();
    (src, src_log, snap)
}

/// Every pair of the data column family, as stored.
fn data_cf(engine: &Engine) -> Vec<(Vec<u8>, Vec<u8>)> {
    engine
        .db()
        .iterator_cf(
            engine.cf(crate::keys::CF_DATA),
            rocksdb::IteratorMode::Start,
        )
        .map(|r| {
            let (k, v) = r.unwrap();
            (k.to_vec(), v.to_vec())
        })
        .collect()
}

#[test]
fn snapshot_round_trip_through_a_file_replaces_state_with_the_readys_hard_state() {
    let src_dir = tempfile::tempdir().unwrap();
    let (src, _src_log, snap) = snapshot_source(src_dir.path());
    assert_eq!(
        (snap.get_metadata().index, snap.get_metadata().term),
        (20, 2)
    );
    // The raft snapshot carries only a descriptor; the data is in a file.
    assert_eq!(snap.data.len(), SnapshotDescriptor::ENCODED_LEN);
    let desc = SnapshotDescriptor::decode(&snap.data).unwrap();
    assert_eq!((desc.index, desc.term), (20, 2));
    let src_file = desc.path_in(&src.snap_dir());
    assert_eq!(std::fs::metadata(&src_file).unwrap().len(), desc.file_len);

    let dst_dir = tempfile::tempdir().unwrap();
    let (dst, mut dst_log) = open(dst_dir.path());
    let mut dsm = StateMachine::new(dst.clone(), 1000).unwrap();
    dsm.apply(&[entry(1, 1, &cmd(0, 0, put("stale", "x")))])
        .unwrap();
    // The follower voted for 1 in term 2 ...
    let old = HardState {
        term: 2,
        vote: 1,
        commit: 1,
        ..Default::default()
    };
    dst_log.append(&[entry(1, 1, b"")], Some(&old)).unwrap();
    let dst_file = ship(&src, &dst, &snap);
    // ... and the Ready that carries the snapshot moved it to term 5, voting for 3.
    let ready_hs = HardState {
        term: 5,
        vote: 3,
        commit: 20,
        ..Default::default()
    };
    dst_log.apply_snapshot(&snap, Some(&ready_hs)).unwrap();
    assert_eq!(
        dst.get(b"stale").unwrap(),
        None,
        "old data must be replaced"
    );
    assert_eq!(data_cf(&dst), data_cf(&src), "data identical to the source");
    assert_eq!(dst_log.first_index().unwrap(), 21);
    assert_eq!(dst_log.last_index().unwrap(), 20);
    assert_eq!(dst_log.term(20).unwrap(), 2);
    assert_eq!(dst.apply_state().unwrap().index, 20);
    // Term and vote come from the same (the Ready's) hard state, on disk and in memory.
    let stored = dst.hard_state().unwrap().unwrap();
    assert_eq!((stored.term, stored.vote), (5, 3));
    assert!(stored.commit >= 20);
    assert_eq!(dst_log.initial_state().unwrap().hard_state, stored);
    assert!(!dst_file.exists(), "the installed file is removed");
    assert!(crate::snapshot::pending_install(&dst).unwrap().is_none());
    // Dedup records travel with the snapshot: a retry after install is still recognised.
    dsm.reload().unwrap();
    let out = dsm
        .apply(&[entry(21, 2, &cmd(4, 5, put("k05", "again")))])
        .unwrap();
    assert!(matches!(out[0].result, Some(Ok(CommandResult::Put { .. }))));
    assert_eq!(dst.get(b"k05").unwrap().as_deref(), Some(&b"v"[..]));
    // Without a Ready hard state, the current one is kept and only its commit raised.
    drop((dsm, dst_log, dst));
    let dst2_dir = tempfile::tempdir().unwrap();
    let (dst2, mut dst2_log) = open(dst2_dir.path());
    dst2_log.append(&[], Some(&old)).unwrap();
    ship(&src, &dst2, &snap);
    dst2_log.apply_snapshot(&snap, None).unwrap();
    let stored = dst2.hard_state().unwrap().unwrap();
    assert_eq!((stored.term, stored.vote, stored.commit), (2, 1, 20));
}

#[test]
fn corrupted_short_or_overlong_snapshots_are_refused_and_change_nothing() {
    let src_dir = tempfile::tempdir().unwrap();
    let (src, _src_log, snap) = snapshot_source(src_dir.path());
    let desc = SnapshotDescriptor::decode(&snap.data).unwrap();
    let dst_dir = tempfile::tempdir().unwrap();
    let (dst, mut dst_log) = open(dst_dir.path());
    StateMachine::new(dst.clone(), 1000)
        .unwrap()
        .apply(&[entry(1, 1, &cmd(0, 0, put("old", "x")))])
        .unwrap();
    dst_log.append(&[entry(1, 1, b"")], None).unwrap();
    let before = data_cf(&dst);
    let unchanged = |dst_log: &RaftStorage| {
        assert_eq!(data_cf(&dst), before);
        assert_eq!(dst_log.last_index().unwrap(), 1);
        assert_eq!(dst.apply_state().unwrap().index, 1);
        assert!(crate::snapshot::pending_install(&dst).unwrap().is_none());
    };
    let bytes = std::fs::read(desc.path_in(&src.snap_dir())).unwrap();
    let dst_file = desc.path_in(&dst.snap_dir());
    std::fs::create_dir_all(dst.snap_dir()).unwrap();

    // Missing file, one flipped byte, a short file: refused before anything is written.
    assert!(dst_log.apply_snapshot(&snap, None).is_err());
    unchanged(&dst_log);
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x40;
    std::fs::write(&dst_file, &flipped).unwrap();
    assert!(matches!(
        dst_log.apply_snapshot(&snap, None),
        Err(Error::BadSnapshot(_))
    ));
    unchanged(&dst_log);
    std::fs::write(&dst_file, &bytes[..bytes.len() - 3]).unwrap();
    assert!(matches!(
        dst_log.apply_snapshot(&snap, None),
        Err(Error::BadSnapshot(_))
    ));
    unchanged(&dst_log);
    // A length field pointing past the end never sizes a buffer.
    let mut huge = bytes.clone();
    huge[8..12].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
    std::fs::write(&dst_file, &huge).unwrap();
    assert!(crate::snapshot::verify_file(&dst_file, &desc).is_err());
    std::fs::remove_file(&dst_file).unwrap();

    // Receiving: more than announced, less than announced, or another checksum is refused,
    // and the temporary file does not stay.
    let mut inc = IncomingSnapshot::create(&dst.snap_dir(), desc, u64::MAX).unwrap();
    inc.write(&bytes).unwrap();
    assert!(inc.write(b"x").is_err());
    drop(inc);
    let mut inc = IncomingSnapshot::create(&dst.snap_dir(), desc, u64::MAX).unwrap();
    inc.write(&bytes[..10]).unwrap();
    assert!(inc.finish().is_err());
    let mut inc = IncomingSnapshot::create(&dst.snap_dir(), desc, u64::MAX).unwrap();
    inc.write(&flipped).unwrap();
    assert!(inc.finish().is_err());
    assert!(IncomingSnapshot::create(&dst.snap_dir(), desc, desc.file_len - 1).is_err());
    assert_eq!(
        std::fs::read_dir(dst.snap_dir()).unwrap().count(),
        0,
        "refused transfers leave no file"
    );
    // Descriptors: garbage and a mismatch with the metadata are refused.
    assert!(SnapshotDescriptor::decode(b"RDBSNAP1 not a descriptor").is_err());
    let mut other = snap.clone();
    other.mut_metadata().index = 19;
    ship(&src, &dst, &snap);
    assert!(dst_log.apply_snapshot(&other, None).is_err());
    unchanged(&dst_log);
}

#[test]
fn a_crash_between_the_first_and_the_last_install_batch_is_finished_on_reopen() {
    let src_dir = tempfile::tempdir().unwrap();
    let (src, _src_log, snap) = snapshot_source(src_dir.path());
    let dst_dir = tempfile::tempdir().unwrap();
    {
        let (dst, mut dst_log) = open(dst_dir.path());
        StateMachine::new(dst.clone(), 1000)
            .unwrap()
            .apply(&[entry(1, 1, &cmd(0, 0, put("old", "x")))])
            .unwrap();
        dst_log.append(&[entry(1, 1, b"")], None).unwrap();
        ship(&src, &dst, &snap);
        // Phase one only, then part of the data cleared: the process "dies" here.
        dst_log.begin_snapshot_install(&snap, None).unwrap();
        let mut batch = rocksdb::WriteBatch::default();
        batch.delete_cf(dst.cf(crate::keys::CF_DATA), crate::keys::data_key(b"old"));
        dst.write(batch, false).unwrap();
        assert!(crate::snapshot::pending_install(&dst).unwrap().is_some());
    }
    let (dst, dst_log) = open(dst_dir.path());
    assert_eq!(
        dst.recovered_install().map(|d| d.index),
        Some(20),
        "reopening finished the install"
    );
    assert_eq!(data_cf(&dst), data_cf(&src), "data identical to the source");
    assert_eq!(dst.apply_state().unwrap().index, 20);
    assert_eq!(dst_log.first_index().unwrap(), 21);
    assert_eq!(dst_log.last_index().unwrap(), 20);
    assert!(crate::snapshot::pending_install(&dst).unwrap().is_none());
    assert_eq!(std::fs::read_dir(dst.snap_dir()).unwrap().count(), 0);
    // A later reopen is an ordinary one.
    drop((dst, dst_log));
    let (dst, _) = open(dst_dir.path());
    assert_eq!(dst.recovered_install(), None);
    assert_eq!(dst.apply_state().unwrap().index, 20);
}

#[test]
fn a_pending_install_whose_file_is_gone_refuses_to_open() {
    let src_dir = tempfile::tempdir().unwrap();
    let (src, _src_log, snap) = snapshot_source(src_dir.path());
    let dst_dir = tempfile::tempdir().unwrap();
    {
        let (dst, mut dst_log) = open(dst_dir.path());
        let file = ship(&src, &dst, &snap);
        dst_log.begin_snapshot_install(&snap, None).unwrap();
        std::fs::remove_file(file).unwrap();
    }
    let err = Engine::open(dst_dir.path()).unwrap_err().to_string();
    assert!(err.contains("snapshot install is pending"), "{err}");
}

#[test]
fn reads_during_an_install_are_refused_not_mixed() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _) = open(dir.path());
    assert_eq!(engine.get(b"k").unwrap(), None);
    let install = engine.begin_install(vec![(
        crate::keys::DATA_CF_FIRST.to_vec(),
        crate::keys::DATA_CF_END.to_vec(),
    )]);
    assert!(matches!(engine.get(b"k"), Err(Error::SnapshotInstalling)));
    assert!(matches!(
        engine.scan(b"", b"", 10, usize::MAX),
        Err(Error::SnapshotInstalling)
    ));
    engine.end_install(install);
    assert_eq!(engine.scan(b"", b"", 10, usize::MAX).unwrap().kvs.len(), 0);
}

/// Records the largest single heap allocation made by threads that opted in.
struct LargestAlloc;

static LARGEST: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

thread_local! {
    static TRACKED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn note(size: usize) {
    if TRACKED.try_with(|t| t.get()).unwrap_or(false) {
        LARGEST.fetch_max(size, std::sync::atomic::Ordering::Relaxed);
    }
}

// SAFETY: forwards every call to the system allocator unchanged; only records sizes.
unsafe impl std::alloc::GlobalAlloc for LargestAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: LargestAlloc = LargestAlloc;

#[test]
fn a_multi_mib_snapshot_is_built_shipped_and_installed_without_holding_it_in_memory() {
    let src_dir = tempfile::tempdir().unwrap();
    let (src, mut src_log) = open(src_dir.path());
    // 24 MiB of values in 384 entries of 64 KiB.
    let ents: Vec<Entry> = (1..=384u64)
        .map(|i| {
            let value = vec![(i % 251) as u8; 64 << 10];
            let op = Op::Put(Put {
                key: format!("big{i:04}").into(),
                value,
            });
            entry(i, 3, &cmd(0, 0, op))
        })
        .collect();
    src_log.append(&ents, None).unwrap();
    let mut sm = StateMachine::new(src.clone(), 1000).unwrap();
    for chunk in ents.chunks(16) {
        sm.apply(chunk).unwrap();
    }
    drop(ents);

    let dst_dir = tempfile::tempdir().unwrap();
    let (dst, mut dst_log) = open(dst_dir.path());

    TRACKED.with(|t| t.set(true));
    LARGEST.store(0, std::sync::atomic::Ordering::Relaxed);
    let snap = crate::snapshot::build(&src).unwrap();
    ship(&src, &dst, &snap);
    dst_log.apply_snapshot(&snap, None).unwrap();
    TRACKED.with(|t| t.set(false));
    let largest = LARGEST.load(std::sync::atomic::Ordering::Relaxed);

    let desc = SnapshotDescriptor::decode(&snap.data).unwrap();
    assert!(desc.file_len > 24 << 20, "{desc:?}");
    assert_eq!(
        dst.scan(b"big", b"bih", 1000, usize::MAX)
            .unwrap()
            .kvs
            .len(),
        384
    );
    assert_eq!(data_cf(&dst), data_cf(&src));
    assert!(
        largest < 2 << 20,
        "one allocation of {largest} bytes while moving a {} byte snapshot",
        desc.file_len
    );
}

#[test]
fn storage_snapshot_is_temporarily_unavailable_until_built() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, mut s) = open(dir.path());
    let ents: Vec<Entry> = (1..=5)
        .map(|i| entry(i, 1, &cmd(0, 0, put("k", "v"))))
        .collect();
    s.append(&ents, None).unwrap();
    StateMachine::new(engine, 1000)
        .unwrap()
        .apply(&ents)
        .unwrap();
    assert!(is_err(
        s.snapshot(5, 2),
        StorageError::SnapshotTemporarilyUnavailable
    ));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match s.snapshot(5, 2) {
            Ok(snap) => {
                assert_eq!(snap.get_metadata().index, 5);
                break;
            }
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            Err(e) => panic!("snapshot never became ready: {e}"),
        }
    }
}

#[test]
fn non_rdb_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut o = rocksdb::Options::default();
        o.create_if_missing(true);
        let db = rocksdb::DB::open(&o, dir.path()).unwrap();
        db.put(b"x", b"y").unwrap();
    }
    assert!(matches!(Engine::open(dir.path()), Err(Error::Corrupt(_))));
}

#[test]
fn dedup_expiry_depends_on_the_log_not_on_batch_boundaries() {
    // The same log applied in different batch sizes must give the same results and data.
    let log: Vec<Entry> = (1..=40u64)
        .map(|i| {
            // Entry 30 retries request (8, 1), first applied at index 1: outside a window of 20.
            // Entry 15 retries request (8, 5), first applied at index 5: inside the window.
            let (client, seq) = match i {
                30 => (8, 1),
                15 => (8, 5),
                _ => (8, i),
            };
            entry(i, 1, &cmd(client, seq, put("k", &format!("v{i}"))))
        })
        .collect();
    let mut outcomes = Vec::new();
    for chunk in [1usize, 7, 40] {
        let dir = tempfile::tempdir().unwrap();
        let (engine, _) = open(dir.path());
        let mut sm = StateMachine::new(engine.clone(), 20).unwrap();
        let mut results = Vec::new();
        for c in log.chunks(chunk) {
            results.extend(sm.apply(c).unwrap());
        }
        let v = engine.get(b"k").unwrap();
        outcomes.push((results, v));
    }
    assert_eq!(outcomes[0], outcomes[1]);
    assert_eq!(outcomes[0], outcomes[2]);
    let dir = tempfile::tempdir().unwrap();
    let (engine, _) = open(dir.path());
    let mut sm = StateMachine::new(engine.clone(), 20).unwrap();
    sm.apply(&log[..15]).unwrap();
    // The in-window retry at 15 was not applied: the value is still v14's.
    assert_eq!(engine.get(b"k").unwrap().as_deref(), Some(&b"v14"[..]));
    sm.apply(&log[15..30]).unwrap();
    // The out-of-window retry at 30 was applied as a new write.
    assert_eq!(engine.get(b"k").unwrap().as_deref(), Some(&b"v30"[..]));
}

#[test]
fn dedup_records_written_by_a_huge_batch_are_still_expired_later() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _) = open(dir.path());
    let mut sm = StateMachine::new(engine.clone(), 10).unwrap();
    let ents: Vec<Entry> = (1..=200)
        .map(|i| entry(i, 1, &cmd(3, i, put("k", "v"))))
        .collect();
    sm.apply(&ents[..100]).unwrap(); // one batch far larger than the window
    for chunk in ents[100..].chunks(5) {
        sm.apply(chunk).unwrap();
    }
    sync(&engine);
    engine.compact_data();
    let records = dedup_records(&engine);
    assert!(
        records <= 15,
        "records from the big batch leaked: {records}"
    );
}

#[test]
fn a_batch_applies_as_one_write_and_a_retry_gets_its_recorded_count() {
    use rdb_proto::command::Batch;
    let dir = tempfile::tempdir().unwrap();
    let (engine, _) = open(dir.path());
    let mut sm = StateMachine::new(engine.clone(), 1000).unwrap();
    let put = |k: &str, v: &str| Put {
        key: k.into(),
        value: v.into(),
    };
    let del = |k: &str| Delete {
        key: k.into(),
        condition: None,
    };
    let batch = |puts: Vec<Put>, deletes: Vec<Delete>| Op::Batch(Batch { puts, deletes });
    let ents = vec![
        entry(
            1,
            1,
            &cmd(
                9,
                1,
                batch(vec![put("a", "1"), put("b", "2"), put("a", "3")], vec![]),
            ),
        ),
        entry(
            2,
            1,
            &cmd(
                9,
                2,
                batch(vec![put("c", "4")], vec![del("a"), del("x"), del("b")]),
            ),
        ),
        // A retry of seq 2 after the keys changed again: the recorded count, nothing applied.
        entry(
            3,
            1,
            &cmd(0, 0, batch(vec![put("a", "5"), put("b", "6")], vec![])),
        ),
        entry(4, 1, &cmd(9, 2, batch(vec![], vec![del("a"), del("b")]))),
    ];
    let out = sm.apply(&ents).unwrap();
    let results: Vec<_> = out.iter().map(|a| a.result.clone()).collect();
    let batch_result = |deleted, revision| Some(Ok(CommandResult::Batch { deleted, revision }));
    assert_eq!(results[0], batch_result(0, 1));
    assert_eq!(results[1], batch_result(2, 2));
    assert_eq!(results[2], batch_result(0, 3));
    assert_eq!(results[3], batch_result(2, 2), "the recorded answer");
    assert_eq!(engine.get(b"a").unwrap().as_deref(), Some(&b"5"[..]));
    assert_eq!(engine.get(b"b").unwrap().as_deref(), Some(&b"6"[..]));
    assert_eq!(engine.get(b"c").unwrap().as_deref(), Some(&b"4"[..]));
    // The dedup record survives a restart.
    drop(sm);
    let mut sm = StateMachine::new(engine.clone(), 1000).unwrap();
    let out = sm
        .apply(&[entry(5, 1, &cmd(9, 2, batch(vec![], vec![del("c")])))])
        .unwrap();
    assert_eq!(
        out[0].result,
        Some(Ok(CommandResult::Batch {
            deleted: 2,
            revision: 2
        }))
    );
    assert!(engine.get(b"c").unwrap().is_some());
}

#[test]
fn memory_stats_count_the_memtables_and_the_block_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _) = open(dir.path());
    let mut sm = StateMachine::new(engine.clone(), 1000).unwrap();
    let value = "v".repeat(1000);
    let ents: Vec<Entry> = (1..=200)
        .map(|i| entry(i, 1, &cmd(1, i, put(&format!("k{i:03}"), &value))))
        .collect();
    sm.apply(&ents).unwrap();
    let written = engine.memory_stats();
    assert!(
        written.memtables > 200 * 1000,
        "200 values of 1 KB in the memtables: {written:?}"
    );
    let cf = engine.cf(crate::keys::CF_DATA);
    engine.db().flush_cf(cf).unwrap();
    for i in 1..=200 {
        assert!(engine.get(format!("k{i:03}").as_bytes()).unwrap().is_some());
    }
    let read = engine.memory_stats();
    assert!(
        read.block_cache > 0,
        "reads from an SST file fill the block cache: {read:?}"
    );
}
