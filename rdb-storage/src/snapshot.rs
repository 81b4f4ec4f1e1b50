//! Snapshots of the state machine as files: building, verifying, receiving and installing them.
//!
//! A snapshot is the whole `data` column family (user keys and dedup records) read through one
//! RocksDB snapshot, together with the apply state read through the same view, so data and
//! index always match. The builder writes it to a file under `<data_dir>/snap/` on a background
//! thread; until it is ready, `Storage::snapshot` answers `SnapshotTemporarilyUnavailable` and
//! raft asks again later. Nothing on either end ever holds the whole payload in memory.
//!
//! The raft `Snapshot.data` is a small [`SnapshotDescriptor`] (index, term, file length,
//! CRC-32 of the file); the file itself is streamed between nodes by the server's transport.
//!
//! File format (big endian): `RDBSNAP2`, then for each pair `u32 key length, key, u32 value
//! length, value`, then the end mark `u32 0xffff_ffff` and the pair count as u64.
//!
//! Install is bounded in memory and crash safe (TiKV's design): one synced batch records a
//! *pending install* marker with the Raft-side state, the data column family is then cleared
//! and loaded from the file in batches of a few MiB, and a last synced batch sets the apply
//! state and removes the marker. [`crate::Engine::open_with`] finishes a pending install before
//! anything reads the data. The file is deleted only once the marker is gone.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use raft::prelude::{ConfState, Snapshot, SnapshotMetadata};
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch};
use slog::{error, info, warn, Logger};

pub use crate::descriptor::SnapshotDescriptor;
pub use crate::engine::{snap_dir, SNAP_DIR};
use crate::engine::{ApplyState, Engine};
use crate::keys::{self, Space, CF_DATA, CF_RAFT_STATE};
use crate::{Error, Index, Result};

/// First bytes of a snapshot file.
const FILE_MAGIC: &[u8; 8] = b"RDBSNAP2";
/// Key length that marks the end of the pairs.
const END_MARK: u32 = u32::MAX;
/// Buffer size of snapshot file readers and writers.
pub(crate) const IO_BUF: usize = 1 << 20;
/// Bytes of pairs written per install batch.
const INSTALL_BATCH_BYTES: usize = 4 << 20;
/// Built snapshot files kept on the leader (the newest and the one before, which a transfer
/// may still be reading).
const BUILT_FILES_KEPT: usize = 2;

/// The snapshot most recently built, shared between raft's `Storage::snapshot` and the builder.
#[derive(Default)]
pub struct SnapshotSlot {
    /// The snapshot, and its region's epoch version when its build began (0 for a static
    /// node's group).
    ready: Option<(Snapshot, u64)>,
    building: bool,
    built_files: VecDeque<PathBuf>,
}

impl SnapshotSlot {
    /// The built snapshot if it covers at least `index` and its region's range has not changed
    /// since (`version`, the epoch version now): a snapshot from before a split still covers
    /// the keys the split gave away, and a store that hosts them refuses it, so it would be
    /// sent again and again until the log moved past it.
    pub fn ready_for(&self, index: u64, version: u64) -> Option<Snapshot> {
        self.ready
            .as_ref()
            .filter(|(s, v)| s.get_metadata().index >= index && *v == version)
            .map(|(s, _)| s.clone())
    }

    /// Whether a build is running (a simulation waits for it, so that a seed replays alike).
    pub fn is_building(&self) -> bool {
        self.building
    }

    /// Marks a build as started; false if one is already running.
    pub fn start_building(&mut self) -> bool {
        if self.building {
            return false;
        }
        self.building = true;
        true
    }

    /// Ends a build; a new snapshot replaces the previous one, and files older than the last
    /// [`BUILT_FILES_KEPT`] are returned for removal.
    fn finish(&mut self, built: Option<(Snapshot, PathBuf)>, version: u64) -> Vec<PathBuf> {
        self.building = false;
        let Some((snap, path)) = built else {
            return Vec::new();
        };
        self.ready = Some((snap, version));
        self.built_files.retain(|p| p != &path);
        self.built_files.push_back(path);
        let mut old = Vec::new();
        while self.built_files.len() > BUILT_FILES_KEPT {
            old.extend(self.built_files.pop_front());
        }
        old
    }
}

/// Builds a snapshot on its own thread and publishes it in `slot`, as of the region's epoch
/// `version` (read before the build, so a split during it makes the snapshot stale at once).
pub(crate) fn spawn_build(
    engine: Engine,
    slot: Arc<Mutex<SnapshotSlot>>,
    version: u64,
    logger: Logger,
) {
    let spawned = std::thread::Builder::new()
        .name("snapshot-build".into())
        .spawn({
            let slot = slot.clone();
            move || {
                let started = Instant::now();
                let built = match build(&engine) {
                    Ok(s) => {
                        let desc = SnapshotDescriptor::decode(&s.data);
                        match desc {
                            Ok(d) => {
                                info!(logger, "snapshot built";
                                    "index" => d.index, "term" => d.term, "bytes" => d.file_len,
                                    "file" => d.file_name(), "ms" => started.elapsed().as_millis() as u64);
                                Some((s, d.path_in(&engine.snap_dir())))
                            }
                            Err(e) => {
                                error!(logger, "snapshot build failed"; "error" => %e);
                                None
                            }
                        }
                    }
                    Err(e) => {
                        error!(logger, "snapshot build failed"; "error" => %e);
                        None
                    }
                };
                let old = slot
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .finish(built, version);
                for p in old {
                    if let Err(e) = std::fs::remove_file(&p) {
                        warn!(logger, "cannot remove old snapshot file";
                            "file" => %p.display(), "error" => %e);
                    }
                }
            }
        });
    if spawned.is_err() {
        slot.lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .finish(None, version);
    }
}

/// Writes the data column family and the apply state, read through one consistent RocksDB
/// view, to a new file under the engine's snapshot folder (buffered, checksummed, fsynced), and
/// returns the raft snapshot whose data is that file's descriptor.
///
/// The conf state is read through the same view: it is written in the apply batch of the
/// conf change that made it, so it always matches the applied index.
pub fn build(engine: &Engine) -> Result<Snapshot> {
    let dir = engine.snap_dir();
    std::fs::create_dir_all(&dir)?;
    let tmp = TempFile(dir.join(format!("build-{}.tmp", unique_suffix())));
    let mut out = CrcWriter::new(BufWriter::with_capacity(IO_BUF, File::create(&tmp.0)?));
    let written = write_pairs(engine, &mut out)?;
    let (apply, conf_state) = (written.apply, written.conf_state);
    let (file_len, checksum, writer) = out.finish();
    let file = writer.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    let desc = SnapshotDescriptor {
        index: apply.index,
        term: apply.term,
        file_len,
        checksum,
    };
    tmp.persist(&desc.path_in(&dir))?;
    let mut snap = Snapshot::default();
    snap.set_metadata(snapshot_metadata(apply, conf_state));
    snap.data = desc.encode().into();
    Ok(snap)
}

/// What [`write_pairs`] wrote.
pub(crate) struct Written {
    /// The apply state read with the data.
    pub(crate) apply: ApplyState,
    /// The conf state read with the data (written in the same batch as the apply state).
    pub(crate) conf_state: ConfState,
    /// Pairs written.
    pub(crate) pairs: u64,
    /// Pairs of user data among them.
    pub(crate) user_keys: u64,
    /// A region's meta record read with the data (its range, epoch and peers); `None` for a
    /// static node's group.
    pub(crate) region: Option<rdb_proto::pd::Region>,
}

/// Writes the snapshot file format to `out`: every record of the data column family and the
/// apply state, read through one RocksDB view so they match. Refuses a view taken in the
/// middle of a snapshot install (`Error::SnapshotInstalling`).
pub(crate) fn write_pairs(engine: &Engine, out: &mut impl Write) -> Result<Written> {
    let db = engine.db();
    // Before the view: compaction must not drop dedup records that are still live as of it.
    let _pin = engine.dedup_horizon().pin();
    let view = db.snapshot();
    let state = engine.cf(CF_RAFT_STATE);
    // The install marker is written before the data is cleared and removed with the last
    // batch of the load: a view that sees it may hold half of the new data.
    if view
        .get_cf(state, engine.state_key(keys::PENDING_SNAPSHOT_KEY))?
        .is_some()
    {
        return Err(Error::SnapshotInstalling);
    }
    let apply = match view.get_cf(state, engine.state_key(keys::APPLY_STATE_KEY))? {
        Some(v) => {
            let (index, term) = keys::decode_pair(&v)
                .ok_or_else(|| Error::Corrupt("apply state is not 16 bytes".into()))?;
            ApplyState { index, term }
        }
        None => return Err(Error::Corrupt("apply state missing".into())),
    };
    let conf_state = match view.get_cf(state, engine.state_key(keys::CONF_STATE_KEY))? {
        Some(v) => <ConfState as protobuf::Message>::parse_from_bytes(&v)?,
        None => return Err(Error::Corrupt("conf state missing".into())),
    };
    out.write_all(FILE_MAGIC)?;
    let (mut count, mut user_keys) = (0u64, 0u64);
    // A static node's snapshot is the whole family; a region's, its own records and then the
    // user keys of its range, as of the same view.
    let meta = match engine.space() {
        Space::Node => None,
        Space::Region(id) => match view.get_cf(engine.cf(CF_DATA), keys::region_meta_key(id))? {
            Some(v) => Some(crate::region::decode_meta(&v)?),
            None => return Err(Error::Corrupt(format!("region {id} has no meta record"))),
        },
    };
    let ranges = crate::region::owned_ranges(engine.space(), meta.as_ref())?;
    for (lower, upper) in ranges {
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(upper);
        let it = view.iterator_cf_opt(
            engine.cf(CF_DATA),
            ro,
            IteratorMode::From(&lower, Direction::Forward),
        );
        for item in it {
            let (k, v) = item?;
            write_field(out, &k)?;
            write_field(out, &v)?;
            count += 1;
            if k.first() == Some(&keys::DATA_PREFIX) {
                user_keys += 1;
            }
        }
    }
    out.write_all(&END_MARK.to_be_bytes())?;
    out.write_all(&count.to_be_bytes())?;
    Ok(Written {
        apply,
        conf_state,
        pairs: count,
        user_keys,
        region: meta,
    })
}

fn write_field(out: &mut impl Write, b: &[u8]) -> Result<()> {
    let len = u32::try_from(b.len())
        .ok()
        .filter(|&l| l != END_MARK)
        .ok_or_else(|| Error::Corrupt(format!("a stored record of {} bytes", b.len())))?;
    out.write_all(&len.to_be_bytes())?;
    out.write_all(b)?;
    Ok(())
}

/// Reads a snapshot file once, checking its framing, length, pair count and checksum against
/// `desc`, without holding more than a read buffer. Returns the number of pairs.
pub fn verify_file(path: &Path, desc: &SnapshotDescriptor) -> Result<u64> {
    verify_file_unless(path, desc, &AtomicBool::new(false))
}

/// [`verify_file`], giving up (`Error::InstallStopped`) once `stop` is set.
pub(crate) fn verify_file_unless(
    path: &Path,
    desc: &SnapshotDescriptor,
    stop: &AtomicBool,
) -> Result<u64> {
    let mut r = open_reader(path, 0, desc)?;
    let mut count = 0u64;
    while let Some(klen) = r.next_len()? {
        r.skip(klen)?;
        let vlen = r.value_len()?;
        r.skip(vlen)?;
        count += 1;
        if count.is_multiple_of(4096) && stop.load(Ordering::Acquire) {
            return Err(Error::InstallStopped);
        }
    }
    r.finish(count)?;
    Ok(count)
}

/// Opens a snapshot file for reading and checks its magic and length. The snapshot starts
/// `offset` bytes into the file (a backup file's header comes first) and runs to its end.
pub(crate) fn open_reader(
    path: &Path,
    offset: u64,
    desc: &SnapshotDescriptor,
) -> Result<FrameReader> {
    let len = std::fs::metadata(path)
        .map_err(|e| Error::BadSnapshot(format!("cannot open {}: {e}", path.display())))?
        .len();
    if len.checked_sub(offset) != Some(desc.file_len) {
        return Err(Error::BadSnapshot(format!(
            "{} has {} bytes of snapshot, the descriptor says {}",
            path.display(),
            len.saturating_sub(offset),
            desc.file_len
        )));
    }
    open_section_reader(path, offset, desc)
}

/// Opens the snapshot that fills `desc.file_len` bytes of `path` from `offset` (one of the
/// sections of a backup file, which others may follow) and checks its magic. Reading stops at
/// the section's end.
pub(crate) fn open_section_reader(
    path: &Path,
    offset: u64,
    desc: &SnapshotDescriptor,
) -> Result<FrameReader> {
    let mut file = File::open(path)
        .map_err(|e| Error::BadSnapshot(format!("cannot open {}: {e}", path.display())))?;
    let len = file.metadata()?.len();
    if offset
        .checked_add(desc.file_len)
        .is_none_or(|end| end > len)
    {
        return Err(Error::BadSnapshot(format!(
            "{} ends before the {} bytes of snapshot at byte {offset}",
            path.display(),
            desc.file_len
        )));
    }
    file.seek(SeekFrom::Start(offset))?;
    let mut r = FrameReader {
        inner: CrcReader {
            inner: BufReader::with_capacity(IO_BUF, file.take(desc.file_len)),
            hasher: crc32fast::Hasher::new(),
            read: 0,
        },
        desc: *desc,
    };
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != FILE_MAGIC {
        return Err(Error::BadSnapshot("snapshot file magic missing".into()));
    }
    Ok(r)
}

/// Reads the frames of a snapshot file, hashing everything it reads.
pub(crate) struct FrameReader {
    inner: CrcReader<BufReader<std::io::Take<File>>>,
    desc: SnapshotDescriptor,
}

impl FrameReader {
    pub(crate) fn read_exact(&mut self, buf: &mut [u8]) -> Result<()> {
        self.inner
            .read_exact(buf)
            .map_err(|e| Error::BadSnapshot(format!("snapshot file truncated: {e}")))
    }

    fn remaining(&self) -> u64 {
        self.desc.file_len.saturating_sub(self.inner.read)
    }

    fn read_u32(&mut self) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    /// The next key length, or `None` at the end mark.
    pub(crate) fn next_len(&mut self) -> Result<Option<u64>> {
        match self.read_u32()? {
            END_MARK => Ok(None),
            n => self.checked(n).map(Some),
        }
    }

    pub(crate) fn value_len(&mut self) -> Result<u64> {
        let n = self.read_u32()?;
        self.checked(n)
    }

    /// A field length, refused when the file cannot hold it (so garbage never sizes a buffer).
    fn checked(&self, n: u32) -> Result<u64> {
        if u64::from(n) > self.remaining() {
            return Err(Error::BadSnapshot(format!(
                "a field of {n} bytes runs past the end of the file"
            )));
        }
        Ok(u64::from(n))
    }

    pub(crate) fn skip(&mut self, n: u64) -> Result<()> {
        let copied = std::io::copy(&mut (&mut self.inner).take(n), &mut std::io::sink())?;
        if copied != n {
            return Err(Error::BadSnapshot("snapshot file truncated".into()));
        }
        Ok(())
    }

    pub(crate) fn field(&mut self, n: u64) -> Result<Vec<u8>> {
        let mut v = vec![0u8; n as usize];
        self.read_exact(&mut v)?;
        Ok(v)
    }

    /// Checks the trailer, that nothing follows it, and the checksum.
    pub(crate) fn finish(mut self, count: u64) -> Result<()> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b)?;
        if u64::from_be_bytes(b) != count {
            return Err(Error::BadSnapshot("pair count does not match".into()));
        }
        let mut extra = [0u8; 1];
        if self.inner.read(&mut extra)? != 0 {
            return Err(Error::BadSnapshot(
                "bytes after the end of the snapshot".into(),
            ));
        }
        let sum = self.inner.hasher.clone().finalize();
        if sum != self.desc.checksum || self.inner.read != self.desc.file_len {
            return Err(Error::BadSnapshot(format!(
                "checksum {sum:08x} does not match the descriptor's {:08x}",
                self.desc.checksum
            )));
        }
        Ok(())
    }
}

struct CrcReader<R> {
    inner: R,
    hasher: crc32fast::Hasher,
    read: u64,
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

pub(crate) struct CrcWriter<W> {
    inner: W,
    hasher: crc32fast::Hasher,
    written: u64,
}

impl<W: Write> CrcWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        CrcWriter {
            inner,
            hasher: crc32fast::Hasher::new(),
            written: 0,
        }
    }

    pub(crate) fn finish(self) -> (u64, u32, W) {
        (self.written, self.hasher.finalize(), self.inner)
    }
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A file being written; removed on drop unless persisted under its final name.
pub(crate) struct TempFile(pub(crate) PathBuf);

impl TempFile {
    /// Renames the file to `to` and syncs the folder, so the name survives a crash.
    pub(crate) fn persist(mut self, to: &Path) -> Result<()> {
        std::fs::rename(&self.0, to)?;
        self.0 = PathBuf::new();
        if let Some(dir) = to.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

pub(crate) fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{}-{nanos}", std::process::id())
}

/// A snapshot file arriving from a peer: chunks go to a temporary file in the snapshot folder;
/// [`IncomingSnapshot::finish`] checks length and checksum, fsyncs and gives it its final name.
/// Dropped unfinished, the temporary file is removed.
pub struct IncomingSnapshot {
    out: CrcWriter<BufWriter<File>>,
    tmp: TempFile,
    desc: SnapshotDescriptor,
    dir: PathBuf,
}

impl IncomingSnapshot {
    /// Starts receiving the file `desc` describes into `snap_dir`; refuses one over `max_len`.
    pub fn create(
        snap_dir: &Path,
        desc: SnapshotDescriptor,
        max_len: u64,
    ) -> Result<IncomingSnapshot> {
        if desc.file_len > max_len {
            return Err(Error::BadSnapshot(format!(
                "snapshot of {} bytes is over the limit of {max_len}",
                desc.file_len
            )));
        }
        std::fs::create_dir_all(snap_dir)?;
        let tmp = TempFile(snap_dir.join(format!("recv-{}.tmp", unique_suffix())));
        let file = File::create(&tmp.0)?;
        Ok(IncomingSnapshot {
            out: CrcWriter::new(BufWriter::with_capacity(IO_BUF, file)),
            tmp,
            desc,
            dir: snap_dir.to_path_buf(),
        })
    }

    /// Appends a chunk; refuses data beyond the announced length.
    pub fn write(&mut self, chunk: &[u8]) -> Result<()> {
        if self.out.written + chunk.len() as u64 > self.desc.file_len {
            return Err(Error::BadSnapshot(format!(
                "snapshot longer than the announced {} bytes",
                self.desc.file_len
            )));
        }
        self.out.write_all(chunk)?;
        Ok(())
    }

    /// Checks length, checksum and framing, fsyncs, and renames the file to its final name.
    pub fn finish(self) -> Result<PathBuf> {
        let IncomingSnapshot {
            out,
            tmp,
            desc,
            dir,
        } = self;
        let (len, checksum, writer) = out.finish();
        if len != desc.file_len {
            return Err(Error::BadSnapshot(format!(
                "snapshot truncated: {len} of {} bytes",
                desc.file_len
            )));
        }
        if checksum != desc.checksum {
            return Err(Error::BadSnapshot(format!(
                "checksum {checksum:08x} does not match the descriptor's {:08x}",
                desc.checksum
            )));
        }
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        verify_file(&tmp.0, &desc)?;
        let path = desc.path_in(&dir);
        tmp.persist(&path)?;
        Ok(path)
    }
}

/// Removes every file of the snapshot folder: called at start-up, once any pending install is
/// finished, when no transfer can be reading or writing one.
pub(crate) fn remove_all_files(snap_dir: &Path) -> Result<()> {
    let rd = match std::fs::read_dir(snap_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    for entry in rd {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Removes received snapshot files at or below `index`, other than the one just installed
/// (which `finish_install` removes itself), so superseded transfers do not pile up.
fn remove_files_up_to(snap_dir: &Path, index: Index) {
    let Ok(rd) = std::fs::read_dir(snap_dir) else {
        return;
    };
    for entry in rd.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let file_index = name
            .strip_prefix("snap-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|i| i.parse::<Index>().ok());
        if file_index.is_some_and(|i| i <= index) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The pending install recorded in `raft_state`, if a crash interrupted one.
pub(crate) fn pending_install(engine: &Engine) -> Result<Option<SnapshotDescriptor>> {
    match engine.db().get_cf(
        engine.cf(CF_RAFT_STATE),
        engine.state_key(keys::PENDING_SNAPSHOT_KEY),
    )? {
        None => Ok(None),
        Some(v) => SnapshotDescriptor::decode(&v)
            .map(Some)
            .map_err(|e| Error::Corrupt(format!("pending snapshot marker: {e}"))),
    }
}

/// The region a received snapshot of region `engine` is of (its meta record), read from its
/// file in the region's snapshot folder: a store checks that it overlaps no other region it
/// hosts before stepping the snapshot.
pub fn region_meta_of(
    engine: &Engine,
    snap: &raft::prelude::Snapshot,
) -> Result<rdb_proto::pd::Region> {
    let Space::Region(id) = engine.space() else {
        return Err(Error::BadSnapshot("not a region's snapshot".into()));
    };
    let desc = SnapshotDescriptor::decode(&snap.data)?;
    region_meta_in_file(&desc.path_in(&engine.snap_dir()), &desc, id)
}

/// The meta record of region `id` in its snapshot file (among the region's own records, which
/// come first). A region snapshot without one is refused.
fn region_meta_in_file(
    path: &Path,
    desc: &SnapshotDescriptor,
    id: u64,
) -> Result<rdb_proto::pd::Region> {
    let want = keys::region_meta_key(id);
    let mut r = open_reader(path, 0, desc)?;
    while let Some(klen) = r.next_len()? {
        let k = r.field(klen)?;
        let vlen = r.value_len()?;
        if k == want {
            return crate::region::decode_meta(&r.field(vlen)?);
        }
        if !k.starts_with(&keys::region_prefix(id)) {
            break;
        }
        r.skip(vlen)?;
    }
    Err(Error::BadSnapshot(format!(
        "snapshot of region {id} carries no meta record"
    )))
}

/// The name of the fail point a snapshot load into the database at `data_dir` passes between
/// two of its writes (after clearing the range, after each batch, before the last one):
/// `pause` holds the load there, `return` ends it there as a crash would. Named per database,
/// so that a test holds one store's loads and no other's.
pub fn load_fail_point(data_dir: &Path) -> String {
    format!("snapshot-load:{}", data_dir.display())
}

/// Between two writes of a load: ends it (as a crash would) when `stop` is set or at a fail
/// point (see [`load_fail_point`]).
fn between_writes(engine: &Engine, stop: &AtomicBool) -> Result<()> {
    // Without the `failpoints` feature the fail point is compiled out, and with it the use.
    let _ = engine;
    fail::fail_point!(&load_fail_point(engine.db().path()), |arg| Err(
        Error::injected("snapshot-load", arg)
    ));
    if stop.load(Ordering::Acquire) {
        return Err(Error::InstallStopped);
    }
    Ok(())
}

/// Phases two and three of an install: clears the data column family (a static node's) or the
/// region's records and range, loads the file in batches of [`INSTALL_BATCH_BYTES`], then in
/// one synced batch sets the apply state and removes the pending marker; then deletes the file.
/// Redoing it after a crash gives the same result. Returns the number of pairs loaded.
///
/// Reads of what it replaces are refused from the clear until the last batch is written
/// ([`crate::installs`]); reads of other ranges go on. Once `stop` is set it ends between two
/// writes (`Error::InstallStopped`), leaving the marker for the next start to finish.
pub(crate) fn finish_install(
    engine: &Engine,
    desc: &SnapshotDescriptor,
    stop: &AtomicBool,
) -> Result<u64> {
    let dir = engine.snap_dir();
    let path = desc.path_in(&dir);
    let mut r = open_reader(&path, 0, desc).map_err(|e| {
        Error::Corrupt(format!(
            "a snapshot install is pending but its file is unusable: {e}"
        ))
    })?;
    // What the snapshot replaces: a static node's whole family, or a region's own records and
    // the user keys of the range the snapshot's meta record gives it.
    let meta = match engine.space() {
        Space::Node => None,
        Space::Region(id) => Some(region_meta_in_file(&path, desc, id)?),
    };
    let clear = crate::region::owned_ranges(engine.space(), meta.as_ref())?;
    // Reads of these ranges are refused from here until the last batch is written. If the load
    // fails or stops half way they stay refused: the node is stopping (a failure stops it),
    // and its next start finishes the install before anything reads.
    let install = engine.begin_install(clear.clone());
    let data = engine.cf(CF_DATA);
    let mut batch = WriteBatch::default();
    for (lower, upper) in clear {
        batch.delete_range_cf(data, lower, upper);
    }
    engine.write(batch, false)?;
    between_writes(engine, stop)?;
    let mut batch = WriteBatch::default();
    let mut count = 0u64;
    while let Some(klen) = r.next_len()? {
        let k = r.field(klen)?;
        let vlen = r.value_len()?;
        let v = r.field(vlen)?;
        batch.put_cf(data, k, v);
        count += 1;
        if batch.size_in_bytes() >= INSTALL_BATCH_BYTES {
            engine.write(std::mem::take(&mut batch), false)?;
            between_writes(engine, stop)?;
        }
    }
    r.finish(count)
        .map_err(|e| Error::Corrupt(format!("snapshot file changed during install: {e}")))?;
    between_writes(engine, stop)?;
    let state = engine.cf(CF_RAFT_STATE);
    batch.put_cf(
        state,
        engine.state_key(keys::APPLY_STATE_KEY),
        keys::encode_pair(desc.index, desc.term),
    );
    batch.delete_cf(state, engine.state_key(keys::PENDING_SNAPSHOT_KEY));
    // Synced: it also makes every earlier unsynced batch of the load durable.
    engine.write(batch, true)?;
    engine.end_install(install);
    std::fs::remove_file(&path)?;
    remove_files_up_to(&dir, desc.index);
    Ok(count)
}

/// Metadata of the state a snapshot captured.
pub(crate) fn snapshot_metadata(apply: ApplyState, conf_state: ConfState) -> SnapshotMetadata {
    let mut meta = SnapshotMetadata {
        index: apply.index,
        term: apply.term,
        ..Default::default()
    };
    meta.set_conf_state(conf_state);
    meta
}
