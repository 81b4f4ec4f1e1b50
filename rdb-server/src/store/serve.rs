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
use rdb_proto::peer::PeerKind;
use rdb_storage::region::{self, Peer, Region, RegionEpoch, StoreIdent};
use rdb_storage::{CommandResult, DirKind, Engine, EngineOptions};
use slog::{crit, debug, info, o, warn, Logger};
use tokio::sync::{mpsc, oneshot};

use super::{RegionError, RegionMessage, RequestRefused, StoreCore};
use crate::config::{ClusterConfig, StoreFile};
use crate::raft_core::{Answer, Refusal, RequestId};
use crate::router::{
    Control, Inbox, LeaderHint, Mailbox, MembersView, Msg, NodeStatus, RegionRoute, RequestError,
};
use crate::service::kv::KvService;
use crate::service::peer::{PeerIdent, PeerService};
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
    /// Where clients reach this store (HOST:PORT); also what it listens on.
    pub addr: String,
    /// Where other stores send it Raft traffic (HOST:PORT); also what it listens on.
    pub peer_addr: String,
    /// The store's data directory.
    pub data_dir: PathBuf,
    /// The store's file: regions' Raft and request settings, and TLS.
    pub file: StoreFile,
    /// Stores the first region is bootstrapped on (its replicas).
    pub replicas: usize,
    /// When regions split.
    pub split: SplitConfig,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics_addr: Option<String>,
}

/// How often a store that PD has not heard register tries again.
const REGISTER_EVERY: Duration = Duration::from_secs(1);

/// Runs a store until `shutdown` resolves.
///
/// A store that already has an id and regions starts serving them at once, PD or not, and
/// registers its addresses with PD in the background. A new store (or one without regions)
/// waits for PD: it needs an id, and then the bootstrap. A stop ends any wait.
pub async fn run(
    args: StoreArgs,
    logger: Logger,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let data_error = |e: rdb_storage::Error| ServerError::DataDir {
        dir: args.data_dir.clone(),
        message: e.to_string(),
    };
    let settings = &args.file.settings;
    std::fs::create_dir_all(&args.data_dir).map_err(|e| ServerError::DataDir {
        dir: args.data_dir.clone(),
        message: e.to_string(),
    })?;
    let engine = Engine::open_with(
        &args.data_dir,
        EngineOptions {
            max_wal_bytes: settings.max_wal_bytes,
        },
    )
    .map_err(data_error)?;
    engine.claim_kind(DirKind::Store).map_err(data_error)?;
    engine
        .check_apply_settings(rdb_storage::ApplySettings {
            dedup_window: settings.dedup_window,
        })
        .map_err(data_error)?;
    let pd = PdClient::with_options(args.pd.iter().cloned(), pd_options(&args.file)?)
        .map_err(|e| ServerError::Pd(format!("client: {e}")))?;
    let Some(ident) = identify(&engine, &pd, &stop_rx, &logger).await? else {
        return Ok(());
    };
    let store_id = ident.store_id;
    let logger = logger.new(o!("store" => store_id));

    // Listen before registering: PD hears only of addresses this store really serves.
    let bind = |addr: String, what: &'static str| async move {
        tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| ServerError::Bind {
                what,
                addr,
                source: e,
            })
    };
    let client_listener = bind(args.addr.clone(), "client").await?;
    let peer_listener = bind(args.peer_addr.clone(), "peer").await?;
    if let Some(addr) = &args.metrics_addr {
        let l = bind(addr.clone(), "metrics").await?;
        let log = logger.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(l).await {
                warn!(log, "metrics endpoint stopped"; "error" => %e);
            }
        });
    }
    let client_tls = match &args.file.tls {
        Some(t) => Some(crate::tls::server_config(t, store_id, t.client_cert_auth)?),
        None => None,
    };
    let peer_tls = match &args.file.peer_tls {
        Some(t) => {
            crate::tls::set_peer_client(crate::tls::peer_client_config(t, store_id)?);
            Some(crate::tls::server_config(t, store_id, true)?)
        }
        None => None,
    };
    let me = pdc::Store {
        id: store_id,
        address: args.addr.clone(),
        peer_address: args.peer_addr.clone(),
        ..Default::default()
    };

    let cfg = crate::node::core_config(0, settings);
    let mut core = StoreCore::open(
        engine.clone(),
        store_id,
        cfg,
        settings.dedup_window,
        &logger,
    )
    .map_err(|e| ServerError::Raft(e.to_string()))?;
    let hosted = core.region_ids().len();
    let registered = if hosted == 0 {
        // Nothing to serve without PD: register, then take part in the bootstrap.
        let put = || pd.put_store(me.clone(), ident.token);
        if until_pd(&stop_rx, &logger, "PutStore", put)
            .await?
            .is_none()
        {
            return Ok(());
        }
        info!(logger, "registered with PD"; "addr" => &args.addr, "peer_addr" => &args.peer_addr);
        match bootstrap(&pd, &me, ident.token, args.replicas, &stop_rx, &logger).await? {
            Bootstrap::Stopped => return Ok(()),
            Bootstrap::Hosts(first) => core
                .create_region(&first)
                .map_err(|e| ServerError::Raft(e.to_string()))?,
            Bootstrap::NotHere => {}
        }
        true
    } else {
        // Its regions are served now; PD hears of this store's addresses when it answers.
        info!(logger, "serving the regions hosted here; registering with PD in the background";
            "regions" => hosted);
        false
    };

    let config = ClusterConfig {
        cluster_id: ident.cluster_id,
        nodes: Vec::new(),
        settings: settings.clone(),
        tls: None,
        peer_tls: None,
        joining: false,
    };
    let (mailbox, inbox) = Mailbox::new(crate::server::MAILBOX);
    let snap_dir = engine.snap_dir();
    let mut transport = GrpcTransport::start_store(
        &config,
        store_id,
        mailbox.raft_sender(),
        tokio::runtime::Handle::current(),
        snap_dir.clone(),
        logger.clone(),
    );
    // Where the other stores were last heard of: enough to serve while PD is away.
    let addrs: Arc<Mutex<HashMap<u64, String>>> = Arc::default();
    for (id, peer, client) in engine.store_addrs().map_err(data_error)? {
        transport.set_store(id, &peer);
        lock(&addrs).insert(id, client);
    }
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
    tokio::spawn(pd_worker(
        pd.clone(),
        jobs_rx,
        events_tx.clone(),
        logger.clone(),
    ));
    // Every store's address, so the first messages find their way.
    let _ = jobs_tx.send(Job::AllStores);
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
        tick: Duration::from_millis(settings.tick_interval_ms),
        split: args.split,
        sizes: HashMap::new(),
        counted: HashMap::new(),
        checks: 0,
        splitting: HashMap::new(),
        led: BTreeSet::new(),
        last_split_check: Instant::now(),
        last_region_heartbeat: Instant::now(),
        last_store_heartbeat: None,
        me: me.clone(),
        token: ident.token,
        registered,
        last_register: None,
        resolver: Resolver::default(),
        compacting: None,
        stopping: false,
        logger: logger.clone(),
    };
    let hashes = task.core.hashes();
    let raft_thread = crate::server::RaftThread::spawn(task.run(), mailbox.raft_sender())?;

    let kv = KvService::new(
        mailbox.clone(),
        engine.clone(),
        Default::default(),
        Arc::new(settings.clone()),
        ident.cluster_id,
        args.addr.clone(),
        Default::default(),
    )
    .for_store(hashes);
    let peer = PeerService::new(
        mailbox.raft_sender(),
        PeerIdent {
            cluster_id: ident.cluster_id,
            node: store_id,
            kind: PeerKind::Store,
        },
        MAX_SNAPSHOT_BYTES,
        snap_dir,
        Default::default(),
        logger.clone(),
    );
    let max_client_message = 2 * (settings.max_value_bytes + settings.max_key_bytes) + (1 << 20);
    info!(logger, "serving"; "addr" => &args.addr, "peer_addr" => &args.peer_addr,
        "cluster_id" => ident.cluster_id, "tls" => client_tls.is_some(),
        "peer_tls" => peer_tls.is_some());
    let mut client_builder = tonic::transport::Server::builder().tcp_nodelay(true);
    if let Some(tls) = client_tls {
        client_builder = client_builder
            .tls_config(tls)
            .map_err(|e| ServerError::Tls(format!("client port: {e}")))?;
    }
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let client_server = client_builder
        .add_service(health_service)
        .add_service(
            KvServer::new(kv)
                .max_decoding_message_size(max_client_message)
                .max_encoding_message_size(usize::MAX),
        )
        .serve_with_incoming_shutdown(
            crate::server::incoming(client_listener),
            crate::server::stopped(stop_rx.clone()),
        );
    let mut peer_builder = tonic::transport::Server::builder().tcp_nodelay(true);
    if let Some(tls) = peer_tls {
        peer_builder = peer_builder
            .tls_config(tls)
            .map_err(|e| ServerError::Tls(format!("peer port: {e}")))?;
    }
    let peer_server = peer_builder
        .add_service(
            PeerServer::new(peer)
                .max_decoding_message_size(settings.max_peer_message_bytes)
                .max_encoding_message_size(settings.max_peer_message_bytes),
        )
        .serve_with_incoming_shutdown(
            crate::server::incoming(peer_listener),
            crate::server::stopped(stop_rx.clone()),
        );
    let serving = async {
        tokio::try_join!(client_server, peer_server)
            .map(drop)
            .map_err(|e| ServerError::Serve(e.to_string()))
    };
    crate::server::serve_until_stopped(serving, stop_rx, raft_thread, &logger).await
}

/// How the store reaches PD: the default timing, and TLS from `[pd_tls]`.
fn pd_options(file: &StoreFile) -> Result<rdb_client::Options, ServerError> {
    let mut opts = rdb_client::Options::default();
    if let Some(t) = &file.pd_tls {
        let read = |p: &std::path::Path, what: &str| {
            std::fs::read(p)
                .map_err(|e| ServerError::Tls(format!("[pd_tls] {what} {}: {e}", p.display())))
        };
        let identity = match (&t.cert_file, &t.key_file) {
            (Some(c), Some(k)) => Some((read(c, "cert_file")?, read(k, "key_file")?)),
            _ => None,
        };
        opts.tls = Some(rdb_client::TlsOptions {
            ca_pem: read(&t.ca_file, "ca_file")?,
            identity,
        });
    }
    Ok(opts)
}

/// How long a store that knows its cluster waits at start for PD to say whether it is that
/// cluster's PD, before it serves its regions without it.
const PD_CHECK: Duration = Duration::from_secs(2);

/// The store's identity: the one recorded in its directory, or, for a new store, PD's cluster
/// id, an id from PD's allocator and a fresh token, recorded before anything else. From here on
/// `pd` stamps every call with the cluster id, and a PD of another cluster refuses them (a
/// reachable one ends the start with that cause). `None`: stopped while waiting for PD.
async fn identify(
    engine: &Engine,
    pd: &PdClient,
    stop: &tokio::sync::watch::Receiver<bool>,
    logger: &Logger,
) -> Result<Option<StoreIdent>, ServerError> {
    let data_error = |e: rdb_storage::Error| ServerError::Pd(format!("data directory: {e}"));
    let found = engine.store_ident().map_err(data_error)?;
    if let Some(f) = found.filter(|f| f.cluster_id != 0 && f.token != 0) {
        pd.set_cluster_id(f.cluster_id);
        match tokio::time::timeout(PD_CHECK, pd.cluster_id()).await {
            Ok(Err(e @ rdb_client::Error::ClusterMismatch(_))) => {
                return Err(ServerError::Pd(format!(
                    "{e}; this store belongs to cluster {} and serves no other PD (a PD that \
                     lost its data directory starts a new cluster)",
                    f.cluster_id
                )));
            }
            Ok(Ok(_)) => {}
            // Unreachable now: serve the regions hosted here, and keep asking in the background.
            _ => warn!(logger, "PD unreachable at start; serving the regions hosted here";
                "cluster_id" => f.cluster_id),
        }
        return Ok(Some(f));
    }
    // A new store (or one written before stores recorded their cluster): it needs PD.
    let Some(cluster_id) = until_pd(stop, logger, "GetClusterId", || pd.cluster_id()).await? else {
        return Ok(None);
    };
    pd.set_cluster_id(cluster_id);
    let store_id = match found {
        Some(f) => f.store_id,
        None => match until_pd(stop, logger, "AllocId", || pd.alloc_ids(1)).await? {
            Some(id) => id,
            None => return Ok(None),
        },
    };
    let token = match found {
        Some(f) if f.token != 0 => f.token,
        _ => loop {
            let t: u64 = rand::random();
            if t != 0 {
                break t;
            }
        },
    };
    let ident = StoreIdent {
        cluster_id,
        store_id,
        token,
    };
    engine.claim_for_store(ident).map_err(data_error)?;
    info!(logger, "joined the cluster"; "cluster_id" => cluster_id, "store" => store_id);
    Ok(Some(ident))
}

/// Calls `call` until PD answers, or until the store is stopped (`None`). A refusal that
/// retrying cannot change ends the wait with an error.
async fn until_pd<T, F, Fut>(
    stop: &tokio::sync::watch::Receiver<bool>,
    logger: &Logger,
    what: &str,
    mut call: F,
) -> Result<Option<T>, ServerError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, rdb_client::Error>>,
{
    let mut warned: Option<Instant> = None;
    loop {
        let mut stop = stop.clone();
        let answer = tokio::select! {
            r = call() => r,
            _ = stop.wait_for(|v| *v) => return Ok(None),
        };
        match answer {
            Ok(v) => return Ok(Some(v)),
            Err(e) if !e.is_retryable() => {
                return Err(ServerError::Pd(format!("{what}: {e}")));
            }
            Err(e) => {
                if warned.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    warned = Some(Instant::now());
                    warn!(logger, "PD unreachable, retrying"; "call" => what, "error" => %e);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.wait_for(|v| *v) => return Ok(None),
        }
    }
}

/// What the bootstrap gave this store.
enum Bootstrap {
    /// Region 1 has a peer here: create it in its initial state.
    Hosts(Region),
    /// The cluster is bootstrapped on other stores.
    NotHere,
    /// The store was stopped while it waited.
    Stopped,
}

/// Region 1, if this store hosts a peer of it: recorded with PD by the registered store with
/// the smallest id once `replicas` stores are registered, and created in its initial state on
/// each of them. Waits (retrying) until PD is bootstrapped.
async fn bootstrap(
    pd: &PdClient,
    me: &pdc::Store,
    token: u64,
    replicas: usize,
    stop: &tokio::sync::watch::Receiver<bool>,
    logger: &Logger,
) -> Result<Bootstrap, ServerError> {
    let mut waited = Instant::now();
    loop {
        let Some(bootstrapped) =
            until_pd(stop, logger, "IsBootstrapped", || pd.is_bootstrapped()).await?
        else {
            return Ok(Bootstrap::Stopped);
        };
        if bootstrapped {
            // Every store starts region 1 as it was at the bootstrap; later splits come from
            // its log.
            let get = || pd.get_region_by_id(FIRST_REGION_ID);
            return match until_pd(stop, logger, "GetRegionById", get).await? {
                None => Ok(Bootstrap::Stopped),
                Some(None) => Err(ServerError::Pd(
                    "bootstrapped, but it has no region 1".into(),
                )),
                Some(Some(info)) => Ok(first_region(&info.region.peers)
                    .filter(|r| r.peers.iter().any(|p| p.store_id == me.id))
                    .map_or(Bootstrap::NotHere, Bootstrap::Hosts)),
            };
        }
        let Some(stores) =
            until_pd(stop, logger, "GetAllStores", || pd.get_all_stores(true)).await?
        else {
            return Ok(Bootstrap::Stopped);
        };
        let mut ids: Vec<u64> = stores.iter().map(|s| s.id).collect();
        ids.sort_unstable();
        ids.truncate(replicas);
        if ids.len() == replicas && ids[0] == me.id {
            let alloc = || pd.alloc_ids(replicas as u32);
            let Some(first_peer) = until_pd(stop, logger, "AllocId", alloc).await? else {
                return Ok(Bootstrap::Stopped);
            };
            let peers: Vec<pdc::Peer> = ids
                .iter()
                .enumerate()
                .map(|(i, &s)| pdc::Peer {
                    id: first_peer + i as u64,
                    store_id: s,
                    learner: false,
                })
                .collect();
            let region = first_region(&peers)
                .ok_or_else(|| ServerError::Raft("cannot build the first region".into()))?;
            match pd.bootstrap(me.clone(), pd_region(&region), token).await {
                Ok(()) => {
                    info!(logger, "bootstrapped the cluster"; "region" => FIRST_REGION_ID,
                        "stores" => ?ids);
                    return Ok(Bootstrap::Hosts(region));
                }
                // Another store won a race: take region 1 as PD has it.
                Err(rdb_client::Error::AlreadyBootstrapped(_)) => continue,
                Err(e) => warn!(logger, "bootstrap failed, retrying"; "error" => %e),
            }
        } else if waited.elapsed() > Duration::from_secs(5) {
            waited = Instant::now();
            info!(logger, "waiting for stores to bootstrap the cluster";
                "registered" => stores.len(), "needed" => replicas);
        }
        let mut stop = stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.wait_for(|v| *v) => return Ok(Bootstrap::Stopped),
        }
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
                learner: p.learner,
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
    /// This store's addresses (and its token), until PD has them.
    Register(pdc::Store, u64),
    /// Every store's addresses (at start).
    AllStores,
    /// The addresses of a store this one needs to send to.
    ResolveStore(u64),
    /// What PD knows of a region a leader named (see `StoreOutput::confirm`).
    ConfirmRegion(u64),
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
    Registered,
    /// A store's client and peer addresses.
    StoreAddr(pdc::Store),
    /// PD could not say where a store is (unreachable, or it does not know the store).
    NotResolved(u64),
    /// PD's region, for a region a leader named.
    RegionFound(Region),
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
                Job::Register(me, token) => match pd.put_store(me.clone(), token).await {
                    Ok(()) => {
                        info!(logger, "registered with PD"; "addr" => &me.address,
                            "peer_addr" => &me.peer_address);
                        let _ = events.send(Event::Registered);
                    }
                    Err(e) => debug!(logger, "cannot register with PD yet"; "error" => %e),
                },
                Job::AllStores => match pd.get_all_stores(true).await {
                    Ok(stores) => {
                        for s in stores {
                            let _ = events.send(Event::StoreAddr(s));
                        }
                    }
                    Err(e) => debug!(logger, "cannot list the stores yet"; "error" => %e),
                },
                Job::ResolveStore(id) => match pd.get_store(id).await {
                    Ok(Some(s)) => {
                        let _ = events.send(Event::StoreAddr(s));
                    }
                    Ok(None) => {
                        warn!(logger, "PD does not know a store"; "store" => id);
                        let _ = events.send(Event::NotResolved(id));
                    }
                    Err(e) => {
                        debug!(logger, "cannot resolve a store"; "store" => id, "error" => %e);
                        let _ = events.send(Event::NotResolved(id));
                    }
                },
                Job::ConfirmRegion(id) => match pd.get_region_by_id(id).await {
                    Ok(Some(info)) => {
                        let _ = events.send(Event::RegionFound(info.region.into()));
                    }
                    Ok(None) => debug!(logger, "PD does not know a region a leader named";
                        "region" => id),
                    Err(e) => debug!(logger, "cannot ask PD about a region"; "region" => id,
                        "error" => %e),
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
                        learner: leader.learner,
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

/// When to ask PD where a store is: when a message needs a store with no address here, and
/// again when the transport cannot reach one (it may have restarted elsewhere), at most once
/// per backoff (doubling from `RESOLVE_MIN` to `RESOLVE_MAX` while nothing changes).
#[derive(Default)]
struct Resolver {
    /// Per store: when it was last asked about, and the wait before asking again.
    asked: HashMap<u64, (Instant, Duration)>,
    /// Stores asked about with no answer yet.
    in_flight: BTreeSet<u64>,
}

const RESOLVE_MIN: Duration = Duration::from_millis(500);
const RESOLVE_MAX: Duration = Duration::from_secs(10);

impl Resolver {
    /// Whether to ask about `store` now; if so, it counts as asked.
    fn should_ask(&mut self, store: u64, now: Instant) -> bool {
        if self.in_flight.contains(&store) {
            return false;
        }
        let (at, wait) = self.asked.entry(store).or_insert((now, Duration::ZERO));
        if *wait > Duration::ZERO && now.duration_since(*at) < *wait {
            return false;
        }
        *at = now;
        *wait = (*wait * 2).clamp(RESOLVE_MIN, RESOLVE_MAX);
        self.in_flight.insert(store);
        true
    }

    /// PD answered about `store`; `moved`: with an address not known before, so the next
    /// failure may be asked about soon again.
    fn answered(&mut self, store: u64, moved: bool) {
        self.in_flight.remove(&store);
        if moved {
            self.asked.remove(&store);
        }
    }
}

/// A client waiting for an answer.
enum Waiter {
    Write(oneshot::Sender<Result<CommandResult, RequestError>>),
    /// A read of region `1`, answered with the region's meta.
    Read(oneshot::Sender<Result<Region, RequestError>>, u64),
    /// A split this store proposed (region, when).
    Split(u64),
    /// A membership change of a region: its log index and the membership it led to.
    Change(
        oneshot::Sender<Result<(u64, crate::raft_core::Membership), RequestError>>,
        u64,
    ),
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
    /// This store as PD should know it.
    me: pdc::Store,
    /// The store's token, which PD needs to accept a change of its addresses.
    token: u64,
    /// Whether PD acknowledged this store's addresses since it started.
    registered: bool,
    last_register: Option<Instant>,
    /// When to ask PD for other stores' addresses.
    resolver: Resolver,
    /// A log-file compaction running off this thread.
    compacting: Option<std::thread::JoinHandle<()>>,
    /// A clean stop was asked for: the loop ends after this turn's messages.
    stopping: bool,
    logger: Logger,
}

impl StoreTask {
    async fn run(mut self) {
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.stopping {
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
            if self.stopping {
                // What this turn stepped is dropped unpersisted, as in a crash: none of it was
                // acknowledged.
                break;
            }
            match self.core.advance() {
                Ok(out) => self.dispatch(out),
                Err(e) => {
                    crit!(self.logger, "storage failure, stopping the store"; "error" => %e);
                    crate::logging::fatal_exit(&format!("fatal storage error: {e}"));
                }
            }
        }
        crate::node::join_chore(self.compacting.take());
    }

    fn step(&mut self, m: crate::router::PeerMsg) {
        let to_store = self.core.store_id();
        let refused = self.core.refused_messages();
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
        if self.core.refused_messages() > refused {
            crate::metrics::metrics()
                .peer_messages_refused
                .with_label_values(&["raft"])
                .inc();
        }
    }

    /// Asks PD where `store` is, unless it was asked lately (see [`Resolver`]).
    fn resolve(&mut self, store: u64) {
        if store != self.core.store_id() && self.resolver.should_ask(store, Instant::now()) {
            let _ = self.jobs.send(Job::ResolveStore(store));
        }
    }

    fn control(&mut self, c: Control) {
        match c {
            Control::SnapshotSent { region_id, to, ok } => {
                self.core.report_snapshot(region_id, to, ok);
            }
            Control::Unreachable { to } => {
                self.core.report_unreachable_store(to);
                // It may have restarted on another address.
                self.resolve(to);
            }
            // Stores are never removed from a region yet.
            Control::Removed { .. } => {}
            Control::Stop => self.stopping = true,
        }
    }

    fn event(&mut self, e: Event) {
        match e {
            Event::Registered => self.registered = true,
            Event::StoreAddr(s) => {
                let moved = !self.transport.knows_at(s.id, s.peer_addr())
                    || lock(&self.addrs).get(&s.id) != Some(&s.address);
                self.resolver.answered(s.id, moved);
                if s.id != self.core.store_id() && moved {
                    self.transport.set_store(s.id, s.peer_addr());
                    let recorded =
                        self.core
                            .engine()
                            .record_store_addr(s.id, s.peer_addr(), &s.address);
                    if let Err(e) = recorded {
                        warn!(self.logger, "cannot record a store's address"; "store" => s.id,
                            "error" => %e);
                    }
                }
                lock(&self.addrs).insert(s.id, s.address);
            }
            Event::NotResolved(id) => self.resolver.answered(id, false),
            Event::RegionFound(region) => self.core.confirm_region(&region),
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
                    if self.core.is_installing(id) {
                        // Its data is being replaced: the leader's store serves the read.
                        let leader = self.core.core(id).map_or(0, |c| c.replica().leader_id());
                        let e = match self.refusal(id, Refusal::NotLeader { leader }) {
                            e @ RequestError::NotLeader(Some(_)) => e,
                            _ => RequestError::Unavailable(format!(
                                "region {id} is installing a snapshot on this store"
                            )),
                        };
                        let _ = tx.send(Err(e));
                        return;
                    }
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
            Msg::TransferLeader { region_id, to, tx } => {
                let r = match self.core.transfer_leader(region_id, to) {
                    Ok(()) => Ok(()),
                    Err(RequestRefused::Region(e)) => Err(region_error(e)),
                    Err(RequestRefused::Core(r)) => Err(self.refusal(region_id, r)),
                };
                let _ = tx.send(r);
            }
            Msg::ChangeMembers {
                region_id,
                steps,
                added,
                tx,
            } => {
                let req = self.request_id(Waiter::Change(tx, region_id));
                if let Err(e) = self.core.change_members(region_id, req, &steps, &added) {
                    if let Some(Waiter::Change(tx, _)) = self.waiters.remove(&req) {
                        let _ = tx.send(Err(region_error(e)));
                    }
                }
            }
            Msg::Members { region_id, tx } => {
                let _ = tx.send(self.members(region_id));
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
            self.resolve(m.to_store);
        }
        for region in out.confirm {
            let _ = self.jobs.send(Job::ConfirmRegion(region));
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
                (Waiter::Change(tx, _), Ok(Answer::MembershipChanged { index, membership })) => {
                    let _ = tx.send(Ok((index, membership)));
                }
                (Waiter::Change(tx, _), Err(r)) => {
                    let _ = tx.send(Err(self.refusal(region, r)));
                }
                (Waiter::Change(tx, _), Ok(other)) => {
                    let _ = tx.send(Err(RequestError::Unavailable(format!(
                        "unexpected answer {other:?}"
                    ))));
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
                    if !self.transport.knows(p.store_id) {
                        self.resolve(p.store_id);
                    }
                }
            }
            self.led.remove(&id);
        }
        if !out.created.is_empty() {
            self.report_leadership(true);
        }
        // PD learns a region's new peers at once: a store PD placed a new peer on asks PD
        // before the leader's first message may create it.
        for &id in &out.membership_changed {
            if self.core.core(id).is_some_and(|c| c.replica().is_leader()) {
                self.heartbeat(id);
            }
        }
        for &id in &out.destroyed {
            self.led.remove(&id);
            self.sizes.remove(&id);
            self.counted.remove(&id);
            // Requests waiting on the removed peer: the client retries at the region's leader.
            let gone: Vec<RequestId> = self
                .waiters
                .iter()
                .filter(|(_, w)| matches!(w, Waiter::Read(_, r) | Waiter::Change(_, r) if *r == id))
                .map(|(&k, _)| k)
                .collect();
            for k in gone {
                let e = RequestError::RegionNotFound(format!(
                    "region {id}'s peer on store {} was removed",
                    self.core.store_id()
                ));
                match self.waiters.remove(&k) {
                    Some(Waiter::Read(tx, _)) => {
                        let _ = tx.send(Err(e));
                    }
                    Some(Waiter::Change(tx, _)) => {
                        let _ = tx.send(Err(e));
                    }
                    _ => {}
                }
            }
        }
    }

    /// Region `id`'s membership as its peer here applied it, with each peer's store and that
    /// store's client address (the leader adds every peer's progress).
    fn members(&self, id: u64) -> Result<MembersView, RequestError> {
        let (Some(core), Some(meta)) = (self.core.core(id), self.core.region(id)) else {
            return Err(region_error(RegionError::NotFound(id)));
        };
        let r = core.replica();
        let addrs = lock(&self.addrs);
        Ok(MembersView {
            node_id: r.id(),
            leader_id: r.leader_id(),
            commit_index: r.commit_index(),
            membership: crate::raft_core::Membership::from(&r.conf_state()),
            progress: r.progress(),
            stores: meta
                .peers
                .iter()
                .map(|p| {
                    let addr = addrs.get(&p.store_id).cloned().unwrap_or_default();
                    (p.id, p.store_id, addr)
                })
                .collect(),
        })
    }

    fn on_tick(&mut self) {
        self.core.tick();
        let now = Instant::now();
        if !self.registered
            && self
                .last_register
                .is_none_or(|t| now.duration_since(t) >= REGISTER_EVERY)
        {
            self.last_register = Some(now);
            let _ = self.jobs.send(Job::Register(self.me.clone(), self.token));
        }
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
        RegionError::Invalid(m) => RequestError::InvalidArgument(m),
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
        "this is a PD-mode store: a request must name its region or key (a client of a \
         config-file cluster was pointed at a store)"
            .into(),
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
