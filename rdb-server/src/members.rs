//! The member directory: every member's addresses as this node last applied them, shared by
//! the node task (which reloads it after each membership change), the transport (which opens
//! and closes peer streams from it), the peer service (which refuses removed nodes) and the
//! client service (leader hints, member lists).
//!
//! It starts from the configuration's nodes and is overridden by the member records stored
//! with the data (`rdb_storage::membership`): once a directory exists, the stored membership
//! wins over the file.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use rdb_storage::{Engine, MemberRecord};

use crate::config::{ClusterConfig, NodeId};

/// Where one member is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberAddrs {
    /// Raft traffic.
    pub peer_addr: String,
    /// The client service.
    pub client_addr: String,
}

/// Members' addresses, and the ids removed for good.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directory {
    /// Current members (and nodes being added) by id.
    pub members: BTreeMap<NodeId, MemberAddrs>,
    /// Ids removed from the cluster: never accepted again.
    pub removed: BTreeSet<NodeId>,
}

impl Directory {
    /// The configuration's nodes, overridden by the records stored in `engine`.
    pub fn load(engine: &Engine, config: &ClusterConfig) -> Result<Directory, rdb_storage::Error> {
        let mut d = Directory::default();
        for n in &config.nodes {
            d.members.insert(
                n.id,
                MemberAddrs {
                    peer_addr: n.peer_addr.clone(),
                    client_addr: n.client_addr.clone(),
                },
            );
        }
        for r in engine.members()? {
            d.apply_record(&r);
        }
        Ok(d)
    }

    /// Why the addresses of a node being added cannot be its own, if they cannot: one of them
    /// is a current member's (peer or client address), or the two are the same. A node at
    /// another's address would take its traffic, and every later join would be refused.
    pub fn clash(&self, r: &MemberRecord) -> Option<String> {
        if r.peer_addr == r.client_addr {
            return Some(format!(
                "node {}: its peer and client addresses are both {}; each needs a port of its own",
                r.id, r.peer_addr
            ));
        }
        for (what, addr) in [("peer", &r.peer_addr), ("client", &r.client_addr)] {
            for (&id, a) in &self.members {
                if id == r.id {
                    continue;
                }
                let owner = if a.peer_addr == *addr {
                    "peer"
                } else if a.client_addr == *addr {
                    "client"
                } else {
                    continue;
                };
                return Some(format!(
                    "node {}: its {what} address {addr} is node {id}'s {owner} address; give it \
                     addresses of its own",
                    r.id
                ));
            }
        }
        None
    }

    fn apply_record(&mut self, r: &MemberRecord) {
        if r.removed {
            self.members.remove(&r.id);
            self.removed.insert(r.id);
        } else {
            self.members.insert(
                r.id,
                MemberAddrs {
                    peer_addr: r.peer_addr.clone(),
                    client_addr: r.client_addr.clone(),
                },
            );
        }
    }

    /// Peer addresses of every member but `me`, for the transport.
    pub fn peers_of(&self, me: NodeId) -> BTreeMap<NodeId, String> {
        self.members
            .iter()
            .filter(|(&id, _)| id != me)
            .map(|(&id, a)| (id, a.peer_addr.clone()))
            .collect()
    }
}

/// The directory, shared between the node task and the services.
#[derive(Debug, Clone, Default)]
pub struct SharedDirectory(Arc<RwLock<Directory>>);

impl SharedDirectory {
    /// Shares `d`.
    pub fn new(d: Directory) -> SharedDirectory {
        SharedDirectory(Arc::new(RwLock::new(d)))
    }

    /// Reads the directory.
    pub fn read(&self) -> RwLockReadGuard<'_, Directory> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the directory.
    pub fn replace(&self, d: Directory) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = d;
    }

    /// Client address of member `id`.
    pub fn client_addr(&self, id: NodeId) -> Option<String> {
        self.read().members.get(&id).map(|a| a.client_addr.clone())
    }

    /// Whether `id` was removed from the cluster.
    pub fn is_removed(&self, id: NodeId) -> bool {
        self.read().removed.contains(&id)
    }
}

/// What a peer answers a removed node with (a gRPC `FailedPrecondition` carrying this text),
/// and what that node's transport looks for: hearing it, the node stops for good.
pub const REMOVED_MARK: &str = "rdb: node removed from the cluster";
