//! Opening a data directory's database, or a region's view of it: the engine's raw open
//! ([`Engine::open_raw`], [`Engine::region_view`]), then a snapshot install that a crash
//! interrupted is finished before anything reads the data, and stale snapshot files go. Above
//! both the engine and the snapshot code, which keeps the engine at the bottom of the crate.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use crate::engine::{Engine, EngineOptions};
use crate::snapshot;
use crate::Result;

impl Engine {
    /// Opens (creating if missing) the database with rdb's column families and default options.
    pub fn open(path: &Path) -> Result<Engine> {
        Self::open_with(path, EngineOptions::default())
    }

    /// Opens (creating if missing) the database with rdb's column families, finishes a snapshot
    /// install that a crash interrupted (see `snapshot`), and removes stale snapshot files.
    pub fn open_with(path: &Path, engine_opts: EngineOptions) -> Result<Engine> {
        let mut engine = Engine::open_raw(path, engine_opts)?;
        recover(&mut engine)?;
        Ok(engine)
    }

    /// The view of region `id` of a PD-mode store over the same database: its own Raft keys,
    /// apply record, dedup records (with a dedup horizon of their own) and snapshot folder.
    /// Finishes a snapshot install of the region that a crash interrupted. Keep one view per
    /// region at a time (clones share it): a new view takes over the region's dedup horizon.
    pub fn region(&self, id: u64) -> Result<Engine> {
        let mut view = self.region_view(id)?;
        recover(&mut view)?;
        Ok(view)
    }
}

/// A crash in the middle of a snapshot install left the data half replaced: finish it before
/// anything reads the data. Then no transfer is running, so every snapshot file left over is
/// stale.
fn recover(engine: &mut Engine) -> Result<()> {
    if let Some(desc) = snapshot::pending_install(engine)? {
        snapshot::finish_install(engine, &desc, &AtomicBool::new(false))?;
        engine.set_recovered_install(desc);
    }
    snapshot::remove_all_files(&engine.snap_dir())
}
