//! Backup files and restores: round trip, determinism, and refusals that change nothing.

use std::path::{Path, PathBuf};

use raft::prelude::Entry;
use raft::Storage;
use rocksdb::WriteBatch;

use super::{
    encode_cluster_header, restore, stage_store, verify, write, write_file, RestoreTarget,
    StoreRestoreTarget, CLUSTER_HEADER_LEN, HEADER_LEN, RESTORED_REGION, VERSION, VERSION_BARE,
};
use crate::keys::CF_DATA;
use crate::region::{Peer, Region, RegionEpoch, StoreIdent};
use crate::tests::{cmd, entry, logger, open, put, IDENT};
use crate::{
    ApplySettings, CommandResult, Engine, EngineOptions, Error, Ident, RaftStorage, StateMachine,
};
use rdb_proto::command::command::Op;

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
        settings: ApplySettings {
            dedup_window: 1000,
            history_revisions: 100,
            history_ms: 0,
        },
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
    let contents = verify(&path).unwrap();
    assert_eq!(
        (contents.version, contents.cluster_id, contents.file_len),
        (VERSION, IDENT.cluster_id, info.file_len)
    );
    assert_eq!(
        (contents.checksum, contents.regions),
        (info.checksum, vec![info.clone()])
    );
    assert_eq!(
        info.region, None,
        "a node of older versions has no region meta"
    );

    let restored_dirs: Vec<PathBuf> = (1..=3)
        .map(|id| out.path().join(format!("node{id}")))
        .collect();
    // An empty directory is as good as a missing one.
    std::fs::create_dir(&restored_dirs[1]).unwrap();
    for (i, dir) in restored_dirs.iter().enumerate() {
        let r = restore(&path, dir, &target(i as u64 + 1)).unwrap();
        assert_eq!(r.records + r.skipped, info.records);
        assert_eq!((r.keys, r.regions.len(), r.regions[0].1), (20, 1, 20));
        assert_eq!(
            r.skipped, 3,
            "the membership record, the old applied index and revisions are left out"
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
    assert!(matches!(out[0].result, Some(Ok(CommandResult::Put { .. }))));
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
        .check_apply_settings(
            ApplySettings {
                dedup_window: 1000,
                history_revisions: 100,
                history_ms: 0,
            },
            crate::Revisions::Counted
        )
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
    // The meta, the applied index and the revisions record are the new cluster's.
    assert_eq!((r.records + r.skipped, r.skipped), (info.records, 3));
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

/// A PD-mode store with three regions, `["", "k10")`, `["k10", "k20")`, `["k20", "")`, each
/// with ten puts of its own keys applied (client 4), region `i` at index `5 + 10 * i`.
fn three_regions(dir: &Path) -> (Engine, Vec<Engine>) {
    let store = Engine::open(dir).unwrap();
    let bounds = [("", "k10"), ("k10", "k20"), ("k20", "")];
    let mut views = Vec::new();
    for (i, (start, end)) in bounds.iter().enumerate() {
        let id = [1, 7, 12][i];
        let region = Region {
            id,
            start_key: start.as_bytes().to_vec(),
            end_key: end.as_bytes().to_vec(),
            epoch: Some(RegionEpoch {
                version: 1 + i as u64,
                conf_ver: 1,
            }),
            peers: vec![Peer {
                id: 100 + id,
                store_id: 3,
                learner: false,
            }],
        };
        let view = store.create_region(&region).unwrap();
        let n = 10 * (i as u64 + 1);
        let ents: Vec<Entry> = (0..n)
            .map(|j| {
                let k = format!("k{}{}", i, j % 10);
                entry(6 + j, 5, &cmd(4, 100 * id + j, put(&k, &format!("v{j}"))))
            })
            .collect();
        StateMachine::new(view.clone(), 1000)
            .unwrap()
            .apply(&ents)
            .unwrap();
        views.push(view);
    }
    (store, views)
}

/// A cluster backup of `views` at `path` as a PD-mode client assembles it: the cluster
/// header, then each region's backup in order. Returns each region's backup bytes.
fn cluster_backup(views: &[Engine], path: &Path) -> Vec<Vec<u8>> {
    let tmp = tempfile::tempdir().unwrap();
    let sections: Vec<Vec<u8>> = views
        .iter()
        .map(|v| {
            let p = tmp.path().join("region.rdb");
            write(v, IDENT, &p).unwrap();
            std::fs::read(&p).unwrap()
        })
        .collect();
    let mut bytes = encode_cluster_header(IDENT.cluster_id, sections.len() as u32).to_vec();
    for s in &sections {
        bytes.extend_from_slice(s);
    }
    std::fs::write(path, &bytes).unwrap();
    sections
}

/// The regions of the backup with new peers on stores 21, 22, 23 (peer ids from 50).
fn new_regions(contents: &super::BackupContents) -> Vec<Region> {
    contents
        .regions
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let mut r = b.region.clone().unwrap();
            r.peers = (0..3)
                .map(|s| Peer {
                    id: 50 + 3 * i as u64 + s,
                    store_id: 21 + s,
                    learner: false,
                })
                .collect();
            r
        })
        .collect()
}

fn store_target(store_id: u64, regions: Vec<Region>) -> StoreRestoreTarget {
    StoreRestoreTarget {
        ident: StoreIdent {
            cluster_id: 77,
            store_id,
            token: 1000 + store_id,
        },
        regions,
        settings: ApplySettings {
            dedup_window: 1000,
            history_revisions: 100,
            history_ms: 0,
        },
        engine_opts: EngineOptions::default(),
    }
}

#[test]
fn a_cluster_backup_holds_every_region_and_restores_them_onto_new_stores() {
    let src_dir = tempfile::tempdir().unwrap();
    let (store, views) = three_regions(src_dir.path());
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("cluster.rdb");
    let sections = cluster_backup(&views, &path);
    let bytes = std::fs::read(&path).unwrap();

    let contents = verify(&path).unwrap();
    assert_eq!(
        (contents.version, contents.cluster_id),
        (2, IDENT.cluster_id)
    );
    assert_eq!(contents.file_len, bytes.len() as u64);
    assert_eq!(contents.checksum, crc32fast::hash(&bytes), "whole-file CRC");
    let summary: Vec<(u64, u64, u64)> = contents
        .regions
        .iter()
        .map(|r| (r.region.as_ref().unwrap().id, r.index, r.keys))
        .collect();
    assert_eq!(summary, vec![(1, 15, 10), (7, 25, 10), (12, 35, 10)]);
    assert_eq!(contents.keys(), 30);
    for (r, s) in contents.regions.iter().zip(&sections) {
        assert_eq!(r.file_len, s.len() as u64);
    }

    let regions = new_regions(&contents);
    let dirs: Vec<PathBuf> = (21..=23)
        .map(|s| out.path().join(format!("store{s}")))
        .collect();
    for (dir, store_id) in dirs.iter().zip(21..) {
        let staged = stage_store(
            &path,
            &contents,
            dir,
            &store_target(store_id, regions.clone()),
        )
        .unwrap();
        assert!(!dir.exists(), "nothing in place before the commit");
        let r = staged.commit().unwrap();
        assert_eq!((r.keys, r.regions.len()), (30, 3));
    }
    let user = |e: &Engine| -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut v = data_cf(e);
        v.retain(|(k, _)| k[0] == b'd');
        v
    };
    for (dir, store_id) in dirs.iter().zip(21..) {
        let e = Engine::open(dir).unwrap();
        e.claim_for_store(store_target(store_id, Vec::new()).ident)
            .unwrap();
        assert_eq!(e.region_ids().unwrap(), vec![1, 7, 12]);
        assert_eq!(user(&e), user(&store), "store {store_id} holds every key");
        for (i, want) in regions.iter().enumerate() {
            let view = e.region(want.id).unwrap();
            assert_eq!(view.region_meta().unwrap().as_ref(), Some(want));
            view.check_consistency().unwrap();
            let index = contents.regions[i].index;
            let log = RaftStorage::open(view.clone(), logger()).unwrap();
            let state = log.initial_state().unwrap();
            assert_eq!(state.hard_state.commit, index);
            assert_eq!(
                state.conf_state.voters,
                vec![50 + 3 * i as u64, 51 + 3 * i as u64, 52 + 3 * i as u64]
            );
            assert_eq!(log.first_index().unwrap(), index + 1);
            // Each region's dedup records came along, under its id.
            let prefix = crate::keys::region_prefix(want.id);
            let dedup = |e: &Engine| {
                data_cf(e)
                    .into_iter()
                    .filter(|(k, _)| k.starts_with(&prefix) && k.get(9) == Some(&b's'))
                    .count()
            };
            assert_eq!(dedup(&e), dedup(&store));
            assert_eq!(dedup(&e), 10 * (i + 1));
        }
    }
}

#[test]
fn a_cluster_backup_restores_into_a_config_file_node_as_region_one() {
    let src_dir = tempfile::tempdir().unwrap();
    let (store, views) = three_regions(src_dir.path());
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("cluster.rdb");
    cluster_backup(&views, &path);
    let dir = out.path().join("node1");
    let r = restore(&path, &dir, &target(1)).unwrap();
    assert_eq!((r.keys, r.regions.len(), r.regions[0].1), (30, 1, 35));
    let e = Engine::open(&dir).unwrap();
    assert_eq!(e.region_ids().unwrap(), vec![1]);
    let user = |e: &Engine| -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut v = data_cf(e);
        v.retain(|(k, _)| k[0] == b'd');
        v
    };
    assert_eq!(user(&e), user(&store));
    e.region(1).unwrap().check_consistency().unwrap();
}

#[test]
fn a_damaged_or_incomplete_cluster_backup_is_refused() {
    let src_dir = tempfile::tempdir().unwrap();
    let (_store, views) = three_regions(src_dir.path());
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("cluster.rdb");
    let sections = cluster_backup(&views, &path);
    let good = std::fs::read(&path).unwrap();
    let header = |n: u32| encode_cluster_header(IDENT.cluster_id, n).to_vec();
    let mut damaged: Vec<(&str, Vec<u8>)> = vec![
        (
            "the last region missing",
            [header(3), sections[0].clone(), sections[1].clone()].concat(),
        ),
        (
            "a region left out",
            [header(2), sections[0].clone(), sections[2].clone()].concat(),
        ),
        (
            "regions out of order",
            [
                header(3),
                sections[1].clone(),
                sections[0].clone(),
                sections[2].clone(),
            ]
            .concat(),
        ),
        (
            "a region twice",
            [
                header(4),
                sections[0].clone(),
                sections[1].clone(),
                sections[1].clone(),
                sections[2].clone(),
            ]
            .concat(),
        ),
        ("no region", header(0)),
        (
            "a region of another cluster",
            [encode_cluster_header(5, 3).to_vec(), sections.concat()].concat(),
        ),
        ("bytes after the end", [good.as_slice(), b"x"].concat()),
        ("a cut file", good[..good.len() - 5].to_vec()),
    ];
    for at in [
        10,
        21,
        CLUSTER_HEADER_LEN as usize + 5,
        CLUSTER_HEADER_LEN as usize + sections[0].len() + 70,
    ] {
        let mut b = good.clone();
        b[at] ^= 0x01;
        damaged.push(("a flipped bit", b));
    }
    let contents = verify(&path).unwrap();
    let regions = new_regions(&contents);
    for (what, bytes) in damaged {
        let bad = out.path().join("bad.rdb");
        std::fs::write(&bad, &bytes).unwrap();
        let r = verify(&bad);
        assert!(matches!(r, Err(Error::BadBackup(_))), "{what}: {r:?}");
        // A file changed after its check is refused too, and leaves nothing behind.
        let dir = out.path().join("store");
        let r = stage_store(&bad, &contents, &dir, &store_target(21, regions.clone()));
        assert!(matches!(r, Err(Error::BadBackup(_))), "{what}");
        assert!(
            !dir.exists() && !out.path().join("store.restoring").exists(),
            "{what}"
        );
    }
}

#[test]
fn a_store_restore_refuses_other_regions_and_leaves_nothing_uncommitted() {
    let src_dir = tempfile::tempdir().unwrap();
    let (_store, views) = three_regions(src_dir.path());
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("cluster.rdb");
    cluster_backup(&views, &path);
    let contents = verify(&path).unwrap();
    let dir = out.path().join("store");
    let mut regions = new_regions(&contents);
    regions[1].start_key = b"k15".to_vec();
    let r = stage_store(&path, &contents, &dir, &store_target(21, regions));
    assert!(matches!(r, Err(Error::BadBackup(_))), "another range");
    let r = stage_store(
        &path,
        &contents,
        &dir,
        &store_target(21, new_regions(&contents)[..2].to_vec()),
    );
    assert!(matches!(r, Err(Error::BadBackup(_))), "fewer regions");
    assert!(!dir.exists());
    // Staged but not committed (the cluster could not be recorded): nothing is left.
    let staged = stage_store(
        &path,
        &contents,
        &dir,
        &store_target(21, new_regions(&contents)),
    )
    .unwrap();
    assert!(out.path().join("store.restoring").exists());
    drop(staged);
    assert!(!out.path().join("store.restoring").exists() && !dir.exists());
}

/// A backup taken before versioned keys holds bare values: its restore makes them versions
/// from before history, and a backup of versions carries their revisions, their history and
/// the group's revisions record, so writes after the restore go on above them.
#[test]
fn a_restore_carries_versions_and_history_and_upgrades_a_bare_backup() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = source(src_dir.path());
    // Overwrite k01 and delete k02: history.
    let ents = vec![
        entry(21, 2, &cmd(4, 21, put("k01", "v21"))),
        entry(
            22,
            2,
            &cmd(
                4,
                22,
                Op::Delete(rdb_proto::command::Delete {
                    key: "k02".into(),
                    condition: None,
                }),
            ),
        ),
    ];
    StateMachine::new(src.clone(), 1000)
        .unwrap()
        .apply(&ents)
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("backup.rdb");
    write(&src, IDENT, &path).unwrap();
    let dir = out.path().join("restored");
    restore(&path, &dir, &target(1)).unwrap();
    let e = Engine::open(&dir).unwrap();
    let view = e.region(RESTORED_REGION).unwrap();
    let v = view.get_versioned(b"k01").unwrap().expect("k01");
    assert_eq!(
        (v.value.as_slice(), v.meta.mod_revision, v.meta.version),
        (&b"v21"[..], 21, 2)
    );
    assert_eq!(
        view.get_at(b"k01", 20).unwrap().map(|v| v.value),
        Some(b"v1".to_vec())
    );
    assert_eq!(
        view.get_at(b"k02", 21).unwrap().map(|v| v.value),
        Some(b"v2".to_vec())
    );
    assert_eq!(view.get_versioned(b"k02").unwrap(), None);
    let mut sm = StateMachine::new(view.clone(), 1000).unwrap();
    let index = view.apply_state().unwrap().index;
    let r = sm
        .apply(&[entry(index + 1, 3, &cmd(0, 0, put("k03", "after")))])
        .unwrap();
    assert_eq!(
        r[0].result,
        Some(Ok(CommandResult::Put { revision: 23 })),
        "revisions go on after the restore"
    );

    // The same data as a directory of older versions held it: bare values.
    let mut wb = WriteBatch::default();
    for (k, rec) in data_cf(&src) {
        if k[0] == b'd' {
            let (_, value) = crate::mvcc::decode(&rec).unwrap();
            wb.put_cf(src.cf(CF_DATA), &k, value);
        }
    }
    src.write(wb, true).unwrap();
    let bare = out.path().join("bare.rdb");
    write_file(&src, IDENT, &bare, VERSION_BARE).unwrap();
    let dir = out.path().join("from-bare");
    restore(&bare, &dir, &target(1)).unwrap();
    let e = Engine::open(&dir).unwrap();
    let view = e.region(RESTORED_REGION).unwrap();
    for i in 3..=20 {
        let k = format!("k{i:02}");
        let v = view.get_versioned(k.as_bytes()).unwrap().expect("kept");
        assert_eq!(v.value, format!("v{i}").into_bytes());
        assert_eq!(v.meta, crate::mvcc::BEFORE_HISTORY);
    }
}
