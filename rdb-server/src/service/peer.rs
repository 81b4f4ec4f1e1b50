//! The peer service: receives Raft messages and snapshots from other nodes and hands them to
//! the node task. Anything that does not decode, or is stamped for another cluster or node, is
//! refused with a gRPC error and never reaches Raft.

use protobuf::Message as _;
use raft::prelude::{Message as RaftMessage, MessageType};
use rdb_proto::peer::peer_server::Peer;
use rdb_proto::peer::{Done, RaftBatch, SnapshotChunk};
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
}

impl PeerService {
    /// A service that forwards to `mailbox` the messages addressed to node `me`.
    pub fn new(mailbox: Mailbox, cluster_id: u64, me: NodeId, max_snapshot: u64) -> PeerService {
        PeerService {
            mailbox,
            cluster_id,
            me,
            max_snapshot,
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
        if header.total_len > self.max_snapshot {
            return Err(Status::resource_exhausted(format!(
                "snapshot of {} bytes is over the limit of {}",
                header.total_len, self.max_snapshot
            )));
        }
        let mut buf = Vec::with_capacity(header.total_len as usize);
        buf.extend_from_slice(&first.data);
        while let Some(chunk) = stream.message().await? {
            if chunk.header.is_some() {
                return Err(Status::invalid_argument("header in a later snapshot chunk"));
            }
            if buf.len() as u64 + chunk.data.len() as u64 > header.total_len {
                return Err(Status::invalid_argument("snapshot longer than announced"));
            }
            buf.extend_from_slice(&chunk.data);
        }
        if buf.len() as u64 != header.total_len {
            return Err(Status::invalid_argument(format!(
                "snapshot truncated: {} of {} bytes",
                buf.len(),
                header.total_len
            )));
        }
        let m = self.decode(&buf)?;
        if m.get_msg_type() != MessageType::MsgSnapshot {
            return Err(Status::invalid_argument(
                "Snapshot call carried a non-snapshot message",
            ));
        }
        // Verify the payload decodes before Raft accepts it; a bad one is refused here.
        rdb_storage::snapshot::decode(&m.get_snapshot().data)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.deliver(m).await?;
        Ok(Response::new(Done {}))
    }
}
