//! PD's replicated state and the [`Application`] that applies `PdCommand`s to it.
//!
//! Everything is kept in memory (small: stores and regions) and written through to RocksDB
//! records under the application prefix `p` with each apply, so a restart or a snapshot reloads
//! it. Apply depends on the log only (the TSO window uses the proposer's clock carried in the
//! command), so every replica holds the same state at the same applied index.
//!
//! Apply checks what it is told, the same way on every replica: a store id PD never handed out
//! is refused, a store's address changes only with the token it registered with, a region whose
//! range overlaps a newer region is stale, and every id a store reports is reserved so `AllocId`
//! never hands it out again.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use prost::Message as _;
use raft::prelude::{Entry, EntryType};
use rdb_proto::pd::{
    pd_command::Op, ErrorCode, PdCommand, Peer, PutStoreRequest, Region, Store, StoreState,
};
use rdb_server::raft_core::{Application, Applied, CoreError};
use rdb_storage::Engine;

const KEY_TSO: &[u8] = b"pt";
const KEY_NEXT_ID: &[u8] = b"pi";
const KEY_BOOTSTRAPPED: &[u8] = b"pb";
const KEY_CLUSTER_ID: &[u8] = b"pc";
const KEY_REPLICAS: &[u8] = b"pn";
const PREFIX_STORE: &[u8] = b"ps";
const PREFIX_TOKEN: &[u8] = b"pk";
const PREFIX_REGION: &[u8] = b"pr";

/// Ids a store may report (region and peer ids) stay below this, so reserving one can never
/// exhaust the id space.
pub const MAX_REPORTED_ID: u64 = 1 << 62;

/// Bytes past which a `ScanRegions` answer stops and says where to go on: far inside the 4 MiB
/// a gRPC client decodes by default.
pub const SCAN_PAGE_BYTES: usize = 1 << 20;

/// What one region costs in a scan answer beyond its own encoding: its leader, statistics and
/// the framing of the entry (a generous bound).
const SCAN_ENTRY_OVERHEAD: usize = 64;

fn store_key(id: u64) -> Vec<u8> {
    [PREFIX_STORE, &id.to_be_bytes()].concat()
}

fn token_key(id: u64) -> Vec<u8> {
    [PREFIX_TOKEN, &id.to_be_bytes()].concat()
}

fn region_key(id: u64) -> Vec<u8> {
    [PREFIX_REGION, &id.to_be_bytes()].concat()
}

/// The replicated metadata, as of the applied index.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PdState {
    /// The cluster id (random, non-zero once minted; 0: none yet).
    pub cluster_id: u64,
    /// Upper bound (physical ms, exclusive) of every timestamp any leader may hand out.
    pub tso_limit: u64,
    /// The next id `AllocId` hands out (ids start at 1); every id below it is taken.
    pub next_id: u64,
    /// Whether `Bootstrap` ran.
    pub bootstrapped: bool,
    /// The cluster's replication factor: the first region's peer count, recorded at bootstrap
    /// (0: not bootstrapped, or bootstrapped before PD recorded it).
    pub replicas: u32,
    /// Registered stores (state UP or TOMBSTONE; DOWN is computed by the leader).
    pub stores: BTreeMap<u64, Store>,
    /// The token each store registered with (stores registered before tokens have none).
    pub store_tokens: BTreeMap<u64, u64>,
    /// Regions by id.
    pub regions: BTreeMap<u64, Region>,
    /// Region ids by start key, to find the region holding a key.
    pub by_start: BTreeMap<Vec<u8>, u64>,
}

/// One page of a region scan.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ScanPage {
    /// Regions in start-key order.
    pub regions: Vec<Region>,
    /// Set when the page was cut short for size: the start key of the first region left out.
    pub next_start_key: Option<Vec<u8>>,
}

impl PdState {
    /// The region whose range holds `key`.
    pub fn region_for(&self, key: &[u8]) -> Option<&Region> {
        let (_, id) = self.by_start.range(..=key.to_vec()).next_back()?;
        let r = self.regions.get(id)?;
        (r.end_key.is_empty() || key < r.end_key.as_slice()).then_some(r)
    }

    /// Regions overlapping `[start, end)` (empty end: no bound), at most `limit` (0: all), in
    /// start-key order, stopping before their encoding (with a leader and statistics each)
    /// would pass `max_bytes` (always at least one region; the continuation key comes on top). A page cut short names the start key to ask from next: since that key is a
    /// region's start, the next page begins exactly with that region.
    pub fn scan(&self, start: &[u8], end: &[u8], limit: usize, max_bytes: usize) -> ScanPage {
        let first = self
            .region_for(start)
            .map_or_else(|| start.to_vec(), |r| r.start_key.clone());
        let limit = if limit == 0 { usize::MAX } else { limit };
        let mut page = ScanPage::default();
        let mut bytes = 0;
        let found = self
            .by_start
            .range(first..)
            .take_while(|(k, _)| end.is_empty() || k.as_slice() < end)
            .filter_map(|(_, id)| self.regions.get(id))
            .take(limit);
        for r in found {
            let cost = r.encoded_len() + SCAN_ENTRY_OVERHEAD;
            if !page.regions.is_empty() && bytes + cost > max_bytes {
                page.next_start_key = Some(r.start_key.clone());
                break;
            }
            bytes += cost;
            page.regions.push(r.clone());
        }
        page
    }

    /// Why store `id` cannot be tombstoned, if PD's region map names a replica on it: the
    /// regions (the first few), and what to do instead.
    pub fn replicas_on(&self, id: u64) -> Option<String> {
        let held: Vec<u64> = self
            .regions
            .values()
            .filter(|r| r.peers.iter().any(|p| p.store_id == id))
            .map(|r| r.id)
            .collect();
        let first = held.first()?;
        let named = match held.len() {
            1 => format!("region {first}"),
            n if n <= 5 => format!(
                "{n} regions ({})",
                held.iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            n => format!(
                "{n} regions ({}, ...)",
                held[..5]
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        Some(format!(
            "store {id} holds a replica of {named}; a tombstone would lose them. Remove the \
             store instead (rdb-cli --pd ... store remove {id}): PD moves its regions to other \
             stores and then tombstones it; stopping the store alone does not remove its \
             replicas"
        ))
    }

    /// Why store `id` cannot be removed (drained), if it cannot: fewer stores than the
    /// replication factor would be left to hold the regions' replicas.
    pub fn too_few_without(&self, id: u64) -> Option<String> {
        let left = self
            .stores
            .values()
            .filter(|st| st.id != id)
            .filter(|st| st.state != StoreState::Tombstone as i32)
            .filter(|st| st.state != StoreState::Offline as i32)
            .count();
        let needed = self.replicas as usize;
        (left < needed).then(|| {
            format!(
                "removing store {id} would leave {left} stores for a replication factor of \
                 {needed}: add a store first"
            )
        })
    }

    /// Whether `id` is one `AllocId` handed out.
    pub fn allocated(&self, id: u64) -> bool {
        id != 0 && id < self.next_id
    }

    /// Whether recording `r` would reserve an id (one it names is not below `next_id`).
    pub fn reserves(&self, r: &Region) -> bool {
        region_ids(r).any(|id| id >= self.next_id)
    }

    /// Why `r` cannot replace what PD has, if it cannot: a bad range or ids (INVALID_ARGUMENT),
    /// an epoch older than PD's for it, or a range overlapping another region of a newer
    /// version, which means `r` is from before a split that region came from (STALE_EPOCH).
    pub fn check_region(&self, r: &Region) -> Result<(), (ErrorCode, String)> {
        if !r.end_key.is_empty() && r.end_key <= r.start_key {
            return Err((
                ErrorCode::InvalidArgument,
                format!("region {} has an empty range", r.id),
            ));
        }
        if let Some(m) = bad_region_id(r) {
            return Err((ErrorCode::InvalidArgument, m));
        }
        let new = r.epoch.unwrap_or_default();
        if let Some(old) = self.regions.get(&r.id) {
            let old = old.epoch.unwrap_or_default();
            if new.version < old.version || new.conf_ver < old.conf_ver {
                return Err((
                    ErrorCode::StaleEpoch,
                    format!(
                        "region {} epoch (version {}, conf_ver {}) is older than PD's \
                         (version {}, conf_ver {})",
                        r.id, new.version, new.conf_ver, old.version, old.conf_ver
                    ),
                ));
            }
        }
        let overlaps = |o: &Region| {
            (o.end_key.is_empty() || r.start_key < o.end_key)
                && (r.end_key.is_empty() || o.start_key < r.end_key)
        };
        let newer = self.regions.values().find(|o| {
            o.id != r.id && o.epoch.unwrap_or_default().version > new.version && overlaps(o)
        });
        match newer {
            Some(o) => Err((
                ErrorCode::StaleEpoch,
                format!(
                    "region {} (version {}) overlaps region {} of a newer version ({})",
                    r.id,
                    new.version,
                    o.id,
                    o.epoch.unwrap_or_default().version
                ),
            )),
            None => Ok(()),
        }
    }

    /// Refuses a region heartbeat whose leader is missing, is not one of the region's peers,
    /// or sits on a store PD does not know (or has tombstoned).
    pub fn check_leader(&self, r: &Region, leader: Option<&Peer>) -> Result<(), String> {
        let Some(l) = leader else {
            return Err(format!("the heartbeat of region {} names no leader", r.id));
        };
        if !r.peers.contains(l) {
            return Err(format!(
                "region {}: its leader (peer {} on store {}) is not one of its peers",
                r.id, l.id, l.store_id
            ));
        }
        match self.stores.get(&l.store_id) {
            None => Err(format!(
                "region {}: its leader is on store {}, which PD does not know",
                r.id, l.store_id
            )),
            Some(st) if st.state == StoreState::Tombstone as i32 => Err(format!(
                "region {}: its leader is on store {}, a tombstone",
                r.id, l.store_id
            )),
            Some(_) => Ok(()),
        }
    }

    fn remove_region(&mut self, id: u64) {
        if let Some(old) = self.regions.remove(&id) {
            if self.by_start.get(&old.start_key) == Some(&id) {
                self.by_start.remove(&old.start_key);
            }
        }
    }

    fn put_region(&mut self, r: Region) {
        if let Some(old) = self.regions.get(&r.id) {
            if self.by_start.get(&old.start_key) == Some(&r.id) {
                self.by_start.remove(&old.start_key);
            }
        }
        self.by_start.insert(r.start_key.clone(), r.id);
        self.regions.insert(r.id, r);
    }

    fn load(engine: &Engine) -> Result<PdState, CoreError> {
        let mut s = PdState {
            next_id: 1,
            ..Default::default()
        };
        let u64_of = |v: &[u8]| -> Result<u64, CoreError> {
            v.try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| CoreError::storage(corrupt("a PD counter is not 8 bytes")))
        };
        for (k, v) in engine.app_records(b"p").map_err(CoreError::storage)? {
            if k == KEY_CLUSTER_ID {
                s.cluster_id = u64_of(&v)?;
            } else if k == KEY_TSO {
                s.tso_limit = u64_of(&v)?;
            } else if k == KEY_NEXT_ID {
                s.next_id = u64_of(&v)?;
            } else if k == KEY_BOOTSTRAPPED {
                s.bootstrapped = true;
            } else if k == KEY_REPLICAS {
                s.replicas = u32::try_from(u64_of(&v)?).map_err(|_| {
                    CoreError::storage(corrupt("the replication factor is too large"))
                })?;
            } else if k.starts_with(PREFIX_STORE) {
                let st = Store::decode(v.as_slice())
                    .map_err(|e| CoreError::storage(corrupt(&format!("store record: {e}"))))?;
                s.stores.insert(st.id, st);
            } else if let Some(id) = k.strip_prefix(PREFIX_TOKEN) {
                s.store_tokens.insert(u64_of(id)?, u64_of(&v)?);
            } else if k.starts_with(PREFIX_REGION) {
                let r = Region::decode(v.as_slice())
                    .map_err(|e| CoreError::storage(corrupt(&format!("region record: {e}"))))?;
                s.put_region(r);
            }
        }
        Ok(s)
    }
}

fn corrupt(m: &str) -> rdb_storage::Error {
    rdb_storage::Error::Corrupt(m.to_string())
}

/// What applying one `PdCommand` produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PdOutput {
    /// The TSO window now ends at `limit`; a leader whose own advance this is may serve from
    /// `base` (at or above every earlier window's end) up to `limit`, in `term`.
    TsoAdvanced {
        /// Lowest physical ms this window may serve.
        base: u64,
        /// Exclusive upper bound, physical ms.
        limit: u64,
        /// The term of the entry: only the leader of that term may serve this window.
        term: u64,
    },
    /// Ids `first ..` were allocated.
    Ids {
        /// The first id.
        first: u64,
    },
    /// The cluster id, as set (by this command or an earlier one).
    ClusterId(u64),
    /// The change was made.
    Done,
    /// The change was refused, deterministically (every replica refuses it).
    Refused(ErrorCode, String),
}

/// The PD state machine over a RocksDB engine.
pub struct PdApp {
    engine: Engine,
    state: Arc<RwLock<PdState>>,
}

impl PdApp {
    /// Loads the state recorded in `engine`.
    pub fn open(engine: Engine) -> Result<PdApp, CoreError> {
        let state = PdState::load(&engine)?;
        Ok(PdApp {
            engine,
            state: Arc::new(RwLock::new(state)),
        })
    }

    /// The state as applied so far, shared with the service (read it after a read barrier).
    pub fn state(&self) -> Arc<RwLock<PdState>> {
        self.state.clone()
    }
}

type Writes = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// Applies one command to `s`, returning its output and the records to write. A refusal (or an
/// error) changes nothing: every check comes before the first change.
pub fn apply_command(
    s: &mut PdState,
    cmd: PdCommand,
    term: u64,
    writes: &mut Writes,
) -> Result<PdOutput, String> {
    let op = cmd.op.ok_or("PD command without an operation")?;
    Ok(match op {
        Op::TsoAdvance(a) => {
            let base = a.now_ms.max(s.tso_limit);
            let limit = base + a.window_ms.max(1);
            s.tso_limit = limit;
            writes.push((KEY_TSO.to_vec(), Some(limit.to_be_bytes().to_vec())));
            PdOutput::TsoAdvanced { base, limit, term }
        }
        Op::AllocId(r) => {
            if r.count == 0 {
                return Err("count must be at least 1".into());
            }
            let first = s.next_id.max(1);
            let Some(next) = first.checked_add(u64::from(r.count)) else {
                return Ok(PdOutput::Refused(
                    ErrorCode::InvalidArgument,
                    "the id space is used up".into(),
                ));
            };
            set_next_id(s, next, writes);
            PdOutput::Ids { first }
        }
        Op::InitCluster(c) => {
            if c.cluster_id == 0 {
                return Err("cluster id 0 is not a cluster id".into());
            }
            if s.cluster_id == 0 {
                s.cluster_id = c.cluster_id;
                writes.push((
                    KEY_CLUSTER_ID.to_vec(),
                    Some(c.cluster_id.to_be_bytes().to_vec()),
                ));
            }
            PdOutput::ClusterId(s.cluster_id)
        }
        Op::Bootstrap(b) => {
            if s.bootstrapped {
                return Ok(PdOutput::Refused(
                    ErrorCode::AlreadyBootstrapped,
                    "the cluster is already bootstrapped".into(),
                ));
            }
            let (Some(store), Some(region)) = (b.store, b.region) else {
                return Err("bootstrap needs a store and a region".into());
            };
            if !region.start_key.is_empty() || !region.end_key.is_empty() {
                return Err("the first region must cover every key (empty start and end)".into());
            }
            if let Some(refused) =
                check_store(s, &store, b.store_token).or_else(|| check_region_ids(&region))
            {
                return Ok(refused);
            }
            s.bootstrapped = true;
            writes.push((KEY_BOOTSTRAPPED.to_vec(), Some(vec![1])));
            // The first region is made on exactly as many stores as the cluster replicates to.
            s.replicas = u32::try_from(region.peers.len()).unwrap_or(u32::MAX);
            writes.push((
                KEY_REPLICAS.to_vec(),
                Some(u64::from(s.replicas).to_be_bytes().to_vec()),
            ));
            record_store(s, store, b.store_token, writes);
            record_region(s, region, writes);
            PdOutput::Done
        }
        Op::BootstrapRegions(b) => {
            if s.bootstrapped {
                return Ok(PdOutput::Refused(
                    ErrorCode::AlreadyBootstrapped,
                    "the cluster is already bootstrapped".into(),
                ));
            }
            if let Some(why) = check_restored_regions(s, &b.regions) {
                return Ok(PdOutput::Refused(ErrorCode::InvalidArgument, why));
            }
            s.bootstrapped = true;
            writes.push((KEY_BOOTSTRAPPED.to_vec(), Some(vec![1])));
            s.replicas = b
                .regions
                .first()
                .map_or(0, |r| u32::try_from(r.peers.len()).unwrap_or(u32::MAX));
            writes.push((
                KEY_REPLICAS.to_vec(),
                Some(u64::from(s.replicas).to_be_bytes().to_vec()),
            ));
            for r in b.regions {
                record_region(s, r, writes);
            }
            PdOutput::Done
        }
        Op::RegisterStore(PutStoreRequest { store, store_token }) => {
            let store = store.ok_or("a store is required")?;
            match check_store(s, &store, store_token) {
                Some(refused) => refused,
                None => {
                    record_store(s, store, store_token, writes);
                    PdOutput::Done
                }
            }
        }
        Op::PutStore(store) => match check_store(s, &store, 0) {
            Some(refused) => refused,
            None => {
                record_store(s, store, 0, writes);
                PdOutput::Done
            }
        },
        Op::SetStoreState(r) => {
            let Some(st) = s.stores.get(&r.store_id) else {
                return Ok(PdOutput::Refused(
                    ErrorCode::NotFound,
                    format!("no store {}", r.store_id),
                ));
            };
            if st.state == StoreState::Tombstone as i32 {
                // Already one (a retried call) or gone for good: nothing to change.
                return Ok(if r.state == StoreState::Tombstone as i32 {
                    PdOutput::Done
                } else {
                    PdOutput::Refused(
                        ErrorCode::FailedPrecondition,
                        format!("store {} is a tombstone: it never comes back", r.store_id),
                    )
                });
            }
            let refused = if r.state == StoreState::Tombstone as i32 {
                s.replicas_on(r.store_id)
            } else if r.state == StoreState::Offline as i32 {
                s.too_few_without(r.store_id)
            } else if r.state == StoreState::Up as i32 {
                None
            } else {
                return Err("only TOMBSTONE, OFFLINE or UP can be set".into());
            };
            if let Some(why) = refused {
                return Ok(PdOutput::Refused(ErrorCode::FailedPrecondition, why));
            }
            let Some(st) = s.stores.get_mut(&r.store_id) else {
                return Ok(PdOutput::Done);
            };
            st.state = r.state;
            writes.push((store_key(st.id), Some(st.encode_to_vec())));
            PdOutput::Done
        }
        Op::PutRegion(r) => match s.check_region(&r) {
            Err((code, message)) => PdOutput::Refused(code, message),
            Ok(()) => {
                record_region(s, r, writes);
                PdOutput::Done
            }
        },
    })
}

fn refused(message: String) -> Option<PdOutput> {
    Some(PdOutput::Refused(ErrorCode::InvalidArgument, message))
}

/// Why `st` cannot be registered with `token`, if it cannot.
fn check_store(s: &PdState, st: &Store, token: u64) -> Option<PdOutput> {
    if !s.allocated(st.id) {
        return refused(format!(
            "store id {} was never handed out by this PD (its ids so far are below {}): a store \
             gets its id from AllocId; is it a store of another cluster, or did PD lose its data?",
            st.id,
            s.next_id.max(1)
        ));
    }
    if st.address.is_empty() {
        return refused(format!("store {} needs an address", st.id));
    }
    if let Some(old) = s.stores.get(&st.id) {
        if old.state == StoreState::Tombstone as i32 {
            return refused(format!(
                "store {} is a tombstone and cannot come back",
                st.id
            ));
        }
    }
    if let Some(&known) = s.store_tokens.get(&st.id) {
        if known != token {
            return refused(format!(
                "store {} is registered with another store token: only that store (its data \
                 directory) can change its address",
                st.id
            ));
        }
    }
    if let Some(other) = s.stores.values().find(|o| {
        o.id != st.id && o.address == st.address && o.state != StoreState::Tombstone as i32
    }) {
        return refused(format!(
            "address {} is already store {}",
            st.address, other.id
        ));
    }
    None
}

/// Records `st` (UP) and, if it has none yet, its first non-zero token.
fn record_store(s: &mut PdState, mut st: Store, token: u64, writes: &mut Writes) {
    st.state = StoreState::Up as i32;
    st.last_heartbeat_ms_ago = 0;
    if token != 0 && !s.store_tokens.contains_key(&st.id) {
        s.store_tokens.insert(st.id, token);
        writes.push((token_key(st.id), Some(token.to_be_bytes().to_vec())));
    }
    writes.push((store_key(st.id), Some(st.encode_to_vec())));
    s.stores.insert(st.id, st);
}

/// Every id a region names: its own, its peers' and their stores'.
fn region_ids(r: &Region) -> impl Iterator<Item = u64> + '_ {
    std::iter::once(r.id).chain(r.peers.iter().flat_map(|p| [p.id, p.store_id]))
}

/// Refuses a region naming id 0 or an id past [`MAX_REPORTED_ID`].
fn check_region_ids(r: &Region) -> Option<PdOutput> {
    bad_region_id(r).and_then(refused)
}

fn bad_region_id(r: &Region) -> Option<String> {
    let id = region_ids(r).find(|&id| id == 0 || id >= MAX_REPORTED_ID)?;
    Some(format!("region {} names id {id}, out of range", r.id))
}

/// Why the regions of a restored cluster cannot be recorded, if they cannot: they must tile
/// the key space in order, name no id out of range nor twice, and place their peers on stores
/// whose ids this PD handed out, one peer per store.
fn check_restored_regions(s: &PdState, regions: &[Region]) -> Option<String> {
    if regions.is_empty() {
        return Some("a restored cluster needs at least one region".into());
    }
    let mut next: &[u8] = &[];
    let mut ids = std::collections::BTreeSet::new();
    for (i, r) in regions.iter().enumerate() {
        if r.start_key != next || (r.end_key.is_empty() != (i + 1 == regions.len())) {
            return Some(format!(
                "region {} does not continue the ones before it: the regions must tile the key \
                 space in order",
                r.id
            ));
        }
        if !r.end_key.is_empty() && r.end_key <= r.start_key {
            return Some(format!("region {} has an empty range", r.id));
        }
        if let Some(m) = bad_region_id(r) {
            return Some(m);
        }
        if r.peers.is_empty() {
            return Some(format!("region {} has no peers", r.id));
        }
        let mut stores = std::collections::BTreeSet::new();
        for p in &r.peers {
            if !s.allocated(p.store_id) {
                return Some(format!(
                    "region {}: store id {} was never handed out by this PD",
                    r.id, p.store_id
                ));
            }
            if !stores.insert(p.store_id) {
                return Some(format!(
                    "region {} has two peers on store {}",
                    r.id, p.store_id
                ));
            }
            if !ids.insert(("peer", p.id)) {
                return Some(format!("peer id {} is named twice", p.id));
            }
        }
        if !ids.insert(("region", r.id)) {
            return Some(format!("region id {} is named twice", r.id));
        }
        next = &r.end_key;
    }
    None
}

/// Records `r` and reserves every id it names. Regions of an older version whose whole range
/// `r` covers are dropped: a merge folded them into `r` (specs/017-merge). A split's halves
/// each cover only part of their parent, which stays until its own report narrows it.
fn record_region(s: &mut PdState, r: Region, writes: &mut Writes) {
    if let Some(max) = region_ids(&r).max() {
        if max >= s.next_id {
            set_next_id(s, max + 1, writes);
        }
    }
    let version = r.epoch.unwrap_or_default().version;
    // A region `r` covers starts within its range: the start-key index finds them in
    // O(log n + k), not a scan of every region (which made recording many regions quadratic).
    let merged: Vec<u64> = s
        .by_start
        .range(r.start_key.clone()..)
        .take_while(|(start, _)| r.end_key.is_empty() || start.as_slice() < r.end_key.as_slice())
        .filter_map(|(_, id)| s.regions.get(id))
        .filter(|o| o.id != r.id && o.epoch.unwrap_or_default().version < version)
        .filter(|o| covers(&r, o))
        .map(|o| o.id)
        .collect();
    for id in merged {
        writes.push((region_key(id), None));
        s.remove_region(id);
    }
    writes.push((region_key(r.id), Some(r.encode_to_vec())));
    s.put_region(r);
}

/// Whether `outer`'s range holds all of `inner`'s (an empty end is unbounded).
fn covers(outer: &Region, inner: &Region) -> bool {
    outer.start_key <= inner.start_key
        && (outer.end_key.is_empty()
            || (!inner.end_key.is_empty() && inner.end_key <= outer.end_key))
}

fn set_next_id(s: &mut PdState, next: u64, writes: &mut Writes) {
    s.next_id = next;
    writes.push((KEY_NEXT_ID.to_vec(), Some(next.to_be_bytes().to_vec())));
}

impl Application for PdApp {
    type Output = PdOutput;

    fn applied_index(&self) -> Result<u64, CoreError> {
        Ok(self.engine.apply_state().map_err(CoreError::storage)?.index)
    }

    fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Applied<PdOutput>>, CoreError> {
        let Some(last) = entries.last() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(entries.len());
        let mut writes = Vec::new();
        {
            let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
            for e in entries {
                let result = match e.get_entry_type() {
                    EntryType::EntryNormal if !e.data.is_empty() => {
                        Some(match PdCommand::decode(e.data.as_ref()) {
                            Ok(cmd) => apply_command(&mut s, cmd, e.term, &mut writes),
                            Err(err) => Err(format!(
                                "undecodable PD command at index {}: {err}",
                                e.index
                            )),
                        })
                    }
                    _ => None,
                };
                out.push(Applied {
                    index: e.index,
                    term: e.term,
                    result,
                });
            }
        }
        self.engine
            .write_app_records(&writes, (last.index, last.term))
            .map_err(CoreError::storage)?;
        Ok(out)
    }

    fn restored(&mut self) -> Result<(), CoreError> {
        let fresh = PdState::load(&self.engine)?;
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    fn apply_conf_change(
        &mut self,
        index: u64,
        term: u64,
        cc: &raft::prelude::ConfChangeV2,
        cs: &raft::prelude::ConfState,
    ) -> Result<(), CoreError> {
        self.engine
            .apply_conf_change(index, term, cc, cs)
            .map_err(CoreError::storage)
    }
}

#[cfg(test)]
mod tests;
