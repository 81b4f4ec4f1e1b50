//! What the `main` of a node binary (`rdb-server`, `rdb-pd`) does around the node itself,
//! including the clean stop: on SIGTERM or Ctrl-C the node stops serving, stops its Raft thread
//! and every task that holds the database, waits for RocksDB to close, and exits 0. A stop that
//! does not finish within [`STOP_BOUND`] exits 1 with the step it was stuck in; it never hangs.

use std::future::Future;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

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
    let _ = NAME.set(name.to_string());
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

/// The binary's name, for the one-line causes it prints.
static NAME: OnceLock<String> = OnceLock::new();

/// The binary's name (`rdb-server` when `main_of` did not set one).
pub fn name() -> &'static str {
    NAME.get().map_or("rdb-server", String::as_str)
}

/// How long a clean stop may take, from the signal to the exit (a leader's handover included).
pub const STOP_BOUND: Duration = Duration::from_secs(5);

/// The step of the stop reached so far, for the cause printed when it takes too long.
static STOP_STAGE: Mutex<&str> = Mutex::new("stopping");
/// Whether the stop's deadline runs already.
static STOP_ARMED: AtomicBool = AtomicBool::new(false);

/// Records the step a stop has reached (see [`arm_stop_deadline`]).
pub fn stop_stage(stage: &'static str) {
    *STOP_STAGE.lock().unwrap_or_else(|p| p.into_inner()) = stage;
}

/// Starts the stop's deadline (once; later calls do nothing): if the process is still there
/// [`STOP_BOUND`] later, it prints `NAME: the stop did not finish within 5 s (STEP)` and exits 1
/// at once, without the exit handlers that could hang or abort on a database still in use.
pub fn arm_stop_deadline() {
    if STOP_ARMED.swap(true, Ordering::SeqCst) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("stop-deadline".into())
        .spawn(|| {
            std::thread::sleep(STOP_BOUND);
            let stage = *STOP_STAGE.lock().unwrap_or_else(|p| p.into_inner());
            crate::logging::exit_now(
                1,
                &format!(
                    "the stop did not finish within {} s (stuck {stage})",
                    STOP_BOUND.as_secs()
                ),
            );
        });
    if spawned.is_err() {
        crate::logging::exit_now(
            1,
            "cannot start the stop's deadline thread; exiting at once",
        );
    }
}

/// Runs a node (`serve`, given the logger) on a multi-threaded runtime until it returns (its
/// Raft thread stopped), then ends every task left on the runtime and waits until every
/// database the process opened is closed, so the process exits with nothing using RocksDB.
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
    // `serve` is called inside the runtime: what it sets up at once (the stop signals) can
    // use it.
    let serving = {
        let _inside = rt.enter();
        serve(logger.clone())
    };
    let result = rt.block_on(serving);
    // A node that failed (rather than being stopped) gets the same bound for its way out.
    arm_stop_deadline();
    stop_stage("ending the remaining tasks");
    // Connection tasks and blocking reads may still hold the database: end the former, wait for
    // the latter (the deadline bounds both).
    rt.shutdown_timeout(STOP_BOUND);
    stop_stage("closing the database");
    let open = rdb_storage::engine::wait_all_closed(STOP_BOUND);
    if let Some(path) = open.first() {
        crate::logging::exit_now(
            1,
            &format!(
                "the stop could not close the database at {}: it is still in use",
                path.display()
            ),
        );
    }
    if result.is_ok() {
        slog::info!(logger, "stopped cleanly");
    }
    drop(logger);
    result.map_err(Into::into)
}
