//! Backup files and restores: round trip, determinism, and refusals that change nothing.

use std::path::{Path, PathBuf};

use raft::prelude::Entry;
use raft::Storage;
use rocksdb::WriteBatch;

use super::{restore, verify, write, RestoreTarget, HEADER_LEN};
use crate::keys::CF_DATA;
use crate::tests::{cmd, entry, logger, open, put, IDENT};
use crate::{
    ApplySettings, CommandResult, Engine, EngineOptions, Error, Ident, RaftStorage, StateMachine,
};

/// A node with 20 puts applied at term 2 by client 4, and a membership record of its cluster.
fn source(dir: &Path) -> Engine {
    let (engine, mut log) = open(dir);
    let ents: Vec<Entry> = (1..=20)
        .map(|i| entry(i, 2, &cmd(4, i, put(&format!("k{i:02}"), &format!("v{i}")))))
        .collect();
    log.append(&ents, None).unwrap();
    StateMachine::new(engine.clone(), 1000)
        .unwrap()
        .apply(&ents)
        .unwrap();
    let mut wb = WriteBatch::default();
    wb.put_cf(
        engine.cf(CF_DATA),
        b"m\x00\x00\x00\x00\x00\x00\x00\x01",
        b"old member",
    );
    engine.write(wb, true).unwrap();
    engine
}

fn target(node_id: u64) -> RestoreTarget {
    RestoreTarget {
        ident: Ident {
            cluster_id: 9,
            node_id,
        },
        voters: vec![1, 2, 3],
        members: Vec::new(),
        settings: ApplySettings { dedup_window: 1000 },
        engine_opts: EngineOptions::default(),
    }
}

/// Every pair of the data column family, as stored.
fn data_cf(engine: &Engine) -> Vec<(Vec<u8>, Vec<u8>)> {
    engine
        .db()
        .iterator_cf(engine.cf(CF_DATA), rocksdb::IteratorMode::Start)
        .map(|r| {
            let (k, v) = r.unwrap();
            (k.to_vec(), v.to_vec())
        })
        .collect()
}

fn backup_of(src: &Engine, dir: &Path) -> PathBuf {
    let path = dir.join("backup.rdb");
    write(src, IDENT, &path).unwrap();
    path
}

#[test]
fn a_backup_restores_into_a_new_cluster_that_starts_where_the_source_was() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = source(src_dir.path());
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("backup.rdb");
    let info = write(&src, IDENT, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!((info.index, info.term, info.source), (20, 2, IDENT));
    assert_eq!(info.file_len, bytes.len() as u64);
    assert_eq!(info.checksum, crc32fast::hash(&bytes), "whole-file CRC");
    assert_eq!(info.keys, 20);
    assert_eq!(verify(&path).unwrap(), info);

    let restored_dirs: Vec<PathBuf> = (1..=3)
        .map(|id| out.path().join(format!("node{id}")))
        .collect();
    // An empty directory is as good as a missing one.
    std::fs::create_dir(&restored_dirs[1]).unwrap();
    for (i, dir) in restored_dirs.iter().enumerate() {
        let r = restore(&path, dir, &target(i as u64 + 1)).unwrap();
        assert_eq!((r.backup, r.records + r.skipped), (info, info.records));
        assert_eq!(
            r.skipped, 2,
            "the membership record and the old applied index are left out"
        );
    }
    assert!(!out.path().join("node1.restoring").exists());

    let engines: Vec<Engine> = restored_dirs
        .iter()
        .map(|d| Engine::open(d).unwrap())
        .collect();
    let user = |e: &Engine| -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut v = data_cf(e);
        v.retain(|(k, _)| k[0] == b'd');
        v
    };
    // The old layout's dedup records (`s` + client + seq) are region 1's in the new one.
    let dedup_of = |e: &Engine, prefix: &[u8]| -> Vec<(Vec<u8>, Vec<u8>)> {
        data_cf(e)
            .into_iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_vec(), v)))
            .filter(|(k, _)| k.first() == Some(&b's'))
            .collect()
    };
    let region_one = crate::keys::region_prefix(1);
    for (i, e) in engines.iter().enumerate() {
        check_restored(e, i as u64 + 1, 20);
        assert_eq!(
            user(e),
            user(&src),
            "node {} holds the backup's data",
            i + 1
        );
        assert_eq!(dedup_of(e, &region_one), dedup_of(&src, b""));
        assert!(!dedup_of(e, &region_one).is_empty());
    }
    // The new cluster goes on from there; dedup records came along, so a retry of a write
    // the old cluster applied is still answered from its record.
    let view = engines[0].region(1).unwrap();
    let mut sm = StateMachine::new(view.clone(), 1000).unwrap();
    let out = sm
        .apply(&[
            entry(21, 6, &cmd(4, 5, put("k05", "again"))),
            entry(22, 6, &cmd(8, 1, put("new", "x"))),
        ])
        .unwrap();
    assert_eq!(out[0].result, Some(Ok(CommandResult::Put)));
    assert_eq!(view.get(b"k05").unwrap().as_deref(), Some(&b"v5"[..]));
    assert_eq!(view.get(b"new").unwrap().as_deref(), Some(&b"x"[..]));
}

/// What a config-file node's start checks and loads, on a directory restored for node `id` of
/// cluster 9 (nodes 1, 2, 3) from a backup at `index`: region 1, every key, at that index.
fn check_restored(e: &Engine, id: u64, index: u64) {
    let ident = Ident {
        cluster_id: 9,
        node_id: id,
    };
    assert!(!e.claim_for_node(ident).unwrap(), "claimed already");
    assert!(!e
        .check_apply_settings(ApplySettings { dedup_window: 1000 })
        .unwrap());
    assert_eq!(e.region_ids().unwrap(), vec![1]);
    let view = e.region(1).unwrap();
    assert_eq!(
        view.region_meta().unwrap(),
        Some(crate::region::whole_range_region(1, &[1, 2, 3]))
    );
    view.check_consistency().unwrap();
    let log = RaftStorage::open(view.clone(), logger()).unwrap();
    let state = log.initial_state().unwrap();
    // Its log starts after the backup's index, in a term no lower than a region's first.
    let term = crate::region::REGION_INIT_TERM;
    assert_eq!(
        (
            state.hard_state.term,
            state.hard_state.vote,
            state.hard_state.commit
        ),
        (term, 0, index)
    );
    assert_eq!(state.conf_state.voters, vec![1, 2, 3]);
    assert_eq!(
        (log.first_index().unwrap(), log.last_index().unwrap()),
        (index + 1, index)
    );
    assert_eq!(log.term(index).unwrap(), term);
    assert_eq!(view.apply_state().unwrap().index, index);
    assert_eq!(e.get(b"k07").unwrap().as_deref(), Some(&b"v7"[..]));
}

#[test]
fn a_backup_of_region_one_restores_into_a_new_cluster() {
    // A config-file node of this version keeps its data as region 1 of a store.
    let src_dir = tempfile::tempdir().unwrap();
    let store = Engine::open(src_dir.path()).unwrap();
    let view = store
        .create_region(&crate::region::whole_range_region(1, &[1, 2, 3]))
        .unwrap();
    let ents: Vec<Entry> = (6..=30)
        .map(|i| entry(i, 5, &cmd(4, i, put(&format!("k{i:02}"), &format!("v{i}")))))
        .collect();
    StateMachine::new(view.clone(), 1000)
        .unwrap()
        .apply(&ents)
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("backup.rdb");
    let info = write(&view, IDENT, &path).unwrap();
    assert_eq!((info.index, info.term, info.keys), (30, 5, 25));
    let dir = out.path().join("node2");
    let r = restore(&path, &dir, &target(2)).unwrap();
    // The meta and the applied index are the new cluster's.
    assert_eq!((r.records + r.skipped, r.skipped), (info.records, 2));
    let e = Engine::open(&dir).unwrap();
    check_restored(&e, 2, 30);
    let region_one = crate::keys::region_prefix(1);
    let dedup = |e: &Engine| -> Vec<(Vec<u8>, Vec<u8>)> {
        data_cf(e)
            .into_iter()
            .filter(|(k, _)| k.starts_with(&region_one) && k.get(9) == Some(&b's'))
            .collect()
    };
    assert_eq!(dedup(&e), dedup(&store));
    assert_eq!(dedup(&e).len(), 25);
}

#[test]
fn a_damaged_backup_is_refused_before_anything_is_written() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = source(src_dir.path());
    let out = tempfile::tempdir().unwrap();
    let path = backup_of(&src, out.path());
    let good = std::fs::read(&path).unwrap();
    let empty_dir = out.path().join("empty");
    std::fs::create_dir(&empty_dir).unwrap();

    let mut damaged: Vec<(&str, Vec<u8>)> = Vec::new();
    for at in [
        3,
        30,
        HEADER_LEN as usize + 20,
        good.len() / 2,
        good.len() - 3,
    ] {
        let mut b = good.clone();
        b[at] ^= 0x01;
        damaged.push(("a flipped bit", b));
    }
    damaged.push(("a cut file", good[..good.len() - 10].to_vec()));
    damaged.push(("a cut header", good[..20].to_vec()));
    damaged.push(("bytes after the end", [good.as_slice(), b"x"].concat()));
    damaged.push((
        "another file",
        b"hello, this is not a backup at all".repeat(4),
    ));
    for (what, bytes) in damaged {
        let bad = out.path().join("bad.rdb");
        std::fs::write(&bad, &bytes).unwrap();
        assert!(
            matches!(verify(&bad), Err(Error::BadBackup(_))),
            "{what}: {:?}",
            verify(&bad)
        );
        for dir in [out.path().join("fresh"), empty_dir.clone()] {
            let r = restore(&bad, &dir, &target(1));
            let Err(Error::BadBackup(m)) = &r else {
                panic!("{what}: {r:?}");
            };
            assert!(m.contains("bad.rdb"), "the error names the file: {m}");
            assert!(
                !out.path().join("fresh").exists(),
                "{what}: nothing created"
            );
            assert_eq!(std::fs::read_dir(&empty_dir).unwrap().count(), 0, "{what}");
            assert!(!out.path().join("fresh.restoring").exists());
            assert!(!out.path().join("empty.restoring").exists());
        }
    }
    let missing = restore(&out.path().join("nope.rdb"), &empty_dir, &target(1));
    assert!(matches!(missing, Err(Error::BadBackup(_))), "{missing:?}");
}

#[test]
fn a_restore_never_writes_over_an_existing_directory() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = source(src_dir.path());
    let out = tempfile::tempdir().unwrap();
    let path = backup_of(&src, out.path());
    let before = data_cf(&src);
    drop(src);
    let r = restore(&path, src_dir.path(), &target(1));
    assert!(
        matches!(&r, Err(Error::DataDirNotEmpty(d)) if d == src_dir.path()),
        "{r:?}"
    );
    let src = Engine::open(src_dir.path()).unwrap();
    assert_eq!(data_cf(&src), before, "the data is untouched");
    assert_eq!(src.ident().unwrap(), Some(IDENT));

    let other = out.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), b"mine").unwrap();
    let r = restore(&path, &other, &target(1));
    assert!(matches!(r, Err(Error::DataDirNotEmpty(_))), "{r:?}");
    assert_eq!(std::fs::read(other.join("notes.txt")).unwrap(), b"mine");
    assert_eq!(std::fs::read_dir(&other).unwrap().count(), 1);
}

#[test]
fn a_restore_interrupted_before_its_rename_leaves_no_directory_and_is_redone() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = source(src_dir.path());
    let out = tempfile::tempdir().unwrap();
    let path = backup_of(&src, out.path());
    // What a crash in the middle of a restore leaves: a partial staging folder, no target.
    let staging = out.path().join("node1.restoring");
    std::fs::create_dir(&staging).unwrap();
    std::fs::write(staging.join("CURRENT"), b"garbage").unwrap();
    let dir = out.path().join("node1");
    restore(&path, &dir, &target(1)).unwrap();
    assert!(!staging.exists());
    let e = Engine::open(&dir).unwrap();
    check_restored(&e, 1, 20);
}

#[test]
fn no_backup_is_written_from_the_middle_of_a_snapshot_install() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = source(src_dir.path());
    // The marker the first install batch writes, before the data is cleared.
    let mut wb = WriteBatch::default();
    wb.put_cf(
        src.cf(crate::keys::CF_RAFT_STATE),
        crate::keys::PENDING_SNAPSHOT_KEY,
        b"an install is running",
    );
    src.write(wb, true).unwrap();
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("backup.rdb");
    let r = write(&src, IDENT, &path);
    assert!(matches!(r, Err(Error::SnapshotInstalling)), "{r:?}");
    assert!(!path.exists(), "a failed backup leaves no file");
}
