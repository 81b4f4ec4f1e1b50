//! A PD-mode store process: `rdb-server --pd A,B,C --addr HOST:PORT --data-dir DIR`.
//!
//! At start the store registers with PD (its id comes from `AllocId` the first time and is
//! kept in the directory), and, if it hosts no region yet, takes part in the bootstrap: once
//! `replicas` stores are registered, the one with the smallest id records region 1 (every key,
//! one peer on each of those stores) with PD; each of them creates region 1 in its initial
//! state. Then one task ([`StoreTask`]) drives every region through [`StoreCore`] on a thread
//! of its own, and one port serves clients (`Kv`) and other stores (`Peer`).
//!
//! The task reports to PD off its thread (a worker task with a `PdClient`): store heartbeats,
//! a heartbeat for every region it leads (at once when it starts leading or a split made it,
//! then every few seconds), and splits: every `split_check` it estimates the keys and bytes of
//! each region it leads on a blocking thread, reading keys only of a region near a threshold
//! (see [`split_check`]); one over `region_split_keys` or `region_split_size` by exact count
//! gets ids from PD and proposes a split at its middle key.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdb_client::pd::{self as pdc, PdClient, StoreStats};
use rdb_proto::kv::kv_server::KvServer;
use rdb_proto::peer::peer_server::PeerServer;
use rdb_storage::region::{self, Peer, Region, RegionEpoch};
use rdb_storage::{CommandResult, Engine};
use slog::{crit, info, o, warn, Logger};
use tokio::sync::{mpsc, oneshot};

use super::{RegionError, RegionMessage, StoreCore};
use crate::config::{ClusterConfig, Settings};
use crate::raft_core::{Answer, Refusal, RequestId};
use crate::router::{
    Control, Inbox, LeaderHint, Mailbox, Msg, NodeStatus, RegionRoute, RequestError,
};
use crate::service::kv::KvService;
use crate::service::peer::PeerService;
use crate::transport::GrpcTransport;
use crate::ServerError;

/// The id of the region a cluster is bootstrapped with (every key).
pub const FIRST_REGION_ID: u64 = 1;
/// Largest snapshot a store accepts from another.
const MAX_SNAPSHOT_BYTES: u64 = 64 << 30;
/// How often a leader reports each of its regions to PD.
const REGION_HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// How often a store reports itself to PD.
const STORE_HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// A split that got no answer in this long may be tried again.
const SPLIT_RETRY_AFTER: Duration = Duration::from_secs(10);

mod split_check;

pub use split_check::SplitConfig;
use split_check::{Counted, Measure};

/// How to start a store.
#[derive(Debug, Clone)]
pub struct StoreArgs {
    /// PD client addresses.
    pub pd: Vec<String>,
    /// Where clients and other stores reach this one (HOST:PORT); also what it listens on.
    pub addr: String,
    /// The store's data directory.
    pub data_dir: PathBuf,
    /// Regions' Raft and request settings (a config file's `[settings]`).
    pub settings: Settings,
    /// Stores the first region is bootstrapped on (its replicas).
    pub replicas: usize,
    /// When regions split.
    pub split: SplitConfig,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics_addr: Option<String>,
}

/// Runs a store until `shutdown` resolves.
pub async fn run(
    args: StoreArgs,
    logger: Logger,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let data_error = |e: rdb_storage::Error| ServerError::DataDir {
        dir: args.data_dir.clone(),
        message: e.to_string(),
    };
    let pd_error = |what: &str, e: rdb_client::Error| ServerError::Pd(format!("{what}: {e}"));
    std::fs::create_dir_all(&args.data_dir).map_err(|e| ServerError::DataDir {
        dir: args.data_dir.clone(),
        message: e.to_string(),
    })?;
    let engine = Engine::open(&args.data_dir).map_err(data_error)?;
    engine
        .check_apply_settings(rdb_storage::ApplySettings {
            dedup_window: args.settings.dedup_window,
        })
        .map_err(data_error)?;
    let pd = PdClient::new(args.pd.iter().cloned()).map_err(|e| pd_error("client", e))?;
    let store_id = match engine.store_id().map_err(data_error)? {
        Some(id) => id,
        None => {
            let id = pd.alloc_ids(1).await.map_err(|e| pd_error("AllocId", e))?;
            engine.claim_for_store(id).map_err(data_error)?;
            id
        }
    };
    engine.claim_for_store(store_id).map_err(data_error)?;
    let logger = logger.new(o!("store" => store_id));
    pd.put_store(pdc::Store {
        id: store_id,
        address: args.addr.clone(),
        ..Default::default()
    })
    .await
    .map_err(|e| pd_error("PutStore", e))?;
    info!(logger, "registered with PD"; "addr" => &args.addr);

    let cfg = crate::node::core_config(0, &args.settings);
    let mut core = StoreCore::open(
        engine.clone(),
        store_id,
        cfg,
        args.settings.dedup_window,
        &logger,
    )
    .map_err(|e| ServerError::Raft(e.to_string()))?;
    if core.region_ids().is_empty() {
        if let Some(first) = bootstrap(&pd, store_id, &args, &logger).await? {
            core.create_region(&first)
                .map_err(|e| ServerError::Raft(e.to_string()))?;
        }
    }

    let listener = tokio::net::TcpListener::bind(&args.addr)
        .await
        .map_err(|e| ServerError::Bind {
            what: "store",
            addr: args.addr.clone(),
            source: e,
        })?;
    if let Some(addr) = &args.metrics_addr {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| ServerError::Bind {
                what: "metrics",
                addr: addr.clone(),
                source: e,
            })?;
        let log = logger.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(l).await {
                warn!(log, "metrics endpoint stopped"; "error" => %e);
            }
        });
    }
    let config = ClusterConfig {
        cluster_id: region::STORE_CLUSTER_ID,
        nodes: Vec::new(),
        settings: args.settings.clone(),
        tls: None,
        peer_tls: None,
        joining: false,
    };
    let (mailbox, inbox) = Mailbox::new(crate::server::MAILBOX);
    let snap_dir = engine.snap_dir();
    let transport = GrpcTransport::start_store(
        &config,
        store_id,
        mailbox.raft_sender(),
        tokio::runtime::Handle::current(),
        snap_dir.clone(),
        logger.clone(),
    );
    let addrs: Arc<Mutex<HashMap<u64, String>>> = Arc::default();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
    tokio::spawn(pd_worker(
        pd.clone(),
        jobs_rx,
        events_tx.clone(),
        logger.clone(),
    ));
    // Every store's address now, so the first messages find their way.
    if let Ok(stores) = pd.get_all_stores(true).await {
        for s in stores {
            let _ = events_tx.send(Event::StoreAddr(s.id, s.address));
        }
    }
    let task = StoreTask {
        core,
        inbox,
        events: events_rx,
        events_tx: events_tx.clone(),
        jobs: jobs_tx,
        transport,
        addrs: addrs.clone(),
        waiters: HashMap::new(),
        next_request: 1,
        tick: Duration::from_millis(args.settings.tick_interval_ms),
        split: args.split,
        sizes: HashMap::new(),
        counted: HashMap::new(),
        checks: 0,
        splitting: HashMap::new(),
        led: BTreeSet::new(),
        last_split_check: Instant::now(),
        last_region_heartbeat: Instant::now(),
        last_store_heartbeat: None,
        resolving: BTreeSet::new(),
        compacting: None,
        logger: logger.clone(),
    };
    crate::server::spawn_raft_thread(task.run())?;

    let s = &args.settings;
    let kv = KvService::new(
        mailbox.clone(),
        engine.clone(),
        Default::default(),
        Arc::new(s.clone()),
        region::STORE_CLUSTER_ID,
        args.addr.clone(),
        Default::default(),
    )
    .for_store();
    let peer = PeerService::for_store(
        mailbox.raft_sender(),
        store_id,
        MAX_SNAPSHOT_BYTES,
        snap_dir,
    );
    let max_client_message = 2 * (s.max_value_bytes + s.max_key_bytes) + (1 << 20);
    info!(logger, "serving"; "addr" => &args.addr);
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut stopped = stop_rx.clone();
    let serving = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(
            KvServer::new(kv)
                .max_decoding_message_size(max_client_message)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            PeerServer::new(peer)
                .max_decoding_message_size(s.max_peer_message_bytes)
                .max_encoding_message_size(s.max_peer_message_bytes),
        )
        .serve_with_incoming_shutdown(crate::server::incoming(listener), async move {
            let _ = stopped.wait_for(|v| *v).await;
        });
    tokio::select! {
        r = serving => r.map_err(|e| ServerError::Serve(e.to_string()))?,
        // A graceful stop waits for open streams, and other stores keep theirs open for good:
        // give in-flight calls a moment, then stop. Everything acknowledged is synced.
        _ = async {
            let _ = stop_rx.wait_for(|v| *v).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        } => {}
    }
    info!(logger, "stopped");
    Ok(())
}

/// The first region of a cluster, if this store hosts a peer of it: recorded with PD by the
/// registered store with the smallest id once `replicas` stores are registered, and created
/// in its initial state on each of them. Waits (retrying) until PD is bootstrapped.
async fn bootstrap(
    pd: &PdClient,
    store_id: u64,
    args: &StoreArgs,
    logger: &Logger,
) -> Result<Option<Region>, ServerError> {
    let mut waited = Instant::now();
    loop {
        match pd.is_bootstrapped().await {
            Ok(true) => {
                // Every store starts region 1 as it was at the bootstrap (its peers never
                // change yet); later splits come from its log.
                return match pd.get_region_by_id(FIRST_REGION_ID).await {
                    Ok(Some(info)) => Ok(first_region(&info.region.peers)
                        .filter(|r| r.peers.iter().any(|p| p.store_id == store_id))),
                    Ok(None) => Err(ServerError::Pd(
                        "bootstrapped, but it has no region 1".into(),
                    )),
                    Err(e) => Err(ServerError::Pd(format!("GetRegionById: {e}"))),
                };
            }
            Ok(false) => {
                let stores = pd.get_all_stores(true).await.unwrap_or_default();
                let mut ids: Vec<u64> = stores.iter().map(|s| s.id).collect();
                ids.sort_unstable();
                ids.truncate(args.replicas);
                if ids.len() == args.replicas && ids[0] == store_id {
                    let first_peer = pd
                        .alloc_ids(args.replicas as u32)
                        .await
                        .map_err(|e| ServerError::Pd(format!("AllocId: {e}")))?;
                    let peers: Vec<pdc::Peer> = ids
                        .iter()
                        .enumerate()
                        .map(|(i, &s)| pdc::Peer {
                            id: first_peer + i as u64,
                            store_id: s,
                        })
                        .collect();
                    let region = first_region(&peers)
                        .ok_or_else(|| ServerError::Raft("cannot build the first region".into()))?;
                    let store = pdc::Store {
                        id: store_id,
                        address: args.addr.clone(),
                        ..Default::default()
                    };
                    match pd.bootstrap(store, pd_region(&region)).await {
                        Ok(()) => {
                            info!(logger, "bootstrapped the cluster"; "region" => FIRST_REGION_ID,
                                "stores" => ?ids);
                            return Ok(Some(region));
                        }
                        // Another store won a race: take region 1 as PD has it.
                        Err(rdb_client::Error::AlreadyBootstrapped(_)) => continue,
                        Err(e) => warn!(logger, "bootstrap failed, retrying"; "error" => %e),
                    }
                } else if waited.elapsed() > Duration::from_secs(5) {
                    waited = Instant::now();
                    info!(logger, "waiting for stores to bootstrap the cluster";
                        "registered" => stores.len(), "needed" => args.replicas);
                }
            }
            Err(e) => warn!(logger, "PD unreachable, retrying"; "error" => %e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Region 1 as it starts: every key, epoch (1, 1), these peers.
fn first_region(peers: &[pdc::Peer]) -> Option<Region> {
    if peers.is_empty() {
        return None;
    }
    Some(Region {
        id: FIRST_REGION_ID,
        start_key: Vec::new(),
        end_key: Vec::new(),
        epoch: Some(RegionEpoch {
            version: 1,
            conf_ver: 1,
        }),
        peers: peers
            .iter()
            .map(|p| Peer {
                id: p.id,
                store_id: p.store_id,
            })
            .collect(),
    })
}

/// A region as the PD client types it.
fn pd_region(r: &Region) -> pdc::Region {
    pdc::Region::from(r.clone())
}

/// Work for PD, done off the Raft thread.
#[derive(Debug)]
enum Job {
    /// The address of a store this one needs to send to.
    ResolveStore(u64),
    /// Ids for a split of `region` (at `version`) at `key`: one region id, one per peer.
    SplitIds {
        region: u64,
        version: u64,
        key: Vec<u8>,
        count: u32,
    },
    RegionHeartbeat {
        region: Region,
        leader: Peer,
        /// Approximate keys and bytes.
        size: (u64, u64),
    },
    StoreHeartbeat(StoreStats),
}

/// What comes back to the store task.
#[derive(Debug)]
enum Event {
    StoreAddr(u64, String),
    SplitIds {
        region: u64,
        version: u64,
        key: Vec<u8>,
        first_id: u64,
    },
    /// A split check of a region.
    Measured(u64, Measure),
}

async fn pd_worker(
    pd: PdClient,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    events: mpsc::UnboundedSender<Event>,
    logger: Logger,
) {
    while let Some(job) = jobs.recv().await {
        let (pd, events, logger) = (pd.clone(), events.clone(), logger.clone());
        tokio::spawn(async move {
            match job {
                Job::ResolveStore(id) => match pd.get_store(id).await {
                    Ok(Some(s)) => {
                        let _ = events.send(Event::StoreAddr(id, s.address));
                    }
                    Ok(None) => warn!(logger, "PD does not know a store"; "store" => id),
                    Err(e) => warn!(logger, "cannot resolve a store"; "store" => id, "error" => %e),
                },
                Job::SplitIds {
                    region,
                    version,
                    key,
                    count,
                } => match pd.alloc_ids(count).await {
                    Ok(first_id) => {
                        let _ = events.send(Event::SplitIds {
                            region,
                            version,
                            key,
                            first_id,
                        });
                    }
                    Err(e) => {
                        warn!(logger, "no ids for a split"; "region" => region, "error" => %e)
                    }
                },
                Job::RegionHeartbeat {
                    region,
                    leader,
                    size: (keys, bytes),
                } => {
                    let id = region.id;
                    let leader = pdc::Peer {
                        id: leader.id,
                        store_id: leader.store_id,
                    };
                    if let Err(e) = pd
                        .region_heartbeat(pd_region(&region), leader, bytes, keys)
                        .await
                    {
                        warn!(logger, "region heartbeat failed"; "region" => id, "error" => %e);
                    }
                }
                Job::StoreHeartbeat(stats) => {
                    if let Err(e) = pd.store_heartbeat(stats).await {
                        warn!(logger, "store heartbeat failed"; "error" => %e);
                    }
                }
            }
        });
    }
}

/// A client waiting for an answer.
enum Waiter {
    Write(oneshot::Sender<Result<CommandResult, RequestError>>),
    /// A read of region `1`, answered with the region's meta.
    Read(oneshot::Sender<Result<Region, RequestError>>, u64),
    /// A split this store proposed (region, when).
    Split(u64),
}

/// The task that owns a store's regions; see the module docs.
struct StoreTask {
    core: StoreCore,
    inbox: Inbox,
    events: mpsc::UnboundedReceiver<Event>,
    /// For results of work done off this thread (region measures).
    events_tx: mpsc::UnboundedSender<Event>,
    jobs: mpsc::UnboundedSender<Job>,
    transport: GrpcTransport,
    addrs: Arc<Mutex<HashMap<u64, String>>>,
    waiters: HashMap<RequestId, Waiter>,
    next_request: RequestId,
    tick: Duration,
    split: SplitConfig,
    /// The latest size (keys, bytes) of each region led here, for PD.
    sizes: HashMap<u64, (u64, u64)>,
    /// The last exact count of each region led here.
    counted: HashMap<u64, Counted>,
    /// Split checks made so far.
    checks: u64,
    /// Regions with a split in flight, since when.
    splitting: HashMap<u64, Instant>,
    /// Regions this store led at the last check.
    led: BTreeSet<u64>,
    last_split_check: Instant,
    last_region_heartbeat: Instant,
    last_store_heartbeat: Option<Instant>,
    /// Stores whose address was asked of PD.
    resolving: BTreeSet<u64>,
    /// A log-file compaction running off this thread.
    compacting: Option<std::thread::JoinHandle<()>>,
    logger: Logger,
}

impl StoreTask {
    async fn run(mut self) {
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = ticker.tick() => self.on_tick(),
                Some(c) = self.inbox.control.recv() => self.control(c),
                Some(m) = self.inbox.raft.recv() => self.step(*m),
                Some(e) = self.events.recv() => self.event(e),
                m = self.inbox.client.recv() => {
                    let Some(m) = m else { break };
                    self.handle(m);
                }
            }
            while let Ok(c) = self.inbox.control.try_recv() {
                self.control(c);
            }
            for _ in 0..4096 {
                match self.inbox.raft.try_recv() {
                    Ok(m) => self.step(*m),
                    Err(_) => break,
                }
            }
            for _ in 0..4096 {
                match self.inbox.client.try_recv() {
                    Ok(m) => self.handle(m),
                    Err(_) => break,
                }
            }
            match self.core.advance() {
                Ok(out) => self.dispatch(out),
                Err(e) => {
                    crit!(self.logger, "storage failure, stopping the store"; "error" => %e);
                    crate::logging::fatal_exit(&format!("fatal storage error: {e}"));
                }
            }
        }
    }

    fn step(&mut self, m: crate::router::PeerMsg) {
        let to_store = self.core.store_id();
        let stepped = self.core.step(RegionMessage {
            region_id: m.region_id,
            from_store: m.from,
            to_store,
            epoch: RegionEpoch::default(),
            msg: m.msg,
        });
        if let Err(e) = stepped {
            crit!(self.logger, "storage failure, stopping the store"; "error" => %e);
            crate::logging::fatal_exit(&format!("fatal storage error: {e}"));
        }
    }

    fn control(&mut self, c: Control) {
        match c {
            Control::SnapshotSent { region_id, to, ok } => {
                self.core.report_snapshot(region_id, to, ok);
            }
            Control::Unreachable { to } => self.core.report_unreachable_store(to),
            // Stores are never removed from a region yet.
            Control::Removed { .. } => {}
        }
    }

    fn event(&mut self, e: Event) {
        match e {
            Event::StoreAddr(id, addr) => {
                self.resolving.remove(&id);
                if id != self.core.store_id() {
                    self.transport.set_store(id, &addr);
                }
                lock(&self.addrs).insert(id, addr);
            }
            Event::Measured(region, measure) => self.measured(region, measure),
            Event::SplitIds {
                region,
                version,
                key,
                first_id,
            } => self.propose_split(region, version, key, first_id),
        }
    }

    fn request_id(&mut self, w: Waiter) -> RequestId {
        let id = self.next_request;
        self.next_request += 1;
        self.waiters.insert(id, w);
        id
    }

    /// The region a request goes to: the one it names, or the one holding its first key.
    fn locate(&self, route: &RegionRoute) -> Result<(u64, RegionEpoch), RequestError> {
        let id = if route.region_id != 0 {
            route.region_id
        } else {
            let key = route.keys.first().map(Vec::as_slice).unwrap_or_default();
            self.core.region_for_key(key).map(|r| r.id).ok_or_else(|| {
                RequestError::RegionNotFound(format!(
                    "store {} hosts no region holding the key",
                    self.core.store_id()
                ))
            })?
        };
        let current = self.core.region(id).map(region::epoch).ok_or_else(|| {
            RequestError::RegionNotFound(format!(
                "store {} hosts no peer of region {id}",
                self.core.store_id()
            ))
        })?;
        Ok((id, route.epoch.unwrap_or(current)))
    }

    /// The region and epoch a request goes to ([`StoreTask::locate`]), once its keys pass
    /// the region's checks.
    fn route(&self, route: &RegionRoute) -> Result<(u64, RegionEpoch), RequestError> {
        let (id, epoch) = self.locate(route)?;
        let keys: Vec<&[u8]> = route.keys.iter().map(Vec::as_slice).collect();
        self.core.check(id, &epoch, &keys).map_err(region_error)?;
        Ok((id, epoch))
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::RegionPropose { route, data, tx } => {
                let (id, epoch) = match self.route(&route) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let keys: Vec<&[u8]> = route.keys.iter().map(Vec::as_slice).collect();
                let req = self.request_id(Waiter::Write(tx));
                if let Err(e) = self.core.propose(id, &epoch, &keys, req, data) {
                    if let Some(Waiter::Write(tx)) = self.waiters.remove(&req) {
                        let _ = tx.send(Err(region_error(e)));
                    }
                }
            }
            Msg::RegionRead {
                route,
                linearizable,
                tx,
            } => {
                let (id, epoch) = match self.route(&route) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let keys: Vec<&[u8]> = route.keys.iter().map(Vec::as_slice).collect();
                if !linearizable {
                    let meta = self.core.region(id).cloned();
                    let _ =
                        tx.send(meta.ok_or_else(|| RequestError::RegionNotFound(id.to_string())));
                    return;
                }
                let req = self.request_id(Waiter::Read(tx, id));
                if let Err(e) = self.core.read(id, &epoch, &keys, req) {
                    if let Some(Waiter::Read(tx, _)) = self.waiters.remove(&req) {
                        let _ = tx.send(Err(region_error(e)));
                    }
                }
            }
            Msg::Status { tx } => {
                let _ = tx.send(NodeStatus {
                    node_id: self.core.store_id(),
                    ..Default::default()
                });
            }
            Msg::Propose { tx, .. } => {
                let _ = tx.send(Err(not_static()));
            }
            Msg::Read { tx } => {
                let _ = tx.send(Err(not_static()));
            }
            Msg::TransferLeader { tx, .. } => {
                let _ = tx.send(Err(not_static()));
            }
            Msg::ChangeMembers { tx, .. } => {
                let _ = tx.send(Err(not_static()));
            }
            Msg::Members { tx } => {
                let _ = tx.send(Default::default());
            }
        }
    }

    /// A refusal from a region's core, as the client sees it: a leader hint names the
    /// leader's store and address.
    fn refusal(&self, region: u64, r: Refusal) -> RequestError {
        match r {
            Refusal::NotLeader { leader } => {
                let hint = self.core.store_of(region, leader).and_then(|store| {
                    let addr = lock(&self.addrs).get(&store).cloned()?;
                    Some(LeaderHint {
                        id: store,
                        addr,
                        peer_id: leader,
                    })
                });
                match hint {
                    Some(h) => RequestError::NotLeader(Some(h)),
                    None => {
                        RequestError::Unavailable(format!("region {region} has no known leader"))
                    }
                }
            }
            Refusal::Unavailable(m) => RequestError::Unavailable(m),
            Refusal::Indeterminate(m) => RequestError::Indeterminate(m.into()),
            Refusal::Rejected(m) if m.starts_with("key not in region") => {
                let regions = self.core.region(region).cloned().into_iter().collect();
                RequestError::KeyNotInRegion(m, regions)
            }
            Refusal::Rejected(m) => RequestError::InvalidArgument(m),
        }
    }

    fn dispatch(&mut self, out: super::StoreOutput) {
        for m in out.messages {
            if self.transport.knows(m.to_store) {
                self.transport.send_region(m.to_store, m.region_id, m.msg);
                continue;
            }
            if m.msg.get_msg_type() == raft::prelude::MessageType::MsgSnapshot {
                // Raft sends that peer nothing else until it hears how the snapshot went.
                self.core.report_snapshot(m.region_id, m.msg.to, false);
            }
            if self.resolving.insert(m.to_store) {
                let _ = self.jobs.send(Job::ResolveStore(m.to_store));
            }
        }
        // Reads whose region changed while they waited (StoreCore::read).
        for (id, e) in out.refused_reads {
            if let Some(Waiter::Read(tx, _)) = self.waiters.remove(&id) {
                let _ = tx.send(Err(region_error(e)));
            }
        }
        for (region, id, answer) in out.replies {
            let Some(w) = self.waiters.remove(&id) else {
                continue;
            };
            match (w, answer) {
                (Waiter::Write(tx), Ok(Answer::Written(r))) => {
                    let _ = tx.send(Ok(r));
                }
                (Waiter::Write(tx), Err(r)) => {
                    let _ = tx.send(Err(self.refusal(region, r)));
                }
                (Waiter::Read(tx, id), Ok(Answer::ReadReady { .. })) => {
                    let meta = self.core.region(id).cloned();
                    let _ =
                        tx.send(meta.ok_or_else(|| RequestError::RegionNotFound(id.to_string())));
                }
                (Waiter::Read(tx, _), Err(r)) => {
                    let _ = tx.send(Err(self.refusal(region, r)));
                }
                (Waiter::Split(r), answer) => {
                    self.splitting.remove(&r);
                    match answer {
                        Ok(a) => info!(self.logger, "split applied"; "region" => r, "answer" => ?a),
                        Err(e) => warn!(self.logger, "split refused"; "region" => r, "why" => ?e),
                    }
                }
                (Waiter::Write(tx), Ok(other)) => {
                    let _ = tx.send(Err(RequestError::Unavailable(format!(
                        "unexpected answer {other:?}"
                    ))));
                }
                (Waiter::Read(tx, _), Ok(other)) => {
                    let _ = tx.send(Err(RequestError::Unavailable(format!(
                        "unexpected answer {other:?}"
                    ))));
                }
            }
        }
        if self.compacting.as_ref().is_some_and(|h| h.is_finished()) {
            self.compacting = None;
        }
        if let Some(&(region, below)) = out.compacted.first() {
            if self.compacting.is_none() {
                if let Some(engine) = self.core.region_engine(region) {
                    self.compacting = std::thread::Builder::new()
                        .name("log-compact".into())
                        .spawn(move || engine.compact_log_files(below))
                        .ok();
                }
            }
        }
        for &id in &out.created {
            // A new region's stores may be new to this one; its leader reports it at once.
            if let Some(meta) = self.core.region(id).cloned() {
                for p in &meta.peers {
                    if p.store_id != self.core.store_id()
                        && !self.transport.knows(p.store_id)
                        && self.resolving.insert(p.store_id)
                    {
                        let _ = self.jobs.send(Job::ResolveStore(p.store_id));
                    }
                }
            }
            self.led.remove(&id);
        }
        if !out.created.is_empty() {
            self.report_leadership(true);
        }
    }

    fn on_tick(&mut self) {
        self.core.tick();
        let now = Instant::now();
        self.report_leadership(
            now.duration_since(self.last_region_heartbeat) >= REGION_HEARTBEAT_EVERY,
        );
        if self
            .last_store_heartbeat
            .is_none_or(|t| now.duration_since(t) >= STORE_HEARTBEAT_EVERY)
        {
            self.last_store_heartbeat = Some(now);
            let _ = self.jobs.send(Job::StoreHeartbeat(StoreStats {
                store_id: self.core.store_id(),
                region_count: self.core.region_ids().len() as u64,
                ..Default::default()
            }));
        }
        if now.duration_since(self.last_split_check) >= self.split.check_interval {
            self.last_split_check = now;
            self.check_splits();
        }
        self.splitting
            .retain(|_, since| since.elapsed() < SPLIT_RETRY_AFTER);
    }

    /// Sends a heartbeat for every region that this store started leading (all of them
    /// with `all`), so PD learns new leaders and ranges at once.
    fn report_leadership(&mut self, all: bool) {
        let led: BTreeSet<u64> = self
            .core
            .region_ids()
            .into_iter()
            .filter(|&id| self.core.core(id).is_some_and(|c| c.replica().is_leader()))
            .collect();
        for &id in &led {
            if all || !self.led.contains(&id) {
                self.heartbeat(id);
            }
        }
        if all {
            self.last_region_heartbeat = Instant::now();
        }
        self.led = led;
    }

    fn heartbeat(&mut self, id: u64) {
        let (Some(region), Some(leader)) = (self.core.region(id).cloned(), self.core.leader_of(id))
        else {
            return;
        };
        let size = self.sizes.get(&id).copied().unwrap_or_default();
        let _ = self.jobs.send(Job::RegionHeartbeat {
            region,
            leader,
            size,
        });
    }

    /// Checks every region led here on a blocking thread (see [`split_check`]); each result
    /// comes back as an event.
    fn check_splits(&mut self) {
        let regions: Vec<(Region, Option<Counted>)> = self
            .led
            .iter()
            .filter(|id| !self.splitting.contains_key(id))
            .filter_map(|&id| self.core.region(id).cloned())
            .map(|r| {
                let last = self.counted.get(&r.id).copied();
                (r, last)
            })
            .collect();
        if regions.is_empty() {
            return;
        }
        self.checks += 1;
        let check = self.checks;
        let engine = self.core.engine().clone();
        let split = self.split;
        let (events, logger) = (self.events_tx.clone(), self.logger.clone());
        tokio::task::spawn_blocking(move || {
            for (region, measure) in split_check::check_regions(&split, &engine, &regions, check) {
                match measure {
                    Ok(m) => {
                        let _ = events.send(Event::Measured(region, m));
                    }
                    Err(e) => {
                        warn!(logger, "cannot check a region's size"; "region" => region,
                            "error" => %e)
                    }
                }
            }
        });
    }

    fn measured(&mut self, region: u64, measure: Measure) {
        let size = measure.size(self.counted.get(&region));
        self.sizes.insert(region, size);
        if let Some(c) = measure.counted() {
            self.counted.insert(region, c);
        }
        let Some(key) = measure.counted.and_then(|c| c.middle) else {
            return;
        };
        let version = measure.version;
        let current = self.core.region(region).map(|r| region::epoch(r).version);
        let leads = self.led.contains(&region);
        if current != Some(version) || !leads || self.splitting.contains_key(&region) {
            return;
        }
        let peers = self.core.region(region).map_or(0, |r| r.peers.len());
        self.splitting.insert(region, Instant::now());
        let (keys, bytes) = self.sizes.get(&region).copied().unwrap_or_default();
        info!(self.logger, "region over its split threshold"; "region" => region,
            "keys" => keys, "bytes" => bytes);
        let _ = self.jobs.send(Job::SplitIds {
            region,
            version,
            key,
            count: 1 + peers as u32,
        });
    }

    fn propose_split(&mut self, region: u64, version: u64, key: Vec<u8>, first_id: u64) {
        let Some(meta) = self.core.region(region).cloned() else {
            return;
        };
        if region::epoch(&meta).version != version {
            self.splitting.remove(&region);
            return;
        }
        let peer_ids: Vec<u64> = (1..=meta.peers.len() as u64)
            .map(|i| first_id + i)
            .collect();
        let req = self.request_id(Waiter::Split(region));
        info!(self.logger, "proposing a split"; "region" => region, "new_region" => first_id,
            "key" => ?String::from_utf8_lossy(&key));
        if let Err(e) = self
            .core
            .propose_split(region, &key, first_id, &peer_ids, req)
        {
            self.waiters.remove(&req);
            self.splitting.remove(&region);
            warn!(self.logger, "split not proposed"; "region" => region, "why" => ?e);
        }
    }
}

fn region_error(e: RegionError) -> RequestError {
    match e {
        RegionError::NotFound(id) => {
            RequestError::RegionNotFound(format!("this store hosts no peer of region {id}"))
        }
        RegionError::EpochNotMatch { current } => RequestError::EpochNotMatch(
            format!(
                "region epoch changed; the region is now version {}",
                current.first().map_or(0, |r| region::epoch(r).version)
            ),
            current,
        ),
        RegionError::KeyNotInRegion { key, region } => RequestError::KeyNotInRegion(
            format!(
                "key {:?} is not in region {}",
                String::from_utf8_lossy(&key),
                region.id
            ),
            vec![*region],
        ),
    }
}

fn not_static() -> RequestError {
    RequestError::InvalidArgument(
        "this is a PD-mode store: membership, leader transfer and hash checks are per region \
         and not offered here yet"
            .into(),
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
