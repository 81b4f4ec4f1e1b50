//! Starting a node: check the configuration and the data directory, open storage, bind the
//! listeners, start the node task on its own thread, and serve gRPC until asked to stop.

use std::path::Path;
use std::sync::Arc;

use rdb_proto::kv::kv_server::KvServer;
use rdb_proto::peer::peer_server::PeerServer;
use rdb_storage::{ApplySettings, Engine, EngineOptions, Ident, RaftStorage, StateMachine};
use slog::{info, o, Logger};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::config::{ClusterConfig, NodeId};
use crate::node::{core_config, Node};
use crate::raft_core::Core;
use crate::router::Mailbox;
use crate::service::kv::KvService;
use crate::service::peer::PeerService;
use crate::transport::GrpcTransport;
use crate::ServerError;

/// Capacity of each of the node task's bounded queues (peer messages, client requests).
const MAILBOX: usize = 16 * 1024;
/// Largest snapshot file this node accepts from a peer.
const MAX_SNAPSHOT_BYTES: u64 = 1 << 40;

/// Runs node `node_id` of `config` until `shutdown` resolves or a listener fails.
pub async fn run(
    config: ClusterConfig,
    node_id: NodeId,
    logger: Logger,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    config.validate()?;
    let me = config.node(node_id)?.clone();
    let logger = logger.new(o!("node" => node_id));
    let engine = open_data_dir(&me.data_dir, config.cluster_id, node_id, &config)?;
    if let Some(d) = engine.recovered_install() {
        info!(logger, "finished an interrupted snapshot install"; "index" => d.index, "term" => d.term);
    }
    let snap_dir = engine.snap_dir();
    let data_dir_error = |e: rdb_storage::Error| ServerError::DataDir {
        dir: me.data_dir.clone(),
        message: e.to_string(),
    };
    let settings = ApplySettings {
        dedup_window: config.settings.dedup_window,
    };
    if engine
        .check_apply_settings(settings)
        .map_err(data_dir_error)?
    {
        info!(logger, "recorded apply settings"; "dedup_window" => settings.dedup_window);
    }
    let storage = RaftStorage::open(engine.clone(), logger.clone()).map_err(data_dir_error)?;
    engine.check_consistency().map_err(data_dir_error)?;
    let log_end =
        raft::Storage::last_index(&storage).map_err(|e| ServerError::Raft(e.to_string()))?;
    engine
        .check_durable_index(log_end)
        .map_err(data_dir_error)?;
    let app =
        StateMachine::new(engine.clone(), config.settings.dedup_window).map_err(data_dir_error)?;
    let hashes = app.hashes();
    let core = Core::new(
        &core_config(node_id, &config.settings),
        storage,
        app,
        &logger,
    )
    .map_err(|e| ServerError::Raft(e.to_string()))?;

    // Bind before anything runs so a taken port is a clear startup error.
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
    let client_listener = bind(&me.client_addr, "client").await?;
    let peer_listener = bind(&me.peer_addr, "peer").await?;

    let config = Arc::new(config);
    let (mailbox, inbox) = Mailbox::new(MAILBOX);
    let transport = GrpcTransport::start(
        &config,
        node_id,
        mailbox.clone(),
        tokio::runtime::Handle::current(),
        snap_dir.clone(),
        logger.clone(),
    );
    let node = Node::new(
        core,
        inbox,
        Box::new(transport),
        config.clone(),
        logger.clone(),
    );
    // The node task gets a thread of its own: its fsyncs block, and nothing else waits on them.
    let node_thread = std::thread::Builder::new()
        .name("raft".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(node.run()),
                Err(e) => crate::logging::fatal_exit(&format!(
                    "cannot start the raft thread's runtime: {e}"
                )),
            }
        })
        .map_err(ServerError::Io)?;

    let s = &config.settings;
    let kv = KvService::new(
        mailbox.clone(),
        engine,
        hashes,
        Arc::new(s.clone()),
        config.cluster_id,
        me.client_addr.clone(),
    );
    let max_client_message = 2 * (s.max_value_bytes + s.max_key_bytes) + (1 << 20);
    let peer_svc = PeerService::new(
        mailbox,
        config.cluster_id,
        node_id,
        MAX_SNAPSHOT_BYTES,
        snap_dir,
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_rx_main = stop_rx.clone();
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    info!(logger, "serving"; "client_addr" => &me.client_addr, "peer_addr" => &me.peer_addr,
        "cluster_id" => config.cluster_id);
    let client_server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(
            KvServer::new(kv)
                .max_decoding_message_size(max_client_message)
                .max_encoding_message_size(usize::MAX),
        )
        .serve_with_incoming_shutdown(incoming(client_listener), stopped(stop_rx.clone()));
    let peer_server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(
            PeerServer::new(peer_svc)
                .max_decoding_message_size(s.max_peer_message_bytes)
                .max_encoding_message_size(s.max_peer_message_bytes),
        )
        .serve_with_incoming_shutdown(incoming(peer_listener), stopped(stop_rx));
    let mut stopping = stop_rx_main;
    let serving = async { tokio::try_join!(client_server, peer_server) };
    tokio::select! {
        r = serving => {
            r.map_err(|e| ServerError::Serve(e.to_string()))?;
        }
        // Graceful shutdown waits for open streams, and peers keep theirs open for good: give
        // in-flight client calls a moment, then stop. Everything acknowledged is already synced.
        _ = async {
            let _ = stopping.wait_for(|v| *v).await;
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        } => {}
    }
    info!(logger, "stopped");
    // The node thread ends with the process; everything it acknowledged is already synced.
    drop(node_thread);
    Ok(())
}

/// A listener stream with Nagle off: tonic ignores `Server::tcp_nodelay` for custom incoming
/// streams, and Nagle plus delayed ACKs would add ~40 ms to small responses.
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Opens a node's data directory, creating it on first start, and checks it belongs to this
/// cluster and node. Existing data is never rewritten or "repaired".
pub fn open_data_dir(
    dir: &Path,
    cluster_id: u64,
    node_id: NodeId,
    config: &ClusterConfig,
) -> Result<Engine, ServerError> {
    std::fs::create_dir_all(dir).map_err(|e| ServerError::DataDir {
        dir: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    let opts = EngineOptions {
        max_wal_bytes: config.settings.max_wal_bytes,
    };
    let engine = Engine::open_with(dir, opts).map_err(|e| ServerError::DataDir {
        dir: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    let voters: Vec<NodeId> = config.nodes.iter().map(|n| n.id).collect();
    engine
        .bootstrap_or_check(
            Ident {
                cluster_id,
                node_id,
            },
            &voters,
        )
        .map_err(|e| ServerError::DataDir {
            dir: dir.to_path_buf(),
            message: e.to_string(),
        })?;
    Ok(engine)
}
