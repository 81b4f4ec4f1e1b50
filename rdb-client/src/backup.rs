//! [`Client::save_snapshot`]: saves a consistent backup of the cluster's data to a file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rdb_proto::backup::backup_client::BackupClient;
use rdb_proto::backup::{BackupChunk, BackupHeader, SaveRequest};
use rdb_proto::kv::ErrorCode;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tonic::Streaming;

use crate::error::human_duration;
use crate::{channel_lazy, Client, Error, Result};

/// A backup saved by [`Client::save_snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedSnapshot {
    /// Where it was saved.
    pub path: PathBuf,
    /// The endpoint that sent it (the leader, unless the client reached only followers).
    pub endpoint: String,
    /// The cluster it was taken from.
    pub cluster_id: u64,
    /// The node it was taken from.
    pub node_id: u64,
    /// The applied index of the data: every write acknowledged before the call is in it.
    pub index: u64,
    /// The term of that entry.
    pub term: u64,
    /// Length of the file in bytes.
    pub bytes: u64,
    /// CRC-32 of the whole file.
    pub checksum: u32,
    /// User keys in the backup.
    pub keys: u64,
}

/// Why one attempt to start a save did not get a header.
enum Refused {
    /// Go to this address next (a leader hint).
    Redirect(String),
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
        let file = tokio::fs::File::create(&partial.path)
            .await
            .map_err(|e| Error::Io(format!("{}: {e}", partial.path.display())))?;
        let (endpoint, header, stream) = self.open_save().await?;
        self.receive(&header, stream, file, &partial.path).await?;
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
        Ok(SavedSnapshot {
            path: path.to_path_buf(),
            endpoint,
            cluster_id: header.cluster_id,
            node_id: header.node_id,
            index: header.index,
            term: header.term,
            bytes: header.file_len,
            checksum: header.crc32,
            keys: header.keys,
        })
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
            let attempt = tokio::time::timeout(deadline - now, self.try_open(&target)).await;
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
                Refused::Redirect(addr) if redirects < 3 => {
                    redirects += 1;
                    target = addr;
                }
                Refused::Redirect(addr) => {
                    last_err = Error::NotLeader {
                        leader_id: None,
                        leader_addr: Some(addr),
                    };
                    redirects = 0;
                    self.pause(&mut backoff, deadline).await;
                    target = self.inner.endpoints.rotate();
                }
                Refused::Retry(e) => {
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

    /// One attempt: the first message of a save on `target`.
    async fn try_open(
        &self,
        target: &str,
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
            .save(SaveRequest {})
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
                    Some(h) if h.addr != target => Refused::Redirect(h.addr),
                    hint => Refused::Retry(Error::NotLeader {
                        leader_id: hint.as_ref().map(|h| h.id),
                        leader_addr: hint.map(|h| h.addr),
                    }),
                },
                Ok(ErrorCode::InvalidArgument) => Refused::Final(Error::InvalidArgument(e.message)),
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

    /// Writes the stream's data to `file` (at `partial`), checks length and checksum, and
    /// fsyncs it.
    async fn receive(
        &self,
        header: &BackupHeader,
        mut stream: Streaming<BackupChunk>,
        file: tokio::fs::File,
        partial: &Path,
    ) -> Result<()> {
        let io = |e: std::io::Error| Error::Io(format!("{}: {e}", partial.display()));
        let broken = |m: String| {
            Error::Unavailable(format!(
                "the backup stream broke off ({m}); nothing was saved"
            ))
        };
        let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
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
        let crc = crc.finalize();
        if crc != header.crc32 {
            return Err(broken(format!(
                "CRC-32 {crc:08x}, the header says {:08x}",
                header.crc32
            )));
        }
        out.flush().await.map_err(io)?;
        out.into_inner().sync_all().await.map_err(io)?;
        Ok(())
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
