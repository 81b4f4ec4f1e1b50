//! The production [`MessageSink`]: Raft messages to peers over tonic.
//!
//! Each peer has a bounded queue and a task that keeps one long-lived client stream open,
//! sending messages in batches. The Raft task only ever `try_send`s into the queue, so a slow
//! or dead peer never blocks it: when the queue is full, messages are dropped, which Raft
//! tolerates (it retries appends and heartbeats). A broken stream is reopened with backoff and
//! reported to Raft as unreachable so it falls back to probing.
//!
//! Snapshot messages go separately, over the `Snapshot` call on a connection of their own: the
//! first chunk carries the `MsgSnapshot` (whose data is only a descriptor of the snapshot file),
//! the next ones the file, read from disk in chunks of at most 1 MiB (and half a peer message)
//! and paced by `snapshot_max_bytes_per_sec` over all transfers of the node. The outcome is
//! reported back to Raft (`report_snapshot`) every time.
//!
//! Between the stores of a PD-mode cluster the same streams carry every region's messages:
//! peers are stores, each message travels with its region id, and a region's snapshot files
//! are read from its own folder (`snap/r<id>`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use protobuf::Message as _;
use raft::prelude::{Message as RaftMessage, MessageType};
use rdb_proto::peer::peer_client::PeerClient;
use rdb_proto::peer::{PeerKind, RaftBatch, SnapshotChunk, SnapshotHeader};
use rdb_storage::snapshot::SnapshotDescriptor;
use slog::{debug, info, warn, Logger};
use tokio::io::AsyncReadExt;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::config::{ClusterConfig, NodeId};
use crate::raft_core::MessageSink;
use crate::router::{Control, RaftSender};

/// Messages queued per peer before new ones are dropped.
const PEER_QUEUE: usize = 8192;
/// Bytes of encoded messages sent in one batch on the stream (at most; see `batch_limit`).
const BATCH_BYTES: usize = 4 << 20;
/// Room kept in a batch for its own fields and the framing of each message.
const BATCH_OVERHEAD: usize = 4096;
const PER_MESSAGE_OVERHEAD: usize = 16;
/// Largest snapshot chunk (also kept under half of `max_peer_message_bytes`).
const SNAPSHOT_CHUNK: usize = 1 << 20;
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Identity stamped on every batch, checked by the receiver.
#[derive(Debug, Clone, Copy)]
struct Stamp {
    cluster_id: u64,
    from: NodeId,
    to: NodeId,
    /// Between stores (PD mode): batches carry each message's region id.
    regions: bool,
    /// What kind of process sends: the receiver refuses another kind.
    kind: PeerKind,
}

/// A queued message: its region (0 for a static node's group) and the message.
type Queued = (u64, RaftMessage);

/// Paces snapshot data over every transfer of this node.
#[derive(Debug)]
struct Throttle {
    /// 0 for unlimited.
    bytes_per_sec: u64,
    /// When the next chunk may go.
    next: std::sync::Mutex<Instant>,
}

impl Throttle {
    fn new(bytes_per_sec: u64) -> Throttle {
        Throttle {
            bytes_per_sec,
            next: std::sync::Mutex::new(Instant::now()),
        }
    }

    /// Waits until `n` more bytes may be sent.
    async fn take(&self, n: usize) {
        if self.bytes_per_sec == 0 {
            return;
        }
        let start = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let start = (*next).max(Instant::now());
            *next = start + Duration::from_secs_f64(n as f64 / self.bytes_per_sec as f64);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

/// Sends Raft messages to the other members of the cluster.
pub struct GrpcTransport {
    queues: HashMap<NodeId, mpsc::Sender<Queued>>,
    /// Each peer's send-failure counter and queue-depth gauge, looked up once: `send` runs on
    /// the Raft thread for every message.
    peer_metrics: HashMap<NodeId, (prometheus::IntCounter, prometheus::IntGauge)>,
    addrs: HashMap<NodeId, String>,
    cluster_id: u64,
    me: NodeId,
    max_message: usize,
    mailbox: RaftSender,
    handle: Handle,
    snap_dir: PathBuf,
    throttle: Arc<Throttle>,
    /// PD mode: peers are stores and messages carry region ids.
    regions: bool,
    /// What kind of process this is, stamped on every batch and snapshot.
    kind: PeerKind,
    logger: Logger,
}

impl GrpcTransport {
    /// Starts one sender task per peer of `peers` (id to peer address) on `handle`; snapshot
    /// files are read from `snap_dir`. Batches are stamped with the cluster id and `kind`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        config: &ClusterConfig,
        peers: &BTreeMap<NodeId, String>,
        me: NodeId,
        kind: PeerKind,
        mailbox: RaftSender,
        handle: Handle,
        snap_dir: PathBuf,
        logger: Logger,
    ) -> GrpcTransport {
        let max_message = config.settings.max_peer_message_bytes;
        let mut t = GrpcTransport {
            queues: HashMap::new(),
            peer_metrics: HashMap::new(),
            addrs: HashMap::new(),
            cluster_id: config.cluster_id,
            me,
            max_message,
            mailbox,
            handle,
            snap_dir,
            throttle: Arc::new(Throttle::new(config.settings.snapshot_max_bytes_per_sec)),
            regions: kind != PeerKind::Pd,
            kind,
            logger,
        };
        crate::node::Transport::set_peers(&mut t, peers);
        t
    }

    /// The transport of a PD-mode store: `me` and the peers are store ids (added with
    /// [`GrpcTransport::set_store`]), `config`'s cluster id is PD's, and messages go with
    /// [`GrpcTransport::send_region`].
    pub fn start_store(
        config: &ClusterConfig,
        me: NodeId,
        mailbox: RaftSender,
        handle: Handle,
        snap_dir: PathBuf,
        logger: Logger,
    ) -> GrpcTransport {
        GrpcTransport::start(
            config,
            &BTreeMap::new(),
            me,
            PeerKind::Store,
            mailbox,
            handle,
            snap_dir,
            logger,
        )
    }

    /// Adds or moves store `id` (PD mode) at `addr`.
    pub fn set_store(&mut self, id: NodeId, addr: &str) {
        if id == self.me || self.addrs.get(&id).is_some_and(|a| a == addr) {
            return;
        }
        self.queues.remove(&id);
        info!(self.logger, "peer stream opened"; "peer" => id, "addr" => addr);
        self.add_peer(id, addr);
    }

    /// Whether store `id` has an address here (PD mode).
    pub fn knows(&self, id: NodeId) -> bool {
        self.addrs.contains_key(&id)
    }

    /// Whether store `id` has address `addr` here (PD mode).
    pub fn knows_at(&self, id: NodeId, addr: &str) -> bool {
        self.addrs.get(&id).is_some_and(|a| a == addr)
    }

    /// Queues a message of region `region_id` for store `to` (PD mode).
    pub fn send_region(&mut self, to: NodeId, region_id: u64, m: RaftMessage) {
        if m.get_msg_type() == MessageType::MsgSnapshot {
            self.send_snapshot(to, region_id, m);
            return;
        }
        self.enqueue(to, (region_id, m));
    }

    fn enqueue(&mut self, to: NodeId, item: Queued) {
        match self.queues.get(&to) {
            Some(q) => {
                let dropped = q.try_send(item).is_err();
                if dropped {
                    debug!(self.logger, "peer queue full, message dropped");
                }
                if let Some((failures, depth)) = self.peer_metrics.get(&to) {
                    if dropped {
                        failures.inc();
                    }
                    depth.set((q.max_capacity() - q.capacity()) as i64);
                }
            }
            None => warn!(self.logger, "message for unknown peer"; "to" => to),
        }
    }

    /// Starts the sender task of peer `id` at `addr`.
    fn add_peer(&mut self, id: NodeId, addr: &str) {
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        self.queues.insert(id, tx);
        let (m, peer) = (crate::metrics::metrics(), id.to_string());
        self.peer_metrics.insert(
            id,
            (
                m.peer_send_failures.with_label_values(&[&peer]),
                m.peer_queue_depth.with_label_values(&[&peer]),
            ),
        );
        self.addrs.insert(id, addr.to_string());
        let stamp = Stamp {
            cluster_id: self.cluster_id,
            from: self.me,
            to: id,
            regions: self.regions,
            kind: self.kind,
        };
        self.handle.spawn(send_loop(
            addr.to_string(),
            stamp,
            rx,
            self.mailbox.clone(),
            self.max_message,
            self.logger.new(slog::o!("peer" => id)),
        ));
    }

    /// Streams a snapshot to node (PD mode: store) `to`.
    fn send_snapshot(&self, to: NodeId, region_id: u64, m: RaftMessage) {
        let Some(addr) = self.addrs.get(&to).cloned() else {
            // Raft sends that peer nothing else until it hears how the snapshot went.
            self.mailbox.report(Control::SnapshotSent {
                region_id,
                to: m.to,
                ok: false,
            });
            return;
        };
        let stamp = Stamp {
            cluster_id: self.cluster_id,
            from: self.me,
            to,
            regions: self.regions,
            kind: self.kind,
        };
        let (mailbox, logger, max) = (self.mailbox.clone(), self.logger.clone(), self.max_message);
        let snap_dir = region_snap_dir(&self.snap_dir, region_id);
        let throttle = self.throttle.clone();
        let peer = m.to;
        self.handle.spawn(async move {
            let index = m.get_snapshot().get_metadata().index;
            let started = std::time::Instant::now();
            let result =
                stream_snapshot(&addr, stamp, region_id, m, &snap_dir, max, &throttle).await;
            match &result {
                Ok(bytes) => {
                    let m = crate::metrics::metrics();
                    m.snapshots_sent.inc();
                    m.snapshot_sent_bytes.inc_by(*bytes);
                    m.snapshot_send_seconds
                        .observe(started.elapsed().as_secs_f64());
                    info!(logger, "snapshot sent"; "peer" => to, "index" => index,
                        "bytes" => bytes, "ms" => started.elapsed().as_millis() as u64)
                }
                Err(e) => warn!(logger, "snapshot send failed"; "peer" => to, "index" => index, "error" => %e),
            }
            // Raft waits for this report before it sends the peer anything else.
            mailbox.report(Control::SnapshotSent {
                region_id,
                to: peer,
                ok: result.is_ok(),
            });
        });
    }
}

impl crate::node::Transport for GrpcTransport {
    fn set_peers(&mut self, peers: &BTreeMap<NodeId, String>) {
        // Dropping a queue's sender ends its task once the queue is drained.
        let gone: Vec<NodeId> = self
            .addrs
            .iter()
            .filter(|(id, addr)| peers.get(id) != Some(*addr))
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            info!(self.logger, "peer stream closed"; "peer" => id);
            self.queues.remove(&id);
            self.addrs.remove(&id);
            self.peer_metrics.remove(&id);
        }
        for (&id, addr) in peers {
            if id != self.me && !self.addrs.contains_key(&id) {
                info!(self.logger, "peer stream opened"; "peer" => id, "addr" => addr);
                self.add_peer(id, addr);
            }
        }
    }
}

impl MessageSink for GrpcTransport {
    fn send(&mut self, msgs: Vec<RaftMessage>) {
        for m in msgs {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.send_snapshot(m.to, 0, m);
                continue;
            }
            let to = m.to;
            self.enqueue(to, (0, m));
        }
    }
}

/// Where the snapshot files of region `region_id` live (the folder itself for region 0, a
/// static node's group), as `Engine::snap_dir` lays them out.
pub fn region_snap_dir(snap_dir: &std::path::Path, region_id: u64) -> PathBuf {
    match region_id {
        0 => snap_dir.to_path_buf(),
        id => snap_dir.join(format!("r{id}")),
    }
}

async fn connect(
    addr: &str,
    max_message: usize,
) -> Result<PeerClient<Channel>, tonic::transport::Error> {
    let endpoint = match crate::tls::peer_client() {
        Some(tls) => Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls.clone())?,
        None => Endpoint::from_shared(format!("http://{addr}"))?,
    };
    let channel = endpoint
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .connect()
        .await?;
    Ok(PeerClient::new(channel)
        .max_encoding_message_size(max_message)
        .max_decoding_message_size(max_message))
}

/// Keeps a stream to one peer open and feeds it from the peer's queue.
async fn send_loop(
    addr: String,
    stamp: Stamp,
    mut rx: mpsc::Receiver<Queued>,
    mailbox: RaftSender,
    max_message: usize,
    logger: Logger,
) {
    let mut backoff = BACKOFF_MIN;
    let mut was_connected = true;
    loop {
        let mut client = match connect(&addr, max_message).await {
            Ok(c) => c,
            Err(e) => {
                if was_connected {
                    info!(logger, "peer unreachable"; "addr" => &addr, "error" => %e);
                    was_connected = false;
                }
                // What was queued for a dead peer is stale; Raft will resend what matters.
                while rx.try_recv().is_ok() {}
                if rx.is_closed() {
                    return;
                }
                crate::metrics::metrics()
                    .peer_send_failures
                    .with_label_values(&[&stamp.to.to_string()])
                    .inc();
                mailbox.report(Control::Unreachable { to: stamp.to });
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        if !was_connected {
            info!(logger, "peer connected"; "addr" => &addr);
            was_connected = true;
        }
        backoff = BACKOFF_MIN;
        let (stx, srx) = mpsc::channel::<RaftBatch>(64);
        let call = client.raft(ReceiverStream::new(srx));
        tokio::pin!(call);
        // An encoded message that did not fit in the previous batch opens the next one.
        let mut carried: Option<(u64, Vec<u8>)> = None;
        let ended = loop {
            let first = match carried.take() {
                Some(b) => b,
                None => tokio::select! {
                    res = &mut call => break res.err().map(|s| s.to_string()).unwrap_or_default(),
                    m = rx.recv() => {
                        let Some((region, m)) = m else { return };
                        match m.write_to_bytes() {
                            Ok(b) => (region, b),
                            Err(e) => {
                                warn!(logger, "cannot encode raft message"; "error" => %e);
                                continue;
                            }
                        }
                    }
                },
            };
            let (batch, rest) = make_batch(stamp, first, &mut rx, batch_limit(max_message));
            carried = rest;
            if stx.send(batch).await.is_err() {
                break "stream closed".to_string();
            }
        };
        debug!(logger, "peer stream ended"; "reason" => &ended);
        if ended.contains(crate::members::REMOVED_MARK) {
            mailbox.report(Control::Removed { by: stamp.to });
            return;
        }
        crate::metrics::metrics()
            .peer_send_failures
            .with_label_values(&[&stamp.to.to_string()])
            .inc();
        mailbox.report(Control::Unreachable { to: stamp.to });
    }
}

/// Largest total of encoded messages in one batch: a batch must stay under the peer's
/// `max_peer_message_bytes`, whatever the value sizes.
fn batch_limit(max_message: usize) -> usize {
    BATCH_BYTES.min(max_message.saturating_sub(BATCH_OVERHEAD))
}

/// Packs `first` (already encoded) and whatever else is queued into one stream message of at
/// most `limit` bytes. A queued message that would not fit is returned to open the next batch.
/// A single message is never larger than the limit: raft caps a message's entries at 1 MiB
/// (or one entry), and the config check keeps one entry under `max_peer_message_bytes`.
fn make_batch(
    stamp: Stamp,
    first: (u64, Vec<u8>),
    rx: &mut mpsc::Receiver<Queued>,
    limit: usize,
) -> (RaftBatch, Option<(u64, Vec<u8>)>) {
    let mut bytes = first.1.len() + PER_MESSAGE_OVERHEAD;
    let mut region_ids = vec![first.0];
    let mut msgs = vec![first.1];
    let mut rest = None;
    while bytes < limit {
        let Ok((region, m)) = rx.try_recv() else {
            break;
        };
        let Ok(b) = m.write_to_bytes() else { continue };
        if bytes + b.len() + PER_MESSAGE_OVERHEAD > limit {
            rest = Some((region, b));
            break;
        }
        bytes += b.len() + PER_MESSAGE_OVERHEAD;
        region_ids.push(region);
        msgs.push(b);
    }
    if !stamp.regions {
        region_ids.clear();
    }
    let batch = RaftBatch {
        cluster_id: stamp.cluster_id,
        from: stamp.from,
        to: stamp.to,
        msgs,
        region_ids,
        kind: stamp.kind as i32,
    };
    (batch, rest)
}

/// Streams the snapshot `m` describes: the message in the first chunk's header, then its file
/// read from `snap_dir` in chunks. Returns the file bytes sent.
async fn stream_snapshot(
    addr: &str,
    stamp: Stamp,
    region_id: u64,
    m: RaftMessage,
    snap_dir: &std::path::Path,
    max_message: usize,
    throttle: &Throttle,
) -> Result<u64, String> {
    let desc = SnapshotDescriptor::decode(&m.get_snapshot().data).map_err(|e| e.to_string())?;
    let path = desc.path_in(snap_dir);
    let message = m.write_to_bytes().map_err(|e| e.to_string())?;
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let len = file.metadata().await.map_err(|e| e.to_string())?.len();
    if len != desc.file_len {
        return Err(format!(
            "{} has {len} bytes, its descriptor says {}",
            path.display(),
            desc.file_len
        ));
    }
    let mut client = connect(addr, max_message)
        .await
        .map_err(|e| e.to_string())?;
    let chunk_size = SNAPSHOT_CHUNK.min(max_message / 2).max(1);
    let (tx, rx) = mpsc::channel::<SnapshotChunk>(2);
    let header = SnapshotChunk {
        header: Some(SnapshotHeader {
            cluster_id: stamp.cluster_id,
            from: stamp.from,
            to: stamp.to,
            total_len: desc.file_len,
            message,
            region_id,
            kind: stamp.kind as i32,
        }),
        data: Vec::new(),
    };
    tx.send(header)
        .await
        .map_err(|_| "snapshot stream closed".to_string())?;
    let feed = async move {
        let mut sent = 0u64;
        loop {
            let mut buf = vec![0u8; chunk_size];
            let mut n = 0;
            while n < chunk_size {
                match file.read(&mut buf[n..]).await {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) => return Err(format!("reading {}: {e}", path.display())),
                }
            }
            if n == 0 {
                return Ok(sent);
            }
            buf.truncate(n);
            throttle.take(n).await;
            if tx
                .send(SnapshotChunk {
                    header: None,
                    data: buf,
                })
                .await
                .is_err()
            {
                return Err("the receiver ended the snapshot stream".to_string());
            }
            sent += n as u64;
        }
    };
    let (sent, done) = tokio::join!(feed, client.snapshot(ReceiverStream::new(rx)));
    done.map_err(|s| s.to_string())?;
    let sent = sent?;
    if sent != desc.file_len {
        return Err(format!("sent {sent} of {} bytes", desc.file_len));
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::prelude::Entry;

    fn append_of(bytes: usize) -> RaftMessage {
        let mut m = RaftMessage::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = 2;
        let e = Entry {
            data: vec![1u8; bytes].into(),
            ..Default::default()
        };
        m.entries = vec![e].into();
        m
    }

    #[tokio::test]
    async fn a_snapshot_for_a_store_with_no_address_is_reported_failed_at_once() {
        // Raft sends a follower nothing else until it hears how a snapshot went: one that
        // cannot even be sent must still be reported, or that follower is stuck for good.
        let (mailbox, mut inbox) = crate::router::Mailbox::<()>::new(16);
        let config = crate::config::ClusterConfig::single_node_default();
        let mut t = GrpcTransport::start_store(
            &config,
            1,
            mailbox.raft_sender(),
            Handle::current(),
            std::env::temp_dir(),
            slog::Logger::root(slog::Discard, slog::o!()),
        );
        let mut m = RaftMessage::default();
        m.set_msg_type(MessageType::MsgSnapshot);
        m.to = 23;
        t.send_region(9, 5, m);
        match inbox.control.try_recv() {
            Ok(Control::SnapshotSent { region_id, to, ok }) => {
                assert_eq!((region_id, to, ok), (5, 23, false));
            }
            other => panic!("expected a failed snapshot report, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn batches_stay_under_the_peer_message_limit_whatever_the_value_sizes() {
        let max_message = 3 << 20;
        let (tx, mut rx) = mpsc::channel(64);
        for _ in 0..10 {
            tx.send((0, append_of(900 << 10))).await.unwrap();
        }
        let stamp = Stamp {
            cluster_id: 1,
            from: 1,
            to: 2,
            regions: false,
            kind: PeerKind::Node,
        };
        let mut carried = Some((0, append_of(900 << 10).write_to_bytes().unwrap()));
        let mut sent = 0;
        while let Some(first) = carried.take().or_else(|| {
            rx.try_recv()
                .ok()
                .map(|(r, m): Queued| (r, m.write_to_bytes().unwrap()))
        }) {
            let (batch, rest) = make_batch(stamp, first, &mut rx, batch_limit(max_message));
            let encoded = prost::Message::encoded_len(&batch);
            assert!(encoded <= max_message, "batch of {encoded} bytes");
            sent += batch.msgs.len();
            carried = rest;
        }
        assert_eq!(sent, 11, "every message is sent once");
    }
}
