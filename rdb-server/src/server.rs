//! What every server process shares (the stop, the Raft thread, health, handover, listeners),
//! and starting a process of one Raft group (a PD node, see [`crate::node`]): check the
//! configuration and the data directory, open storage, bind the listeners, start the node task
//! on its own thread, and serve gRPC until asked to stop. rdb's nodes and stores start in
//! `store::serve`.

use std::path::Path;
use std::sync::Arc;

use rdb_proto::peer::peer_server::PeerServer;
use rdb_storage::{DirKind, Engine, Ident, MemberRecord, RaftStorage};
use slog::{info, warn, Logger};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::config::{ClusterConfig, NodeId};
use crate::members::{Directory, SharedDirectory};
use crate::node::{core_config, Node};
use crate::raft_core::{Application, Core};
use crate::router::Mailbox;
use crate::service::peer::{PeerIdent, PeerService};
use crate::transport::GrpcTransport;
use crate::ServerError;

/// Capacity of each of the node task's bounded queues (peer messages, client requests).
pub(crate) const MAILBOX: usize = 16 * 1024;
/// Largest snapshot file this node accepts from a peer.
const MAX_SNAPSHOT_BYTES: u64 = 1 << 40;

/// A node whose Raft task runs, with its listeners bound, ready for its client service.
pub struct Started<O> {
    /// The node task's mailbox, for the client service.
    pub mailbox: Mailbox<O>,
    /// The node's database, for reads outside the Raft task.
    pub engine: Engine,
    /// Members' addresses as this node applied them.
    pub members: SharedDirectory,
    /// Bound for the client service.
    pub client_listener: TcpListener,
    peer_listener: TcpListener,
    peer_service: PeerService,
    peer_tls: Option<tonic::transport::ServerTlsConfig>,
    max_peer_message: usize,
    raft_thread: RaftThread,
    logger: Logger,
}

/// Opens node `node_id`'s data directory with the start-up checks, builds its application
/// with `make_app`, binds its listeners and starts its Raft task on a thread of its own, with
/// the transport to its peers (a PD node's).
pub async fn start<A, F>(
    config: &Arc<ClusterConfig>,
    node_id: NodeId,
    kind: DirKind,
    logger: &Logger,
    make_app: F,
) -> Result<Started<A::Output>, ServerError>
where
    A: Application + Send + 'static,
    A::Output: std::fmt::Debug + Send + 'static,
    F: FnOnce(&Engine) -> Result<A, ServerError>,
{
    config.validate()?;
    let me = config.node(node_id)?.clone();
    let engine = open_data_dir(&me.data_dir, kind, node_id, config)?;
    if let Some(d) = engine.recovered_install() {
        info!(logger, "finished an interrupted snapshot install"; "index" => d.index, "term" => d.term);
    }
    let snap_dir = engine.snap_dir();
    let data_dir_error = |e: rdb_storage::Error| ServerError::DataDir {
        dir: me.data_dir.clone(),
        message: e.to_string(),
    };
    refuse_removed(&engine, &me.data_dir, node_id, config.cluster_id)?;
    let directory = Directory::load(&engine, config).map_err(data_dir_error)?;
    let members = SharedDirectory::new(directory.clone());
    let app = make_app(&engine)?;
    let storage = RaftStorage::open(engine.clone(), logger.clone()).map_err(data_dir_error)?;
    engine.check_consistency().map_err(data_dir_error)?;
    let log_end =
        raft::Storage::last_index(&storage).map_err(|e| ServerError::Raft(e.to_string()))?;
    engine
        .check_durable_index(log_end)
        .map_err(data_dir_error)?;
    let core = Core::new(
        &core_config(node_id, &config.settings),
        storage,
        app,
        logger,
    )
    .map_err(|e| ServerError::Raft(e.to_string()))?;

    // Bind before anything runs so a taken port is a clear startup error.
    let (client_listener, peer_listener) = bind_listeners(
        &me.client_addr,
        &me.peer_addr,
        me.metrics_addr.as_deref(),
        logger,
    )
    .await?;

    let (_, peer_tls) = crate::tls::port_configs(None, config.peer_tls.as_ref(), node_id)?;
    let (mailbox, inbox) = Mailbox::new(MAILBOX);
    let transport = GrpcTransport::start(
        config,
        &directory.peers_of(node_id),
        node_id,
        peer_kind(kind),
        mailbox.raft_sender(),
        tokio::runtime::Handle::current(),
        snap_dir.clone(),
        logger.clone(),
    );
    let node = Node::new(
        core,
        inbox,
        Box::new(transport),
        config.clone(),
        members.clone(),
        logger.clone(),
    );
    let raft_thread = RaftThread::spawn(node.run(), mailbox.raft_sender())?;
    let peer_service = PeerService::new(
        mailbox.raft_sender(),
        PeerIdent {
            cluster_id: config.cluster_id,
            node: node_id,
            kind: peer_kind(kind),
        },
        MAX_SNAPSHOT_BYTES,
        snap_dir,
        members.clone(),
        logger.clone(),
    );
    info!(logger, "serving"; "client_addr" => &me.client_addr, "peer_addr" => &me.peer_addr,
        "cluster_id" => config.cluster_id);
    Ok(Started {
        mailbox,
        engine,
        members,
        client_listener,
        peer_listener,
        peer_service,
        peer_tls,
        max_peer_message: config.settings.max_peer_message_bytes,
        raft_thread,
        logger: logger.clone(),
    })
}

impl<O: Send + 'static> Started<O> {
    /// Serves `client` (the node's client service, built on `mailbox`) and the peer service
    /// until `shutdown` resolves or a listener fails, then stops the Raft thread.
    pub async fn serve(
        self,
        client: tonic::transport::server::Router,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (mailbox, logger) = (self.mailbox.clone(), self.logger.clone());
        tokio::spawn(async move {
            shutdown.await;
            crate::binary::stop_stage("handing leadership over");
            hand_over_leadership(&mailbox, &logger).await;
            let _ = stop_tx.send(true);
        });
        let (health, health_service) = tonic_health::server::health_reporter();
        tokio::spawn(report_health(self.mailbox.clone(), health));
        let client_server = client
            .add_service(health_service)
            .serve_with_incoming_shutdown(incoming(self.client_listener), stopped(stop_rx.clone()));
        let mut peer_builder = tonic::transport::Server::builder().tcp_nodelay(true);
        if let Some(tls) = self.peer_tls {
            peer_builder = peer_builder
                .tls_config(tls)
                .map_err(|e| ServerError::Tls(format!("peer port: {e}")))?;
        }
        let peer_server = peer_builder
            .add_service(
                PeerServer::new(self.peer_service)
                    .max_decoding_message_size(self.max_peer_message)
                    .max_encoding_message_size(self.max_peer_message),
            )
            .serve_with_incoming_shutdown(incoming(self.peer_listener), stopped(stop_rx.clone()));
        let serving = async {
            tokio::try_join!(client_server, peer_server)
                .map(drop)
                .map_err(|e| ServerError::Serve(e.to_string()))
        };
        serve_until_stopped(serving, stop_rx, self.raft_thread, &self.logger).await
    }
}

/// Binds a server's client and peer listeners, and serves Prometheus metrics on
/// `metrics_addr` when given: a taken port is a clear start-up error, before anything runs.
pub(crate) async fn bind_listeners(
    client_addr: &str,
    peer_addr: &str,
    metrics_addr: Option<&str>,
    logger: &Logger,
) -> Result<(TcpListener, TcpListener), ServerError> {
    let bind = |addr: &str, what: &'static str| {
        let addr = addr.to_string();
        async move {
            TcpListener::bind(&addr)
                .await
                .map_err(|e| ServerError::Bind {
                    what,
                    addr,
                    source: e,
                })
        }
    };
    let client = bind(client_addr, "client").await?;
    let peer = bind(peer_addr, "peer").await?;
    if let Some(addr) = metrics_addr {
        let listener = bind(addr, "metrics").await?;
        let log = logger.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(listener).await {
                warn!(log, "metrics endpoint stopped"; "error" => %e);
            }
        });
    }
    Ok((client, peer))
}

/// Refuses to start node `node_id` of cluster `cluster_id` on `dir` once it learnt it was
/// removed from the cluster (see `Engine::mark_removed`): it must never serve again.
pub(crate) fn refuse_removed(
    engine: &Engine,
    dir: &Path,
    node_id: NodeId,
    cluster_id: u64,
) -> Result<(), ServerError> {
    let removed = engine.removed().map_err(|e| ServerError::DataDir {
        dir: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    match removed {
        None => Ok(()),
        Some(index) => Err(ServerError::DataDir {
            dir: dir.to_path_buf(),
            message: format!(
                "node {node_id} was removed from cluster {cluster_id} (at log index {index}) and \
                 will not serve again; to bring this machine back, delete the directory and add \
                 it as a new member with a new id"
            ),
        }),
    }
}

/// Resolves once `rx` says the node is stopping: the graceful-shutdown signal of its servers.
pub(crate) async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// How long in-flight client calls get once a node stops serving.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Runs `serving` (a node's or store's gRPC servers, which stop gracefully once `stop` says
/// so) until it ends, or until `STOP_GRACE` after the stop began (graceful shutdown waits for
/// open streams, and peers keep theirs open for good); then stops the Raft thread. Everything
/// acknowledged is synced already; requests still queued get "shutting down".
pub(crate) async fn serve_until_stopped(
    serving: impl std::future::Future<Output = Result<(), ServerError>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    raft_thread: RaftThread,
    logger: &Logger,
) -> Result<(), ServerError> {
    let result = tokio::select! {
        r = serving => r,
        _ = async {
            let _ = stop.wait_for(|v| *v).await;
            crate::binary::stop_stage("finishing client calls");
            tokio::time::sleep(STOP_GRACE).await;
        } => Ok(()),
    };
    info!(logger, "stopped serving");
    crate::binary::stop_stage("stopping the Raft thread");
    raft_thread.stop().await;
    info!(logger, "stopped");
    result
}

/// The thread a node's (or a store's) Raft task runs on, stopped and joined on a clean stop so
/// that its core, and with it its database handles, are gone before the process exits.
pub(crate) struct RaftThread {
    handle: std::thread::JoinHandle<()>,
    raft: crate::router::RaftSender,
}

impl RaftThread {
    /// Runs `task` on a thread of its own with a current-thread runtime (its fsyncs block, and
    /// nothing else waits on them); `raft` reaches its mailbox, to stop it.
    pub(crate) fn spawn(
        task: impl std::future::Future<Output = ()> + Send + 'static,
        raft: crate::router::RaftSender,
    ) -> Result<RaftThread, ServerError> {
        let handle = std::thread::Builder::new()
            .name("raft".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(task),
                    Err(e) => crate::logging::fatal_exit(&format!(
                        "cannot start the raft thread's runtime: {e}"
                    )),
                }
            })
            .map_err(ServerError::Io)?;
        Ok(RaftThread { handle, raft })
    }

    /// Asks the Raft task to stop and waits for its thread to end.
    pub(crate) async fn stop(self) {
        self.raft.stop();
        let handle = self.handle;
        // A panic there has ended the process already (see `logging::install_panic_hook`).
        let _ = tokio::task::spawn_blocking(move || handle.join()).await;
    }
}

/// How peer messages name a kind of process (see [`rdb_proto::peer::PeerKind`]).
pub(crate) fn peer_kind(kind: DirKind) -> rdb_proto::peer::PeerKind {
    use rdb_proto::peer::PeerKind;
    match kind {
        DirKind::Node => PeerKind::Node,
        DirKind::Store => PeerKind::Store,
        DirKind::Pd => PeerKind::Pd,
    }
}

/// A gRPC server builder for node `id`'s client port, with TLS when the config has `[tls]`.
pub fn client_server_builder(
    config: &ClusterConfig,
    id: NodeId,
) -> Result<tonic::transport::Server, ServerError> {
    let builder = tonic::transport::Server::builder().tcp_nodelay(true);
    match &config.tls {
        Some(t) => builder
            .tls_config(crate::tls::server_config(t, id, t.client_cert_auth)?)
            .map_err(|e| ServerError::Tls(format!("client port: {e}"))),
        None => Ok(builder),
    }
}

/// How long a stopping leader waits for its successor to take over.
const HANDOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// On a clean stop (SIGTERM, Ctrl-C), a leader hands leadership to its most caught-up follower
/// and waits for it to take over, so clients see a handover instead of an election timeout. A
/// store does so for every region it leads.
pub(crate) async fn hand_over_leadership<O: Send + 'static>(mailbox: &Mailbox<O>, logger: &Logger) {
    use crate::router::Msg;
    let status = || mailbox.call(|tx| Msg::Status { tx });
    let Ok(s) = status().await else { return };
    // (region, peer here) of every group led here: a node's one group is region 0.
    let led: Vec<(u64, u64)> = match &s.regions {
        None if s.leader_id != 0 && s.leader_id == s.node_id => vec![(0, s.node_id)],
        None => Vec::new(),
        Some(regions) => regions
            .iter()
            .filter(|r| r.peer_id != 0 && r.leader.0 == r.peer_id)
            .map(|r| (r.region_id, r.peer_id))
            .collect(),
    };
    let mut handed = Vec::new();
    for &(region_id, me) in &led {
        let Ok(Ok(view)) = mailbox.call(|tx| Msg::Members { region_id, tx }).await else {
            continue;
        };
        let target = view
            .progress
            .iter()
            .filter(|&&(p, _)| p != me && view.membership.voters.contains(&p))
            .max_by_key(|&&(_, m)| m)
            .copied();
        let Some((to, matched)) = target.or_else(|| {
            // A node's follower progress, when the members call lists none.
            s.followers.iter().max_by_key(|&&(_, m)| m).copied()
        }) else {
            continue;
        };
        let started = mailbox
            .call(|tx| Msg::TransferLeader { region_id, to, tx })
            .await;
        if matches!(started, Ok(Ok(()))) {
            info!(logger, "stopping: handing leadership over"; "region" => region_id, "to" => to,
                "matched" => matched);
            handed.push((region_id, me));
        }
    }
    if handed.is_empty() {
        return;
    }
    let deadline = tokio::time::Instant::now() + HANDOVER_WAIT;
    while tokio::time::Instant::now() < deadline {
        if let Ok(s) = status().await {
            let still: Vec<u64> = match &s.regions {
                None if s.leader_id == s.node_id || s.leader_id == 0 => vec![0],
                None => {
                    info!(logger, "leadership handed over"; "leader" => s.leader_id, "term" => s.term);
                    Vec::new()
                }
                Some(regions) => regions
                    .iter()
                    .filter(|r| {
                        handed
                            .iter()
                            .any(|&(id, me)| id == r.region_id && r.leader.0 == me)
                    })
                    .map(|r| r.region_id)
                    .collect(),
            };
            if still.is_empty() {
                if s.regions.is_some() {
                    info!(logger, "leadership handed over"; "regions" => handed.len());
                }
                return;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    warn!(logger, "leadership was not handed over in time; stopping anyway";
        "regions" => handed.len());
}

/// Applied this far behind commit, a node reports itself not serving.
const HEALTH_MAX_APPLY_LAG: u64 = 1000;

/// Keeps the gRPC health service's overall status ("") true: SERVING while the node knows a
/// leader and its applied index is within `HEALTH_MAX_APPLY_LAG` of its commit index (a
/// store: while every region it hosts does, so a store with no region yet serves).
pub(crate) async fn report_health<O: Send + 'static>(
    mailbox: Mailbox<O>,
    health: tonic_health::server::HealthReporter,
) {
    use tonic_health::ServingStatus;
    let mut every = tokio::time::interval(std::time::Duration::from_millis(250));
    loop {
        every.tick().await;
        let status = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            mailbox.call(|tx| crate::router::Msg::Status { tx }),
        )
        .await;
        let serving = match status {
            Ok(Ok(s)) => match &s.regions {
                Some(regions) => regions.iter().all(|r| {
                    r.leader.0 != 0
                        && r.commit_index.saturating_sub(r.applied_index) <= HEALTH_MAX_APPLY_LAG
                }),
                None => {
                    s.leader_id != 0
                        && s.commit_index.saturating_sub(s.applied_index) <= HEALTH_MAX_APPLY_LAG
                }
            },
            Ok(Err(_)) => return,
            Err(_) => false,
        };
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        health.set_service_status("", status).await;
    }
}

/// Runs rdb node `node_id` of `config` until `shutdown` resolves or a listener fails: a store
/// that hosts region 1 with no PD (see [`crate::store::serve::run_config_node`]).
pub async fn run(
    config: ClusterConfig,
    node_id: NodeId,
    logger: Logger,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    crate::store::serve::run_config_node(config, node_id, logger, shutdown).await
}

/// Resolves on Ctrl-C or SIGTERM: what a node's binary stops on. From then on the stop has
/// [`crate::binary::STOP_BOUND`] to finish. The signals are caught from this call on (inside a
/// runtime, as [`crate::binary::run_node`] makes its `serve` call), not from the future's first
/// poll: a stop that comes while the node still starts is a clean stop too, never the default
/// action's kill.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, Signal, SignalKind};
    let term = signal(SignalKind::terminate()).ok();
    let int = signal(SignalKind::interrupt()).ok();
    async fn recv(s: Option<Signal>) {
        match s {
            Some(mut s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    async move {
        tokio::select! {
            _ = recv(term) => {}
            _ = recv(int) => {}
        }
        crate::binary::arm_stop_deadline();
    }
}

/// A listener stream with Nagle off: tonic ignores `Server::tcp_nodelay` for custom incoming
/// streams, and Nagle plus delayed ACKs would add ~40 ms to small responses.
pub(crate) fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// The member records of the file's nodes: what a new data directory starts with.
pub fn member_records(config: &ClusterConfig) -> Vec<MemberRecord> {
    config
        .nodes
        .iter()
        .map(|n| MemberRecord {
            id: n.id,
            peer_addr: n.peer_addr.clone(),
            client_addr: n.client_addr.clone(),
            removed: false,
            store_id: 0,
        })
        .collect()
}

/// Opens a node's data directory, creating it on first start, and checks it belongs to this
/// kind of process (`kind`), cluster and node. Existing data is never rewritten or "repaired".
pub fn open_data_dir(
    dir: &Path,
    kind: DirKind,
    node_id: NodeId,
    config: &ClusterConfig,
) -> Result<Engine, ServerError> {
    let cluster_id = config.cluster_id;
    std::fs::create_dir_all(dir).map_err(|e| ServerError::DataDir {
        dir: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    let opts = config.settings.engine_options();
    let engine = Engine::open_with(dir, opts).map_err(|e| ServerError::DataDir {
        dir: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    engine.claim_kind(kind).map_err(|e| ServerError::DataDir {
        dir: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    // A node joining a running cluster starts with no membership: it arrives with the
    // leader's snapshot. A node of the file's initial cluster starts with the file's.
    let (voters, records): (Vec<NodeId>, Vec<MemberRecord>) = if config.joining {
        (Vec::new(), Vec::new())
    } else {
        (
            config.nodes.iter().map(|n| n.id).collect(),
            member_records(config),
        )
    };
    engine
        .bootstrap_or_check(
            Ident {
                cluster_id,
                node_id,
            },
            &voters,
            &records,
        )
        .map_err(|e| ServerError::DataDir {
            dir: dir.to_path_buf(),
            message: e.to_string(),
        })?;
    Ok(engine)
}
