//! Backups: a consistent copy of a cluster's data in one file, and restoring it into the data
//! directories of a new cluster.
//!
//! A backup of one region (version 1) is a fixed header followed by a snapshot file (the
//! format of [`crate::snapshot`]: every record the region owns in the `data` column family, its
//! meta record with its range among them, read through one RocksDB view together with the
//! applied index, so data and index match). Header, big endian:
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 8 | magic `RDBBACK1` |
//! | 8 | 4 | version (1) |
//! | 12 | 8 | cluster id of the source |
//! | 20 | 8 | node (store) id of the source |
//! | 28 | 8 | applied index of the data |
//! | 36 | 8 | term of that entry |
//! | 44 | 8 | length of the snapshot that follows |
//! | 52 | 4 | CRC-32 of the snapshot |
//! | 56 | 4 | CRC-32 of bytes 0..56 |
//!
//! The snapshot runs from byte 60 to the end of the file. A config-file cluster's backup is
//! such a file (its region 1 covers every key; older versions wrote the node's one group, with
//! no meta record, which counts as every key too).
//!
//! A backup of a PD-mode cluster (version 2) holds every region, each at its own read barrier:
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 8 | magic `RDBBACK1` |
//! | 8 | 4 | version (2) |
//! | 12 | 8 | cluster id of the source |
//! | 20 | 4 | number of regions |
//! | 24 | 4 | CRC-32 of bytes 0..24 |
//!
//! and then, from byte 28, one version-1 backup per region, back to back in key order, whose
//! ranges tile the key space (the first starts at the empty key, each starts where the one
//! before ends, the last has no end); the file ends with the last one.
//!
//! [`restore`] (a config-file node) and [`stage_store`] (a PD-mode store) check the whole file
//! before they touch anything, build the new directory beside the target under a temporary name
//! and rename it into place once everything is synced, so a crash or an error never leaves a
//! half-restored directory a node would start from. A restored directory is what a node of the
//! new cluster would hold had it applied each region's log up to the backup's index: its own
//! identity, the new cluster's regions and peers, the backup's data (without membership
//! records, which belong to the old cluster), and Raft state saying that everything up to that
//! index is applied, committed and compacted away.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::prelude::HardState;
use rocksdb::WriteBatch;

use crate::engine::{ApplySettings, Engine, EngineOptions, Ident};
use crate::keys::{self, CF_DATA, CF_RAFT_STATE};
use crate::region::{Region, StoreIdent};
use crate::snapshot::{self, CrcWriter, SnapshotDescriptor};
use crate::{Error, Index, Result, Term};

/// First bytes of a backup file.
const MAGIC: &[u8; 8] = b"RDBBACK1";
/// Version of the backup of one region (and of each region of a cluster's backup): its `d`
/// records hold versions, and its history and revisions come with them (specs/018-versions).
const VERSION: u32 = 3;
/// Version of the backup of one region taken before versioned keys: its `d` records hold bare
/// values, which a restore makes versions from before history (as the upgrade of a directory).
const VERSION_BARE: u32 = 1;
/// Version of the backup of a PD-mode cluster: its header, then one region backup per region.
pub const CLUSTER_VERSION: u32 = 2;
/// Length of the header before the snapshot.
pub const HEADER_LEN: u64 = 60;
/// Length of a PD-mode cluster's backup header, before its regions.
pub const CLUSTER_HEADER_LEN: u64 = 28;
/// The region a restored config-file cluster keeps its data in (every key).
pub const RESTORED_REGION: u64 = 1;
/// Bytes of pairs written per restore batch.
const RESTORE_BATCH_BYTES: usize = 4 << 20;

/// What the backup of one region holds and how to check it.
#[derive(Debug, Clone, PartialEq)]
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
    /// The region backed up, as its meta record says (range, epoch, peers); `None` for the
    /// one group of a node of older versions, which held every key.
    pub region: Option<Region>,
}

impl BackupInfo {
    /// The range `[start, end)` of the keys backed up (empty end: no bound).
    pub fn range(&self) -> (&[u8], &[u8]) {
        match &self.region {
            Some(r) => (&r.start_key, &r.end_key),
            None => (&[], &[]),
        }
    }
}

/// What a backup file holds: one region (a config-file cluster's, version 1) or every region
/// of a PD-mode cluster (version 2).
#[derive(Debug, Clone, PartialEq)]
pub struct BackupContents {
    /// The format version of the file.
    pub version: u32,
    /// The cluster the backup was taken from.
    pub cluster_id: u64,
    /// Length of the whole file in bytes.
    pub file_len: u64,
    /// CRC-32 (crc32fast) of the whole file.
    pub checksum: u32,
    /// Each region's backup, in key order; their ranges tile the key space.
    pub regions: Vec<BackupInfo>,
}

impl BackupContents {
    /// User keys in every region.
    pub fn keys(&self) -> u64 {
        self.regions.iter().map(|r| r.keys).sum()
    }
}

/// What a restore wrote into one data directory.
#[derive(Debug, Clone, PartialEq)]
pub struct Restored {
    /// The data directory restored into.
    pub data_dir: PathBuf,
    /// The regions created there, each with the index its log starts after.
    pub regions: Vec<(Region, Index)>,
    /// Records loaded into the `data` family.
    pub records: u64,
    /// User keys among them.
    pub keys: u64,
    /// Membership records of the old cluster left out.
    pub skipped: u64,
}

/// Who a restored config-file node's directory belongs to and how its cluster applies entries.
#[derive(Debug, Clone, PartialEq)]
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

/// Who a restored PD-mode store's directory belongs to and which regions it hosts.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreRestoreTarget {
    /// The new cluster id, this store's id and token.
    pub ident: StoreIdent,
    /// The regions of the new cluster, one per region of the backup and in the same (key)
    /// order, each with the range of its backup and its new peers (one on this store).
    pub regions: Vec<Region>,
    /// The new cluster's apply settings.
    pub settings: ApplySettings,
    /// RocksDB options for the new directory.
    pub engine_opts: EngineOptions,
}

/// The fields of a region's backup header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    /// [`VERSION`] or [`VERSION_BARE`].
    version: u32,
    source: Ident,
    index: Index,
    term: Term,
    snapshot: SnapshotDescriptor,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut b = [0u8; HEADER_LEN as usize];
        b[..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&self.version.to_be_bytes());
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
        if version != VERSION && version != VERSION_BARE {
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
            version,
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

    fn info(&self, records: u64, keys: u64, region: Option<Region>) -> BackupInfo {
        BackupInfo {
            source: self.source,
            index: self.index,
            term: self.term,
            file_len: HEADER_LEN + self.snapshot.file_len,
            checksum: self.file_checksum(),
            records,
            keys,
            region,
        }
    }
}

/// Encodes the header of a PD-mode cluster's backup of `regions` regions.
pub fn encode_cluster_header(cluster_id: u64, regions: u32) -> [u8; CLUSTER_HEADER_LEN as usize] {
    let mut b = [0u8; CLUSTER_HEADER_LEN as usize];
    b[..8].copy_from_slice(MAGIC);
    b[8..12].copy_from_slice(&CLUSTER_VERSION.to_be_bytes());
    b[12..20].copy_from_slice(&cluster_id.to_be_bytes());
    b[20..24].copy_from_slice(&regions.to_be_bytes());
    let crc = crc32fast::hash(&b[..24]);
    b[24..28].copy_from_slice(&crc.to_be_bytes());
    b
}

/// One region's backup inside a backup file: where it starts and its header.
#[derive(Debug, Clone, Copy)]
struct Section {
    offset: u64,
    header: Header,
}

/// The layout of a backup file, from its headers alone.
struct Layout {
    version: u32,
    cluster_id: u64,
    /// The cluster header of a version-2 file.
    top: Option<[u8; CLUSTER_HEADER_LEN as usize]>,
    sections: Vec<Section>,
    file_len: u64,
}

impl Layout {
    /// The CRC-32 of the whole file, from the headers' checksums.
    fn checksum(&self) -> u32 {
        match self.top {
            None => self
                .sections
                .first()
                .map_or(0, |s| s.header.file_checksum()),
            Some(top) => {
                let mut h = crc32fast::Hasher::new();
                h.update(&top);
                for s in &self.sections {
                    h.combine(&crc32fast::Hasher::new_with_initial_len(
                        s.header.file_checksum(),
                        HEADER_LEN + s.header.snapshot.file_len,
                    ));
                }
                h.finalize()
            }
        }
    }
}

/// Writes a backup of `engine`'s data, taken from node `source`, to a new file at `path`
/// (buffered, fsynced; an existing file is replaced). The data and its index are read through
/// one RocksDB view. On error the file is removed.
pub fn write(engine: &Engine, source: Ident, path: &Path) -> Result<BackupInfo> {
    let written = write_file(engine, source, path, VERSION);
    if written.is_err() {
        let _ = std::fs::remove_file(path);
    }
    written
}

/// [`write`], with the format version the header names (tests write the older one).
fn write_file(engine: &Engine, source: Ident, path: &Path, version: u32) -> Result<BackupInfo> {
    let mut file = File::create(path)?;
    file.write_all(&[0u8; HEADER_LEN as usize])?;
    let mut out = CrcWriter::new(BufWriter::with_capacity(snapshot::IO_BUF, file));
    let written = snapshot::write_pairs(engine, &mut out)?;
    let (snapshot_len, snapshot_crc, writer) = out.finish();
    let mut file = writer.into_inner().map_err(|e| e.into_error())?;
    let apply = written.apply;
    let header = Header {
        version,
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
    Ok(header.info(written.pairs, written.user_keys, written.region))
}

/// Reads and checks a backup file (headers, framing, checksums, that the applied index stored
/// with each region's data matches its header, and that the regions tile the key space)
/// without holding more than a read buffer. Every problem is `Error::BadBackup` naming the file.
pub fn verify(path: &Path) -> Result<BackupContents> {
    let layout = read_layout(path)?;
    verify_with(path, &layout)
}

fn verify_with(path: &Path, layout: &Layout) -> Result<BackupContents> {
    let mut regions = Vec::with_capacity(layout.sections.len());
    for section in &layout.sections {
        let mut records = 0u64;
        let (keys, region) = scan(path, section, |_, _| {
            records += 1;
            Ok(())
        })?;
        regions.push(section.header.info(records, keys, region));
    }
    check_tiling(&regions).map_err(|m| Error::BadBackup(format!("{}: {m}", path.display())))?;
    Ok(BackupContents {
        version: layout.version,
        cluster_id: layout.cluster_id,
        file_len: layout.file_len,
        checksum: layout.checksum(),
        regions,
    })
}

/// Why the regions' ranges do not tile the key space in order, if they do not.
fn check_tiling(regions: &[BackupInfo]) -> std::result::Result<(), String> {
    let mut next: &[u8] = &[];
    for (i, r) in regions.iter().enumerate() {
        let (start, end) = r.range();
        if start != next {
            return Err(format!(
                "region {} of the file starts at '{}', not where the one before ends ('{}')",
                i + 1,
                String::from_utf8_lossy(start),
                String::from_utf8_lossy(next)
            ));
        }
        if end.is_empty() {
            if i + 1 != regions.len() {
                return Err(format!(
                    "region {} of the file reaches the end of the key space, but {} more follow",
                    i + 1,
                    regions.len() - i - 1
                ));
            }
            return Ok(());
        }
        next = end;
    }
    Err("the regions do not reach the end of the key space".into())
}

/// Reads every header of the file at `path`: a version-1 file is one region's backup, a
/// version-2 file a cluster header and then one per region, which must end with the file.
fn read_layout(path: &Path) -> Result<Layout> {
    let bad = |m: String| Error::BadBackup(format!("{}: {m}", path.display()));
    let mut f = File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
    let file_len = f.metadata().map_err(|e| bad(e.to_string()))?.len();
    let mut start = [0u8; 12];
    f.read_exact(&mut start)
        .map_err(|e| bad(format!("shorter than a backup header: {e}")))?;
    if &start[..8] != MAGIC {
        return Err(bad("not an rdb backup file (magic missing)".into()));
    }
    let version = u32::from_be_bytes([start[8], start[9], start[10], start[11]]);
    let read_section = |f: &mut File, offset: u64| -> Result<Section> {
        let mut b = [0u8; HEADER_LEN as usize];
        f.seek(SeekFrom::Start(offset))?;
        f.read_exact(&mut b).map_err(|e| {
            bad(format!(
                "ends inside a region's header at byte {offset}: {e}"
            ))
        })?;
        let header = Header::decode(&b).map_err(|m| bad(format!("at byte {offset}: {m}")))?;
        Ok(Section { offset, header })
    };
    let end_of = |s: &Section| {
        s.offset
            .checked_add(HEADER_LEN)
            .and_then(|o| o.checked_add(s.header.snapshot.file_len))
            .ok_or_else(|| bad("a region's length overflows".into()))
    };
    if version != CLUSTER_VERSION {
        let section = read_section(&mut f, 0)?;
        let end = end_of(&section)?;
        if end != file_len {
            return Err(bad(format!("{file_len} bytes, the header says {end}")));
        }
        return Ok(Layout {
            version,
            cluster_id: section.header.source.cluster_id,
            top: None,
            sections: vec![section],
            file_len,
        });
    }
    let mut top = [0u8; CLUSTER_HEADER_LEN as usize];
    f.seek(SeekFrom::Start(0))?;
    f.read_exact(&mut top)
        .map_err(|e| bad(format!("shorter than a cluster backup header: {e}")))?;
    let crc = crc32fast::hash(&top[..24]);
    let stored = u32::from_be_bytes([top[24], top[25], top[26], top[27]]);
    if crc != stored {
        return Err(bad(format!(
            "header checksum {crc:08x} does not match the stored {stored:08x}"
        )));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&top[12..20]);
    let cluster_id = u64::from_be_bytes(id);
    let count = u32::from_be_bytes([top[20], top[21], top[22], top[23]]);
    if count == 0 {
        return Err(bad("the backup holds no region".into()));
    }
    let mut sections = Vec::new();
    let mut offset = CLUSTER_HEADER_LEN;
    for i in 0..count {
        if offset >= file_len {
            return Err(bad(format!("ends after {i} of its {count} regions")));
        }
        let section = read_section(&mut f, offset)?;
        if section.header.source.cluster_id != cluster_id {
            return Err(bad(format!(
                "region {} of the file is from cluster {}, the file from cluster {cluster_id}",
                i + 1,
                section.header.source.cluster_id
            )));
        }
        offset = end_of(&section)?;
        sections.push(section);
    }
    if offset != file_len {
        return Err(bad(format!(
            "{file_len} bytes, its {count} regions end at byte {offset}"
        )));
    }
    Ok(Layout {
        version,
        cluster_id,
        top: Some(top),
        sections,
        file_len,
    })
}

/// Reads every pair of a region's snapshot in order, checking framing, count and checksum,
/// and that the applied-index record equals the header's; calls `each` with every pair.
/// Returns the number of user keys and the region's meta record, if it has one.
fn scan(
    path: &Path,
    section: &Section,
    mut each: impl FnMut(Vec<u8>, Vec<u8>) -> Result<()>,
) -> Result<(u64, Option<Region>)> {
    let header = &section.header;
    let bad = |e: Error| match e {
        Error::BadSnapshot(m) | Error::BadBackup(m) | Error::Corrupt(m) => {
            Error::BadBackup(format!(
                "{} (region at byte {}): {m}",
                path.display(),
                section.offset
            ))
        }
        Error::Io(e) => Error::BadBackup(format!("{}: {e}", path.display())),
        e => e,
    };
    let mut r = snapshot::open_section_reader(path, section.offset + HEADER_LEN, &header.snapshot)
        .map_err(bad)?;
    let (mut count, mut keys, mut apply_seen) = (0u64, 0u64, None);
    let mut region: Option<Region> = None;
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
                    "the data says applied {}, the header {}/{}",
                    keys::decode_pair(&v)
                        .map_or("nothing readable".into(), |(i, t)| format!("{i}/{t}")),
                    header.index,
                    header.term
                ))));
            }
            apply_seen = Some(k.get(1..9).map(<[u8]>::to_vec));
        }
        if is_meta_record(&k) {
            let meta = crate::region::decode_meta(&v).map_err(bad)?;
            if k[1..9] != meta.id.to_be_bytes() {
                return Err(bad(Error::BadBackup(format!(
                    "the meta record of region {} is stored as another region's",
                    meta.id
                ))));
            }
            region = Some(meta);
        }
        each(k, v)?;
    }
    r.finish(count).map_err(bad)?;
    let Some(apply_of) = apply_seen else {
        return Err(bad(Error::BadBackup(
            "the data has no applied-index record".into(),
        )));
    };
    match (&apply_of, &region) {
        // A region's applied index goes with its meta record; a node's of older versions has none.
        (Some(id), Some(r)) if id.as_slice() == r.id.to_be_bytes() => {}
        (None, None) => {}
        _ => {
            return Err(bad(Error::BadBackup(
                "the applied index and the meta record are not of the same region".into(),
            )))
        }
    }
    Ok((keys, region))
}

/// Whether `k` is a region's meta record (`r` + id + `m`).
fn is_meta_record(k: &[u8]) -> bool {
    k.len() == 10 && k[0] == keys::REGION_PREFIX && k[9] == keys::REGION_META_SUFFIX
}

/// Whether `k` is the revisions record of the backed-up group: a node's (`v`) or a region's
/// (`r` + id + `v`).
fn is_revisions_record(k: &[u8]) -> bool {
    k == keys::NODE_REVISIONS_KEY
        || (k.len() == 10 && k[0] == keys::REGION_PREFIX && k[9] == keys::REGION_REVISIONS_SUFFIX)
}

/// Whether `k` is the applied-index record of the backed-up group: a node's of older versions
/// (`a`), or a region's (`r` + id + `a`).
fn is_apply_record(k: &[u8]) -> bool {
    k == keys::DATA_APPLY_STATE_KEY
        || (k.len() == 10 && k[0] == keys::REGION_PREFIX && k[9] == keys::REGION_APPLY_SUFFIX)
}

mod restore;
pub use restore::{check_target, restore, stage_store, Staged};

#[cfg(test)]
mod tests;
