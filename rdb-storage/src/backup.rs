//! Backups: a consistent copy of a node's data in one file, and restoring it into the data
//! directory of a node of a new cluster.
//!
//! A backup file is a fixed header followed by a snapshot file (the format of
//! [`crate::snapshot`]: every record of the `data` column family, read through one RocksDB view
//! together with the applied index, so data and index match). Header, big endian:
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 8 | magic `RDBBACK1` |
//! | 8 | 4 | version (1) |
//! | 12 | 8 | cluster id of the source |
//! | 20 | 8 | node id of the source |
//! | 28 | 8 | applied index of the data |
//! | 36 | 8 | term of that entry |
//! | 44 | 8 | length of the snapshot that follows |
//! | 52 | 4 | CRC-32 of the snapshot |
//! | 56 | 4 | CRC-32 of bytes 0..56 |
//!
//! The snapshot runs from byte 60 to the end of the file.
//!
//! [`restore`] checks the whole file before it touches anything, builds the new directory
//! beside the target under a temporary name and renames it into place once everything is
//! synced, so a crash or an error never leaves a half-restored directory a node would start
//! from. The restored directory is what a node of the new cluster would hold had it applied the
//! log up to the backup's index: its own identity and the configured voters, the backup's data
//! (without membership records, which belong to the old cluster), and Raft state saying that
//! everything up to that index is applied, committed and compacted away.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::prelude::HardState;
use rocksdb::WriteBatch;

use crate::engine::{ApplySettings, Engine, EngineOptions, Ident};
use crate::keys::{self, CF_DATA, CF_RAFT_STATE};
use crate::snapshot::{self, CrcWriter, SnapshotDescriptor};
use crate::{Error, Index, Result, Term};

/// First bytes of a backup file.
const MAGIC: &[u8; 8] = b"RDBBACK1";
/// Version of the backup header.
const VERSION: u32 = 1;
/// Length of the header before the snapshot.
pub const HEADER_LEN: u64 = 60;
/// The region a restored config-file cluster keeps its data in (every key).
pub const RESTORED_REGION: u64 = 1;
/// Bytes of pairs written per restore batch.
const RESTORE_BATCH_BYTES: usize = 4 << 20;

/// What a backup file holds and how to check it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupInfo {
    /// The cluster and node the backup was taken from.
    pub source: Ident,
    /// Applied index of the data.
    pub index: Index,
    /// Term of that entry.
    pub term: Term,
    /// Length of the whole backup file in bytes.
    pub file_len: u64,
    /// CRC-32 (crc32fast) of the whole backup file.
    pub checksum: u32,
    /// Records of the `data` family in the backup (user data, dedup and other records).
    pub records: u64,
    /// Records of user data (keys) in the backup.
    pub keys: u64,
}

/// What [`restore`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The backup restored.
    pub backup: BackupInfo,
    /// The data directory it was restored into.
    pub data_dir: PathBuf,
    /// Records loaded into the `data` family.
    pub records: u64,
    /// Membership records of the old cluster left out.
    pub skipped: u64,
}

/// Who the restored directory belongs to and how its cluster applies entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreTarget {
    /// The new cluster id and this node's id.
    pub ident: Ident,
    /// Voters of the new cluster.
    pub voters: Vec<u64>,
    /// Their addresses (member records); the backup's own records are left out.
    pub members: Vec<crate::MemberRecord>,
    /// The new cluster's apply settings.
    pub settings: ApplySettings,
    /// RocksDB options for the new directory.
    pub engine_opts: EngineOptions,
}

/// The fields of a backup header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    source: Ident,
    index: Index,
    term: Term,
    snapshot: SnapshotDescriptor,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut b = [0u8; HEADER_LEN as usize];
        b[..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_be_bytes());
        b[12..20].copy_from_slice(&self.source.cluster_id.to_be_bytes());
        b[20..28].copy_from_slice(&self.source.node_id.to_be_bytes());
        b[28..36].copy_from_slice(&self.index.to_be_bytes());
        b[36..44].copy_from_slice(&self.term.to_be_bytes());
        b[44..52].copy_from_slice(&self.snapshot.file_len.to_be_bytes());
        b[52..56].copy_from_slice(&self.snapshot.checksum.to_be_bytes());
        let crc = crc32fast::hash(&b[..56]);
        b[56..60].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// The header in `b`, or what is wrong with it.
    fn decode(b: &[u8; HEADER_LEN as usize]) -> std::result::Result<Header, String> {
        if &b[..8] != MAGIC {
            return Err("not an rdb backup file (magic missing)".into());
        }
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut v = [0u8; 8];
            v.copy_from_slice(&b[i..i + 8]);
            u64::from_be_bytes(v)
        };
        let version = u32_at(8);
        if version != VERSION {
            return Err(format!("backup format version {version} is unknown"));
        }
        let crc = crc32fast::hash(&b[..56]);
        if crc != u32_at(56) {
            return Err(format!(
                "header checksum {crc:08x} does not match the stored {:08x}",
                u32_at(56)
            ));
        }
        let (index, term) = (u64_at(28), u64_at(36));
        Ok(Header {
            source: Ident {
                cluster_id: u64_at(12),
                node_id: u64_at(20),
            },
            index,
            term,
            snapshot: SnapshotDescriptor {
                index,
                term,
                file_len: u64_at(44),
                checksum: u32_at(52),
            },
        })
    }

    /// The CRC-32 of the whole file: the header's bytes followed by the snapshot's.
    fn file_checksum(&self) -> u32 {
        let mut h = crc32fast::Hasher::new();
        h.update(&self.encode());
        h.combine(&crc32fast::Hasher::new_with_initial_len(
            self.snapshot.checksum,
            self.snapshot.file_len,
        ));
        h.finalize()
    }

    fn info(&self, records: u64, keys: u64) -> BackupInfo {
        BackupInfo {
            source: self.source,
            index: self.index,
            term: self.term,
            file_len: HEADER_LEN + self.snapshot.file_len,
            checksum: self.file_checksum(),
            records,
            keys,
        }
    }
}

/// Writes a backup of `engine`'s data, taken from node `source`, to a new file at `path`
/// (buffered, fsynced; an existing file is replaced). The data and its index are read through
/// one RocksDB view. On error the file is removed.
pub fn write(engine: &Engine, source: Ident, path: &Path) -> Result<BackupInfo> {
    let written = write_file(engine, source, path);
    if written.is_err() {
        let _ = std::fs::remove_file(path);
    }
    written
}

fn write_file(engine: &Engine, source: Ident, path: &Path) -> Result<BackupInfo> {
    let mut file = File::create(path)?;
    file.write_all(&[0u8; HEADER_LEN as usize])?;
    let mut out = CrcWriter::new(BufWriter::with_capacity(snapshot::IO_BUF, file));
    let written = snapshot::write_pairs(engine, &mut out)?;
    let (snapshot_len, snapshot_crc, writer) = out.finish();
    let mut file = writer.into_inner().map_err(|e| e.into_error())?;
    let apply = written.apply;
    let header = Header {
        source,
        index: apply.index,
        term: apply.term,
        snapshot: SnapshotDescriptor {
            index: apply.index,
            term: apply.term,
            file_len: snapshot_len,
            checksum: snapshot_crc,
        },
    };
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&header.encode())?;
    file.sync_all()?;
    Ok(header.info(written.pairs, written.user_keys))
}

/// Reads and checks a backup file (header, framing, checksums, and that the applied index
/// stored with the data matches the header) without holding more than a read buffer.
/// Every problem is `Error::BadBackup` naming the file.
pub fn verify(path: &Path) -> Result<BackupInfo> {
    let header = read_header(path)?;
    verify_with(path, &header)
}

fn verify_with(path: &Path, header: &Header) -> Result<BackupInfo> {
    let mut records = 0u64;
    let keys = scan(path, header, |_, _| {
        records += 1;
        Ok(())
    })?;
    Ok(header.info(records, keys))
}

fn read_header(path: &Path) -> Result<Header> {
    let bad = |m: String| Error::BadBackup(format!("{}: {m}", path.display()));
    let mut f = File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
    let mut b = [0u8; HEADER_LEN as usize];
    f.read_exact(&mut b)
        .map_err(|e| bad(format!("shorter than a backup header: {e}")))?;
    Header::decode(&b).map_err(bad)
}

/// Reads every pair of the backup's snapshot in order, checking framing, count and checksum,
/// and that the applied-index record equals the header's; calls `each` with every pair.
/// Returns the number of user keys.
fn scan(
    path: &Path,
    header: &Header,
    mut each: impl FnMut(Vec<u8>, Vec<u8>) -> Result<()>,
) -> Result<u64> {
    let bad = |e: Error| match e {
        Error::BadSnapshot(m) | Error::BadBackup(m) => {
            Error::BadBackup(format!("{}: {m}", path.display()))
        }
        Error::Io(e) => Error::BadBackup(format!("{}: {e}", path.display())),
        e => e,
    };
    let mut r = snapshot::open_reader(path, HEADER_LEN, &header.snapshot).map_err(bad)?;
    let (mut count, mut keys, mut apply_seen) = (0u64, 0u64, false);
    while let Some(klen) = r.next_len().map_err(bad)? {
        let k = r.field(klen).map_err(bad)?;
        let vlen = r.value_len().map_err(bad)?;
        let v = r.field(vlen).map_err(bad)?;
        count += 1;
        if k.first() == Some(&keys::DATA_PREFIX) {
            keys += 1;
        }
        if is_apply_record(&k) {
            if keys::decode_pair(&v) != Some((header.index, header.term)) {
                return Err(bad(Error::BadBackup(format!(
                    "the data says applied {:?}, the header {}/{}",
                    keys::decode_pair(&v),
                    header.index,
                    header.term
                ))));
            }
            apply_seen = true;
        }
        each(k, v)?;
    }
    r.finish(count).map_err(bad)?;
    if !apply_seen {
        return Err(bad(Error::BadBackup(
            "the data has no applied-index record".into(),
        )));
    }
    Ok(keys)
}

/// Whether `k` is the applied-index record of the backed-up group: a node's of older versions
/// (`a`), or a region's (`r` + id + `a`).
fn is_apply_record(k: &[u8]) -> bool {
    k == keys::DATA_APPLY_STATE_KEY
        || (k.len() == 10 && k[0] == keys::REGION_PREFIX && k[9] == keys::REGION_APPLY_SUFFIX)
}

/// Where a record of a backup goes in region `region` of the restored directory: user data
/// as it is, a dedup record under the region's prefix (from a node of older versions, `s` +
/// client + seq; from a region, its own prefix + the same), and nothing for the records the
/// restore writes anew or that belong to the old cluster (applied index, meta, members).
fn restored_key(region: u64, k: &[u8]) -> Option<Vec<u8>> {
    let dedup = match k.first() {
        Some(&keys::DATA_PREFIX) => return Some(k.to_vec()),
        Some(&keys::DEDUP_PREFIX) => k,
        Some(&keys::REGION_PREFIX) if k.get(9) == Some(&keys::DEDUP_PREFIX) => &k[9..],
        _ => return None,
    };
    let mut out = keys::region_prefix(region);
    out.extend_from_slice(dedup);
    Some(out)
}

/// True when `dir` does not exist or is an empty directory.
fn is_missing_or_empty(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut rd) => Ok(rd.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(Error::Io(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", dir.display()),
        ))),
    }
}

/// Refuses a data directory that holds anything: a restore never overwrites data.
pub fn check_target(data_dir: &Path) -> Result<()> {
    if is_missing_or_empty(data_dir)? {
        Ok(())
    } else {
        Err(Error::DataDirNotEmpty(data_dir.to_path_buf()))
    }
}

/// The folder a restore into `data_dir` is built in before it is renamed into place.
fn staging_dir(data_dir: &Path) -> Result<PathBuf> {
    let name = data_dir.file_name().ok_or_else(|| {
        Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} does not name a directory", data_dir.display()),
        ))
    })?;
    let mut staged = name.to_os_string();
    staged.push(".restoring");
    Ok(data_dir.with_file_name(staged))
}

/// Restores the backup at `backup` into `data_dir`, which must not exist or be empty.
///
/// Checks the whole file first: a bad file changes nothing (`Error::BadBackup`), and neither
/// does a target directory that holds anything (`Error::DataDirNotEmpty`). The directory is
/// built under a temporary name beside `data_dir` (`<name>.restoring`, removed first if an
/// interrupted restore left it), synced, and renamed into place: bootstrapped for `target`,
/// with the backup's records except membership records, the apply state (both copies) and the
/// truncated state at the backup's index and term, and a hard state of that term, no vote, and
/// that index committed.
pub fn restore(backup: &Path, data_dir: &Path, target: &RestoreTarget) -> Result<Restored> {
    let header = read_header(backup)?;
    let info = verify_with(backup, &header)?;
    check_target(data_dir)?;
    let staging = staging_dir(data_dir)?;
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    if let Some(parent) = staging.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let (records, skipped) = match load(backup, &header, &staging, target) {
        Ok(counts) => counts,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    // The rename replaces an empty directory; then the parent is synced so it survives a crash.
    std::fs::rename(&staging, data_dir)?;
    let parent = match data_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()?;
    Ok(Restored {
        backup: info,
        data_dir: data_dir.to_path_buf(),
        records,
        skipped,
    })
}

/// Builds the restored database in `dir`; returns (records loaded, records skipped).
fn load(backup: &Path, header: &Header, dir: &Path, target: &RestoreTarget) -> Result<(u64, u64)> {
    let engine = Engine::open_with(dir, target.engine_opts)?;
    engine.claim_for_node(target.ident)?;
    engine.check_apply_settings(target.settings)?;
    let region = crate::region::whole_range_region(RESTORED_REGION, &target.voters);
    let view = engine.create_region_with_members(&region, &target.members)?;
    let data = engine.cf(CF_DATA);
    let mut batch = WriteBatch::default();
    let (mut records, mut skipped) = (0u64, 0u64);
    scan(backup, header, |k, v| {
        let Some(k) = restored_key(RESTORED_REGION, &k) else {
            skipped += 1;
            return Ok(());
        };
        batch.put_cf(data, k, v);
        records += 1;
        if batch.size_in_bytes() >= RESTORE_BATCH_BYTES {
            engine.write(std::mem::take(&mut batch), false)?;
        }
        Ok(())
    })
    .map_err(|e| match e {
        Error::BadBackup(m) => Error::BadBackup(format!("changed while restoring: {m}")),
        e => e,
    })?;
    // The new cluster's log starts after the backup's index (and never before a region's first).
    let index = header.index.max(crate::region::REGION_INIT_INDEX);
    let term = header.term.max(crate::region::REGION_INIT_TERM);
    let state = engine.cf(CF_RAFT_STATE);
    let pair = keys::encode_pair(index, term);
    batch.put_cf(state, view.state_key(keys::APPLY_STATE_KEY), pair);
    batch.put_cf(data, view.space().data_apply_key(), pair);
    batch.put_cf(state, view.state_key(keys::TRUNCATED_STATE_KEY), pair);
    let hs = HardState {
        term,
        vote: 0,
        commit: index,
        ..Default::default()
    };
    batch.put_cf(
        state,
        view.state_key(keys::HARD_STATE_KEY),
        hs.write_to_bytes()?,
    );
    // Synced: it also makes every earlier unsynced batch durable.
    engine.write(batch, true)?;
    view.check_consistency()?;
    Ok((records, skipped))
}

#[cfg(test)]
mod tests;
