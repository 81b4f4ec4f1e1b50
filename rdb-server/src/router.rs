//! Typed messages into the Raft task's mailbox, and the answers it sends back.
//!
//! Everything outside the Raft task (gRPC services, the transport) talks to it only through
//! [`Msg`]; answers come back on a `oneshot` channel carried in the message.

use raft::prelude::Message as RaftMessage;
use rdb_storage::CommandResult;
use tokio::sync::{mpsc, oneshot};

use crate::config::NodeId;
use crate::raft_core::{MemberStep, Membership};
use rdb_storage::MemberRecord;

/// The leader as a node knows it, to tell a client where to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderHint {
    /// Leader's node id (PD mode: its store id).
    pub id: NodeId,
    /// Leader's client address.
    pub addr: String,
    /// PD mode: the leader's peer id in the region; 0 otherwise.
    pub peer_id: u64,
}

/// Why a request did not succeed, as the client will see it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
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
    /// PD mode: a key lies outside the region the request names; `1` holds that region.
    #[error("key not in region: {0}")]
    KeyNotInRegion(String, Vec<rdb_storage::region::Region>),
    /// PD mode: the request's region epoch is stale; `1` holds the regions now covering it.
    #[error("epoch not match: {0}")]
    EpochNotMatch(String, Vec<rdb_storage::region::Region>),
    /// PD mode: this store hosts no such region (or none holding the key).
    #[error("region not found: {0}")]
    RegionNotFound(String),
    /// A read at a revision whose history was compacted away (specs/018-versions).
    #[error("{0}")]
    Compacted(String),
    /// A read at a revision the region has not reached yet.
    #[error("{0}")]
    FutureRevision(String),
}

/// Result of a write: what applying the command produced.
pub type ProposeResult<O = CommandResult> = Result<O, RequestError>;
/// Result of a linearizable read barrier: Ok means the local state is now safe to read; it
/// carries the term in which leadership was confirmed.
pub type ReadResult = Result<u64, RequestError>;

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
    /// On the leader: (follower id, matched index) of every other voter.
    pub followers: Vec<(NodeId, u64)>,
    /// A PD-mode store: every region it hosts (`node_id` is the store id; the fields above
    /// describe no one group). `None` for a node of a config-file cluster.
    pub regions: Option<Vec<RegionState>>,
}

/// One region a store hosts, as its peer there sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegionState {
    /// The region.
    pub region_id: u64,
    /// This store's peer of it.
    pub peer_id: u64,
    /// `raft::StateRole` rendered as the proto enum value.
    pub role: i32,
    /// Current term.
    pub term: u64,
    /// The leader's peer id and store, 0 when none is known.
    pub leader: (u64, u64),
    /// Commit index.
    pub commit_index: u64,
    /// Applied index.
    pub applied_index: u64,
    /// On the leader: the largest lag of a follower, in entries; elsewhere: commit - applied.
    pub lag: u64,
    /// Whether this peer is a learner.
    pub learner: bool,
}

/// A client request for the Raft task; `O` is what the application's commands produce.
#[derive(Debug)]
pub enum Msg<O = CommandResult> {
    /// An encoded command to propose.
    Propose {
        /// The command, encoded as the application decodes it.
        data: Vec<u8>,
        /// Where to send the result.
        tx: oneshot::Sender<ProposeResult<O>>,
    },
    /// A linearizable read waiting for a ReadIndex round and for apply to catch up.
    Read {
        /// Answered once reading local state is linearizable.
        tx: oneshot::Sender<ReadResult>,
    },
    /// Starts handing leadership to another voter.
    TransferLeader {
        /// The region (PD mode); 0 for a static node's group.
        region_id: u64,
        /// The voter to lead next (PD mode: a peer of the region).
        to: NodeId,
        /// Ok once the transfer started.
        tx: oneshot::Sender<Result<(), RequestError>>,
    },
    /// PD mode: merges region `source` into the adjacent region `target` (the source's
    /// leader only); answered once the source applied its prepare (specs/017-merge).
    MergeRegion {
        /// The region that goes.
        source: u64,
        /// The region that takes it over.
        target: u64,
        /// The prepare's result.
        tx: oneshot::Sender<ProposeResult<O>>,
    },
    /// Asks for the node's status.
    Status {
        /// Where to send it.
        tx: oneshot::Sender<NodeStatus>,
    },
    /// Change the membership (leader only); answered once the change applied here.
    ChangeMembers {
        /// The region (PD mode); 0 for a static node's group.
        region_id: u64,
        /// The steps, one per node.
        steps: Vec<MemberStep>,
        /// Addresses of the nodes added.
        added: Vec<MemberRecord>,
        /// The change's log index and the membership it led to.
        tx: oneshot::Sender<Result<(u64, Membership), RequestError>>,
    },
    /// The membership as this node applied it, with the leader's view of progress.
    Members {
        /// The region (PD mode); 0 for a static node's group.
        region_id: u64,
        /// Answered at once.
        tx: oneshot::Sender<Result<MembersView, RequestError>>,
    },
    /// PD mode: an encoded KV command for the region `route` names (or the one holding its
    /// first key). A static node refuses it.
    RegionPropose {
        /// Which region, at which epoch, and the keys the command touches.
        route: RegionRoute,
        /// The encoded command.
        data: Vec<u8>,
        /// The stamps the write may take (its revision): the store picks one as it proposes
        /// and appends it to `data` as the command's `stamp` (None: not stamped).
        stamp: Option<crate::service::stamps::StampRange>,
        /// Where to send the result.
        tx: oneshot::Sender<ProposeResult<O>>,
    },
    /// PD mode: a read of the keys of `route`: answered with the region as applied here once
    /// reading it is allowed (after a ReadIndex round when `linearizable`).
    RegionRead {
        /// Which region, at which epoch, and the keys read (a scan: its start).
        route: RegionRoute,
        /// Whether a ReadIndex round must come first.
        linearizable: bool,
        /// The region the keys belong to, as applied here.
        tx: oneshot::Sender<Result<rdb_storage::region::Region, RequestError>>,
    },
}

/// PD mode: where a client request goes. Without a region id the store picks the region
/// holding the first key, and checks no epoch.
#[derive(Debug, Clone, Default)]
pub struct RegionRoute {
    /// The region (0: the one holding the first key).
    pub region_id: u64,
    /// The epoch the client knows; `None` skips the check.
    pub epoch: Option<rdb_storage::region::RegionEpoch>,
    /// Every key the request touches, in the order given.
    pub keys: Vec<Vec<u8>>,
}

/// The membership as one node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MembersView {
    /// The node that answered.
    pub node_id: NodeId,
    /// The leader it knows, 0 for none.
    pub leader_id: NodeId,
    /// Its commit index.
    pub commit_index: u64,
    /// Who votes and who learns.
    pub membership: Membership,
    /// On the leader: every other member's matched index.
    pub progress: Vec<(NodeId, u64)>,
    /// PD mode: each peer's store and that store's client address (empty if unknown).
    pub stores: Vec<(u64, u64, String)>,
}

/// A report from the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// The transport finished (or failed) sending a snapshot to a peer.
    SnapshotSent {
        /// The region the snapshot is of (PD mode); 0 for a static node's group.
        region_id: u64,
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
    /// Peer `by` answered that this node was removed from the cluster.
    Removed {
        /// The peer that said so.
        by: NodeId,
    },
    /// A clean stop: the Raft task ends its loop and drops the core (and its database handles).
    Stop,
}

/// The peer side of the Raft task's mailbox, for the transport and the peer service: Raft
/// messages (bounded: a peer waits when the Raft task falls behind) and transport reports
/// (unbounded: they are few, and losing one would leave raft waiting on a peer or a snapshot
/// for good). It does not depend on the application.
#[derive(Debug, Clone)]
pub struct RaftSender {
    control: mpsc::UnboundedSender<Control>,
    raft: mpsc::Sender<Box<PeerMsg>>,
}

/// A Raft message from a peer, with the region it is for (PD mode).
#[derive(Debug, Clone)]
pub struct PeerMsg {
    /// The region (PD mode); 0 for a static node's one group.
    pub region_id: u64,
    /// The sending node (PD mode: store).
    pub from: NodeId,
    /// The raft-rs message.
    pub msg: RaftMessage,
}

impl RaftSender {
    /// Sends a Raft message from a peer, waiting for room. Fails only when the Raft task stopped.
    pub async fn send_raft(&self, m: Box<PeerMsg>) -> Result<(), RequestError> {
        self.raft
            .send(m)
            .await
            .map_err(|_| RequestError::Unavailable("node is shutting down".into()))
    }

    /// Reports from the transport's callbacks, which must not wait: never dropped for lack of
    /// room (only when the Raft task has stopped).
    pub fn report(&self, c: Control) {
        let _ = self.control.send(c);
    }

    /// Asks the Raft task to stop (see [`Control::Stop`]).
    pub fn stop(&self) {
        self.report(Control::Stop);
    }
}

/// The sending side of the Raft task's mailbox.
///
/// Three queues, read in priority order: transport reports, Raft messages from peers (both in
/// [`RaftSender`]), then client requests. Under client overload, heartbeats and votes do not
/// queue behind requests, so leaders do not churn. The client queue is bounded: when the Raft
/// task falls behind, clients are told the node is busy instead of memory growing.
#[derive(Debug)]
pub struct Mailbox<O = CommandResult> {
    raft: RaftSender,
    client: mpsc::Sender<Msg<O>>,
}

impl<O> Clone for Mailbox<O> {
    fn clone(&self) -> Self {
        Mailbox {
            raft: self.raft.clone(),
            client: self.client.clone(),
        }
    }
}

/// The receiving side of the Raft task's mailbox (see [`Mailbox`]).
#[derive(Debug)]
pub struct Inbox<O = CommandResult> {
    /// Snapshot and reachability reports from the transport.
    pub control: mpsc::UnboundedReceiver<Control>,
    /// Raft messages from peers.
    pub raft: mpsc::Receiver<Box<PeerMsg>>,
    /// Client requests.
    pub client: mpsc::Receiver<Msg<O>>,
}

impl<O> Mailbox<O> {
    /// A mailbox whose peer and client queues hold `capacity` messages each, and the inbox
    /// the Raft task reads.
    pub fn new(capacity: usize) -> (Mailbox<O>, Inbox<O>) {
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (raft_tx, raft_rx) = mpsc::channel(capacity);
        let (client_tx, client_rx) = mpsc::channel(capacity);
        (
            Mailbox {
                raft: RaftSender {
                    control: control_tx,
                    raft: raft_tx,
                },
                client: client_tx,
            },
            Inbox {
                control: control_rx,
                raft: raft_rx,
                client: client_rx,
            },
        )
    }

    /// The peer side, for the transport and the peer service.
    pub fn raft_sender(&self) -> RaftSender {
        self.raft.clone()
    }

    /// Sends a client request, waiting for room. Fails only when the Raft task has stopped.
    pub async fn send(&self, msg: Msg<O>) -> Result<(), RequestError> {
        self.client
            .send(msg)
            .await
            .map_err(|_| RequestError::Unavailable("node is shutting down".into()))
    }

    /// Sends a request and waits for its answer.
    pub async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Msg<O>,
    ) -> Result<T, RequestError> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx)).await?;
        rx.await
            .map_err(|_| RequestError::Unavailable("node is shutting down".into()))
    }
}

/// A task's Raft clock: it ticks by the wall clock after whatever turn finds a tick due. A
/// runtime interval timer fires only when the task lets the runtime run, and a task with a
/// message always ready does so once its budget of 128 receives is spent: at turns of 0.25 s
/// under load that was a tick every 30 s or so (no Raft heartbeats from its leaders, whose
/// followers then held elections; no store or region heartbeats). The store task and a PD
/// node's task both keep time with it.
#[derive(Debug)]
pub struct RaftClock {
    every: std::time::Duration,
    next: std::time::Instant,
}

impl RaftClock {
    /// A clock that ticks every `every`, first at once.
    pub fn new(every: std::time::Duration) -> RaftClock {
        RaftClock {
            every,
            next: std::time::Instant::now(),
        }
    }

    /// Resolves when the next tick is due: only a wake-up for an idle task, the tick itself is
    /// [`RaftClock::due`]'s.
    pub fn wake(&self) -> tokio::time::Sleep {
        tokio::time::sleep_until(self.next.into())
    }

    /// Whether a tick is due now (then the next one is one period from now).
    pub fn due(&mut self) -> bool {
        let now = std::time::Instant::now();
        if now < self.next {
            return false;
        }
        self.next = now + self.every;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_raft_clock_ticks_at_once_then_once_a_period_whatever_wakes_the_task() {
        let mut clock = RaftClock::new(Duration::from_millis(30));
        assert!(clock.due(), "the first tick is at once");
        // Turns that come sooner than a period (messages waking the task) find no tick due.
        assert!(!clock.due() && !clock.due());
        std::thread::sleep(Duration::from_millis(35));
        // A turn that comes late (a busy task) finds one due, and one only.
        assert!(clock.due());
        assert!(!clock.due());
    }
}
