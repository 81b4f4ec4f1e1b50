//! Typed messages into the Raft task's mailbox, and the answers it sends back.
//!
//! Everything outside the Raft task (gRPC services, the transport) talks to it only through
//! [`Msg`]; answers come back on a `oneshot` channel carried in the message.

use raft::prelude::Message as RaftMessage;
use rdb_proto::command::Command;
use rdb_storage::CommandResult;
use tokio::sync::{mpsc, oneshot};

use crate::config::NodeId;

/// The leader as a node knows it, to tell a client where to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderHint {
    /// Leader's node id.
    pub id: NodeId,
    /// Leader's client address.
    pub addr: String,
}

/// Why a request did not succeed, as the client will see it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Malformed or over a limit; retrying will not help.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// This node does not lead; go to the hinted leader if known.
    #[error("not leader")]
    NotLeader(Option<LeaderHint>),
    /// Nothing was applied: no leader, no quorum, or overloaded. Safe to retry.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Proposed, but the outcome is unknown. Retrying with the same request id is safe.
    #[error("indeterminate: {0}")]
    Indeterminate(String),
}

/// Result of a write.
pub type ProposeResult = Result<CommandResult, RequestError>;
/// Result of a linearizable read barrier: Ok means the local state is now safe to read.
pub type ReadResult = Result<(), RequestError>;

/// A snapshot of the node's Raft state for the Status call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStatus {
    /// This node.
    pub node_id: NodeId,
    /// `raft::StateRole` rendered as the proto enum value.
    pub role: i32,
    /// Current term.
    pub term: u64,
    /// Known leader, 0 if none.
    pub leader_id: NodeId,
    /// Known leader's client address, empty if none.
    pub leader_addr: String,
    /// Commit index.
    pub commit_index: u64,
    /// Applied index.
    pub applied_index: u64,
    /// First index still in the log.
    pub first_index: u64,
    /// Last index in the log.
    pub last_index: u64,
}

/// A message for the Raft task.
#[derive(Debug)]
pub enum Msg {
    /// A Raft message from a peer.
    Raft(Box<RaftMessage>),
    /// A client write to propose.
    Propose {
        /// The command to replicate.
        cmd: Command,
        /// Where to send the result.
        tx: oneshot::Sender<ProposeResult>,
    },
    /// A linearizable read waiting for a ReadIndex round and for apply to catch up.
    Read {
        /// Answered once reading local state is linearizable.
        tx: oneshot::Sender<ReadResult>,
    },
    /// Asks for the node's status.
    Status {
        /// Where to send it.
        tx: oneshot::Sender<NodeStatus>,
    },
    /// The transport finished (or failed) sending a snapshot to a peer.
    SnapshotSent {
        /// The peer.
        to: NodeId,
        /// Whether the peer received all of it.
        ok: bool,
    },
    /// The transport cannot reach a peer.
    Unreachable {
        /// The peer.
        to: NodeId,
    },
}

/// The sending side of the Raft task's mailbox.
///
/// Three queues, read in priority order: control reports from the transport (unbounded: they
/// are few, and losing one would leave raft waiting on a peer or a snapshot for good), Raft
/// messages from peers, then client requests. Under client overload, heartbeats and votes do
/// not queue behind requests, so leaders do not churn. The peer and client queues are bounded:
/// when the Raft task falls behind, senders wait (peers) or are told the node is busy
/// (clients), instead of memory growing.
#[derive(Debug, Clone)]
pub struct Mailbox {
    control: mpsc::UnboundedSender<Msg>,
    raft: mpsc::Sender<Msg>,
    client: mpsc::Sender<Msg>,
}

/// The receiving side of the Raft task's mailbox (see [`Mailbox`]).
#[derive(Debug)]
pub struct Inbox {
    /// Snapshot and reachability reports from the transport.
    pub control: mpsc::UnboundedReceiver<Msg>,
    /// Raft messages from peers.
    pub raft: mpsc::Receiver<Msg>,
    /// Client requests.
    pub client: mpsc::Receiver<Msg>,
}

impl Mailbox {
    /// A mailbox whose peer and client queues hold `capacity` messages each, and the inbox
    /// the Raft task reads.
    pub fn new(capacity: usize) -> (Mailbox, Inbox) {
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (raft_tx, raft_rx) = mpsc::channel(capacity);
        let (client_tx, client_rx) = mpsc::channel(capacity);
        (
            Mailbox {
                control: control_tx,
                raft: raft_tx,
                client: client_tx,
            },
            Inbox {
                control: control_rx,
                raft: raft_rx,
                client: client_rx,
            },
        )
    }

    /// Sends, waiting for room. Fails only when the Raft task has stopped.
    pub async fn send(&self, msg: Msg) -> Result<(), RequestError> {
        let sent = match msg {
            Msg::SnapshotSent { .. } | Msg::Unreachable { .. } => {
                self.control.send(msg).map_err(|_| ())
            }
            Msg::Raft(_) => self.raft.send(msg).await.map_err(|_| ()),
            _ => self.client.send(msg).await.map_err(|_| ()),
        };
        sent.map_err(|_| RequestError::Unavailable("node is shutting down".into()))
    }

    /// Reports from the transport's callbacks, which must not wait: never dropped for lack of
    /// room (only when the Raft task has stopped).
    pub fn report(&self, msg: Msg) {
        let _ = self.control.send(msg);
    }

    /// Sends a request and waits for its answer.
    pub async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Msg,
    ) -> Result<T, RequestError> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx)).await?;
        rx.await
            .map_err(|_| RequestError::Unavailable("node is shutting down".into()))
    }
}
