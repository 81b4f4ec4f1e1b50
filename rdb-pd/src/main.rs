//! `rdb-pd`: runs one node of an rdb placement driver group.
//!
//! With no arguments it runs a single PD node on 127.0.0.1 (client port 2399, peer port 2400)
//! with its data in `./rdb-pd-data`. With `--config FILE --node-id N` it runs node N of the
//! group described in FILE (1, 3 or 5 nodes; rdb-server's format plus an optional `[pd]` table).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rdb_pd::config::PdConfig;
use rdb_server::{binary, server};

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
    binary::main_of("rdb-pd", || {
        let config = match &args.config {
            Some(path) => PdConfig::load(path)?,
            None => PdConfig::single_node_default(),
        };
        let node_id = binary::node_id(&config.cluster, args.node_id)?;
        let cluster = config.cluster.clone();
        binary::run_node(&cluster, "rdb-pd-worker", |logger| {
            rdb_pd::run(config, node_id, logger, server::shutdown_signal())
        })
    })
}
