//! Tests of what a crash, damage or a replica's own batch boundaries may do to durable state.

use std::path::{Path, PathBuf};

use raft::prelude::{Entry, HardState};
use raft::Storage;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdb_proto::command::{command::Op, Cas, Delete, HashPoint};

use crate::keys::{CF_DATA, CF_RAFT_LOG, CF_RAFT_STATE};
use crate::tests::{cmd, entry, open, put, IDENT};
use crate::{ApplySettings, CommandResult, Engine, Error, HashState, RaftStorage, StateMachine};

/// Every record of the data column family, in key order.
fn dump(engine: &Engine) -> Vec<(Vec<u8>, Vec<u8>)> {
    engine
        .db()
        .iterator_cf(engine.cf(CF_DATA), rocksdb::IteratorMode::Start)
        .map(|r| {
            let (k, v) = r.expect("iterate");
            (k.to_vec(), v.to_vec())
        })
        .collect()
}

/// The files in `dir` whose names end with `suffix`, newest (highest number) last.
fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    v
}

fn truncate_by(path: &Path, bytes: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len.saturating_sub(bytes)).unwrap();
}

/// Appends `n` entries (synced) after `from` and applies them (unsynced), as a node does.
fn write_entries(s: &mut RaftStorage, sm: &mut StateMachine, from: u64, n: u64, value: &str) {
    let ents: Vec<Entry> = (from..from + n)
        .map(|i| entry(i, 1, &cmd(5, i, put(&format!("k{i}"), value))))
        .collect();
    let hs = HardState {
        term: 1,
        vote: 1,
        commit: from + n - 1,
        ..Default::default()
    };
    s.append(&ents, Some(&hs)).unwrap();
    sm.apply(&ents).unwrap();
}

#[test]
fn a_torn_wal_tail_is_tolerated_and_synced_entries_survive() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (engine, mut s) = open(dir.path());
        let mut sm = StateMachine::new(engine, 1000).unwrap();
        write_entries(&mut s, &mut sm, 1, 50, "v");
        // The last apply batch is unsynced: cut into it, as a power cut or a full disk would.
    }
    let wal = files_ending(dir.path(), ".log");
    let newest = wal.last().expect("a WAL file");
    truncate_by(newest, 7);
    let engine = Engine::open(dir.path()).unwrap_or_else(|e| panic!("torn tail refused: {e}"));
    engine.bootstrap_or_check(IDENT, &[1, 2, 3], &[]).unwrap();
    let s = RaftStorage::open(engine.clone(), crate::tests::logger()).unwrap();
    // Every synced log entry is there; the applied index is wherever the surviving apply
    // batches left it, and the data agrees with it.
    assert_eq!(s.last_index().unwrap(), 50);
    engine.check_consistency().unwrap();
    let applied = engine.apply_state().unwrap().index;
    for i in 1..=50u64 {
        let present = engine.get(format!("k{i}").as_bytes()).unwrap().is_some();
        assert_eq!(present, i <= applied, "key {i} vs applied {applied}");
    }
}

#[test]
fn corruption_in_the_middle_of_the_wal_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (engine, mut s) = open(dir.path());
        let mut sm = StateMachine::new(engine, 1000).unwrap();
        for round in 0..20 {
            write_entries(&mut s, &mut sm, 1 + round * 10, 10, &"x".repeat(200));
        }
    }
    let wal = files_ending(dir.path(), ".log");
    let newest = wal.last().expect("a WAL file");
    let mut bytes = std::fs::read(newest).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0x5a;
    }
    std::fs::write(newest, bytes).unwrap();
    match Engine::open(dir.path()) {
        Err(e) => assert!(e.to_string().contains("Corruption"), "unclear cause: {e}"),
        Ok(_) => panic!("a WAL damaged in the middle was opened"),
    }
}

#[test]
fn a_cut_manifest_never_opens_as_an_older_state() {
    // Build a history of flushes (each one a MANIFEST edit, each one letting RocksDB delete a
    // WAL), then cut the MANIFEST's tail by different amounts. Every outcome must be a refusal
    // with a clear cause, or the very same data: never an older state that opens quietly.
    let src = tempfile::tempdir().unwrap();
    let expected;
    {
        let (engine, mut s) = open(src.path());
        let mut sm = StateMachine::new(engine.clone(), 1000).unwrap();
        for round in 0..6 {
            write_entries(&mut s, &mut sm, 1 + round * 100, 100, "v");
            // As the node task does every few seconds.
            engine
                .record_durable_index(s.last_index().unwrap())
                .unwrap();
            let cfs = [CF_DATA, CF_RAFT_LOG, CF_RAFT_STATE].map(|n| engine.cf(n));
            engine
                .db()
                .flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())
                .unwrap();
        }
        expected = dump(&engine);
    }
    let manifest = files_ending(src.path(), "")
        .into_iter()
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("MANIFEST-"))
        })
        .expect("a MANIFEST");
    let len = std::fs::metadata(&manifest).unwrap().len();
    let mut refused = 0;
    let mut rolled_back = 0;
    for cut in [8u64, 40, 100, 200, 400, 800, 1600, len / 3, len / 2] {
        let dir = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(src.path()).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        }
        truncate_by(&dir.path().join(manifest.file_name().unwrap()), cut);
        let opened = Engine::open(dir.path()).and_then(|engine| {
            engine.bootstrap_or_check(IDENT, &[1, 2, 3], &[])?;
            let s = RaftStorage::open(engine.clone(), crate::tests::logger())?;
            engine.check_consistency()?;
            engine.check_durable_index(s.last_index().unwrap_or(0))?;
            Ok(engine)
        });
        match opened {
            Err(e) => {
                refused += 1;
                rolled_back += usize::from(matches!(e, Error::RolledBack { .. }));
                let msg = e.to_string();
                assert!(
                    !msg.contains('\n') && msg.len() > 20,
                    "unclear cause: {msg}"
                );
            }
            Ok(engine) => assert!(
                dump(&engine) == expected,
                "a MANIFEST cut by {cut} bytes opened with different data"
            ),
        }
    }
    assert!(refused > 0, "no cut was noticed at all");
    // Which cuts reach past RocksDB's own WAL checks to the durable index depends on how
    // background work laid the MANIFEST out; the check itself is exercised directly below.
    eprintln!("{refused} cuts refused, {rolled_back} of them by the durable index");
}

#[test]
fn a_log_that_ends_below_the_durable_index_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _) = open(dir.path());
    engine.check_durable_index(0).unwrap();
    engine.record_durable_index(50).unwrap();
    engine.check_durable_index(50).unwrap();
    engine.check_durable_index(60).unwrap();
    match engine.check_durable_index(40) {
        Err(
            e @ Error::RolledBack {
                log_end: 40,
                recorded: 50,
            },
        ) => assert!(e.to_string().contains("rolled back"), "{e}"),
        other => panic!("a rolled-back log was accepted: {other:?}"),
    }
}

#[test]
fn data_and_raft_state_that_disagree_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, mut s) = open(dir.path());
    let mut sm = StateMachine::new(engine.clone(), 1000).unwrap();
    write_entries(&mut s, &mut sm, 1, 20, "v");
    engine.check_consistency().unwrap();
    // Roll the data family's record back, as a lost flush of that family would.
    engine
        .db()
        .put_cf(
            engine.cf(CF_DATA),
            crate::keys::DATA_APPLY_STATE_KEY,
            crate::keys::encode_pair(7, 1),
        )
        .unwrap();
    match engine.check_consistency() {
        Err(Error::Diverged {
            data_index: 7,
            state_index: 20,
        }) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn apply_settings_are_fixed_when_the_directory_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _) = open(dir.path());
    let w = |dedup_window, history_revisions| ApplySettings {
        dedup_window,
        history_revisions,
        history_ms: 0,
    };
    let counted = crate::Revisions::Counted;
    assert!(engine.check_apply_settings(w(5000, 100), counted).unwrap());
    assert!(!engine.check_apply_settings(w(5000, 100), counted).unwrap());
    for (changed, name, stored, configured) in [
        (w(6000, 100), "dedup_window", "5000", "6000"),
        (w(5000, 0), "history_revisions", "100", "0"),
    ] {
        match engine.check_apply_settings(changed, counted) {
            Err(e @ Error::SettingChanged { .. }) => {
                let m = e.to_string();
                assert!(
                    m.contains(name) && m.contains(stored) && m.contains(configured),
                    "{m}"
                );
            }
            other => panic!("a changed {name} was accepted: {other:?}"),
        }
    }
    assert_eq!(engine.apply_settings().unwrap(), Some(w(5000, 100)));
    let timed = ApplySettings {
        history_ms: 60_000,
        ..w(5000, 100)
    };
    // A config-file node keeps history by count: the time setting is not its own.
    assert!(!engine.check_apply_settings(timed, counted).unwrap());
    match engine.check_apply_settings(timed, crate::Revisions::Stamped) {
        Err(e @ Error::SettingChanged { .. }) => assert!(e.to_string().contains("history_ms")),
        other => panic!("a changed history_ms was accepted: {other:?}"),
    }
    // A PD-mode store keeps history by time: the count is not its own.
    assert!(!engine
        .check_apply_settings(w(5000, 7), crate::Revisions::Stamped)
        .unwrap());
    assert_eq!(engine.apply_settings().unwrap(), Some(w(5000, 100)));
}

/// A directory whose settings record predates the history kept in time (version 2) takes it
/// from the configuration once, and from then on holds to it.
#[test]
fn a_version_2_settings_record_takes_the_history_kept_in_time_from_the_configuration() {
    use crate::keys::{self, CF_RAFT_STATE};
    let dir = tempfile::tempdir().unwrap();
    let (engine, _) = open(dir.path());
    let mut v2 = 2u64.to_be_bytes().to_vec();
    v2.extend_from_slice(&5000u64.to_be_bytes());
    v2.extend_from_slice(&100u64.to_be_bytes());
    engine
        .db()
        .put_cf(engine.cf(CF_RAFT_STATE), keys::APPLY_SETTINGS_KEY, v2)
        .unwrap();
    let configured = ApplySettings {
        dedup_window: 5000,
        history_revisions: 100,
        history_ms: 60_000,
    };
    assert!(!engine
        .check_apply_settings(configured, crate::Revisions::Stamped)
        .unwrap());
    assert_eq!(engine.apply_settings().unwrap(), Some(configured));
    let other = ApplySettings {
        history_ms: 1_000,
        ..configured
    };
    assert!(matches!(
        engine.check_apply_settings(other, crate::Revisions::Stamped),
        Err(Error::SettingChanged {
            name: "history_ms",
            ..
        })
    ));
}

/// A directory written before versioned keys (bare values in its `d` records, a version-1
/// settings record) is upgraded when opened: every value reads the same, as a version from
/// before history, and an upgrade cut short by a crash goes on where it stopped.
#[test]
fn a_directory_of_bare_values_is_upgraded_once_and_resumes_after_a_crash() {
    use crate::keys::{self, CF_DATA, CF_RAFT_STATE};
    for crashed_after in [None, Some(3usize)] {
        let dir = tempfile::tempdir().unwrap();
        let (engine, _) = open(dir.path());
        let data = engine.cf(CF_DATA);
        let mut wb = rocksdb::WriteBatch::default();
        let keys: Vec<String> = (0..8).map(|i| format!("k{i}")).collect();
        // Bare values, one of them empty and one that looks like a version record.
        let bare = |i: usize| match i {
            0 => Vec::new(),
            1 => vec![1, 0, 0, 0],
            _ => format!("value {i}").into_bytes(),
        };
        for (i, k) in keys.iter().enumerate() {
            let v = match crashed_after {
                // Before the cut, already rewritten.
                Some(n) if i <= n => crate::mvcc::encode(&crate::mvcc::BEFORE_HISTORY, &bare(i)),
                _ => bare(i),
            };
            wb.put_cf(data, keys::data_key(k.as_bytes()), v);
        }
        let mut v1 = 1u64.to_be_bytes().to_vec();
        v1.extend_from_slice(&5000u64.to_be_bytes());
        wb.put_cf(engine.cf(CF_RAFT_STATE), keys::APPLY_SETTINGS_KEY, v1);
        if let Some(n) = crashed_after {
            wb.put_cf(
                engine.cf(CF_RAFT_STATE),
                keys::UPGRADE_CURSOR_KEY,
                keys::data_key(keys[n].as_bytes()),
            );
        }
        engine.db().write(wb).unwrap();
        let settings = ApplySettings {
            dedup_window: 5000,
            history_revisions: 50,
            history_ms: 0,
        };
        assert!(engine
            .check_apply_settings(settings, crate::Revisions::Counted)
            .unwrap());
        for (i, k) in keys.iter().enumerate() {
            let got = engine.get_versioned(k.as_bytes()).unwrap().expect("kept");
            assert_eq!(got.value, bare(i), "{k} after {crashed_after:?}");
            assert_eq!(got.meta, crate::mvcc::BEFORE_HISTORY);
        }
        assert_eq!(engine.apply_settings().unwrap(), Some(settings));
        // Upgraded once: opening again rewrites nothing.
        assert!(!engine
            .check_apply_settings(settings, crate::Revisions::Counted)
            .unwrap());
        assert_eq!(engine.get(b"k1").unwrap(), Some(vec![1, 0, 0, 0]));
    }
}

/// A retried request, re-applied after its window, rewrites its dedup record; the death of its
/// first write must not take the new record (whether it did used to depend on batch splits).
#[test]
fn a_rewritten_dedup_record_outlives_the_death_of_the_first_write() {
    let window = 10;
    let mut log = vec![entry(1, 1, &cmd(1, 1, put("k", "a")))];
    for i in 2..=11 {
        log.push(entry(i, 1, &cmd(2, i, put("f", "x"))));
    }
    log.push(entry(12, 1, &cmd(1, 1, put("k", "b")))); // outside the window: applied again
    for i in 13..=19 {
        log.push(entry(i, 1, &cmd(2, i, put("f", "x"))));
    }
    log.push(entry(20, 1, &cmd(1, 1, put("k", "c")))); // inside the new window: a retry
    for splits in [vec![11, 1, 8], vec![20], vec![1; 20]] {
        let dir = tempfile::tempdir().unwrap();
        let (engine, _) = open(dir.path());
        let mut sm = StateMachine::new(engine.clone(), window).unwrap();
        let mut at = 0;
        for n in splits.iter() {
            sm.apply(&log[at..at + n]).unwrap();
            at += n;
            crate::tests::sync(&engine);
            engine.compact_data();
        }
        assert_eq!(
            engine.get(b"k").unwrap().as_deref(),
            Some(&b"b"[..]),
            "splits {splits:?}"
        );
    }
}

/// Random commands: puts, CAS, deletes, retries of earlier requests near the window's edge,
/// empty entries and hash points.
fn random_log(rng: &mut StdRng, n: u64, window: u64) -> Vec<Entry> {
    let mut sent: Vec<(u64, u64, u64)> = Vec::new(); // (index, client, seq)
    let mut next_seq = 1;
    (1..=n)
        .map(|i| {
            let key = format!("k{}", rng.gen_range(0..6));
            let value = format!("v{}", rng.gen_range(0..4));
            let op = match rng.gen_range(0..10) {
                0..=3 => put(&key, &value),
                4..=5 => Op::Cas(Cas {
                    key: key.clone().into(),
                    expected: rng.gen_bool(0.3).then(|| value.clone().into()),
                    new_value: format!("v{}", rng.gen_range(0..4)).into(),
                    condition: None,
                }),
                6 => Op::Delete(Delete {
                    key: key.into(),
                    condition: None,
                }),
                7 => Op::HashPoint(HashPoint {}),
                _ => put(&key, &value),
            };
            let retry = rng.gen_bool(0.3) && !sent.is_empty();
            let (client, seq) = if retry {
                // Mostly retries whose first write is near the window's edge.
                let near: Vec<_> = sent
                    .iter()
                    .filter(|(at, _, _)| i - at + 2 >= window && i - at <= window + 2)
                    .collect();
                let &(_, c, s) = if near.is_empty() || rng.gen_bool(0.3) {
                    &sent[rng.gen_range(0..sent.len())]
                } else {
                    near[rng.gen_range(0..near.len())]
                };
                (c, s)
            } else if rng.gen_bool(0.1) {
                (0, 0)
            } else {
                next_seq += 1;
                (1 + next_seq % 3, next_seq)
            };
            if client != 0 && !retry {
                sent.push((i, client, seq));
            }
            if rng.gen_bool(0.05) {
                return entry(i, 1, b"");
            }
            entry(i, 1, &cmd(client, seq, op))
        })
        .collect()
}

/// Applies `log` in random batch sizes; returns results, the data at every batch end, and the
/// hashes of the hash points.
#[allow(clippy::type_complexity)]
fn apply_split(
    log: &[Entry],
    window: u64,
    rng: &mut StdRng,
) -> (
    Vec<crate::Applied>,
    std::collections::BTreeMap<u64, Vec<(Vec<u8>, Vec<u8>)>>,
    Vec<(u64, HashState)>,
) {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _) = open(dir.path());
    let mut sm = StateMachine::new(engine.clone(), window).unwrap();
    let mut results = Vec::new();
    let mut dumps = std::collections::BTreeMap::new();
    let mut at = 0;
    while at < log.len() {
        let n = rng.gen_range(1..=(3 * window as usize)).min(log.len() - at);
        results.extend(sm.apply(&log[at..at + n]).unwrap());
        at += n;
        // Compaction drops dead dedup records whenever it runs: sometimes, here.
        if rng.gen_bool(0.3) {
            crate::tests::sync(&engine);
            if rng.gen_bool(0.5) {
                engine.compact_data();
            }
        }
        let live = dump(&engine)
            .into_iter()
            .filter(|(k, v)| !crate::dedup::is_dead(k, v, at as u64, window))
            .collect();
        dumps.insert(at as u64, live);
    }
    let hashes = sm.hashes();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let done = hashes
            .lock()
            .unwrap()
            .values()
            .all(|h| !matches!(h, HashState::Computing));
        if done {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "hashing did not finish"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let hashes = hashes.lock().unwrap().clone().into_iter().collect();
    (results, dumps, hashes)
}

#[test]
fn replicas_with_different_batch_splits_and_compactions_hold_identical_live_records() {
    let window = 12;
    for seed in 0..12u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let log = random_log(&mut rng, 300, window);
        let (ra, da, ha) = apply_split(&log, window, &mut StdRng::seed_from_u64(seed + 100));
        let (rb, db, hb) = apply_split(&log, window, &mut StdRng::seed_from_u64(seed + 200));
        assert_eq!(ra, rb, "seed {seed}: results differ");
        let mut compared = 0;
        for (index, a) in &da {
            if let Some(b) = db.get(index) {
                assert!(a == b, "seed {seed}: data differs at applied index {index}");
                compared += 1;
            }
        }
        assert!(compared >= 1, "seed {seed}: no common batch end");
        assert_eq!(ha, hb, "seed {seed}: hash points differ");
        assert!(
            ha.iter().all(|(_, h)| matches!(h, HashState::Done { .. })),
            "seed {seed}: a hash failed: {ha:?}"
        );
        let points = ra
            .iter()
            .filter(|a| matches!(a.result, Some(Ok(CommandResult::HashPoint { .. }))))
            .count();
        assert!(points > 0 || ha.is_empty());
    }
}

#[test]
fn a_hash_point_sees_exactly_the_state_as_of_its_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _) = open(dir.path());
    let mut sm = StateMachine::new(engine.clone(), 1000).unwrap();
    let log = vec![
        entry(1, 1, &cmd(1, 1, put("a", "1"))),
        entry(2, 1, &cmd(0, 0, Op::HashPoint(HashPoint {}))),
        entry(3, 1, &cmd(1, 2, put("b", "2"))),
    ];
    sm.apply(&log).unwrap();
    // The same state built without the later entry must hash the same.
    let dir2 = tempfile::tempdir().unwrap();
    let (engine2, _) = open(dir2.path());
    let mut sm2 = StateMachine::new(engine2, 1000).unwrap();
    sm2.apply(&log[..2]).unwrap();
    let wait = |sm: &StateMachine| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(HashState::Done { hash, records }) = sm.hashes().lock().unwrap().get(&2) {
                return (*hash, *records);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "hash point 2 never hashed"
            );
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    };
    assert_eq!(wait(&sm), wait(&sm2));
}
