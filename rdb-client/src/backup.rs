//! [`Client::save_snapshot`]: saves a consistent backup of the cluster's data to a file.
//!
//! A config-file cluster's backup is the file its leader streams (one region, format version
//! 1). A PD-mode client saves every region in key order, each from its leader at its own read
//! barrier, into one file of format version 2: a 28-byte header (magic `RDBBACK1`, version 2,
//! the cluster id, the number of regions, a CRC-32 of those 24 bytes; all big endian), then the
//! regions' files back to back. `rdb-storage`'s `backup` module reads both (see
//! specs/010-membership/backup.md).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rdb_proto::backup::backup_client::BackupClient;
use rdb_proto::backup::{BackupChunk, BackupHeader, SaveRequest};
use rdb_proto::kv::{ErrorCode, LeaderHint};
use tokio::io::{AsyncSeekExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tonic::Streaming;

use crate::error::human_duration;
use crate::pd::Region;
use crate::routing::Routing;
use crate::{channel_lazy, escape_bytes, Client, Error, Result};

/// First bytes of a backup file.
const MAGIC: &[u8; 8] = b"RDBBACK1";
/// Format version of a PD-mode cluster's backup.
const CLUSTER_VERSION: u32 = 2;
/// Length of a PD-mode cluster's backup header.
const CLUSTER_HEADER_LEN: usize = 28;

/// The header of a PD-mode cluster's backup of `regions` regions.
fn cluster_header(cluster_id: u64, regions: u32) -> [u8; CLUSTER_HEADER_LEN] {
    let mut b = [0u8; CLUSTER_HEADER_LEN];
    b[..8].copy_from_slice(MAGIC);
    b[8..12].copy_from_slice(&CLUSTER_VERSION.to_be_bytes());
    b[12..20].copy_from_slice(&cluster_id.to_be_bytes());
    b[20..24].copy_from_slice(&regions.to_be_bytes());
    let crc = crc32fast::hash(&b[..24]);
    b[24..28].copy_from_slice(&crc.to_be_bytes());
    b
}

/// A backup saved by [`Client::save_snapshot`].
#[derive(Debug, Clone, PartialEq)]
pub struct SavedSnapshot {
    /// Where it was saved.
    pub path: PathBuf,
    /// The endpoint that sent it (the leader, unless the client reached only followers); in
    /// PD mode, the store that sent the last region.
    pub endpoint: String,
    /// The cluster it was taken from.
    pub cluster_id: u64,
    /// The node it was taken from (PD mode: the store that sent the first region).
    pub node_id: u64,
    /// The applied index of the data: every write acknowledged before the call is in it (PD
    /// mode: the first region's; see `regions`).
    pub index: u64,
    /// The term of that entry.
    pub term: u64,
    /// Length of the file in bytes.
    pub bytes: u64,
    /// CRC-32 of the whole file.
    pub checksum: u32,
    /// User keys in the backup.
    pub keys: u64,
    /// PD mode: every region saved, in key order; empty for a config-file cluster's backup.
    pub regions: Vec<SavedRegion>,
}

/// One region of a PD-mode backup, as its leader sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedRegion {
    /// The region (range, epoch, peers) as its data held it.
    pub region: Region,
    /// The store that sent it.
    pub store_id: u64,
    /// Its applied index: every write to it acknowledged before the call is in it.
    pub index: u64,
    /// The term of that entry.
    pub term: u64,
    /// User keys in it.
    pub keys: u64,
}

/// PD mode: how many times a save starts over when regions change during it.
const SAVE_ATTEMPTS: u32 = 5;

/// Why one attempt to start a save did not get a header.
enum Refused {
    /// Go to the hinted leader next (its address is another than the one asked).
    Redirect(LeaderHint),
    /// PD mode: the store hosts no such region (it moved or split away): ask PD again.
    RegionGone(Error),
    /// Try again after a pause.
    Retry(Error),
    /// Give up with this error.
    Final(Error),
}

impl Client {
    /// Saves a consistent backup of the cluster's data to `path`, which `rdb-server --restore`
    /// turns into the data directories of a new cluster.
    ///
    /// The node first passes a linearizable read barrier (the leader confirms its leadership;
    /// the node applies every write committed before it), so the backup holds every write
    /// acknowledged before this call started, and more recent ones up to its index. The call
    /// starts at the known leader (any member serves it); finding a node follows hints
    /// and retries like any call, under the options' deadline; since the node builds the whole
    /// backup before answering, one attempt may take the rest of that deadline. The file then
    /// streams in chunks, each of which must arrive within the attempt timeout.
    ///
    /// The data goes to a temporary file beside `path` (`<name>.partial`), is checked against
    /// the announced length and CRC-32, fsynced, and renamed to `path` (replacing a file there).
    /// On any error the temporary file is removed and `path` is untouched.
    pub async fn save_snapshot(&self, path: impl AsRef<Path>) -> Result<SavedSnapshot> {
        let path = path.as_ref();
        let name = path.file_name().ok_or_else(|| {
            Error::InvalidArgument(format!("{} is not a file name", path.display()))
        })?;
        let mut partial_name = name.to_os_string();
        partial_name.push(".partial");
        let mut partial = Partial {
            path: path.with_file_name(partial_name),
            keep: false,
        };
        // Created first, so that a path that cannot be written fails before a node builds a
        // backup for nothing.
        let create = || async {
            tokio::fs::File::create(&partial.path)
                .await
                .map_err(|e| Error::Io(format!("{}: {e}", partial.path.display())))
        };
        let file = create().await?;
        let mut saved = match &self.inner.routing {
            Some(routing) => {
                // Regions that split (or move) while they are saved make the set inconsistent:
                // the save starts over, in a file made anew, a few times.
                let mut file = Some(file);
                let mut attempt = 1;
                loop {
                    let f = match file.take() {
                        Some(f) => f,
                        None => create().await?,
                    };
                    match self.save_regions(routing, f, &partial.path).await? {
                        Ok(saved) => break saved,
                        Err(changed) if attempt == SAVE_ATTEMPTS => {
                            return Err(Error::Unavailable(format!(
                                "{changed}; the regions changed during each of {SAVE_ATTEMPTS} \
                                 saves: save again once splits and moves settle"
                            )))
                        }
                        Err(_) => attempt += 1,
                    }
                }
            }
            None => {
                let (endpoint, header, stream) = self.open_save().await?;
                let io = |e: std::io::Error| Error::Io(format!("{}: {e}", partial.path.display()));
                let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
                self.receive(&header, stream, &mut out, &partial.path)
                    .await?;
                out.flush().await.map_err(io)?;
                out.into_inner().sync_all().await.map_err(io)?;
                SavedSnapshot {
                    path: PathBuf::new(),
                    endpoint,
                    cluster_id: header.cluster_id,
                    node_id: header.node_id,
                    index: header.index,
                    term: header.term,
                    bytes: header.file_len,
                    checksum: header.crc32,
                    keys: header.keys,
                    regions: Vec::new(),
                }
            }
        };
        std::fs::rename(&partial.path, path)
            .map_err(|e| Error::Io(format!("cannot rename to {}: {e}", path.display())))?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::Io(format!("cannot sync {}: {e}", dir.display())))?;
        partial.keep = true;
        saved.path = path.to_path_buf();
        Ok(saved)
    }

    /// PD mode: saves every region into `file` (at `partial`), in key order from the empty
    /// key: the region holding the next key is asked for at its leader, its backup appended,
    /// and the next key is where it ends, until a region has no end. Each region is saved
    /// within the options' deadline. A region that no longer holds the next key when its
    /// leader backs it up (a split moved the key away) is asked for again. The file is fsynced.
    /// `Ok(Err(why))`: a region saved does not start where the one before ended (the regions
    /// changed meanwhile): the file is no consistent backup, and the save must start over.
    async fn save_regions(
        &self,
        routing: &Routing,
        file: tokio::fs::File,
        partial: &Path,
    ) -> Result<std::result::Result<SavedSnapshot, String>> {
        let io = |e: std::io::Error| Error::Io(format!("{}: {e}", partial.display()));
        let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
        // The header goes in last, once the regions are counted.
        out.write_all(&[0u8; CLUSTER_HEADER_LEN])
            .await
            .map_err(io)?;
        let mut body = crc32fast::Hasher::new();
        let mut regions: Vec<SavedRegion> = Vec::new();
        let (mut cluster_id, mut bytes) = (None, CLUSTER_HEADER_LEN as u64);
        let mut endpoint;
        let mut next: Vec<u8> = Vec::new();
        loop {
            let deadline = self.deadline();
            let (addr, header, stream) = self.open_region_save(routing, &next, deadline).await?;
            let region: Region = header
                .region
                .clone()
                .ok_or_else(|| {
                    Error::Unavailable(format!(
                        "{addr}: the backup of a region came without the region"
                    ))
                })?
                .into();
            if region.start_key != next {
                return Ok(Err(format!(
                    "region {} starts at '{}', not at '{}' where the region saved before ends",
                    region.id,
                    escape_bytes(&region.start_key),
                    escape_bytes(&next)
                )));
            }
            if *cluster_id.get_or_insert(header.cluster_id) != header.cluster_id {
                return Err(Error::Unavailable(format!(
                    "{addr} is a store of cluster {}, the regions saved before are of cluster {}",
                    header.cluster_id,
                    cluster_id.unwrap_or_default()
                )));
            }
            body.combine(&self.receive(&header, stream, &mut out, partial).await?);
            bytes += header.file_len;
            endpoint = addr;
            let end = region.end_key.clone();
            regions.push(SavedRegion {
                region,
                store_id: header.node_id,
                index: header.index,
                term: header.term,
                keys: header.keys,
            });
            if end.is_empty() {
                break;
            }
            next = end;
        }
        let count = u32::try_from(regions.len())
            .map_err(|_| Error::InvalidArgument("more regions than a backup file holds".into()))?;
        let top = cluster_header(cluster_id.unwrap_or_default(), count);
        out.flush().await.map_err(io)?;
        let mut file = out.into_inner();
        file.seek(std::io::SeekFrom::Start(0)).await.map_err(io)?;
        file.write_all(&top).await.map_err(io)?;
        file.sync_all().await.map_err(io)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&top);
        crc.combine(&body);
        let first = regions.first();
        Ok(Ok(SavedSnapshot {
            path: PathBuf::new(),
            endpoint,
            cluster_id: cluster_id.unwrap_or_default(),
            node_id: first.map_or(0, |r| r.store_id),
            index: first.map_or(0, |r| r.index),
            term: first.map_or(0, |r| r.term),
            bytes,
            checksum: crc.finalize(),
            keys: regions.iter().map(|r| r.keys).sum(),
            regions,
        }))
    }

    /// PD mode: starts the save of the region holding `key` at its leader (found through the
    /// region cache and PD, following hints, asking PD again for a region a store no longer
    /// hosts); returns the store's address, the header and the rest of the stream.
    async fn open_region_save(
        &self,
        routing: &Routing,
        key: &[u8],
        deadline: Instant,
    ) -> Result<(String, BackupHeader, Streaming<BackupChunk>)> {
        let mut backoff = self.inner.opts.backoff_min;
        let mut last_err = Error::Unavailable(format!(
            "no store saved the region holding '{}'",
            escape_bytes(key)
        ));
        let mut skip = 0;
        loop {
            if Instant::now() >= deadline {
                return Err(last_err);
            }
            let target = match routing.target(&[key], skip, deadline).await {
                Ok(Some(t)) => t,
                Ok(None) => continue,
                Err(e @ (Error::InvalidArgument(_) | Error::Unsupported(_))) => return Err(e),
                Err(e) => {
                    last_err = e;
                    self.pause(&mut backoff, deadline).await;
                    continue;
                }
            };
            let Some((region, peer)) = target.region else {
                return Err(Error::Unavailable("no region to save".into()));
            };
            let attempt =
                tokio::time::timeout_at(deadline, self.try_open(&target.addr, region.region.id))
                    .await;
            let refused = match attempt {
                Ok(Ok((header, stream))) => {
                    routing.on_store_answer(peer.store_id);
                    return Ok((target.addr, header, stream));
                }
                Ok(Err(r)) => r,
                Err(_) => Refused::Retry(Error::Unavailable(format!(
                    "{}: no backup of region {} before the deadline",
                    target.addr, region.region.id
                ))),
            };
            match refused {
                Refused::Final(e) => return Err(e),
                Refused::Redirect(hint) => {
                    routing.on_not_leader(&region, &hint);
                    skip = 0;
                }
                Refused::RegionGone(e) => {
                    last_err = e;
                    skip = 0;
                    routing.cache.invalidate(region.region.id);
                    self.pause(&mut backoff, deadline).await;
                }
                Refused::Retry(e) => {
                    last_err = e;
                    skip += 1;
                    routing.on_store_failure(peer.store_id);
                    self.pause(&mut backoff, deadline).await;
                }
            }
        }
    }

    /// Starts a save (at the known leader first): returns the endpoint, the header and the rest
    /// of the stream.
    async fn open_save(&self) -> Result<(String, BackupHeader, Streaming<BackupChunk>)> {
        self.require_group()?;
        let opts = &self.inner.opts;
        let deadline = self.deadline();
        let mut backoff = opts.backoff_min;
        let mut last_err = Error::Unavailable("no node answered".into());
        let mut target = self.inner.endpoints.pick_target();
        let mut redirects = 0;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(last_err);
            }
            let attempt = tokio::time::timeout(deadline - now, self.try_open(&target, 0)).await;
            let refused = match attempt {
                // A follower may answer too: it does not become the known leader.
                Ok(Ok((header, stream))) => return Ok((target, header, stream)),
                Ok(Err(r)) => r,
                Err(_) => Refused::Retry(Error::Unavailable(format!(
                    "{target}: no backup before the deadline"
                ))),
            };
            match refused {
                Refused::Final(e) => return Err(e),
                Refused::Redirect(hint) if redirects < 3 => {
                    redirects += 1;
                    target = hint.addr;
                }
                Refused::Redirect(hint) => {
                    last_err = Error::NotLeader {
                        leader_id: None,
                        leader_addr: Some(hint.addr),
                    };
                    redirects = 0;
                    self.pause(&mut backoff, deadline).await;
                    target = self.inner.endpoints.rotate();
                }
                Refused::Retry(e) | Refused::RegionGone(e) => {
                    last_err = e;
                    redirects = 0;
                    self.inner.endpoints.set_leader(None);
                    self.pause(&mut backoff, deadline).await;
                    target = self.inner.endpoints.rotate();
                }
            }
        }
    }

    async fn pause(&self, backoff: &mut Duration, deadline: Instant) {
        let pause = (*backoff).min(deadline.saturating_duration_since(Instant::now()));
        tokio::time::sleep(pause).await;
        *backoff = (*backoff * 2).min(self.inner.opts.backoff_max);
    }

    /// One attempt: the first message of a save of `region_id` (0: a config-file node's) on
    /// `target`.
    async fn try_open(
        &self,
        target: &str,
        region_id: u64,
    ) -> std::result::Result<(BackupHeader, Streaming<BackupChunk>), Refused> {
        let channel = channel_lazy(target, &self.inner.opts).map_err(Refused::Final)?;
        let mut client = BackupClient::new(channel);
        let status = |s: tonic::Status| match s.code() {
            tonic::Code::Unimplemented => {
                Refused::Final(Error::Unsupported(format!("{target}: {}", s.message())))
            }
            // Nothing is written by a save: every other failure is worth another attempt.
            _ => Refused::Retry(Error::Unavailable(format!("{target}: {}", s.message()))),
        };
        let mut stream = client
            .save(SaveRequest { region_id })
            .await
            .map_err(status)?
            .into_inner();
        let first = stream.message().await.map_err(status)?.ok_or_else(|| {
            Refused::Retry(Error::Unavailable(format!(
                "{target}: the backup stream ended before its header"
            )))
        })?;
        if let Some(e) = first.error {
            return Err(match ErrorCode::try_from(e.code) {
                Ok(ErrorCode::NotLeader) => match e.leader.filter(|h| !h.addr.is_empty()) {
                    Some(h) if h.addr != target => Refused::Redirect(h),
                    hint => Refused::Retry(Error::NotLeader {
                        leader_id: hint.as_ref().map(|h| h.id),
                        leader_addr: hint.map(|h| h.addr),
                    }),
                },
                Ok(ErrorCode::InvalidArgument) => Refused::Final(Error::InvalidArgument(e.message)),
                Ok(ErrorCode::RegionNotFound) => {
                    Refused::RegionGone(Error::Unavailable(format!("{target}: {}", e.message)))
                }
                _ => Refused::Retry(Error::Unavailable(format!("{target}: {}", e.message))),
            });
        }
        let header = first.header.ok_or_else(|| {
            Refused::Retry(Error::Unavailable(format!(
                "{target}: the backup stream did not start with a header"
            )))
        })?;
        Ok((header, stream))
    }

    /// Writes the stream's data to `out` (the file at `partial`) and checks its length and
    /// checksum; returns the hasher of the data written.
    async fn receive(
        &self,
        header: &BackupHeader,
        mut stream: Streaming<BackupChunk>,
        out: &mut (impl AsyncWrite + Unpin),
        partial: &Path,
    ) -> Result<crc32fast::Hasher> {
        let io = |e: std::io::Error| Error::Io(format!("{}: {e}", partial.display()));
        let broken = |m: String| {
            Error::Unavailable(format!(
                "the backup stream broke off ({m}); nothing was saved"
            ))
        };
        let mut crc = crc32fast::Hasher::new();
        let mut received = 0u64;
        let stall = self.inner.opts.attempt_timeout;
        loop {
            let next = tokio::time::timeout(stall, stream.message())
                .await
                .map_err(|_| broken(format!("nothing for {}", human_duration(stall))))?
                .map_err(|s| broken(s.message().to_string()))?;
            let Some(chunk) = next else { break };
            received += chunk.data.len() as u64;
            if received > header.file_len {
                return Err(broken(format!(
                    "more than the announced {} bytes",
                    header.file_len
                )));
            }
            crc.update(&chunk.data);
            out.write_all(&chunk.data).await.map_err(io)?;
        }
        if received != header.file_len {
            return Err(broken(format!(
                "{received} of {} bytes arrived",
                header.file_len
            )));
        }
        let sum = crc.clone().finalize();
        if sum != header.crc32 {
            return Err(broken(format!(
                "CRC-32 {sum:08x}, the header says {:08x}",
                header.crc32
            )));
        }
        Ok(crc)
    }
}

/// The temporary file of a save; removed on drop unless the save succeeded (renamed it).
struct Partial {
    path: PathBuf,
    keep: bool,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
