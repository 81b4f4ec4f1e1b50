//! `rdb-server`: runs one node of an rdb cluster.
//!
//! With no arguments it runs a single-node cluster on 127.0.0.1 (client port 2379, peer port
//! 2380) with its data in `./rdb-data`. With `--config FILE --node-id N` it runs node N of the
//! cluster described in FILE.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rdb_server::config::ClusterConfig;

/// Runs one node of an rdb cluster.
#[derive(Debug, Parser)]
#[command(name = "rdb-server", version, about)]
struct Args {
    /// Cluster configuration file (TOML). Without it: a single node on 127.0.0.1 with data in ./rdb-data.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Which node of the configuration this process is. Optional when the file has one node.
    #[arg(long, short = 'n')]
    node_id: Option<u64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    rdb_server::logging::install_panic_hook();
    // Fault points from FAILPOINTS (tests); inert in builds without the `failpoints` feature.
    let scenario = fail::FailScenario::setup();
    let result = run(args);
    rdb_server::logging::flush();
    scenario.teardown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rdb-server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let config = match &args.config {
        Some(path) => ClusterConfig::load(path)?,
        None => ClusterConfig::single_node_default(),
    };
    let node_id = match (args.node_id, config.nodes.as_slice()) {
        (Some(id), _) => id,
        (None, [only]) => only.id,
        (None, _) => return Err("--node-id is required when the config has several nodes".into()),
    };
    config.node(node_id)?;
    let logger =
        rdb_server::logging::logger(config.settings.log_format, &config.settings.log_level);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("rdb-worker")
        .build()?;
    let result = rt.block_on(rdb_server::server::run(
        config,
        node_id,
        logger.clone(),
        rdb_server::server::shutdown_signal(),
    ));
    drop(logger);
    // Do not wait for the raft thread or lingering connections: state is already durable.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    result.map_err(Into::into)
}
