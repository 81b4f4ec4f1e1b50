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
use rdb_proto::peer::{Done, PeerKind, RaftBatch, SnapshotChunk};
use rdb_storage::snapshot::{IncomingSnapshot, SnapshotDescriptor};
use tonic::{Request, Response, Status, Streaming};

use crate::config::NodeId;
use crate::members::{SharedDirectory, REMOVED_MARK};
use crate::router::{PeerMsg, RaftSender};

/// Who a node (or store) is to its peers: what every message to it must be stamped with.
#[derive(Debug, Clone, Copy)]
pub struct PeerIdent {
    /// Its cluster: a config-file cluster's id, PD's cluster id for a store.
    pub cluster_id: u64,
    /// Its node id (a store's: the store id).
    pub node: NodeId,
    /// What kind of process it is.
    pub kind: PeerKind,
}

/// Serves Raft traffic for one node.
#[derive(Clone)]
pub struct PeerService {
    raft: RaftSender,
    cluster_id: u64,
    me: NodeId,
    max_snapshot: u64,
    snap_dir: PathBuf,
    members: SharedDirectory,
    /// What kind of process this is: messages from another kind are refused.
    kind: PeerKind,
    /// PD mode: nodes are stores, messages carry region ids and are addressed to peers.
    regions: bool,
    /// Whether a refused message was logged already (one line, then the metric counts).
    warned: std::sync::Arc<std::sync::atomic::AtomicBool>,
    logger: slog::Logger,
}

impl PeerService {
    /// A service that forwards to `raft` the messages of `me`'s cluster and kind addressed to
    /// it, and receives snapshot files of at most `max_snapshot` bytes into `snap_dir`. A store
    /// (kind STORE, PD's cluster id) takes only messages with a region id, and hands each on
    /// with it (the store checks the peer id).
    pub fn new(
        raft: RaftSender,
        me: PeerIdent,
        max_snapshot: u64,
        snap_dir: PathBuf,
        members: SharedDirectory,
        logger: slog::Logger,
    ) -> PeerService {
        let PeerIdent {
            cluster_id,
            node: me,
            kind,
        } = me;
        PeerService {
            raft,
            cluster_id,
            me,
            max_snapshot,
            snap_dir,
            members,
            kind,
            regions: kind != PeerKind::Pd,
            warned: Default::default(),
            logger,
        }
    }

    /// A removed node is told so (it then stops for good) instead of being heard.
    fn check_not_removed(&self, from: NodeId) -> Result<(), Status> {
        if self.members.is_removed(from) {
            return Err(Status::failed_precondition(format!(
                "{}: node {from} was removed from cluster {}",
                REMOVED_MARK, self.cluster_id
            )));
        }
        Ok(())
    }

    /// Refuses a message from another cluster or another kind of process, or for another
    /// node: counted, and logged the first time.
    fn check_stamp(
        &self,
        cluster_id: u64,
        kind: i32,
        from: NodeId,
        to: NodeId,
    ) -> Result<(), Status> {
        let kind = PeerKind::try_from(kind).unwrap_or(PeerKind::Unspecified);
        // Versions before kinds were stamped sent none; stores always stamp theirs.
        let kind_ok =
            kind == self.kind || (kind == PeerKind::Unspecified && self.kind != PeerKind::Store);
        if cluster_id != self.cluster_id || !kind_ok {
            crate::metrics::metrics()
                .peer_messages_refused
                .with_label_values(&["cluster"])
                .inc();
            let why = format!(
                "message from {} {from} of cluster {cluster_id}; this is {} {} of cluster {}",
                kind_name(kind),
                kind_name(self.kind),
                self.me,
                self.cluster_id
            );
            if !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
                slog::warn!(self.logger, "refused a peer message of another cluster or kind";
                    "why" => &why, "from" => from, "cluster_id" => cluster_id);
            }
            return Err(Status::permission_denied(why));
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
        if !self.regions && m.to != self.me {
            return Err(Status::invalid_argument(
                "raft message addressed to another node",
            ));
        }
        Ok(m)
    }

    /// Refuses a message without a region id for a store (a config-file node is one), or with
    /// one for a PD node.
    fn check_region(&self, region_id: u64) -> Result<(), Status> {
        if self.regions == (region_id == 0) {
            return Err(Status::invalid_argument(if self.regions {
                "a store takes only messages with a region id"
            } else {
                "a region id in a message for a PD node"
            }));
        }
        Ok(())
    }

    async fn deliver(&self, region_id: u64, from: NodeId, msg: RaftMessage) -> Result<(), Status> {
        self.check_region(region_id)?;
        self.raft
            .send_raft(Box::new(PeerMsg {
                region_id,
                from,
                msg,
            }))
            .await
            .map_err(|e| Status::unavailable(e.to_string()))
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(&self, request: Request<Streaming<RaftBatch>>) -> Result<Response<Done>, Status> {
        let mut stream = request.into_inner();
        while let Some(batch) = stream.message().await? {
            self.check_stamp(batch.cluster_id, batch.kind, batch.from, batch.to)?;
            self.check_not_removed(batch.from)?;
            if !batch.region_ids.is_empty() && batch.region_ids.len() != batch.msgs.len() {
                return Err(Status::invalid_argument(
                    "a batch needs one region id per message, or none",
                ));
            }
            for (i, bytes) in batch.msgs.iter().enumerate() {
                let region_id = batch.region_ids.get(i).copied().unwrap_or(0);
                let m = self.decode(bytes)?;
                if m.get_msg_type() == MessageType::MsgSnapshot {
                    return Err(Status::invalid_argument(
                        "snapshots go through the Snapshot call",
                    ));
                }
                self.deliver(region_id, batch.from, m).await?;
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
        self.check_stamp(header.cluster_id, header.kind, header.from, header.to)?;
        self.check_region(header.region_id)?;
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
        let dir = crate::transport::region_snap_dir(&self.snap_dir, header.region_id);
        let max = self.max_snapshot;
        let mut incoming = blocking(move || IncomingSnapshot::create(&dir, desc, max))
            .await?
            .map_err(to_status)?;
        let mut data = first.data;
        let mut received = 0u64;
        let started = std::time::Instant::now();
        loop {
            received += data.len() as u64;
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
        let metrics = crate::metrics::metrics();
        metrics.snapshots_received.inc();
        metrics.snapshot_received_bytes.inc_by(received);
        metrics
            .snapshot_receive_seconds
            .observe(started.elapsed().as_secs_f64());
        self.deliver(header.region_id, header.from, m).await?;
        Ok(Response::new(Done {}))
    }
}

/// How a refusal names a kind of process.
fn kind_name(kind: PeerKind) -> &'static str {
    match kind {
        PeerKind::Unspecified | PeerKind::Node => "node",
        PeerKind::Store => "store",
        PeerKind::Pd => "PD node",
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

#[cfg(test)]
mod tests {
    use super::*;
    use raft::prelude::Snapshot;
    use rdb_proto::peer::peer_client::PeerClient;
    use rdb_proto::peer::peer_server::PeerServer;
    use rdb_proto::peer::SnapshotHeader;
    use rdb_storage::{Engine, Ident};
    use tokio::sync::mpsc;

    /// A leader-side snapshot file and its message for node 2.
    fn leader_snapshot(dir: &std::path::Path) -> (Vec<u8>, Vec<u8>, SnapshotDescriptor) {
        let engine = Engine::open(dir).unwrap();
        engine
            .bootstrap_or_check(
                Ident {
                    cluster_id: 7,
                    node_id: 1,
                },
                &[1, 2],
                &[],
            )
            .unwrap();
        let snap: Snapshot = rdb_storage::snapshot::build(&engine).unwrap();
        let desc = SnapshotDescriptor::decode(&snap.data).unwrap();
        let file = std::fs::read(desc.path_in(&engine.snap_dir())).unwrap();
        let mut m = RaftMessage::default();
        m.set_msg_type(MessageType::MsgSnapshot);
        m.from = 1;
        m.to = 2;
        m.set_snapshot(snap);
        (m.write_to_bytes().unwrap(), file, desc)
    }

    /// A peer service for node 2 on a local port, its mailbox, and its snapshot folder.
    async fn serve(
        max_snapshot: u64,
    ) -> (
        PeerClient<tonic::transport::Channel>,
        mpsc::Receiver<Box<PeerMsg>>,
        tempfile::TempDir,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (mailbox, inbox) = crate::router::Mailbox::<()>::new(16);
        let svc = PeerService::new(
            mailbox.raft_sender(),
            PeerIdent {
                cluster_id: 7,
                node: 2,
                kind: PeerKind::Node,
            },
            max_snapshot,
            dir.path().to_path_buf(),
            Default::default(),
            slog::Logger::root(slog::Discard, slog::o!()),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(PeerServer::new(svc))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let client = PeerClient::connect(format!("http://{addr}")).await.unwrap();
        (client, inbox.raft, dir)
    }

    fn chunks(message: &[u8], total_len: u64, data: &[u8]) -> Vec<SnapshotChunk> {
        chunks_of(1, message, total_len, data)
    }

    fn chunks_of(
        region_id: u64,
        message: &[u8],
        total_len: u64,
        data: &[u8],
    ) -> Vec<SnapshotChunk> {
        let mut out = vec![SnapshotChunk {
            header: Some(SnapshotHeader {
                cluster_id: 7,
                from: 1,
                to: 2,
                total_len,
                message: message.to_vec(),
                region_id,
                kind: PeerKind::Node as i32,
            }),
            data: Vec::new(),
        }];
        for part in data.chunks(7) {
            out.push(SnapshotChunk {
                header: None,
                data: part.to_vec(),
            });
        }
        out
    }

    #[tokio::test]
    async fn a_snapshot_file_is_received_to_disk_checked_and_only_then_stepped() {
        let src = tempfile::tempdir().unwrap();
        let (message, file, desc) = leader_snapshot(src.path());
        let (mut client, mut rx, dir) = serve(1 << 20).await;
        let len = file.len() as u64;
        // Region 1's snapshots (a config-file node's) go to its own folder.
        let files = |dir: &tempfile::TempDir| {
            std::fs::read_dir(dir.path().join("r1")).map_or(0, |d| d.count())
        };
        // A message without a region is refused before anything is written.
        let r = client
            .snapshot(tokio_stream::iter(chunks_of(0, &message, len, &file)))
            .await;
        assert_eq!(r.unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        // Longer or shorter than announced, or a flipped byte: refused, nothing stepped or kept.
        let mut longer = file.clone();
        longer.push(0);
        let mut flipped = file.clone();
        flipped[9] ^= 1;
        for (what, body) in [
            ("longer", longer),
            ("shorter", file[..file.len() - 1].to_vec()),
            ("flipped", flipped),
        ] {
            let r = client
                .snapshot(tokio_stream::iter(chunks(&message, len, &body)))
                .await;
            let code = r.map(|_| ()).unwrap_err().code();
            assert_eq!(code, tonic::Code::InvalidArgument, "{what}");
            assert!(rx.try_recv().is_err(), "{what}: nothing reaches raft");
            assert_eq!(files(&dir), 0, "{what}: no file left behind");
        }
        // A claimed length that does not match the descriptor, or over the cap, is refused
        // before anything is allocated or written.
        let r = client
            .snapshot(tokio_stream::iter(chunks(&message, 1 << 40, &file)))
            .await;
        assert_eq!(r.unwrap_err().code(), tonic::Code::InvalidArgument);
        let (mut small, _rx, _dir) = serve(len - 1).await;
        let r = small
            .snapshot(tokio_stream::iter(chunks(&message, len, &file)))
            .await;
        assert_eq!(r.unwrap_err().code(), tonic::Code::ResourceExhausted);

        // The real thing: on disk under its final name, then stepped.
        client
            .snapshot(tokio_stream::iter(chunks(&message, len, &file)))
            .await
            .unwrap();
        let received = std::fs::read(desc.path_in(&dir.path().join("r1"))).unwrap();
        assert_eq!(received, file);
        match rx.try_recv() {
            Ok(m) => assert_eq!(m.msg.get_msg_type(), MessageType::MsgSnapshot),
            other => panic!("expected the snapshot message, got {other:?}"),
        }
    }
}
