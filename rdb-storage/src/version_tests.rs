//! Versioned keys through the apply path (specs/018-versions): revisions per write, history
//! kept for the retention and swept behind it, replica hashes that do not depend on how far
//! the sweep got, and revisions carried across a split and a merge.

use rdb_proto::command::command::Op;
use rdb_proto::command::Delete;

use crate::keys::{self, CF_DATA};
use crate::mvcc::{self, Revisions};
use crate::tests::{cmd, entry, open, put};
use crate::{ApplySettings, CommandResult, Engine, StateMachine};

/// Records of the `data` family under `prefix`.
fn count_prefix(engine: &Engine, prefix: u8) -> usize {
    engine
        .db()
        .prefix_iterator_cf(engine.cf(CF_DATA), [prefix])
        .map(|r| r.expect("read"))
        .take_while(|(k, _)| k.first() == Some(&prefix))
        .count()
}

fn revisions(engine: &Engine) -> Revisions {
    let rec = engine
        .db()
        .get_cf(engine.cf(CF_DATA), engine.space().revisions_key())
        .expect("read");
    mvcc::decode_revisions(rec.as_deref()).expect("decode")
}

/// A node whose directory keeps `history_revisions` revisions.
fn node(dir: &std::path::Path, history_revisions: u64) -> (Engine, StateMachine) {
    let (engine, _) = open(dir);
    engine
        .check_apply_settings(
            ApplySettings {
                dedup_window: 1000,
                history_revisions,
                history_ms: 0,
            },
            crate::Revisions::Counted,
        )
        .expect("settings");
    let sm = StateMachine::new(engine.clone(), 1000).expect("sm");
    (engine, sm)
}

#[test]
fn every_write_gets_a_revision_and_keys_their_versions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, mut sm) = node(dir.path(), 0);
    let del = |k: &str| {
        Op::Delete(Delete {
            key: k.into(),
            condition: None,
        })
    };
    let out = sm
        .apply(&[
            entry(1, 1, &cmd(0, 0, put("a", "1"))),
            entry(2, 1, &cmd(0, 0, put("a", "2"))),
            entry(3, 1, &cmd(0, 0, del("missing"))),
            entry(4, 1, &cmd(0, 0, del("a"))),
            entry(5, 1, &cmd(0, 0, put("a", "3"))),
        ])
        .expect("apply");
    let revs: Vec<_> = out
        .iter()
        .map(|a| match &a.result {
            Some(Ok(CommandResult::Put { revision }))
            | Some(Ok(CommandResult::Delete { revision, .. })) => *revision,
            other => panic!("unexpected result {other:?}"),
        })
        .collect();
    assert_eq!(
        revs,
        vec![1, 2, 2, 3, 4],
        "a delete that finds nothing reports the last revision and takes none"
    );
    let v = engine.get_versioned(b"a").expect("get").expect("a");
    assert_eq!(
        (v.meta.create_revision, v.meta.mod_revision, v.meta.version),
        (4, 4, 1),
        "a put after a delete starts the key again"
    );
    assert_eq!(engine.get(b"a").expect("get"), Some(b"3".to_vec()));
    let at = |r| engine.get_at(b"a", r).expect("get").map(|v| v.value);
    assert_eq!(at(1), Some(b"1".to_vec()));
    assert_eq!(at(2), Some(b"2".to_vec()));
    assert_eq!(at(3), None);
    assert_eq!(
        revisions(&engine),
        Revisions {
            last: 4,
            compacted: 0
        }
    );
}

/// Overwrites far beyond the retention: reads within it see the past, the compacted revision
/// follows the last one, the sweep keeps history bounded, and deleting what is left to sweep
/// does not change the replica hash.
#[test]
fn history_is_kept_for_the_retention_and_swept_behind_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keep = 20;
    let (engine, mut sm) = node(dir.path(), keep);
    let mut index = 0;
    for round in 0..100u64 {
        let ents: Vec<_> = (0..5)
            .map(|k| {
                index += 1;
                entry(
                    index,
                    1,
                    &cmd(0, 0, put(&format!("k{k}"), &format!("{round}"))),
                )
            })
            .collect();
        sm.apply(&ents).expect("apply");
    }
    let revs = revisions(&engine);
    assert_eq!(
        revs,
        Revisions {
            last: 500,
            compacted: 500 - keep
        }
    );
    // k0 was last written at revision 496 (round 99), and at 491 before that.
    assert_eq!(
        engine.get_at(b"k0", 495).expect("get").map(|v| v.value),
        Some(b"98".to_vec())
    );
    // Within the retention: about `keep` versions, plus what a pass has not reached yet (a
    // pass starts once the compacted revision moved a whole retention).
    let history = count_prefix(&engine, keys::HISTORY_PREFIX);
    assert!(
        history <= 3 * keep as usize + 5,
        "{history} history records after 500 writes keeping {keep}"
    );
    let hash = |e: &Engine| crate::state_machine::replica_hash(e, None, 500, 1000).expect("hash");
    let before = hash(&engine);
    let swept = engine.compact_history(revs.compacted).expect("sweep");
    assert_eq!(
        hash(&engine),
        before,
        "sweeping {swept} records changed the hash"
    );
}

/// A node that never swept (retention 0 keeps everything, then a compaction by hand) and one
/// that swept as it went hold different history but hash the same once their compacted
/// revisions agree; their answers at and above it agree too.
#[test]
fn replicas_hash_alike_whatever_their_sweep_reached() {
    let ents: Vec<_> = (1..=300u64)
        .map(|i| {
            let op = if i % 7 == 0 {
                Op::Delete(Delete {
                    key: format!("k{}", i % 4).into_bytes(),
                    condition: None,
                })
            } else {
                put(&format!("k{}", i % 4), &format!("v{i}"))
            };
            entry(i, 1, &cmd(0, 0, op))
        })
        .collect();
    let swept_dir = tempfile::tempdir().expect("tempdir");
    let (swept, mut sm) = node(swept_dir.path(), 30);
    for chunk in ents.chunks(7) {
        sm.apply(chunk).expect("apply");
    }
    let last = revisions(&swept).last;
    let compacted = revisions(&swept).compacted;
    assert_eq!(compacted, last - 30);
    let kept_dir = tempfile::tempdir().expect("tempdir");
    let (kept, mut sm) = node(kept_dir.path(), 0);
    sm.apply(&ents).expect("apply");
    // Bring the other replica's compacted revision to the same place, without sweeping.
    let mut wb = rocksdb::WriteBatch::default();
    wb.put_cf(
        kept.cf(CF_DATA),
        kept.space().revisions_key(),
        mvcc::encode_revisions(Revisions { last, compacted }),
    );
    kept.db().write(wb).expect("write");
    assert!(count_prefix(&kept, keys::HISTORY_PREFIX) > count_prefix(&swept, keys::HISTORY_PREFIX));
    let hash = |e: &Engine| crate::state_machine::replica_hash(e, None, 300, 1000).expect("hash");
    assert_eq!(hash(&kept), hash(&swept));
    for r in compacted..=last {
        for k in 0..4 {
            let key = format!("k{k}");
            assert_eq!(
                kept.get_at(key.as_bytes(), r).expect("get"),
                swept.get_at(key.as_bytes(), r).expect("get"),
                "{key} at {r}"
            );
        }
    }
}

/// Conditional writes (specs/018-versions): a swap by version (0: the key must not exist) or by
/// mod_revision, a delete by either; a mismatch writes nothing, takes no revision, and reports
/// the key's versions; a retried request gets its first answer.
#[test]
fn swaps_and_deletes_by_version_and_mod_revision() {
    use rdb_proto::command::condition::Check;
    use rdb_proto::command::{Cas, Condition};
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, mut sm) = node(dir.path(), 0);
    let cond = |check| Some(Condition { check: Some(check) });
    let cas = |key: &str, check, new: &str| {
        Op::Cas(Cas {
            key: key.into(),
            expected: None,
            new_value: new.into(),
            condition: cond(check),
        })
    };
    let delete_if = |key: &str, check| {
        Op::Delete(Delete {
            key: key.into(),
            condition: cond(check),
        })
    };
    let out = sm
        .apply(&[
            // Create only if absent: once.
            entry(1, 1, &cmd(7, 1, cas("k", Check::Version(0), "a"))),
            entry(2, 1, &cmd(7, 2, cas("k", Check::Version(0), "b"))),
            // By version, then by mod_revision.
            entry(3, 1, &cmd(7, 3, cas("k", Check::Version(1), "c"))),
            entry(4, 1, &cmd(7, 4, cas("k", Check::ModRevision(1), "d"))),
            entry(5, 1, &cmd(7, 5, cas("k", Check::ModRevision(2), "e"))),
            // Delete if the version is 9 (refused), then if it is 3.
            entry(6, 1, &cmd(7, 6, delete_if("k", Check::Version(9)))),
            entry(7, 1, &cmd(7, 7, delete_if("k", Check::Version(3)))),
            // A retry of the refused delete gets its first answer.
            entry(8, 1, &cmd(7, 6, delete_if("k", Check::Version(0)))),
        ])
        .expect("apply");
    let r: Vec<_> = out
        .into_iter()
        .map(|a| a.result.expect("command"))
        .collect();
    let meta = |create, modr, version| mvcc::Meta {
        create_revision: create,
        mod_revision: modr,
        version,
    };
    let swapped = |revision| {
        Ok(CommandResult::Cas {
            succeeded: true,
            current: None,
            revision,
            current_meta: None,
        })
    };
    assert_eq!(r[0], swapped(1));
    assert_eq!(
        r[1],
        Ok(CommandResult::Cas {
            succeeded: false,
            current: Some(b"a".to_vec()),
            revision: 1,
            current_meta: Some(meta(1, 1, 1)),
        }),
        "the key exists: not created again, its versions reported"
    );
    assert_eq!(r[2], swapped(2));
    assert_eq!(
        r[3],
        Ok(CommandResult::Cas {
            succeeded: false,
            current: Some(b"c".to_vec()),
            revision: 2,
            current_meta: Some(meta(1, 2, 2)),
        })
    );
    assert_eq!(r[4], swapped(3));
    assert_eq!(
        r[5],
        Ok(CommandResult::DeleteRefused {
            current: Some(meta(1, 3, 3)),
            revision: 3,
        })
    );
    assert_eq!(
        r[6],
        Ok(CommandResult::Delete {
            existed: true,
            revision: 4,
        })
    );
    assert_eq!(
        r[7],
        Ok(CommandResult::DeleteRefused {
            current: None,
            revision: 3,
        }),
        "the recorded answer of the first attempt"
    );
    assert_eq!(engine.get(b"k").expect("get"), None);
    assert_eq!(
        engine.get_at(b"k", 3).expect("get").map(|v| v.value),
        Some(b"e".to_vec())
    );
}

/// A compaction by hand, through the log: reads below it are refused, answers at and above
/// it stay, the history behind it is swept at once; a revision not reached yet is refused
/// (or, asked `up_to_last`, compacts to the last), and one below the compacted changes nothing.
#[test]
fn compaction_by_hand_refuses_reads_below_it_and_sweeps_behind_it() {
    use rdb_proto::command::Compact;
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, mut sm) = node(dir.path(), 0);
    let ents: Vec<_> = (1..=40u64)
        .map(|i| {
            entry(
                i,
                1,
                &cmd(0, 0, put(&format!("k{}", i % 4), &format!("v{i}"))),
            )
        })
        .collect();
    sm.apply(&ents).expect("apply");
    let history_before = count_prefix(&engine, keys::HISTORY_PREFIX);
    assert_eq!(
        history_before, 36,
        "every overwrite keeps the version it superseded"
    );
    let at = |r| {
        engine
            .read_versioned(engine.space(), b"k1", r)
            .map(|(_, v)| v.map(|v| v.value))
    };
    let answers: Vec<_> = (30..=40).map(|r| at(r).expect("read")).collect();
    let compact = |i, revision, up_to_last| {
        let op = Op::Compact(Compact {
            revision,
            up_to_last,
        });
        entry(i, 1, &cmd(0, 0, op))
    };
    let result = |out: Vec<crate::Applied>| out[0].result.clone().expect("a command");

    assert_eq!(
        result(sm.apply(&[compact(41, 30, false)]).expect("apply")),
        Ok(CommandResult::Compacted {
            compacted: 30,
            last: 40
        })
    );
    assert!(
        matches!(at(29), Err(crate::Error::Compacted { compacted: 30, .. })),
        "a read below the compacted revision is refused"
    );
    let after: Vec<_> = (30..=40).map(|r| at(r).expect("read")).collect();
    assert_eq!(
        after, answers,
        "answers at and above the compacted revision stay"
    );
    let history = count_prefix(&engine, keys::HISTORY_PREFIX);
    assert!(
        history < history_before,
        "the sweep started at once: {history} of {history_before} history records left"
    );

    // Lower than the compacted revision: nothing changes. Above the last: refused.
    assert_eq!(
        result(sm.apply(&[compact(42, 10, false)]).expect("apply")),
        Ok(CommandResult::Compacted {
            compacted: 30,
            last: 40
        })
    );
    assert_eq!(
        result(sm.apply(&[compact(43, 99, false)]).expect("apply")),
        Ok(CommandResult::Compacted {
            compacted: 30,
            last: 40
        })
    );
    assert_eq!(revisions(&engine).compacted, 30);
    // Up to the last: only the newest versions are left to read.
    assert_eq!(
        result(sm.apply(&[compact(44, 99, true)]).expect("apply")),
        Ok(CommandResult::Compacted {
            compacted: 40,
            last: 40
        })
    );
    assert!(matches!(at(39), Err(crate::Error::Compacted { .. })));
    assert_eq!(at(40).expect("read"), Some(b"v37".to_vec()));
    let mut budget = 0;
    while count_prefix(&engine, keys::HISTORY_PREFIX) > 0 && budget < 100 {
        // Each apply batch takes a bounded step of the sweep.
        budget += 1;
        sm.apply(&[entry(
            44 + budget,
            1,
            &cmd(0, 0, Op::HashPoint(Default::default())),
        )])
        .expect("apply");
    }
    assert_eq!(
        count_prefix(&engine, keys::HISTORY_PREFIX),
        0,
        "no history is left behind a compaction to the last revision"
    );
}

/// PD mode (specs/018-versions): a write's stamp is its revision; a stamp at or below the last
/// revision is refused with nothing written or recorded (the same request id then applies
/// with a later stamp); `Advance` moves the last revision up so later stale stamps are
/// refused; history is kept for a time (`history_ms`), not a count.
#[test]
fn stamped_writes_take_their_stamps_as_revisions() {
    use prost::Message;
    use rdb_proto::command::{Advance, Command};
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, _) = open(dir.path());
    engine
        .check_apply_settings(
            ApplySettings {
                dedup_window: 1000,
                history_revisions: 3,
                history_ms: 10,
            },
            crate::Revisions::Stamped,
        )
        .expect("settings");
    let mut sm = StateMachine::new(engine.clone(), 1000).expect("sm");
    let ms = |m: u64| m << crate::engine::STAMP_LOGICAL_BITS;
    let stamped = |index, client_id, seq, op, stamp| {
        let cmd = Command {
            client_id,
            seq,
            op: Some(op),
            stamp,
        };
        entry(index, 1, &cmd.encode_to_vec())
    };
    let result = |out: Vec<crate::Applied>| out[0].result.clone().expect("a command");

    let r = sm.apply(&[stamped(1, 7, 1, put("k", "a"), ms(1000))]);
    assert_eq!(
        result(r.expect("apply")),
        Ok(CommandResult::Put { revision: ms(1000) })
    );
    // Stale: refused, not recorded; the retry with a later stamp applies.
    let r = sm.apply(&[stamped(2, 7, 2, put("k", "b"), ms(999))]);
    assert_eq!(
        result(r.expect("apply")),
        Ok(CommandResult::StaleStamp { last: ms(1000) })
    );
    assert_eq!(engine.get(b"k").expect("get"), Some(b"a".to_vec()));
    let r = sm.apply(&[stamped(3, 7, 2, put("k", "b"), ms(1001))]);
    assert_eq!(
        result(r.expect("apply")),
        Ok(CommandResult::Put { revision: ms(1001) })
    );
    // An advance to a later revision turns away writes stamped at or below it.
    let advance = |i, revision| stamped(i, 0, 0, Op::Advance(Advance { revision }), 0);
    let r = sm.apply(&[advance(4, ms(1005))]);
    assert_eq!(
        result(r.expect("apply")),
        Ok(CommandResult::Advanced { last: ms(1005) })
    );
    let r = sm.apply(&[advance(5, ms(1002))]);
    assert_eq!(
        result(r.expect("apply")),
        Ok(CommandResult::Advanced { last: ms(1005) }),
        "an advance never moves the last revision back"
    );
    let r = sm.apply(&[stamped(6, 7, 3, put("k", "c"), ms(1004))]);
    assert_eq!(
        result(r.expect("apply")),
        Ok(CommandResult::StaleStamp { last: ms(1005) })
    );
    assert_eq!(
        engine.get_at(b"k", ms(1005)).expect("get").map(|v| v.value),
        Some(b"b".to_vec()),
        "the state at the advanced revision is final"
    );
    // History is kept 10 ms, whatever the count (history_revisions 3 is for counted ones).
    for (i, m) in (1010..1020).enumerate() {
        let i = i as u64;
        sm.apply(&[stamped(7 + i, 7, 4 + i, put("k", &format!("v{m}")), ms(m))])
            .expect("apply");
    }
    assert_eq!(
        revisions(&engine),
        Revisions {
            last: ms(1019),
            compacted: ms(1009)
        }
    );
    assert_eq!(
        engine.get_at(b"k", ms(1012)).expect("get").map(|v| v.value),
        Some(b"v1012".to_vec())
    );
}
