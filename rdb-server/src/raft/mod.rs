//! The Raft core of a node: [`RaftPeer`] wraps raft-rs's `RawNode` over the RocksDB storage and
//! the state machine, and runs the Ready cycle in the order raft-rs documents. It knows no
//! threads, channels or RPC: messages leave through the [`Transport`] trait, and everything it
//! learns comes back as a [`ReadyOutput`] for the caller (the node task) to act on.

mod peer;

pub use peer::{RaftPeer, ReadyOutput};

use raft::prelude::Message as RaftMessage;

/// Where a Ready's messages go. Implementations must not block: queue and return.
pub trait Transport: Send {
    /// Hands messages to the network (or to a test network).
    fn send(&mut self, msgs: Vec<RaftMessage>);
}
