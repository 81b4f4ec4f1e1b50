//! The backup service: streams a consistent backup of one region a store hosts to a client
//! (a config-file node's region 1, or, in PD mode, the region the request names;
//! `rdb-cli --pd ... snapshot save` asks every region's leader in turn).
//!
//! `Save` first passes a linearizable read barrier of the region through the mailbox
//! (`Msg::RegionRead`, a ReadIndex round; a follower answers NOT_LEADER with the leader's
//! address): it succeeds once this store has applied every entry committed before the call, so
//! the backup holds every write acknowledged before the call started. Then the store writes the
//! backup file with [`rdb_storage::backup::write`] (data, meta record and applied index through
//! one RocksDB view of the region, sharing the dedup horizon of the store's own view) into its
//! snapshot folder, opens it, unlinks it, and streams it: a header, then chunks of 1 MiB. The
//! open handle keeps the bytes readable; nothing is left on disk once the stream ends, however
//! it ends (a file left by a crash during the write is removed at the next start, with the
//! other files of the snapshot folder). One backup at a time per store.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use rdb_proto::backup::backup_server::{Backup, BackupServer};
use rdb_proto::backup::{BackupChunk, BackupHeader, SaveRequest};
use rdb_storage::{Engine, Ident};
use slog::{info, warn, Logger};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::config::Settings;
use crate::router::{Mailbox, Msg, RequestError};
use crate::service::kv::to_pb;

/// Bytes of the backup file per streamed message.
const CHUNK: usize = 1 << 20;

/// The stream `Save` answers with.
pub type SaveStream = Pin<Box<dyn Stream<Item = Result<BackupChunk, Status>> + Send + 'static>>;

/// Serves backups of the regions one store hosts.
#[derive(Clone)]
pub struct BackupService {
    mailbox: Mailbox,
    /// The store's database (its snapshot folder takes the file being written).
    engine: Engine,
    ident: Ident,
    /// A config-file node's one region, backed up whatever the request names; `None` in PD
    /// mode, where the request names the region.
    only_region: Option<u64>,
    timeout: Duration,
    running: Arc<Semaphore>,
    logger: Logger,
}

impl BackupService {
    /// A service for store `ident` that passes read barriers through `mailbox` and backs up
    /// regions of `engine`, the store's database: always `only_region` if given (a
    /// config-file node), else the region each request names.
    pub fn new(
        mailbox: Mailbox,
        engine: Engine,
        ident: Ident,
        only_region: Option<u64>,
        settings: &Settings,
        logger: &Logger,
    ) -> BackupService {
        BackupService {
            mailbox,
            engine,
            ident,
            only_region,
            timeout: Duration::from_millis(settings.request_timeout_ms),
            running: Arc::new(Semaphore::new(1)),
            logger: logger.clone(),
        }
    }

    /// The gRPC server of this service, for the client port.
    pub fn into_server(self) -> BackupServer<BackupService> {
        BackupServer::new(self)
    }

    /// The region a request for `asked` backs up.
    fn region_of(&self, asked: u64) -> Result<u64, RequestError> {
        match (self.only_region, asked) {
            (Some(id), _) => Ok(id),
            (None, 0) => Err(RequestError::InvalidArgument(
                "a store of a PD-mode cluster backs up the region a request names; none was named"
                    .into(),
            )),
            (None, id) => Ok(id),
        }
    }

    /// Waits until this store has applied everything region `region_id` committed before now.
    async fn read_barrier(&self, region_id: u64) -> Result<(), RequestError> {
        let call = self.mailbox.call(|tx| Msg::RegionRead {
            route: crate::router::RegionRoute {
                region_id,
                ..Default::default()
            },
            linearizable: true,
            tx,
        });
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r?.map(drop),
            Err(_) => Err(RequestError::Unavailable(
                "no quorum confirmed leadership before the deadline".into(),
            )),
        }
    }

    /// Writes the backup file of region `region_id` and opens it, unlinked; returns its header
    /// and the open file.
    async fn take(&self, region_id: u64) -> Result<(BackupHeader, tokio::fs::File), TakeError> {
        let dir = self.engine.snap_dir();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let path = dir.join(format!("backup-{}-{nanos}.tmp", std::process::id()));
        let (engine, ident, p) = (self.engine.clone(), self.ident, path.clone());
        // Written, opened and unlinked in one blocking task, so that the file is gone even when
        // the client leaves (and this future is dropped) while it is being written.
        let written = tokio::task::spawn_blocking(move || -> rdb_storage::Result<_> {
            std::fs::create_dir_all(p.parent().unwrap_or(&p))?;
            let region = engine.open_region_reader(region_id)?;
            let info = rdb_storage::backup::write(&region, ident, &p)?;
            let file = std::fs::File::open(&p);
            std::fs::remove_file(&p)?;
            Ok((info, file?))
        })
        .await
        .map_err(|e| TakeError::Failed(Status::internal(format!("backup task failed: {e}"))))?;
        let (info, file) = match written {
            Ok(taken) => taken,
            // The data is being replaced by a snapshot for a moment: try again.
            Err(e @ rdb_storage::Error::SnapshotInstalling) => {
                return Err(TakeError::Refused(RequestError::Unavailable(e.to_string())))
            }
            // The region left this store after its barrier: the client asks PD again.
            Err(e @ rdb_storage::Error::RegionNotOpen(_)) => {
                return Err(TakeError::Refused(RequestError::RegionNotFound(
                    e.to_string(),
                )))
            }
            Err(e) => {
                return Err(TakeError::Failed(Status::internal(format!(
                    "backup of {}: {e}",
                    path.display()
                ))))
            }
        };
        let file = tokio::fs::File::from_std(file);
        let header = BackupHeader {
            cluster_id: info.source.cluster_id,
            node_id: info.source.node_id,
            index: info.index,
            term: info.term,
            file_len: info.file_len,
            crc32: info.checksum,
            keys: info.keys,
            region: info.region,
        };
        Ok((header, file))
    }
}

/// Why no backup was taken.
enum TakeError {
    /// Told to the client as data (it may retry).
    Refused(RequestError),
    /// A failure of this node.
    Failed(Status),
}

/// A stream of one message: the error.
fn refusal(e: RequestError) -> Response<SaveStream> {
    let chunk = BackupChunk {
        error: Some(to_pb(e)),
        ..Default::default()
    };
    Response::new(Box::pin(futures::stream::iter([Ok::<_, Status>(chunk)])))
}

#[tonic::async_trait]
impl Backup for BackupService {
    type SaveStream = SaveStream;

    async fn save(&self, request: Request<SaveRequest>) -> Result<Response<SaveStream>, Status> {
        let region_id = match self.region_of(request.into_inner().region_id) {
            Ok(id) => id,
            Err(e) => return Ok(refusal(e)),
        };
        let Ok(permit) = self.running.clone().try_acquire_owned() else {
            return Ok(refusal(RequestError::Unavailable(
                "a backup is already being taken on this store; retry later".into(),
            )));
        };
        if let Err(e) = self.read_barrier(region_id).await {
            return Ok(refusal(e));
        }
        let started = Instant::now();
        let (header, mut file) = match self.take(region_id).await {
            Ok(taken) => taken,
            Err(TakeError::Refused(e)) => return Ok(refusal(e)),
            Err(TakeError::Failed(status)) => return Err(status),
        };
        info!(self.logger, "backup taken"; "region" => region_id, "index" => header.index, "term" => header.term,
            "bytes" => header.file_len, "keys" => header.keys,
            "ms" => started.elapsed().as_millis() as u64);
        let (tx, rx) = mpsc::channel(2);
        let len = header.file_len;
        let first = BackupChunk {
            header: Some(header),
            ..Default::default()
        };
        let logger = self.logger.clone();
        tokio::spawn(async move {
            // Held until the stream ends, with the open (unlinked) file.
            let _permit = permit;
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            let mut sent = 0u64;
            loop {
                let mut buf = vec![0u8; CHUNK];
                let mut n = 0;
                while n < CHUNK {
                    match file.read(&mut buf[n..]).await {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) => {
                            let _ = tx
                                .send(Err(Status::internal(format!("reading the backup: {e}"))))
                                .await;
                            return;
                        }
                    }
                }
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                if tx
                    .send(Ok(BackupChunk {
                        data: buf,
                        ..Default::default()
                    }))
                    .await
                    .is_err()
                {
                    warn!(logger, "backup stream ended by the client"; "sent" => sent, "bytes" => len);
                    return;
                }
                sent += n as u64;
            }
            if sent != len {
                let _ = tx
                    .send(Err(Status::internal(format!(
                        "the backup file has {sent} bytes, not {len}"
                    ))))
                    .await;
                return;
            }
            info!(logger, "backup sent"; "bytes" => sent, "ms" => started.elapsed().as_millis() as u64);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
