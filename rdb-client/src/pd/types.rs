//! The types of PD's API as the client hands them out: timestamps, stores, regions, peers,
//! scheduling steps and PD's members, each with its conversion from and to the wire.

use rdb_proto::pd as pb;

/// A timestamp from PD's oracle. Ordered as its [`Timestamp::as_u64`] form: by physical time,
/// then by the logical counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    /// Milliseconds since the Unix epoch (48 bits).
    pub physical: u64,
    /// Order within the millisecond.
    pub logical: u16,
}

impl Timestamp {
    /// Bits of the logical counter in the `u64` form.
    pub const LOGICAL_BITS: u32 = 16;

    /// The `u64` form: `physical << 16 | logical`.
    pub fn as_u64(self) -> u64 {
        (self.physical << Self::LOGICAL_BITS) | u64::from(self.logical)
    }

    /// The timestamp of a `u64` form.
    pub fn from_u64(v: u64) -> Timestamp {
        Timestamp {
            physical: v >> Self::LOGICAL_BITS,
            logical: (v & 0xffff) as u16,
        }
    }
}

/// One caller's timestamp from a request it shared with other callers, and the range PD
/// reserved for all of them: every timestamp from `first` to `last` went to one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedTimestamp {
    /// This caller's own timestamp.
    pub timestamp: Timestamp,
    /// The request's first timestamp.
    pub first: Timestamp,
    /// The request's last timestamp (same `physical` as `first`).
    pub last: Timestamp,
}

impl From<Timestamp> for u64 {
    fn from(ts: Timestamp) -> u64 {
        ts.as_u64()
    }
}

/// A store's state as PD sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StoreState {
    /// Heard from recently (or never since this PD leader took over).
    #[default]
    Up,
    /// Silent for longer than PD's `store_down_after`.
    Down,
    /// Removed by an operator; never comes back.
    Tombstone,
    /// Being removed by an operator: its regions move away, then PD tombstones it.
    Offline,
    /// A state this client does not know (a newer PD).
    Unknown(i32),
}

impl StoreState {
    /// `up`, `down`, `tombstone` or `unknown(N)`.
    pub fn name(self) -> String {
        match self {
            StoreState::Up => "up".into(),
            StoreState::Down => "down".into(),
            StoreState::Tombstone => "tombstone".into(),
            StoreState::Offline => "offline".into(),
            StoreState::Unknown(n) => format!("unknown({n})"),
        }
    }
}

impl From<i32> for StoreState {
    fn from(v: i32) -> StoreState {
        match pb::StoreState::try_from(v) {
            Ok(pb::StoreState::Up) => StoreState::Up,
            Ok(pb::StoreState::Down) => StoreState::Down,
            Ok(pb::StoreState::Tombstone) => StoreState::Tombstone,
            Ok(pb::StoreState::Offline) => StoreState::Offline,
            Err(_) => StoreState::Unknown(v),
        }
    }
}

impl From<StoreState> for i32 {
    fn from(s: StoreState) -> i32 {
        match s {
            StoreState::Up => pb::StoreState::Up as i32,
            StoreState::Down => pb::StoreState::Down as i32,
            StoreState::Tombstone => pb::StoreState::Tombstone as i32,
            StoreState::Offline => pb::StoreState::Offline as i32,
            StoreState::Unknown(v) => v,
        }
    }
}

/// A storage node registered with PD.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Store {
    /// Store id.
    pub id: u64,
    /// Its client address.
    pub address: String,
    /// Up, down or tombstone (set by PD; ignored in [`PdClient::put_store`]).
    pub state: StoreState,
    /// Milliseconds since the PD leader last heard the store (0 if never since it leads).
    pub last_heartbeat_ms_ago: u64,
    /// Where other stores send it Raft traffic (empty: `address`, for a store registered
    /// before stores had a peer port of their own).
    pub peer_address: String,
    /// Regions with a peer on it, in PD's region map (set by PD).
    pub region_count: u64,
    /// Regions it leads, by the latest heartbeats (set by PD).
    pub leader_count: u64,
    /// Its disk by its last heartbeat: capacity, available and used (its data files) bytes.
    pub capacity_bytes: u64,
    /// Bytes still free on its disk.
    pub available_bytes: u64,
    /// Bytes its data takes (data files and memtables).
    pub used_bytes: u64,
    /// Where it is (`zone=a`, `host=h1`), as its `--labels` said: see [`parse_labels`].
    pub labels: Vec<(String, String)>,
}

impl Store {
    /// Where other stores reach this one for Raft traffic.
    pub fn peer_addr(&self) -> &str {
        if self.peer_address.is_empty() {
            &self.address
        } else {
            &self.peer_address
        }
    }
}

impl From<pb::Store> for Store {
    fn from(s: pb::Store) -> Store {
        Store {
            id: s.id,
            address: s.address,
            state: s.state.into(),
            last_heartbeat_ms_ago: s.last_heartbeat_ms_ago,
            peer_address: s.peer_address,
            region_count: s.region_count,
            leader_count: s.leader_count,
            capacity_bytes: s.capacity_bytes,
            available_bytes: s.available_bytes,
            used_bytes: s.used_bytes,
            labels: s.labels.into_iter().map(|l| (l.key, l.value)).collect(),
        }
    }
}

impl From<Store> for pb::Store {
    fn from(s: Store) -> pb::Store {
        pb::Store {
            id: s.id,
            address: s.address,
            state: s.state.into(),
            last_heartbeat_ms_ago: s.last_heartbeat_ms_ago,
            peer_address: s.peer_address,
            region_count: s.region_count,
            leader_count: s.leader_count,
            capacity_bytes: s.capacity_bytes,
            available_bytes: s.available_bytes,
            used_bytes: s.used_bytes,
            labels: s
                .labels
                .into_iter()
                .map(|(key, value)| pb::StoreLabel { key, value })
                .collect(),
        }
    }
}

/// Whether `name` may be a label's key or value: 1 to 64 ASCII letters, digits, `-`, `_`
/// and `.` (they appear in logs, `store list` and PD's file).
pub fn valid_label(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Parses a store's `--labels` (`zone=a,host=h1`): each key once, keys and values by
/// [`valid_label`]; the error says which part is wrong.
pub fn parse_labels(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut labels: Vec<(String, String)> = Vec::new();
    for part in text.split(',').filter(|p| !p.trim().is_empty()) {
        let Some((key, value)) = part.split_once('=') else {
            return Err(format!("\"{part}\" is not KEY=VALUE"));
        };
        let (key, value) = (key.trim(), value.trim());
        if !valid_label(key) || !valid_label(value) {
            return Err(format!(
                "\"{part}\": keys and values are 1 to 64 letters, digits, '-', '_' or '.'"
            ));
        }
        if labels.iter().any(|(k, _)| k == key) {
            return Err(format!("label \"{key}\" is given twice"));
        }
        labels.push((key.to_string(), value.to_string()));
    }
    Ok(labels)
}

/// A region's epoch: `version` rises with splits and merges, `conf_ver` with membership changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RegionEpoch {
    /// Raised by splits and merges.
    pub version: u64,
    /// Raised by membership changes.
    pub conf_ver: u64,
}

/// One replica of a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Peer {
    /// Peer id.
    pub id: u64,
    /// The store holding it.
    pub store_id: u64,
    /// Whether it only learns the log (added by a membership change, not yet promoted).
    pub learner: bool,
}

impl From<pb::Peer> for Peer {
    fn from(p: pb::Peer) -> Peer {
        Peer {
            id: p.id,
            store_id: p.store_id,
            learner: p.learner,
        }
    }
}

impl From<Peer> for pb::Peer {
    fn from(p: Peer) -> pb::Peer {
        pb::Peer {
            id: p.id,
            store_id: p.store_id,
            learner: p.learner,
        }
    }
}

/// One scheduling step PD asks a region's leader to take (see `pd.proto` `Operator`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operator {
    /// Add this peer (a new id, on its store) as a learner.
    AddLearner(Peer),
    /// Promote this learner to voter.
    Promote(Peer),
    /// Remove this peer.
    Remove(Peer),
    /// Hand leadership to this peer.
    TransferLeader(Peer),
    /// Merge the region into this adjacent region (its id).
    Merge(u64),
}

/// An [`Operator`] with the region membership (`conf_ver`) it was computed for and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorStep {
    /// The step.
    pub op: Operator,
    /// The region's `conf_ver` it applies to.
    pub conf_ver: u64,
    /// Why PD asks for it.
    pub reason: String,
}

impl OperatorStep {
    /// The typed step of a heartbeat's answer, if it names one this client knows.
    pub fn from_pb(o: pb::Operator) -> Option<OperatorStep> {
        use pb::operator::Kind;
        let peer = o.peer.map(Peer::from);
        let op = match Kind::try_from(o.kind).ok()? {
            Kind::AddLearner => Operator::AddLearner(peer?),
            Kind::Promote => Operator::Promote(peer?),
            Kind::Remove => Operator::Remove(peer?),
            Kind::TransferLeader => Operator::TransferLeader(peer?),
            Kind::Merge if o.target_region != 0 => Operator::Merge(o.target_region),
            Kind::Merge | Kind::Unspecified => return None,
        };
        Some(OperatorStep {
            op,
            conf_ver: o.conf_ver,
            reason: o.reason,
        })
    }
}

/// A range of keys `[start_key, end_key)` and its replicas.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Region {
    /// Region id.
    pub id: u64,
    /// Inclusive start; empty for the first key.
    pub start_key: Vec<u8>,
    /// Exclusive end; empty for no upper bound.
    pub end_key: Vec<u8>,
    /// Its epoch.
    pub epoch: RegionEpoch,
    /// Its replicas.
    pub peers: Vec<Peer>,
}

impl From<pb::Region> for Region {
    fn from(r: pb::Region) -> Region {
        let epoch = r.epoch.unwrap_or_default();
        Region {
            id: r.id,
            start_key: r.start_key,
            end_key: r.end_key,
            epoch: RegionEpoch {
                version: epoch.version,
                conf_ver: epoch.conf_ver,
            },
            peers: r.peers.into_iter().map(Peer::from).collect(),
        }
    }
}

impl From<Region> for pb::Region {
    fn from(r: Region) -> pb::Region {
        pb::Region {
            id: r.id,
            start_key: r.start_key,
            end_key: r.end_key,
            epoch: Some(pb::RegionEpoch {
                version: r.epoch.version,
                conf_ver: r.epoch.conf_ver,
            }),
            peers: r.peers.into_iter().map(pb::Peer::from).collect(),
        }
    }
}

/// A region as PD knows it, with what its latest heartbeat said.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegionInfo {
    /// The region.
    pub region: Region,
    /// Its leader from the latest heartbeat, if any since this PD node leads.
    pub leader: Option<Peer>,
    /// Approximate size in bytes.
    pub approximate_size: u64,
    /// Approximate number of keys.
    pub approximate_keys: u64,
}

impl RegionInfo {
    /// `None` when the answer names no region.
    pub(crate) fn from_pb(r: pb::GetRegionResponse) -> Option<RegionInfo> {
        Some(RegionInfo {
            region: r.region?.into(),
            leader: r.leader.map(Peer::from),
            approximate_size: r.approximate_size,
            approximate_keys: r.approximate_keys,
        })
    }
}

/// What a store reports in its heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// The reporting store.
    pub store_id: u64,
    /// Regions it holds.
    pub region_count: u64,
    /// Its capacity in bytes.
    pub capacity_bytes: u64,
    /// Bytes still free.
    pub available_bytes: u64,
    /// Bytes its data takes (data files and memtables).
    pub used_bytes: u64,
}

/// One PD node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Member {
    /// Node id.
    pub id: u64,
    /// The address clients use (the one [`PdClient`] takes).
    pub client_addr: String,
    /// The address PD nodes use among themselves.
    pub peer_addr: String,
    /// A learner receives PD's log but does not vote (yet: it is promoted once caught up).
    pub learner: bool,
    /// As the leader answers: the highest log index known to be on this node (0 otherwise).
    pub match_index: u64,
}

impl From<pb::Member> for Member {
    fn from(m: pb::Member) -> Member {
        Member {
            id: m.id,
            client_addr: m.client_addr,
            peer_addr: m.peer_addr,
            learner: m.learner,
            match_index: m.match_index,
        }
    }
}

/// The PD group: every node, and which one leads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Members {
    /// Every PD node: voters, then learners, by id.
    pub members: Vec<Member>,
    /// The leader, when the answering node knows it.
    pub leader: Option<Member>,
    /// The node that answered (0 in the answer to a change).
    pub node_id: u64,
    /// The answering node's commit index (the leader's, when it answered).
    pub commit_index: u64,
    /// Ids removed from the group (never accepted again).
    pub removed: Vec<u64>,
}

impl From<pb::GetMembersResponse> for Members {
    fn from(r: pb::GetMembersResponse) -> Members {
        Members {
            members: r.members.into_iter().map(Member::from).collect(),
            leader: r.leader.map(Member::from),
            node_id: r.node_id,
            commit_index: r.commit_index,
            removed: r.removed_ids,
        }
    }
}

impl Members {
    /// Whether `change` is in effect in these members: an added node with the addresses it
    /// was added with (a member of that id at other addresses is another node).
    pub(crate) fn hold(&self, change: &crate::MemberChange) -> bool {
        use crate::MemberChange as C;
        let get = |id: u64| self.members.iter().find(|m| m.id == id);
        let at =
            |m: &Member, peer: &str, client: &str| m.peer_addr == peer && m.client_addr == client;
        match change {
            C::AddVoter {
                id,
                peer_addr,
                client_addr,
            } => get(*id).is_some_and(|m| !m.learner && at(m, peer_addr, client_addr)),
            C::AddLearner {
                id,
                peer_addr,
                client_addr,
            } => get(*id).is_some_and(|m| at(m, peer_addr, client_addr)),
            C::Promote(id) => get(*id).is_some_and(|m| !m.learner),
            C::Remove(id) => get(*id).is_none() && self.removed.contains(id),
        }
    }
}

/// One of PD's operators (a plan of steps for one region), as `operator list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OperatorRecord {
    /// Unique within the PD leader's term.
    pub id: u64,
    /// The region.
    pub region_id: u64,
    /// The checker that made it: `replica`, `balance-leader`, `balance-region`.
    pub kind: String,
    /// Its steps, for people.
    pub steps: Vec<String>,
    /// How many are done.
    pub done: u32,
    /// `running`, `finished`, `timed out` or `cancelled: why`.
    pub status: String,
    /// From its creation to now (running) or to its end.
    pub age: std::time::Duration,
    /// Why it was made.
    pub reason: String,
}

impl From<pb::OperatorInfo> for OperatorRecord {
    fn from(o: pb::OperatorInfo) -> OperatorRecord {
        OperatorRecord {
            id: o.id,
            region_id: o.region_id,
            kind: o.kind,
            steps: o.steps,
            done: o.done,
            status: o.status,
            age: std::time::Duration::from_millis(o.age_ms),
            reason: o.reason,
        }
    }
}
