//! `rdb-server`: runs one node of an rdb cluster.
//!
//! With no arguments it runs a single-node cluster on 127.0.0.1 (client port 2379, peer port
//! 2380) with its data in `./rdb-data`. With `--config FILE --node-id N` it runs node N of the
//! cluster described in FILE. With `--restore BACKUP` it seeds data directories from a backup
//! file and exits.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rdb_server::config::ClusterConfig;
use rdb_server::{binary, server};

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
    /// Seed the data directory of --node-id, or of every node of --config, from a backup file
    /// (`rdb-cli snapshot save`), then exit without serving. Directories must be new or empty.
    #[arg(long, value_name = "FILE", requires = "config")]
    restore: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    binary::main_of("rdb-server", || {
        let config = match &args.config {
            Some(path) => ClusterConfig::load(path)?,
            None => ClusterConfig::single_node_default(),
        };
        if let Some(file) = &args.restore {
            return rdb_server::restore::run(&config, args.node_id, file)
                .map(drop)
                .map_err(Into::into);
        }
        let node_id = binary::node_id(&config, args.node_id)?;
        let cluster = config.clone();
        binary::run_node(&cluster, "rdb-worker", |logger| {
            server::run(config, node_id, logger, server::shutdown_signal())
        })
    })
}
