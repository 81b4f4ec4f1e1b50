//! Building and decoding snapshots of the state machine.
//!
//! A snapshot is the whole `data` column family (user keys and dedup records) read through one
//! RocksDB snapshot, together with the apply state read through the same view, so data and
//! index always match. It is built on a background thread; until it is ready,
//! `Storage::snapshot` answers `SnapshotTemporarilyUnavailable` and raft asks again later.
//!
//! Payload format: `RDBSNAP1`, then for each pair `u32 key length, key, u32 value length, value`
//! (big endian), then the pair count as u64. The whole payload is held in memory: fine for the
//! data sizes of this phase, and a known limit (see specs/).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use raft::prelude::{ConfState, Snapshot};
use rocksdb::IteratorMode;
use slog::{error, info, Logger};

use crate::engine::{ApplyState, Engine};
use crate::keys::{self, CF_DATA, CF_RAFT_STATE};
use crate::raft_storage::snapshot_metadata;
use crate::{Error, Result};

const MAGIC: &[u8] = b"RDBSNAP1";

/// The snapshot most recently built, shared between raft's `Storage::snapshot` and the builder.
#[derive(Default)]
pub struct SnapshotSlot {
    ready: Option<Snapshot>,
    building: bool,
}

impl SnapshotSlot {
    /// The built snapshot if it covers at least `index`.
    pub fn ready_for(&self, index: u64) -> Option<Snapshot> {
        self.ready
            .as_ref()
            .filter(|s| s.get_metadata().index >= index)
            .cloned()
    }

    /// Marks a build as started; false if one is already running.
    pub fn start_building(&mut self) -> bool {
        if self.building {
            return false;
        }
        self.building = true;
        true
    }

    fn finish(&mut self, snap: Option<Snapshot>) {
        self.building = false;
        if snap.is_some() {
            self.ready = snap;
        }
    }
}

/// Builds a snapshot on its own thread and publishes it in `slot`.
pub(crate) fn spawn_build(
    engine: Engine,
    conf_state: ConfState,
    slot: Arc<Mutex<SnapshotSlot>>,
    logger: Logger,
) {
    let spawned = std::thread::Builder::new()
        .name("snapshot-build".into())
        .spawn({
            let slot = slot.clone();
            move || {
                let started = Instant::now();
                let built = build(&engine, conf_state);
                let snap = match built {
                    Ok(s) => {
                        info!(logger, "snapshot built";
                            "index" => s.get_metadata().index, "term" => s.get_metadata().term,
                            "bytes" => s.data.len(), "ms" => started.elapsed().as_millis() as u64);
                        Some(s)
                    }
                    Err(e) => {
                        error!(logger, "snapshot build failed"; "error" => %e);
                        None
                    }
                };
                slot.lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .finish(snap);
            }
        });
    if spawned.is_err() {
        slot.lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .finish(None);
    }
}

/// Reads the data column family and the apply state through one consistent RocksDB view.
pub fn build(engine: &Engine, conf_state: ConfState) -> Result<Snapshot> {
    let db = engine.db();
    let view = db.snapshot();
    let apply = match view.get_cf(engine.cf(CF_RAFT_STATE), keys::APPLY_STATE_KEY)? {
        Some(v) => {
            let (index, term) = keys::decode_pair(&v)
                .ok_or_else(|| Error::Corrupt("apply state is not 16 bytes".into()))?;
            ApplyState { index, term }
        }
        None => return Err(Error::Corrupt("apply state missing".into())),
    };
    let mut out = Vec::from(MAGIC);
    let mut count = 0u64;
    for item in view.iterator_cf(engine.cf(CF_DATA), IteratorMode::Start) {
        let (k, v) = item?;
        put_bytes(&mut out, &k);
        put_bytes(&mut out, &v);
        count += 1;
    }
    out.extend_from_slice(&count.to_be_bytes());
    let mut snap = Snapshot::default();
    snap.set_metadata(snapshot_metadata(apply, conf_state));
    snap.data = out.into();
    Ok(snap)
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

/// Decodes a snapshot payload into its stored (column-family) key/value pairs.
pub fn decode(data: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let bad = |m: &str| Error::BadSnapshot(m.to_string());
    let rest = data
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("missing magic header"))?;
    if rest.len() < 8 {
        return Err(bad("truncated before the pair count"));
    }
    let (mut body, tail) = rest.split_at(rest.len() - 8);
    let count = u64::from_be_bytes(tail.try_into().map_err(|_| bad("bad pair count"))?);
    let take = |body: &mut &[u8]| -> Result<Vec<u8>> {
        if body.len() < 4 {
            return Err(bad("truncated length"));
        }
        let (len, rest) = body.split_at(4);
        let len = u32::from_be_bytes(len.try_into().map_err(|_| bad("bad length"))?) as usize;
        if rest.len() < len {
            return Err(bad("truncated value"));
        }
        let (v, rest) = rest.split_at(len);
        *body = rest;
        Ok(v.to_vec())
    };
    let mut pairs = Vec::new();
    while !body.is_empty() {
        let k = take(&mut body)?;
        let v = take(&mut body)?;
        pairs.push((k, v));
    }
    if pairs.len() as u64 != count {
        return Err(bad("pair count does not match"));
    }
    Ok(pairs)
}
