//! rdb-pd, the placement driver: a timestamp oracle, an id allocator, and the map of stores and
//! regions that lets rdb grow past one Raft group.
//!
//! A PD node is an rdb node with another application: the same Raft core, RocksDB storage,
//! transport and start-up checks (`rdb_server::server::start`), over [`state::PdApp`] instead of
//! the KV state machine, and the `Pd` gRPC service instead of `Kv`.
//!
//! - [`config`]: the configuration file (rdb-server's plus `[pd]`).
//! - [`state`]: the replicated metadata and how `PdCommand`s apply to it.
//! - [`tso`]: the timestamp oracle.
//! - [`service`]: the gRPC service.
//! - [`join`]: `rdb-pd --join`, a new PD node's configuration from the running group.

pub mod config;
pub mod join;
pub mod metrics;
mod raft_calls;
/// PD's scheduling decisions; they live in rdb-server, beside the stores and the simulation
/// that runs them.
pub use rdb_server::schedule;
pub mod service;
pub mod state;
pub mod tso;

use std::sync::Arc;

use rdb_proto::pd::pd_server::PdServer;
use rdb_server::ServerError;
use slog::{o, Logger};

use crate::config::PdConfig;
use crate::service::PdService;
use crate::state::PdApp;

/// Runs PD node `node_id` of `config` until `shutdown` resolves or a listener fails.
pub async fn run(
    config: PdConfig,
    node_id: u64,
    logger: Logger,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    config.validate()?;
    let logger = logger.new(o!("pd_node" => node_id));
    let cluster = Arc::new(config.cluster.clone());
    let mut state = None;
    let started = rdb_server::server::start(
        &cluster,
        node_id,
        rdb_storage::DirKind::Pd,
        &logger,
        |engine| {
            let app = PdApp::open(engine.clone()).map_err(|e| ServerError::Raft(e.to_string()))?;
            state = Some(app.state());
            Ok(app)
        },
    )
    .await?;
    let state = state.unwrap_or_default();
    let limit = state.read().unwrap_or_else(|p| p.into_inner()).tso_limit;
    if let Some(cause) = tso::implausible_limit(limit, tso::now_ms()) {
        slog::warn!(logger, "timestamps refused: the persisted limit is implausibly far ahead";
            "limit_ms" => limit, "cause" => cause);
    }
    let svc = std::sync::Arc::new(PdService::new(
        started.mailbox.clone(),
        state,
        cluster,
        started.members.clone(),
        &config.pd,
        logger.clone(),
    ));
    tokio::spawn(observe_every_second(started.mailbox.clone(), svc.clone()));
    let client = rdb_server::server::client_server_builder(&config.cluster, node_id)?
        .add_service(PdServer::from_arc(svc));
    started.serve(client, shutdown).await
}

/// Keeps PD's store and region gauges current (see [`PdService::observe`]) until the node
/// stops.
async fn observe_every_second(
    mailbox: rdb_server::router::Mailbox<state::PdOutput>,
    svc: std::sync::Arc<PdService>,
) {
    let leader = rdb_server::node::role_code(raft::StateRole::Leader);
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        every.tick().await;
        let status = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            mailbox.call(|tx| rdb_server::router::Msg::Status { tx }),
        )
        .await;
        match status {
            Ok(Ok(s)) => svc.observe(s.role == leader),
            // The node stopped.
            Ok(Err(_)) => return,
            Err(_) => svc.observe(false),
        }
    }
}
