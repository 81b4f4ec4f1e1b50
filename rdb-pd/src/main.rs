//! `rdb-pd`: runs one node of an rdb placement driver group.
//!
//! With no arguments it runs a single PD node on 127.0.0.1 (client port 2399, peer port 2400)
//! with its data in `./rdb-pd-data`. With `--config FILE --node-id N` it runs node N of the
//! group described in FILE (1, 3 or 5 nodes; rdb-server's format plus an optional `[pd]` table).
//! With `--join A,B,C --node-id N --peer-addr .. --client-addr .. --data-dir ..` it joins a
//! running PD group that added node N (`rdb-cli --pd A,B,C member add`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rdb_pd::config::PdConfig;
use rdb_server::config::ConfigError;
use rdb_server::join::JoinArgs;
use rdb_server::{binary, server};

/// Runs one node of an rdb placement driver group.
#[derive(Debug, Parser)]
#[command(name = "rdb-pd", version, about)]
struct Args {
    /// PD group configuration file (TOML). Without it (and without --join): one node on
    /// 127.0.0.1:2399, data in ./rdb-pd-data.
    #[arg(long, short = 'c', conflicts_with = "join")]
    config: Option<PathBuf>,
    /// Which node of the configuration this process is. Optional when the file has one node;
    /// with --join, the id the node was added with.
    #[arg(long, short = 'n')]
    node_id: Option<u64>,
    /// Join a running PD group (client addresses, comma-separated) as node --node-id, added
    /// first with `rdb-cli --pd ... member add`. Restarts read the configuration the node kept
    /// in --data-dir.
    #[arg(long, value_delimiter = ',')]
    join: Option<Vec<String>>,
    /// With --join: where the other PD nodes reach this one (HOST:PORT), as it was added.
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
}

fn main() -> ExitCode {
    let args = Args::parse();
    binary::main_of("rdb-pd", || {
        let config = match (&args.config, &args.join) {
            (_, Some(endpoints)) => joined(&args, endpoints)?,
            (Some(path), None) => PdConfig::load(path)?,
            (None, None) => PdConfig::single_node_default(),
        };
        let node_id = binary::node_id(&config.cluster, args.node_id)?;
        let cluster = config.cluster.clone();
        binary::run_node(&cluster, "rdb-pd-worker", |logger| {
            rdb_pd::run(config, node_id, logger, server::shutdown_signal())
        })
    })
}

/// The configuration of a node started with `--join`, from its data directory or the group.
fn joined(args: &Args, endpoints: &[String]) -> Result<PdConfig, Box<dyn std::error::Error>> {
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
    Ok(rt.block_on(rdb_pd::join::join_config(&a, &logger))?)
}
