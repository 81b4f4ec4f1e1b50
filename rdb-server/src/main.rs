//! `rdb-server`: runs one node of an rdb cluster.
//!
//! With no arguments it runs a single-node cluster on 127.0.0.1 (client port 2379, peer port
//! 2380) with its data in `./rdb-data`. With `--config FILE --node-id N` it runs node N of the
//! cluster described in FILE. With `--join A,B,C --node-id N --peer-addr .. --client-addr ..
//! --data-dir ..` it joins a running cluster that added node N (`rdb-cli member add`). With
//! `--restore BACKUP --config FILE` it seeds data directories from a backup file and exits.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rdb_server::config::{ClusterConfig, ConfigError};

/// mimalloc instead of glibc's malloc: under load the leader spent about 14 % of its CPU in
/// glibc's allocator (gRPC frames, protobuf messages and Raft entries are many short-lived
/// allocations), see BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use rdb_server::join::{join_config, JoinArgs};
use rdb_server::{binary, server};

/// Runs one node of an rdb cluster.
#[derive(Debug, Parser)]
#[command(name = "rdb-server", version, about)]
struct Args {
    /// Cluster configuration file (TOML). Without it: a single node on 127.0.0.1 with data in ./rdb-data.
    #[arg(long, short = 'c', conflicts_with = "join")]
    config: Option<PathBuf>,
    /// Which node of the configuration this process is. Optional when the file has one node.
    #[arg(long, short = 'n')]
    node_id: Option<u64>,
    /// Join a running cluster through these client addresses (comma-separated), as the node
    /// `rdb-cli member add` added. Needs --node-id, --peer-addr, --client-addr, --data-dir.
    #[arg(long, value_delimiter = ',', requires_all = ["node_id", "peer_addr", "client_addr", "data_dir"])]
    join: Option<Vec<String>>,
    /// With --join: where other nodes reach this one (HOST:PORT), as it was added.
    #[arg(long, requires = "join")]
    peer_addr: Option<String>,
    /// With --join: where clients reach this node (HOST:PORT), as it was added.
    #[arg(long, requires = "join")]
    client_addr: Option<String>,
    /// With --join: this node's data directory.
    #[arg(long, requires = "join")]
    data_dir: Option<PathBuf>,
    /// With --join: where to serve Prometheus metrics (HOST:PORT); none when left out.
    #[arg(long, requires = "join")]
    metrics_addr: Option<String>,
    /// Seed the data directory of --node-id, or of every node of --config, from a backup file
    /// (`rdb-cli snapshot save`), then exit without serving. Directories must be new or empty.
    #[arg(long, value_name = "FILE", requires = "config")]
    restore: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    binary::main_of("rdb-server", || {
        let config = match (&args.config, &args.join) {
            (Some(path), _) => ClusterConfig::load(path)?,
            (None, Some(endpoints)) => joined(&args, endpoints)?,
            (None, None) => ClusterConfig::single_node_default(),
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

/// The configuration of a node started with `--join`, from its data directory or the cluster.
fn joined(args: &Args, endpoints: &[String]) -> Result<ClusterConfig, Box<dyn std::error::Error>> {
    let missing = |what: &str| ConfigError::Invalid(format!("--join needs {what}"));
    let a = JoinArgs {
        endpoints: endpoints.to_vec(),
        node_id: args.node_id.ok_or_else(|| missing("--node-id"))?,
        peer_addr: args
            .peer_addr
            .clone()
            .ok_or_else(|| missing("--peer-addr"))?,
        client_addr: args
            .client_addr
            .clone()
            .ok_or_else(|| missing("--client-addr"))?,
        data_dir: args.data_dir.clone().ok_or_else(|| missing("--data-dir"))?,
        metrics_addr: args.metrics_addr.clone(),
    };
    let logger = rdb_server::logging::logger(Default::default(), "info");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(join_config(&a, &logger))?)
}
