//! A PD-mode store process: `rdb-server --pd A,B,C --addr HOST:PORT --data-dir DIR`.
//!
//! At start the store registers with PD (its id comes from `AllocId` the first time and is
//! kept in the directory), and, if it hosts no region yet, takes part in the bootstrap: once
//! `replicas` stores are registered, the one with the smallest id records region 1 (every key,
//! one peer on each of those stores) with PD; each of them creates region 1 in its initial
//! state. Then one task ([`StoreTask`]) drives every region through [`StoreCore`] on a thread
//! of its own, and one port serves clients (`Kv`) and other stores (`Peer`).
//!
//! The task reports to PD off its thread (a worker task with a `PdClient`): store heartbeats
//! (on the worker's own clock, so a busy task is not taken for a dead store), a heartbeat for
//! every region it leads (at once when it starts leading or a split made it,
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
use rdb_storage::{CommandResult, DirKind, Engine};
use slog::{crit, debug, info, o, warn, Logger};
use tokio::sync::{mpsc, oneshot};

use super::{RegionError, RegionMessage, RequestRefused, StoreCore};
use crate::config::{ClusterConfig, StoreFile};
use crate::members::SharedDirectory;
use crate::raft_core::{Answer, Refusal, RequestId};
use crate::router::{
    Control, Inbox, LeaderHint, Mailbox, MembersView, Msg, NodeStatus, RegionRoute, RequestError,
};
use crate::service::backup::BackupService;
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

mod config_node;
mod heartbeats;
mod observe;
mod pd_worker;
mod split_check;
mod task;

use observe::Observer;
use pd_worker::{pd_region, pd_worker, Event, Job, Resolver, StoreBeats};
use task::{lock, StoreTask};

pub use config_node::run_config_node;
use config_node::StaticCluster;

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
    /// Where the store is (`zone`, `host`...), for PD's placement.
    pub labels: Vec<(String, String)>,
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
    let engine =
        Engine::open_with(&args.data_dir, settings.engine_options()).map_err(data_error)?;
    engine.claim_kind(DirKind::Store).map_err(data_error)?;
    engine
        .check_apply_settings(settings.apply_settings(), rdb_storage::Revisions::Stamped)
        .map_err(data_error)?;
    let pd = PdClient::with_options(args.pd.iter().cloned(), args.file.pd_client_options()?)
        .map_err(|e| ServerError::Pd(format!("client: {e}")))?;
    let Some(ident) = identify(&engine, &pd, &stop_rx, &logger).await? else {
        return Ok(());
    };
    let store_id = ident.store_id;
    let logger = logger.new(o!("store" => store_id));

    // Listen before registering: PD hears only of addresses this store really serves.
    let (client_listener, peer_listener) = crate::server::bind_listeners(
        &args.addr,
        &args.peer_addr,
        args.metrics_addr.as_deref(),
        &logger,
    )
    .await?;
    let (client_tls, peer_tls) = crate::tls::port_configs(
        args.file.tls.as_ref(),
        args.file.peer_tls.as_ref(),
        store_id,
    )?;
    let me = pdc::Store {
        id: store_id,
        address: args.addr.clone(),
        peer_address: args.peer_addr.clone(),
        labels: args.labels.clone(),
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
    // A region behind what this store recorded as durable: the directory was rolled back.
    engine
        .check_region_durable_indexes(&core.log_ends())
        .map_err(data_error)?;
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

    let started = Launch {
        store_id,
        cluster_id: ident.cluster_id,
        settings: settings.clone(),
        engine,
        core,
        addr: args.addr.clone(),
        client_listener,
        peer_listener,
        client_tls,
        peer_tls,
        link: Link::Pd {
            pd,
            me,
            token: ident.token,
            registered,
            split: args.split,
        },
        logger,
    };
    launch(started, stop_rx).await
}

/// How a store learns where its peers are and who hosts what.
pub(super) enum Link {
    /// PD mode: from PD, through the worker (see [`pd_worker`]), which also takes the store's
    /// heartbeats and allocates ids for splits.
    Pd {
        /// The PD client.
        pd: PdClient,
        /// This store as PD should know it.
        me: pdc::Store,
        /// The store's token, which PD needs to accept a change of its addresses.
        token: u64,
        /// Whether PD acknowledged this store's addresses already.
        registered: bool,
        /// When regions split.
        split: SplitConfig,
    },
    /// A config-file cluster: from its file and member records (see [`config_node`]).
    Static(StaticCluster),
}

/// A store whose regions are open and whose listeners are bound, ready to serve.
pub(super) struct Launch {
    pub(super) store_id: u64,
    pub(super) cluster_id: u64,
    pub(super) settings: crate::config::Settings,
    pub(super) engine: Engine,
    pub(super) core: StoreCore,
    /// Where clients reach this store.
    pub(super) addr: String,
    pub(super) client_listener: tokio::net::TcpListener,
    pub(super) peer_listener: tokio::net::TcpListener,
    pub(super) client_tls: Option<tonic::transport::ServerTlsConfig>,
    pub(super) peer_tls: Option<tonic::transport::ServerTlsConfig>,
    pub(super) link: Link,
    pub(super) logger: Logger,
}

/// Serves a started store: its task on a thread of its own, clients (`Kv`, health, and
/// backups) and other stores (`Peer`), until `stop` says so; then a
/// leader hands its leadership over and the task stops.
pub(super) async fn launch(
    l: Launch,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), ServerError> {
    let Launch {
        store_id,
        cluster_id,
        settings,
        engine,
        core,
        addr,
        client_listener,
        peer_listener,
        client_tls,
        peer_tls,
        link,
        logger,
    } = l;
    let config = ClusterConfig {
        cluster_id,
        nodes: Vec::new(),
        settings: settings.clone(),
        tls: None,
        peer_tls: None,
        joining: false,
    };
    let (mailbox, inbox) = Mailbox::new(crate::server::MAILBOX);
    let snap_dir = engine.snap_dir();
    let kind = match link {
        Link::Pd { .. } => PeerKind::Store,
        Link::Static(_) => PeerKind::Node,
    };
    let mut transport = GrpcTransport::start(
        &config,
        &Default::default(),
        store_id,
        kind,
        mailbox.raft_sender(),
        tokio::runtime::Handle::current(),
        snap_dir.clone(),
        logger.clone(),
    );
    // Where the other stores are: enough to serve while PD is away.
    let addrs: Arc<Mutex<HashMap<u64, String>>> = Arc::default();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
    let mut directory = SharedDirectory::default();
    let beat = pd_worker::SharedBeat::default();
    // PD mode: writes are stamped with PD's timestamps (their revisions).
    let mut stamper = None;
    let (me, token, registered, split, statics) = match link {
        Link::Pd {
            pd,
            me,
            token,
            registered,
            split,
        } => {
            let data_error =
                |e: rdb_storage::Error| ServerError::Pd(format!("data directory: {e}"));
            for (id, peer, client) in engine.store_addrs().map_err(data_error)? {
                transport.set_store(id, &peer);
                lock(&addrs).insert(id, client);
            }
            let store = StoreBeats {
                store_id,
                engine: engine.clone(),
                beat: beat.clone(),
            };
            stamper = Some(crate::service::stamps::Stamper::new(
                pd.clone(),
                logger.clone(),
            ));
            tokio::spawn(pd_worker(
                pd,
                store,
                jobs_rx,
                events_tx.clone(),
                logger.clone(),
            ));
            // Every store's address, so the first messages find their way.
            let _ = jobs_tx.send(Job::AllStores);
            (me, token, registered, split, None)
        }
        Link::Static(cluster) => {
            cluster.connect(store_id, &mut transport, &addrs);
            directory = cluster.members.clone();
            let me = pdc::Store {
                id: store_id,
                address: addr.clone(),
                ..Default::default()
            };
            (me, 0, true, SplitConfig::default(), Some(cluster))
        }
    };
    let config_region = statics.is_some().then_some(config_node::CONFIG_REGION);
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
        split,
        sizes: HashMap::new(),
        counted: HashMap::new(),
        checks: 0,
        splitting: HashMap::new(),
        led: BTreeSet::new(),
        last_split_check: Instant::now(),
        last_region_heartbeat: Instant::now(),
        beat,
        me,
        token,
        registered,
        last_register: None,
        resolver: Resolver::default(),
        compacting: None,
        observer: Observer::new(),
        statics,
        reads_this_turn: 0,
        stamped: 0,
        stopping: false,
        logger: logger.clone(),
    };
    let hashes = task.core.hashes();
    let raft_thread = crate::server::RaftThread::spawn(task.run(), mailbox.raft_sender())?;

    let kv = KvService::new(
        mailbox.clone(),
        engine.clone(),
        hashes,
        Arc::new(settings.clone()),
        cluster_id,
        addr.clone(),
        directory.clone(),
    );
    let kv = match stamper {
        Some(stamper) => kv.with_stamps(stamper),
        None => kv,
    };
    let peer = PeerService::new(
        mailbox.raft_sender(),
        PeerIdent {
            cluster_id,
            node: store_id,
            kind,
        },
        MAX_SNAPSHOT_BYTES,
        snap_dir,
        directory,
        logger.clone(),
    );
    let max_client_message = 2 * (settings.max_value_bytes + settings.max_key_bytes) + (1 << 20);
    info!(logger, "serving"; "addr" => &addr, "peer_addr" => peer_listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        "cluster_id" => cluster_id, "tls" => client_tls.is_some(),
        "peer_tls" => peer_tls.is_some());
    let mut client_builder = tonic::transport::Server::builder().tcp_nodelay(true);
    if let Some(tls) = client_tls {
        client_builder = client_builder
            .tls_config(tls)
            .map_err(|e| ServerError::Tls(format!("client port: {e}")))?;
    }
    let (health, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(crate::server::report_health(mailbox.clone(), health));
    let mut client_router = client_builder.add_service(health_service).add_service(
        KvServer::new(kv)
            .max_decoding_message_size(max_client_message)
            .max_encoding_message_size(usize::MAX),
    );
    // `rdb-cli snapshot save`: service/backup.rs. A config-file node backs up its one region;
    // a PD-mode store, any region it leads that a request names.
    let backup = BackupService::new(
        mailbox.clone(),
        engine.clone(),
        rdb_storage::Ident {
            cluster_id,
            node_id: store_id,
        },
        config_region,
        &settings,
        &logger,
    );
    client_router = client_router.add_service(backup.into_server());
    // A stop asked for: a leader hands over first, then the servers stop.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    {
        let (mailbox, logger, mut stop) = (mailbox.clone(), logger.clone(), stop);
        tokio::spawn(async move {
            let _ = stop.wait_for(|v| *v).await;
            crate::binary::stop_stage("handing leadership over");
            crate::server::hand_over_leadership(&mailbox, &logger).await;
            let _ = stop_tx.send(true);
        });
    }
    let client_server = client_router.serve_with_incoming_shutdown(
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

/// Region 1, if this store hosts a peer of it: recorded with PD by the store with the smallest
/// id once `replicas` registered stores are up, and created in its initial state on each of
/// them. Waits (retrying) until PD is bootstrapped. Meanwhile the store heartbeats, so that PD
/// counts it up, and a store that registered and then died (Down to PD) is never picked.
async fn bootstrap(
    pd: &PdClient,
    me: &pdc::Store,
    token: u64,
    replicas: usize,
    stop: &tokio::sync::watch::Receiver<bool>,
    logger: &Logger,
) -> Result<Bootstrap, ServerError> {
    let mut waited = Instant::now();
    let mut beat: Option<Instant> = None;
    loop {
        if beat.is_none_or(|t| t.elapsed() >= STORE_HEARTBEAT_EVERY) {
            beat = Some(Instant::now());
            let stats = StoreStats {
                store_id: me.id,
                ..Default::default()
            };
            if let Err(e) = pd.store_heartbeat(stats).await {
                debug!(logger, "store heartbeat before the bootstrap failed"; "error" => %e);
            }
        }
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
        // Only stores PD hears from: one that registered and died is Down.
        let mut ids: Vec<u64> = stores
            .iter()
            .filter(|s| s.state == pdc::StoreState::Up)
            .map(|s| s.id)
            .collect();
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
                "registered" => stores.len(), "up" => ids.len(), "needed" => replicas);
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
