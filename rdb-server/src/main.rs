//! `rdb-server`: runs one node of an rdb cluster.
//!
//! With no arguments it runs a single-node cluster on 127.0.0.1 (client port 2379, peer port
//! 2380) with its data in `./rdb-data/single`. With `--config FILE --node-id N` it runs node N of the
//! cluster described in FILE. With `--join A,B,C --node-id N --peer-addr .. --client-addr ..
//! --data-dir ..` it joins a running cluster that added node N (`rdb-cli member add`). With
//! `--restore BACKUP --config FILE` it seeds data directories from a backup file and exits;
//! with `--restore BACKUP --pd A,B,C --data-dir D1 --data-dir D2 ...` it seeds the stores of a
//! new PD-mode cluster (one per directory) and records the regions with that new PD cluster.
//! With `--pd A,B,C --addr HOST:PORT --peer-addr HOST:PORT --data-dir DIR` it runs a store of
//! a PD-mode cluster: many regions, split as they grow and placed through rdb-pd
//! (specs/009-regions); `--config FILE` then names an optional store file (settings, TLS).

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
    /// Cluster configuration file (TOML). Without it: a single node on 127.0.0.1 with data in ./rdb-data/single.
    /// With --pd: the store's file ([settings], [tls], [peer_tls], [pd_tls]), optional.
    #[arg(long, short = 'c', conflicts_with = "join")]
    config: Option<PathBuf>,
    /// Which node of the configuration this process is. Optional when the file has one node.
    #[arg(long, short = 'n')]
    node_id: Option<u64>,
    /// Join a running cluster through these client addresses (comma-separated), as the node
    /// `rdb-cli member add` added. Needs --node-id, --peer-addr, --client-addr, --data-dir.
    #[arg(long, value_delimiter = ',', requires_all = ["node_id", "peer_addr", "client_addr"])]
    join: Option<Vec<String>>,
    /// With --join: where other nodes reach this one (HOST:PORT), as it was added. With --pd:
    /// where other stores send this one Raft traffic (it listens there).
    #[arg(long)]
    peer_addr: Option<String>,
    /// With --join: where clients reach this node (HOST:PORT), as it was added.
    #[arg(long, requires = "join")]
    client_addr: Option<String>,
    /// With --join or --pd: this node's (store's) data directory. With --restore and --pd:
    /// one per new store (repeat the flag).
    #[arg(long)]
    data_dir: Vec<PathBuf>,
    /// With --join or --pd: where to serve Prometheus metrics (HOST:PORT); none when left out.
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Run a store of a PD-mode cluster led by these rdb-pd client addresses (comma-separated).
    /// Needs --addr, --peer-addr and --data-dir. With --restore: the new PD cluster to seed.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["join", "node_id"])]
    pd: Option<Vec<String>>,
    /// With --pd: where clients reach this store (HOST:PORT); it listens there.
    #[arg(long, requires = "pd")]
    addr: Option<String>,
    /// With --pd: how many stores the first region is bootstrapped on (its replicas). The
    /// store that bootstraps the cluster decides; PD records it as the cluster's replication
    /// factor, and a store started later with another value logs a warning naming both.
    #[arg(long, requires = "pd", default_value_t = 3)]
    replicas: usize,
    /// With --pd: split a region once it holds more keys than this.
    #[arg(long, requires = "pd", default_value_t = 960_000)]
    region_split_keys: u64,
    /// With --pd: split a region once its keys and values pass this many bytes.
    #[arg(long, requires = "pd", default_value_t = 96 << 20)]
    region_split_size: u64,
    /// With --pd: where this store is, as labels (`zone=a,host=h1`); PD keeps a region's
    /// replicas on stores that share as few of its `location_labels` as possible.
    #[arg(long, requires = "pd", value_parser = labels_arg, default_value = "")]
    labels: Labels,
    /// With --pd: how often (ms) a store measures the regions it leads.
    #[arg(long, requires = "pd", default_value_t = 10_000)]
    split_check_ms: u64,
    /// Seed the data directory of --node-id, or of every node of --config, from a backup file
    /// (`rdb-cli snapshot save`), then exit without serving. With --pd: seed one new store per
    /// --data-dir, each with a peer of every region, and record the regions with that PD
    /// cluster, which must be new. Directories must be new or empty.
    #[arg(long, value_name = "FILE", conflicts_with = "join")]
    restore: Option<PathBuf>,
}

/// A store's `--labels`, parsed.
#[derive(Debug, Clone)]
struct Labels(Vec<(String, String)>);

fn labels_arg(text: &str) -> Result<Labels, String> {
    rdb_client::pd::parse_labels(text).map(Labels)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(pd) = &args.pd {
        if let Some(file) = &args.restore {
            return binary::main_of("rdb-server", || restore_stores(&args, pd, file));
        }
        return binary::main_of("rdb-server", || run_store(&args, pd));
    }
    binary::main_of("rdb-server", || {
        if args.restore.is_some() && args.config.is_none() {
            return Err(ConfigError::Invalid(
                "--restore needs --config (a config-file cluster) or --pd (a PD-mode cluster)"
                    .into(),
            )
            .into());
        }
        if args.join.is_none() && (!args.data_dir.is_empty() || args.metrics_addr.is_some()) {
            return Err(ConfigError::Invalid(
                "--data-dir and --metrics-addr go with --join or --pd".into(),
            )
            .into());
        }
        if args.join.is_none() && (args.peer_addr.is_some() || args.client_addr.is_some()) {
            return Err(ConfigError::Invalid(
                "--peer-addr goes with --join or --pd, --client-addr with --join".into(),
            )
            .into());
        }
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

/// Runs a store of a PD-mode cluster (`--pd`).
fn run_store(args: &Args, pd: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    use rdb_server::store::serve::{self, SplitConfig, StoreArgs};
    let missing = |what: &str| ConfigError::Invalid(format!("--pd needs {what}"));
    if args.replicas == 0 {
        return Err(ConfigError::Invalid("--replicas must be at least 1".into()).into());
    }
    // 0 would split a region at every key (or every byte): never what an operator means.
    for (flag, value) in [
        ("--region-split-keys", args.region_split_keys),
        ("--region-split-size", args.region_split_size),
        ("--split-check-ms", args.split_check_ms),
    ] {
        if value == 0 {
            return Err(ConfigError::Invalid(format!("{flag} must be at least 1")).into());
        }
    }
    if args.client_addr.is_some() {
        return Err(ConfigError::Invalid(
            "--client-addr goes with --join; a store's client address is --addr".into(),
        )
        .into());
    }
    let file = match &args.config {
        Some(path) => rdb_server::config::StoreFile::load(path)?,
        None => Default::default(),
    };
    let store = StoreArgs {
        pd: pd.to_vec(),
        addr: args.addr.clone().ok_or_else(|| missing("--addr"))?,
        peer_addr: args
            .peer_addr
            .clone()
            .ok_or_else(|| missing("--peer-addr"))?,
        data_dir: one_data_dir(args, "--pd")?,
        file,
        replicas: args.replicas,
        split: SplitConfig {
            region_split_size: args.region_split_size,
            region_split_keys: args.region_split_keys,
            check_interval: std::time::Duration::from_millis(args.split_check_ms.max(10)),
        },
        metrics_addr: args.metrics_addr.clone(),
        labels: args.labels.0.clone(),
    };
    let pd_options = store.file.pd_client_options()?;
    let replicas = args.replicas;
    let mut config = ClusterConfig::single_node_default();
    config.settings = store.file.settings.clone();
    binary::run_node(&config, "rdb-worker", |logger| async move {
        // Connects lazily: inside the runtime.
        if let Ok(pd) = rdb_client::PdClient::with_options(store.pd.clone(), pd_options) {
            tokio::spawn(warn_on_other_replicas(pd, replicas, logger.clone()));
        }
        serve::run(store, logger, server::shutdown_signal()).await
    })
}

/// The one --data-dir of a store or a joining node (`mode`).
fn one_data_dir(args: &Args, mode: &str) -> Result<PathBuf, ConfigError> {
    match args.data_dir.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(ConfigError::Invalid(format!("{mode} needs --data-dir"))),
        _ => Err(ConfigError::Invalid(format!(
            "{mode} takes one --data-dir (several go with --restore and --pd)"
        ))),
    }
}

/// Seeds the stores of a new PD-mode cluster from a backup (`--restore FILE --pd ...`), one
/// per --data-dir, with the settings of the store file (--config) they will run with.
fn restore_stores(
    args: &Args,
    pd: &[String],
    file: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    if args.addr.is_some() || args.peer_addr.is_some() || args.metrics_addr.is_some() {
        return Err(ConfigError::Invalid(
            "--restore seeds directories and serves nothing: start each store afterwards with \
             its --addr and --peer-addr"
                .into(),
        )
        .into());
    }
    let store_file = match &args.config {
        Some(path) => rdb_server::config::StoreFile::load(path)?,
        None => Default::default(),
    };
    let pd_options = store_file.pd_client_options()?;
    rdb_server::restore::run_pd(pd, pd_options, file, &args.data_dir, &store_file.settings)?;
    Ok(())
}

/// Logs a warning when the cluster's replication factor, recorded by PD at bootstrap, is not
/// this store's `--replicas`: the flag decides only for the store that bootstraps, so a store
/// started with another value says so instead of seeming to apply it. Waits for the bootstrap.
async fn warn_on_other_replicas(pd: rdb_client::PdClient, mine: usize, logger: slog::Logger) {
    use std::time::Duration;
    loop {
        let pause = match pd.bootstrapped_replicas().await {
            Ok(Some(0)) => return,
            Ok(Some(cluster)) => {
                if cluster as usize != mine {
                    slog::warn!(logger, "--replicas differs from the cluster's replication factor; the cluster's applies";
                        "replicas" => mine, "cluster_replicas" => cluster,
                        "recorded" => "by PD when the cluster was bootstrapped");
                }
                return;
            }
            Ok(None) => Duration::from_secs(1),
            Err(_) => Duration::from_secs(5),
        };
        tokio::time::sleep(pause).await;
    }
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
        data_dir: one_data_dir(args, "--join")?,
        metrics_addr: args.metrics_addr.clone(),
    };
    let logger = rdb_server::logging::logger(Default::default(), "info");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(join_config(&a, &logger))?)
}
