//! `rdb-pd`: runs one node of an rdb placement driver group.
//!
//! With no arguments it runs a single PD node on 127.0.0.1 (client port 2399, peer port 2400)
//! with its data in `./rdb-pd-data`. With `--config FILE --node-id N` it runs node N of the
//! group described in FILE (1, 3 or 5 nodes; rdb-server's format plus an optional `[pd]` table).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rdb_pd::config::PdConfig;

/// Runs one node of an rdb placement driver group.
#[derive(Debug, Parser)]
#[command(name = "rdb-pd", version, about)]
struct Args {
    /// PD group configuration file (TOML). Without it: one node on 127.0.0.1:2399, data in ./rdb-pd-data.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Which node of the configuration this process is. Optional when the file has one node.
    #[arg(long, short = 'n')]
    node_id: Option<u64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    rdb_server::logging::install_panic_hook();
    let scenario = fail::FailScenario::setup();
    let result = run(args);
    rdb_server::logging::flush();
    scenario.teardown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rdb-pd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let config = match &args.config {
        Some(path) => PdConfig::load(path)?,
        None => PdConfig::single_node_default(),
    };
    let node_id = match (args.node_id, config.cluster.nodes.as_slice()) {
        (Some(id), _) => id,
        (None, [only]) => only.id,
        (None, _) => return Err("--node-id is required when the config has several nodes".into()),
    };
    config.cluster.node(node_id)?;
    let s = &config.cluster.settings;
    let logger = rdb_server::logging::logger(s.log_format, &s.log_level);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("rdb-pd-worker")
        .build()?;
    let result = rt.block_on(rdb_pd::run(
        config,
        node_id,
        logger.clone(),
        rdb_server::server::shutdown_signal(),
    ));
    drop(logger);
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    result.map_err(Into::into)
}
