//! What the `main` of a node binary (`rdb-server`, `rdb-pd`) does around the node itself.

use std::future::Future;
use std::process::ExitCode;

use slog::Logger;

use crate::config::{ClusterConfig, ConfigError, NodeId};
use crate::ServerError;

/// Runs `run` with the panic hook installed and fault points read from `FAILPOINTS` (inert
/// without the `failpoints` feature), flushes the logs, and on failure prints one line
/// `NAME: cause` and exits 1.
pub fn main_of(
    name: &str,
    run: impl FnOnce() -> Result<(), Box<dyn std::error::Error>>,
) -> ExitCode {
    crate::logging::install_panic_hook();
    let scenario = fail::FailScenario::setup();
    let result = run();
    crate::logging::flush();
    scenario.teardown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The node this process is: `--node-id`, or the only node of a one-node file.
pub fn node_id(config: &ClusterConfig, arg: Option<NodeId>) -> Result<NodeId, ConfigError> {
    let id = match (arg, config.nodes.as_slice()) {
        (Some(id), _) => id,
        (None, [only]) => only.id,
        (None, _) => {
            return Err(ConfigError::Invalid(
                "--node-id is required when the config has several nodes".into(),
            ))
        }
    };
    config.node(id)?;
    Ok(id)
}

/// Runs a node (`serve`, given the logger) on a multi-threaded runtime until it returns, then
/// stops without waiting for the Raft thread or lingering connections: what the node
/// acknowledged is already durable.
pub fn run_node<F>(
    config: &ClusterConfig,
    thread_name: &str,
    serve: impl FnOnce(Logger) -> F,
) -> Result<(), Box<dyn std::error::Error>>
where
    F: Future<Output = Result<(), ServerError>>,
{
    let s = &config.settings;
    let logger = crate::logging::logger(s.log_format, &s.log_level);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(thread_name)
        .build()?;
    let result = rt.block_on(serve(logger.clone()));
    drop(logger);
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    result.map_err(Into::into)
}
