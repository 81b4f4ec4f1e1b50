//! A store's data directory under the simulation's crash model.
//!
//! A process crash loses nothing the store wrote: RocksDB hands every write to the OS, which
//! keeps it. A power loss keeps only what was synced, and some part of the rest. RocksDB in
//! one process cannot lose a write by itself, so the model cuts the files: after every synced
//! write (see `Engine::on_synced_write`) the size of the newest write-ahead log is recorded,
//! and a power cut, once the database is closed, truncates that log to a random length
//! between the recorded size and its end (a log begun after the last sync may lose all of
//! it). Older logs are kept whole: RocksDB syncs a log it closes before it relies on their
//! flush (and records its size), so keeping them loses less than a real cut might, never
//! more. A cut inside a record is what RocksDB's recovery mode for a torn tail expects.
//! SST files and the MANIFEST are synced by RocksDB before use and kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use rdb_storage::engine::EngineOptions;
use rdb_storage::Engine;

/// How long a closed store's background threads may take to let go of its database.
const CLOSE_BOUND: Duration = Duration::from_secs(10);

/// Small logs: RocksDB preallocates each new log up to this size, which in memory costs
/// a page per 4 KiB at every open; and more logs to cut across.
const SMALL: EngineOptions = EngineOptions {
    max_wal_bytes: 1 << 20,
    block_cache_bytes: 8 << 20,
    memtable_bytes: 16 << 20,
};

/// The newest write-ahead log and its size at the last synced write.
type Synced = Arc<Mutex<Option<(PathBuf, u64)>>>;

/// A store's directory and what a power cut keeps of it.
pub(super) struct StoreDisk {
    dir: tempfile::TempDir,
    synced: Synced,
}

/// What a power cut did to one store's newest log.
pub(super) struct Cut {
    /// Bytes written after the last sync.
    pub(super) unsynced: u64,
    /// Of those, bytes lost.
    pub(super) lost: u64,
}

impl StoreDisk {
    /// A fresh directory, in memory when `/dev/shm` can hold it.
    pub(super) fn new() -> Result<StoreDisk, String> {
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::Builder::new().prefix("rdb-sim").tempdir_in(shm)
        } else {
            tempfile::Builder::new().prefix("rdb-sim").tempdir()
        }
        .map_err(|e| format!("cannot make a store directory: {e}"))?;
        Ok(StoreDisk {
            dir,
            synced: Arc::default(),
        })
    }

    /// Opens the database, recording from now on what each synced write made durable.
    pub(super) fn open(&self) -> Result<Engine, String> {
        let path = self.dir.path();
        if !rdb_storage::engine::wait_closed(path, CLOSE_BOUND) {
            return Err("the store's database stayed open after it stopped".into());
        }
        let engine = Engine::open_with(path, SMALL)
            .map_err(|e| format!("cannot open the store's database: {e}"))?;
        // What opening found and wrote counts as durable: a cut never goes below it.
        record(path, &self.synced);
        let (dir, synced) = (path.to_path_buf(), self.synced.clone());
        engine.on_synced_write(move || record(&dir, &synced));
        Ok(engine)
    }

    /// Cuts the power of a stopped store: its newest log keeps what was synced and a random
    /// part of the rest (see the module docs).
    pub(super) fn power_cut(&self, rng: &mut impl Rng) -> Result<Cut, String> {
        let path = self.dir.path();
        if !rdb_storage::engine::wait_closed(path, CLOSE_BOUND) {
            return Err("the store's database stayed open after it stopped".into());
        }
        let Some((newest, len)) = newest_log(path) else {
            return Ok(Cut {
                unsynced: 0,
                lost: 0,
            });
        };
        let synced = match &*self.synced.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((p, size)) if *p == newest => (*size).min(len),
            _ => 0,
        };
        let keep = rng.gen_range(synced..=len);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&newest)
            .and_then(|f| f.set_len(keep))
            .map_err(|e| format!("cannot cut {}: {e}", newest.display()))?;
        Ok(Cut {
            unsynced: len - synced,
            lost: len - keep,
        })
    }

    /// The directory.
    pub(super) fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Records the newest log's size as synced (called right after a synced write).
fn record(dir: &Path, synced: &Synced) {
    let newest = newest_log(dir);
    let mut s = synced.lock().unwrap_or_else(|p| p.into_inner());
    match (&mut *s, newest) {
        (Some((p, size)), Some((q, len))) if *p == q => *size = (*size).max(len),
        (s, newest) => *s = newest,
    }
}

/// The write-ahead log with the highest number (`NNNNNN.log`) and its size.
fn newest_log(dir: &Path) -> Option<(PathBuf, u64)> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n: u64 = name.strip_suffix(".log")?.parse().ok()?;
            Some((n, e.path()))
        })
        .max_by_key(|(n, _)| *n)
        .and_then(|(_, p)| Some((p.clone(), std::fs::metadata(&p).ok()?.len())))
}
