//! Restoring a backup: the target directories are checked, built aside under a temporary
//! name, and renamed into place only once complete, so a refusal or a crash never leaves a
//! half-restored directory (see the parent module for the file format).

use super::*;

/// Where a record of a backup goes in region `region` of the restored directory: user data
/// and its history as they are, a dedup record under the region's prefix (from a node of older versions, `s` +
/// client + seq; from a region, its own prefix + the same), and nothing for the records the
/// restore writes anew or that belong to the old cluster (applied index, meta, members).
fn restored_key(region: u64, k: &[u8]) -> Option<Vec<u8>> {
    let dedup = match k.first() {
        Some(&keys::DATA_PREFIX) | Some(&keys::HISTORY_PREFIX) => return Some(k.to_vec()),
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

/// Restores the backup at `backup` into `data_dir` (a config-file node), which must not exist
/// or be empty.
///
/// Checks the whole file first: a bad file changes nothing (`Error::BadBackup`), and neither
/// does a target directory that holds anything (`Error::DataDirNotEmpty`). The directory is
/// built under a temporary name beside `data_dir` (`<name>.restoring`, removed first if an
/// interrupted restore left it), synced, and renamed into place: bootstrapped for `target`,
/// with region 1 over every key holding the records of every region of the backup except
/// membership records, the apply state (both copies) and the truncated state at the backup's
/// index and term (the largest of its regions'), and a hard state of that term, no vote, and
/// that index committed.
pub fn restore(backup: &Path, data_dir: &Path, target: &RestoreTarget) -> Result<Restored> {
    let layout = read_layout(backup)?;
    verify_with(backup, &layout)?;
    let region = crate::region::whole_range_region(RESTORED_REGION, &target.voters);
    let all: Vec<&Section> = layout.sections.iter().collect();
    stage(backup, data_dir, target.engine_opts, |engine| {
        engine.claim_for_node(target.ident)?;
        engine.check_apply_settings(target.settings, crate::Revisions::Counted)?;
        let view = engine.create_region_with_members(&region, &target.members)?;
        let mut out = Loaded::default();
        load_region(engine, &view, backup, &all, &mut out)?;
        Ok(out)
    })?
    .commit()
}

/// Builds the directory of store `target` of a restored PD-mode cluster from the backup at
/// `backup` (already checked by [`verify`], which gave `contents`) beside `data_dir`, which
/// must not exist or be empty; [`Staged::commit`] renames it into place, and dropping it
/// uncommitted removes it. Each region of `target` gets the records of the region of the backup
/// at the same place (its dedup records under its new id; its meta, applied index and member
/// records are written anew), and Raft state at that region's index and term as [`restore`]
/// writes it. Refuses regions whose ranges are not the backup's (`Error::BadBackup`).
pub fn stage_store(
    backup: &Path,
    contents: &BackupContents,
    data_dir: &Path,
    target: &StoreRestoreTarget,
) -> Result<Staged> {
    let layout = read_layout(backup)?;
    if layout.file_len != contents.file_len || layout.checksum() != contents.checksum {
        return Err(Error::BadBackup(format!(
            "{}: the file changed since it was checked",
            backup.display()
        )));
    }
    let fits = target.regions.len() == contents.regions.len()
        && target
            .regions
            .iter()
            .zip(&contents.regions)
            .all(|(r, b)| b.range() == (r.start_key.as_slice(), r.end_key.as_slice()));
    if !fits {
        return Err(Error::BadBackup(format!(
            "{}: the regions to restore are not the backup's ({} regions)",
            backup.display(),
            contents.regions.len()
        )));
    }
    stage(backup, data_dir, target.engine_opts, |engine| {
        engine.claim_for_store(target.ident)?;
        engine.check_apply_settings(target.settings, crate::Revisions::Stamped)?;
        let mut out = Loaded::default();
        for (region, section) in target.regions.iter().zip(&layout.sections) {
            let view = engine.create_region(region)?;
            load_region(engine, &view, backup, &[section], &mut out)?;
        }
        Ok(out)
    })
}

/// A restored directory built beside its target, not yet in place.
#[must_use = "a staged directory is removed unless committed"]
pub struct Staged {
    staging: PathBuf,
    restored: Restored,
    committed: bool,
}

impl Staged {
    /// What the directory holds.
    pub fn restored(&self) -> &Restored {
        &self.restored
    }

    /// Renames the directory into place and syncs its parent, so it survives a crash.
    pub fn commit(mut self) -> Result<Restored> {
        let data_dir = self.restored.data_dir.clone();
        check_target(&data_dir)?;
        // The rename replaces an empty directory.
        std::fs::rename(&self.staging, &data_dir)?;
        self.committed = true;
        let parent = match data_dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(parent)?.sync_all()?;
        Ok(self.restored.clone())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}

/// What loading a directory wrote.
#[derive(Default)]
struct Loaded {
    regions: Vec<(Region, Index)>,
    records: u64,
    keys: u64,
    skipped: u64,
}

/// Builds a directory for `data_dir` in its staging folder with `build` (on a fresh engine);
/// on error the staging folder is removed.
fn stage(
    backup: &Path,
    data_dir: &Path,
    engine_opts: EngineOptions,
    build: impl FnOnce(&Engine) -> Result<Loaded>,
) -> Result<Staged> {
    check_target(data_dir)?;
    let staging = staging_dir(data_dir)?;
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    if let Some(parent) = staging.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut staged = Staged {
        staging: staging.clone(),
        restored: Restored {
            data_dir: data_dir.to_path_buf(),
            regions: Vec::new(),
            records: 0,
            keys: 0,
            skipped: 0,
        },
        committed: false,
    };
    let loaded = {
        let engine = Engine::open_with(&staging, engine_opts)?;
        build(&engine).map_err(|e| match e {
            Error::BadBackup(m) => {
                Error::BadBackup(format!("{} changed while restoring: {m}", backup.display()))
            }
            e => e,
        })?
    };
    staged.restored.regions = loaded.regions;
    staged.restored.records = loaded.records;
    staged.restored.keys = loaded.keys;
    staged.restored.skipped = loaded.skipped;
    Ok(staged)
}

/// Loads the records of the backup's `sections` into region `view` of `engine` and writes its
/// Raft state at their largest index and term (never before a region's first).
fn load_region(
    engine: &Engine,
    view: &Engine,
    backup: &Path,
    sections: &[&Section],
    out: &mut Loaded,
) -> Result<()> {
    let region_id = view
        .space()
        .region_id()
        .ok_or_else(|| Error::Corrupt("a restore loads into a region's view".into()))?;
    let data = engine.cf(CF_DATA);
    let mut batch = WriteBatch::default();
    let (mut index, mut term) = (
        crate::region::REGION_INIT_INDEX,
        crate::region::REGION_INIT_TERM,
    );
    let mut revs = crate::mvcc::Revisions::default();
    for section in sections {
        index = index.max(section.header.index);
        term = term.max(section.header.term);
        let bare = section.header.version == VERSION_BARE;
        scan(backup, section, |k, v| {
            if is_revisions_record(&k) {
                let r = crate::mvcc::decode_revisions(Some(&v))?;
                revs.last = revs.last.max(r.last);
                revs.compacted = revs.compacted.max(r.compacted);
                out.skipped += 1;
                return Ok(());
            }
            let Some(k) = restored_key(region_id, &k) else {
                out.skipped += 1;
                return Ok(());
            };
            let v = if k.first() == Some(&keys::DATA_PREFIX) {
                out.keys += 1;
                if bare {
                    crate::mvcc::encode(&crate::mvcc::BEFORE_HISTORY, &v)
                } else {
                    v
                }
            } else {
                v
            };
            batch.put_cf(data, k, v);
            out.records += 1;
            if batch.size_in_bytes() >= RESTORE_BATCH_BYTES {
                engine.write(std::mem::take(&mut batch), false)?;
            }
            Ok(())
        })?;
    }
    // The region goes on above every revision it loaded (the largest of its sections').
    if revs != crate::mvcc::Revisions::default() {
        batch.put_cf(
            data,
            view.space().revisions_key(),
            crate::mvcc::encode_revisions(revs),
        );
    }
    // The new cluster's log starts after the backup's index.
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
    if let Some(region) = view.region_meta()? {
        out.regions.push((region, index));
    }
    Ok(())
}
