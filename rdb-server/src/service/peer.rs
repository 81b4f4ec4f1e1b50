//! The peer service: receives Raft messages and snapshots from other nodes and hands them to
//! the node task. Anything that does not decode, or is stamped for another cluster or node, is
//! refused with a gRPC error and never reaches Raft.
//!
//! A snapshot's file is written chunk by chunk to a temporary file in the snapshot folder (never
//! gathered in memory, never sized from the peer's claim), checked for length and checksum,
//! fsynced and renamed; only then is its `MsgSnapshot` stepped into Raft.

use std::path::PathBuf;

use protobuf::Message as _;
use raft::prelude::{Message as RaftMessage, MessageType};
use rdb_proto::peer::peer_server::Peer;
use rdb_proto::peer::{Done, RaftBatch, SnapshotChunk};
use rdb_storage::snapshot::{IncomingSnapshot, SnapshotDescriptor};
use tonic::{Request, Response, Status, Streaming};

use crate::config::NodeId;
use crate::router::{Mailbox, Msg};

/// Serves Raft traffic for one node.
#[derive(Clone)]
pub struct PeerService {
    mailbox: Mailbox,
    cluster_id: u64,
    me: NodeId,
    max_snapshot: u64,
    snap_dir: PathBuf,
}

impl PeerService {
    /// A service that forwards to `mailbox` the messages addressed to node `me`, and receives
    /// snapshot files of at most `max_snapshot` bytes into `snap_dir`.
    pub fn new(
        mailbox: Mailbox,
        cluster_id: u64,
        me: NodeId,
        max_snapshot: u64,
        snap_dir: PathBuf,
    ) -> PeerService {
        PeerService {
            mailbox,
            cluster_id,
            me,
            max_snapshot,
            snap_dir,
        }
    }

    fn check_stamp(&self, cluster_id: u64, to: NodeId) -> Result<(), Status> {
        if cluster_id != self.cluster_id {
            return Err(Status::permission_denied(format!(
                "message for cluster {cluster_id}, this is cluster {}",
                self.cluster_id
            )));
        }
        if to != self.me {
            return Err(Status::invalid_argument(format!(
                "message for node {to}, this is node {}",
                self.me
            )));
        }
        Ok(())
    }

    fn decode(&self, bytes: &[u8]) -> Result<RaftMessage, Status> {
        let m = RaftMessage::parse_from_bytes(bytes)
            .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))?;
        if m.to != self.me {
            return Err(Status::invalid_argument(
                "raft message addressed to another node",
            ));
        }
        Ok(m)
    }

    async fn deliver(&self, m: RaftMessage) -> Result<(), Status> {
        self.mailbox
            .send(Msg::Raft(Box::new(m)))
            .await
            .map_err(|e| Status::unavailable(e.to_string()))
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(&self, request: Request<Streaming<RaftBatch>>) -> Result<Response<Done>, Status> {
        let mut stream = request.into_inner();
        while let Some(batch) = stream.message().await? {
            self.check_stamp(batch.cluster_id, batch.to)?;
            for bytes in &batch.msgs {
                let m = self.decode(bytes)?;
                if m.get_msg_type() == MessageType::MsgSnapshot {
                    return Err(Status::invalid_argument(
                        "snapshots go through the Snapshot call",
                    ));
                }
                self.deliver(m).await?;
            }
        }
        Ok(Response::new(Done {}))
    }

    async fn snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<Done>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let header = first
            .header
            .ok_or_else(|| Status::invalid_argument("first snapshot chunk has no header"))?;
        self.check_stamp(header.cluster_id, header.to)?;
        let m = self.decode(&header.message)?;
        if m.get_msg_type() != MessageType::MsgSnapshot {
            return Err(Status::invalid_argument(
                "Snapshot call carried a non-snapshot message",
            ));
        }
        let snap = m.get_snapshot();
        let desc = SnapshotDescriptor::decode(&snap.data)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let meta = snap.get_metadata();
        if (desc.index, desc.term) != (meta.index, meta.term) || desc.file_len != header.total_len {
            return Err(Status::invalid_argument(
                "snapshot descriptor does not match the message or the announced length",
            ));
        }
        if desc.file_len > self.max_snapshot {
            return Err(Status::resource_exhausted(format!(
                "snapshot of {} bytes is over the limit of {}",
                desc.file_len, self.max_snapshot
            )));
        }
        let (dir, max) = (self.snap_dir.clone(), self.max_snapshot);
        let mut incoming = blocking(move || IncomingSnapshot::create(&dir, desc, max))
            .await?
            .map_err(to_status)?;
        let mut data = first.data;
        loop {
            if !data.is_empty() {
                let (back, written) = blocking(move || {
                    let r = incoming.write(&data);
                    (incoming, r)
                })
                .await?;
                incoming = back;
                written.map_err(to_status)?;
            }
            match stream.message().await? {
                None => break,
                Some(chunk) if chunk.header.is_some() => {
                    return Err(Status::invalid_argument("header in a later snapshot chunk"));
                }
                Some(chunk) => data = chunk.data,
            }
        }
        blocking(move || incoming.finish())
            .await?
            .map_err(to_status)?;
        self.deliver(m).await?;
        Ok(Response::new(Done {}))
    }
}

/// Runs blocking file work off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("snapshot receiver task failed: {e}")))
}

/// A refused snapshot is the sender's fault; a failing disk is ours.
fn to_status(e: rdb_storage::Error) -> Status {
    match e {
        rdb_storage::Error::BadSnapshot(m) => Status::invalid_argument(m),
        other => Status::internal(other.to_string()),
    }
}
