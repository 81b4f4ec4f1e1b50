//! `rdb-cli`: talk to an rdb cluster from the shell.
//!
//! Exit codes (for scripts): 0 success, 1 other failure, 2 invalid input, 3 key (or PD store
//! or region) not found, 4 unavailable, 5 indeterminate (a write may or may not have applied),
//! 6 compare-and-swap did not match, 7 `check`: the replicas differ or a node gave no hash,
//! 8 TLS configuration: the client's TLS settings do not fit the node (plaintext against TLS or
//! the reverse, a client certificate missing or refused, a CA that did not sign the node's
//! certificate); retrying will not help.
//!
//! `tso`, `store`, `region` and `member` talk to PD, the placement driver, at `--pd`.

/// Prints a line to stdout; a closed pipe ends the CLI quietly (see [`stdout::write`]).
macro_rules! outln {
    () => { $crate::stdout::write(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::stdout::write(format_args!("{}\n", format_args!($($arg)*))) };
}

mod backup;
mod batch;
mod bench;
mod check;
mod codec;
mod diagnose;
mod members;
mod output;
mod pd;
mod stdout;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rdb_client::{Client, Error, Options, ReadConsistency, ScanRange};

use crate::codec::Codec;
use crate::output::{Output, Printer};

/// Exit codes, one per outcome a script may want to tell apart.
pub mod exit {
    /// Anything else went wrong.
    pub const FAILURE: u8 = 1;
    /// The input was refused (also clap's code for bad usage).
    pub const INVALID: u8 = 2;
    /// `get` found no such key; PD has no such store or region.
    pub const NOT_FOUND: u8 = 3;
    /// No leader / no quorum before the deadline; writes were not applied.
    pub const UNAVAILABLE: u8 = 4;
    /// A write's outcome is unknown.
    pub const INDETERMINATE: u8 = 5;
    /// `cas` found another value.
    pub const CAS_FAILED: u8 = 6;
    /// `check`: the replicas' hashes differ, or a node gave no hash before the deadline.
    pub const CHECK_FAILED: u8 = 7;
    /// The client's TLS settings do not fit the node: plaintext against TLS or the reverse, a
    /// client certificate missing or refused, an unknown CA. Retrying will not help.
    pub const TLS_CONFIG: u8 = 8;
}

/// Command-line client for rdb.
#[derive(Debug, Parser)]
#[command(name = "rdb-cli", version, about)]
struct Cli {
    /// Comma-separated client addresses of the cluster's nodes [default: 127.0.0.1:2379, unless
    /// --pd is given].
    #[arg(long, env = "RDB_ENDPOINTS", global = true)]
    endpoints: Option<String>,
    /// Comma-separated client addresses of the PD nodes (for tso, store, region, member,
    /// check of every region, and with --regions for every KV command).
    #[arg(long, env = "RDB_PD", global = true)]
    pd: Option<String>,
    /// A PD-mode cluster (`rdb-server --pd`): send each KV request to the leader of its key's
    /// region, found through PD's region map (needs --pd). Without it, requests go to
    /// --endpoints, and the stores there route them.
    #[arg(long, env = "RDB_REGIONS", global = true, requires = "pd")]
    regions: bool,
    /// CA certificate (PEM) that signs the nodes' certificates: talk TLS (https).
    #[arg(long, env = "RDB_CACERT", global = true)]
    cacert: Option<std::path::PathBuf>,
    /// This client's certificate (PEM), for nodes that require one (with --key).
    #[arg(
        long = "cert",
        id = "client_cert",
        env = "RDB_CERT",
        global = true,
        requires = "client_key"
    )]
    client_cert: Option<std::path::PathBuf>,
    /// This client's private key (PEM) (with --cert).
    #[arg(
        long = "key",
        id = "client_key",
        env = "RDB_KEY",
        global = true,
        requires = "client_cert"
    )]
    client_key: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    /// Overall deadline of one command, retries included, in milliseconds.
    #[arg(long, default_value_t = 10_000, global = true)]
    timeout_ms: u64,
    /// Keys and values in arguments and output are hex digits, two per byte (`--hex 00ff`).
    #[arg(long, global = true, conflicts_with = "escape")]
    hex: bool,
    /// Keys and values in arguments may use escapes: \\, \n, \r, \t, \0, \xNN. Output
    /// always uses this form (unless --hex), so printed keys can be given back.
    #[arg(long, global = true)]
    escape: bool,
    #[command(subcommand)]
    command: Command,
}

/// `rdb-cli endpoint ...`.
#[derive(Debug, Clone, Copy, Subcommand)]
enum EndpointCmd {
    /// Whether each endpoint answers and serves (a node: knows a leader and keeps up; a store:
    /// every region it hosts does).
    Health {
        /// Every member of the cluster at --endpoints (with --pd: every store PD knows).
        #[arg(long)]
        cluster: bool,
    },
    /// Each endpoint's view, as `status`.
    Status {
        /// Every member of the cluster at --endpoints (with --pd: every store PD knows).
        #[arg(long)]
        cluster: bool,
    },
}

/// `rdb-cli leader ...`.
#[derive(Debug, Subcommand)]
enum LeaderCmd {
    /// Hand leadership to node ID (a voter) and wait until it leads.
    Transfer {
        /// The node to lead next.
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a value: from the VALUE argument, from stdin when VALUE is `-`, or from --value-file.
    Put {
        /// The key.
        key: String,
        /// The value; `-` reads it from stdin (byte for byte).
        #[arg(required_unless_present = "value_file", conflicts_with = "value_file")]
        value: Option<String>,
        /// Read the value from this file (byte for byte; for values too large for argv).
        #[arg(long)]
        value_file: Option<PathBuf>,
    },
    /// Read a value (exit 3 if absent).
    Get {
        /// The key.
        key: String,
        /// Read this node's state without a ReadIndex round (possibly stale).
        #[arg(long)]
        serializable: bool,
        /// Write the value's bytes to stdout unchanged (no escaping, no newline).
        #[arg(long)]
        raw: bool,
    },
    /// Remove a key.
    Delete {
        /// The key.
        key: String,
    },
    /// Several keys in one request: `batch put K V [K V ...]`, `batch get K...`,
    /// `batch delete K...` (writes are one Raft entry: all or none).
    Batch {
        #[command(subcommand)]
        cmd: batch::BatchCmd,
    },
    /// List keys in order, by range or prefix.
    Scan {
        /// Inclusive start key.
        #[arg(long, default_value = "")]
        start: String,
        /// Exclusive end key.
        #[arg(long, default_value = "")]
        end: String,
        /// Only keys with this prefix.
        #[arg(long, default_value = "", conflicts_with_all = ["start", "end"])]
        prefix: String,
        /// At most this many pairs (0: all of them; the server's pages are followed).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Read this node's state without a ReadIndex round (possibly stale).
        #[arg(long)]
        serializable: bool,
    },
    /// Compare-and-swap: set KEY to NEW if it holds --expected (or is absent with --absent).
    Cas {
        /// The key.
        key: String,
        /// The new value; `-` reads it from stdin (byte for byte).
        #[arg(required_unless_present = "value_file", conflicts_with = "value_file")]
        new: Option<String>,
        /// Read the new value from this file (byte for byte).
        #[arg(long)]
        value_file: Option<PathBuf>,
        /// The value the key must hold.
        #[arg(long, conflicts_with_all = ["absent", "expected_file"])]
        expected: Option<String>,
        /// Read the value the key must hold from this file (byte for byte).
        #[arg(long, conflicts_with = "absent")]
        expected_file: Option<PathBuf>,
        /// The key must be absent.
        #[arg(long, required_unless_present_any = ["expected", "expected_file"])]
        absent: bool,
    },
    /// Show every endpoint's view of the cluster in one table (exit 4 if any is down); with
    /// --pd: every store PD knows, and each store's regions with role, term, applied and lag.
    Status,
    /// Leadership: `leader transfer ID` hands it to node ID and waits until ID leads (with
    /// --pd and --region: to peer ID of that region).
    Leader {
        /// With --pd: the region whose leadership moves.
        #[arg(long, global = true)]
        region: Option<u64>,
        #[command(subcommand)]
        cmd: LeaderCmd,
    },
    /// Compare the replicas: every node hashes its data at the same log index, and the ones
    /// that differ from the majority are named (exit 7 when any differ or one gives no hash).
    /// With --pd: every region's replicas, one row per region.
    Check(check::CheckArgs),
    /// Measure throughput and latency.
    Bench(bench::BenchArgs),
    /// Backups: `snapshot save FILE` saves a consistent copy of the data (for `rdb-server --restore`).
    /// With --pd: every region, each at its own read barrier, into one file.
    Snapshot {
        #[command(subcommand)]
        cmd: backup::SnapshotCmd,
    },
    /// Get a timestamp from PD's oracle (needs --pd).
    Tso,
    /// PD's stores (needs --pd).
    Store {
        #[command(subcommand)]
        cmd: pd::StoreCmd,
    },
    /// PD's map of regions (needs --pd).
    Region {
        #[command(subcommand)]
        cmd: pd::RegionCmd,
    },
    /// PD's scheduling operators (needs --pd).
    Operator {
        #[command(subcommand)]
        cmd: pd::OperatorCmd,
    },
    /// Endpoints as etcdctl shows them: `endpoint health` (gRPC health, exit 4 if any is not
    /// serving) and `endpoint status`; --cluster: every member (with --pd: every store).
    Endpoint {
        #[command(subcommand)]
        cmd: EndpointCmd,
    },
    /// Prints a completion script for SHELL: `source <(rdb-cli completion bash)`.
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// The cluster's members: list, add, promote, remove, replace (with --pd: PD's own nodes,
    /// to replace a PD node; with --pd and --region: that region's peers).
    Member {
        /// With --pd: the region whose peers to list or change.
        #[arg(long, global = true)]
        region: Option<u64>,
        #[command(subcommand)]
        cmd: members::MemberCmd,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Completion { shell } = cli.command {
        let mut cmd = <Cli as clap::CommandFactory>::command();
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cmd, "rdb-cli", &mut out);
        stdout::write_bytes(&out);
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rdb-cli: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    ExitCode::from(rt.block_on(run(cli)))
}

async fn run(cli: Cli) -> u8 {
    if let Some(cause) = misdirected(&cli) {
        return invalid(&cause);
    }
    let endpoints: Vec<String> = cli
        .endpoints
        .as_deref()
        .unwrap_or(DEFAULT_ENDPOINT)
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let tls = match tls_options(&cli) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("rdb-cli: {e}");
            return exit::INVALID;
        }
    };
    let opts = Options {
        deadline: Duration::from_millis(cli.timeout_ms),
        tls,
        ..Options::default()
    };
    let pd_endpoints: Vec<String> = cli
        .pd
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let talks_to_pd = cli.regions
        || matches!(
            cli.command,
            Command::Tso
                | Command::Store { .. }
                | Command::Region { .. }
                | Command::Operator { .. }
        )
        || (matches!(
            cli.command,
            Command::Member { .. }
                | Command::Check(_)
                | Command::Snapshot { .. }
                | Command::Leader {
                    region: Some(_),
                    ..
                }
        ) && cli.pd.is_some());
    let first_contact = if talks_to_pd {
        &pd_endpoints
    } else {
        &endpoints
    };
    diagnose::set_targets(first_contact.clone(), opts.tls.clone());
    let made = if cli.regions {
        Client::with_pd(&pd_endpoints, opts.clone())
    } else {
        Client::with_options(&endpoints, opts.clone())
    };
    let client = match made {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let codec = if cli.hex {
        Codec::Hex
    } else if cli.escape {
        Codec::Escape
    } else {
        Codec::Text
    };
    let p = Printer::new(cli.output, codec);
    let arg = |s: &str| codec.decode(s).map_err(|e| invalid(&e));
    match cli.command {
        Command::Put {
            key,
            value,
            value_file,
        } => {
            let (key, value) = match (arg(&key), value_input(codec, value, value_file)) {
                (Ok(k), Ok(v)) => (k, v),
                (Err(code), _) | (_, Err(code)) => return code,
            };
            match client.put(key.clone(), value).await {
                Ok(()) => p.ok("put", &key),
                Err(e) => fail(&e),
            }
        }
        Command::Get {
            key,
            serializable,
            raw,
        } => {
            let key = match arg(&key) {
                Ok(k) => k,
                Err(code) => return code,
            };
            match client
                .get_with(key.clone(), consistency(serializable))
                .await
            {
                Ok(Some(v)) if raw => p.raw(&v),
                Ok(Some(v)) => p.value(&key, &v),
                Ok(None) => {
                    p.not_found(&key);
                    exit::NOT_FOUND
                }
                Err(e) => fail(&e),
            }
        }
        Command::Batch { cmd } => batch::run(&client, cmd, codec, &p).await,
        Command::Delete { key } => {
            let key = match arg(&key) {
                Ok(k) => k,
                Err(code) => return code,
            };
            match client.delete(key.clone()).await {
                Ok(existed) => p.deleted(&key, existed),
                Err(e) => fail(&e),
            }
        }
        Command::Scan {
            start,
            end,
            prefix,
            limit,
            serializable,
        } => {
            let range = match (arg(&start), arg(&end), arg(&prefix)) {
                (Ok(start), Ok(end), Ok(prefix)) => ScanRange {
                    start,
                    end,
                    prefix,
                    limit,
                },
                (Err(code), _, _) | (_, Err(code), _) | (_, _, Err(code)) => return code,
            };
            match client.scan(range, consistency(serializable)).await {
                Ok(page) => p.scan(&page),
                Err(e) => fail(&e),
            }
        }
        Command::Cas {
            key,
            new,
            value_file,
            expected,
            expected_file,
            absent: _,
        } => {
            let key = match arg(&key) {
                Ok(k) => k,
                Err(code) => return code,
            };
            let new = match value_input(codec, new, value_file) {
                Ok(v) => v,
                Err(code) => return code,
            };
            let expected = match (expected, expected_file) {
                (Some(e), _) => match arg(&e) {
                    Ok(e) => Some(e),
                    Err(code) => return code,
                },
                (None, Some(path)) => match read_file(&path) {
                    Ok(e) => Some(e),
                    Err(code) => return code,
                },
                (None, None) => None,
            };
            match client.cas(key.clone(), expected, new).await {
                Ok(outcome) => {
                    p.cas(&key, &outcome);
                    if outcome.succeeded {
                        0
                    } else {
                        exit::CAS_FAILED
                    }
                }
                Err(e) => fail(&e),
            }
        }
        Command::Endpoint { cmd } => {
            let cluster = match cmd {
                EndpointCmd::Health { cluster } | EndpointCmd::Status { cluster } => cluster,
            };
            let targets = match endpoint_targets(&cli, cluster, &client, &pd_endpoints, &opts).await
            {
                Ok(t) => t,
                Err(code) => return code,
            };
            match cmd {
                EndpointCmd::Health { .. } => {
                    let all = client.health_all(&targets).await;
                    p.health(&all);
                    if all.iter().all(|h| h.healthy) {
                        0
                    } else {
                        exit::UNAVAILABLE
                    }
                }
                EndpointCmd::Status { .. } => status_of(&targets, &opts, &p).await,
            }
        }
        Command::Completion { .. } => 0,
        Command::Status if cli.pd.is_some() => {
            // Every store PD knows (not tombstoned), each with the regions it hosts.
            match endpoint_targets(&cli, true, &client, &pd_endpoints, &opts).await {
                Ok(stores) => status_of(&stores, &opts, &p).await,
                Err(code) => code,
            }
        }
        Command::Status => {
            let all = client.status_all().await;
            status_printed(&all, &p)
        }
        Command::Leader {
            region: Some(region),
            cmd: LeaderCmd::Transfer { id },
        } => match with_pd(&cli.pd, &pd_endpoints, &opts) {
            Ok(pd_client) => match pd_client.transfer_region_leader(region, id).await {
                Ok(()) => {
                    p.leader_transferred(id);
                    0
                }
                Err(e) => fail(&e),
            },
            Err(code) => code,
        },
        Command::Leader {
            cmd: LeaderCmd::Transfer { id },
            ..
        } => match client.transfer_leader(id).await {
            Ok(()) => {
                p.leader_transferred(id);
                0
            }
            Err(e) => fail(&e),
        },
        Command::Check(args) if cli.pd.is_some() => {
            match Client::with_pd(&pd_endpoints, opts.clone()) {
                Ok(pd_client) => check::run_regions(&pd_client, args, &p, codec).await,
                Err(e) => fail(&e),
            }
        }
        Command::Check(args) => {
            if args.region.is_some() || args.key.is_some() {
                return invalid(
                    "check --region and KEY name a region of a PD-mode cluster: give --pd",
                );
            }
            check::run_group(&client, &p).await
        }
        Command::Snapshot { cmd } if cli.pd.is_some() => {
            match with_pd(&cli.pd, &pd_endpoints, &opts) {
                Ok(pd_client) => backup::run(cmd, &pd_client, &p, codec).await,
                Err(code) => code,
            }
        }
        Command::Snapshot { cmd } => backup::run(cmd, &client, &p, codec).await,
        Command::Tso => pd::run(pd::PdCmd::Tso, cli.pd.as_deref(), opts, &p, codec).await,
        Command::Store { cmd } => {
            pd::run(pd::PdCmd::Store(cmd), cli.pd.as_deref(), opts, &p, codec).await
        }
        Command::Region {
            cmd: pd::RegionCmd::Merge { source, target },
        } if cli.pd.is_some() => match Client::with_pd(&pd_endpoints, opts.clone()) {
            Ok(pd_client) => match pd_client.merge_regions(source, target).await {
                Ok(()) => {
                    p.merge_started(source, target);
                    0
                }
                Err(e) => fail(&e),
            },
            Err(e) => fail(&e),
        },
        Command::Region { cmd } => {
            pd::run(pd::PdCmd::Region(cmd), cli.pd.as_deref(), opts, &p, codec).await
        }
        Command::Operator { cmd } => {
            pd::run(pd::PdCmd::Operator(cmd), cli.pd.as_deref(), opts, &p, codec).await
        }
        Command::Member {
            region: Some(region),
            cmd,
        } => match with_pd(&cli.pd, &pd_endpoints, &opts) {
            Ok(pd_client) => members::run_region(&pd_client, region, cmd, &p).await,
            Err(code) => code,
        },
        Command::Member { cmd, .. } if cli.pd.is_some() => {
            pd::run(pd::PdCmd::Member(cmd), cli.pd.as_deref(), opts, &p, codec).await
        }
        Command::Member { cmd, .. } => members::run(&client, cmd, &p).await,
        Command::Bench(args) => {
            let targets = bench::Targets {
                endpoints: &endpoints,
                pd: &pd_endpoints,
                regions: cli.regions,
            };
            match bench::run(targets, opts, args, &p).await {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("rdb-cli: bench: {e}");
                    exit::FAILURE
                }
            }
        }
    }
}

/// Where the KV and group commands go without --endpoints (and without --pd).
const DEFAULT_ENDPOINT: &str = "127.0.0.1:2379";

/// Why the command cannot go where the options send it, if it cannot: a command for one Raft
/// group with --regions (a PD-mode cluster has none), or a command for --endpoints given only
/// --pd (it would silently go to the default endpoint).
fn misdirected(cli: &Cli) -> Option<String> {
    let (name, kv) = match &cli.command {
        Command::Put { .. } => ("put", true),
        Command::Get { .. } => ("get", true),
        Command::Delete { .. } => ("delete", true),
        Command::Batch { .. } => ("batch", true),
        Command::Scan { .. } => ("scan", true),
        Command::Cas { .. } => ("cas", true),
        // With --pd: every store PD knows, with its regions.
        Command::Status if cli.pd.is_some() => return None,
        Command::Status => ("status", false),
        Command::Leader {
            region: Some(_), ..
        } => return None,
        Command::Leader { .. } => ("leader", false),
        // With --pd: every region, each from its leader.
        Command::Snapshot { .. } if cli.pd.is_some() && !cli.regions => return None,
        Command::Snapshot { .. } => ("snapshot", false),
        _ => return None,
    };
    let for_pd_mode = "";
    if cli.regions && !kv {
        return Some(format!(
            "`{name}` addresses the nodes of one Raft group (at --endpoints); --regions routes \
             KV commands of a PD-mode cluster, which has no single group: leave out \
             --regions{for_pd_mode}"
        ));
    }
    if cli.pd.is_some() && !cli.regions && cli.endpoints.is_none() {
        let route = if kv {
            ", or --regions to route it through PD's region map"
        } else {
            for_pd_mode
        };
        return Some(format!(
            "`{name}` goes to the nodes at --endpoints, not to PD, and none were given (it \
             would go to {DEFAULT_ENDPOINT}): give --endpoints{route}"
        ));
    }
    None
}

/// TLS settings from --cacert/--cert/--key: None (plaintext) without --cacert.
fn tls_options(cli: &Cli) -> Result<Option<rdb_client::TlsOptions>, String> {
    let read = |p: &std::path::Path, what: &str| {
        std::fs::read(p).map_err(|e| format!("{what} {}: {e}", p.display()))
    };
    let Some(ca) = &cli.cacert else {
        if cli.client_cert.is_some() {
            return Err("--cert needs --cacert (the CA that signs the nodes)".into());
        }
        return Ok(None);
    };
    let identity = match (&cli.client_cert, &cli.client_key) {
        (Some(c), Some(k)) => Some((read(c, "--cert")?, read(k, "--key")?)),
        _ => None,
    };
    Ok(Some(rdb_client::TlsOptions {
        ca_pem: read(ca, "--cacert")?,
        identity,
    }))
}

fn consistency(serializable: bool) -> ReadConsistency {
    if serializable {
        ReadConsistency::Serializable
    } else {
        ReadConsistency::Linearizable
    }
}

/// Prints the one-line cause and returns the exit code for it. When no node answered because
/// the client's TLS settings do not fit the node (see [`diagnose`]), that is the cause, with
/// its own exit code.
pub(crate) fn fail(e: &Error) -> u8 {
    let mistake = match e {
        Error::Unavailable(_) | Error::Indeterminate(_) => diagnose::tls_mistake(),
        _ => None,
    };
    match mistake {
        Some(mistake) => {
            eprintln!("rdb-cli: TLS configuration: {mistake} ({e})");
            exit::TLS_CONFIG
        }
        None => {
            eprintln!("rdb-cli: {e}");
            exit_code(e)
        }
    }
}

/// The exit code for an error.
pub(crate) fn exit_code(e: &Error) -> u8 {
    match e {
        Error::InvalidArgument(_) => exit::INVALID,
        Error::NotLeader { .. } | Error::Unavailable(_) => exit::UNAVAILABLE,
        Error::Indeterminate(_) => exit::INDETERMINATE,
        Error::NotFound(_) => exit::NOT_FOUND,
        Error::Unsupported(_)
        | Error::StaleEpoch(_)
        | Error::AlreadyBootstrapped(_)
        | Error::ClusterMismatch(_)
        | Error::FailedPrecondition(_)
        | Error::Io(_) => exit::FAILURE,
    }
}

/// Prints a refused input and returns its exit code.
/// Prints every one of `endpoints`' status; exit 4 if any did not answer.
async fn status_of(endpoints: &[String], opts: &Options, p: &Printer) -> u8 {
    match Client::with_options(endpoints, opts.clone()) {
        Ok(c) => status_printed(&c.status_all().await, p),
        Err(e) => fail(&e),
    }
}

/// Prints statuses; exit 4 if any endpoint did not answer.
fn status_printed(all: &[(String, Result<rdb_client::NodeStatus, Error>)], p: &Printer) -> u8 {
    p.status(all);
    if all.iter().all(|(_, r)| r.is_ok()) {
        0
    } else {
        exit::UNAVAILABLE
    }
}

/// The endpoints an `endpoint` command asks: those given (--endpoints; with only --pd, PD's);
/// with `cluster`, every member of the group at --endpoints, or with --pd every store PD knows.
async fn endpoint_targets(
    cli: &Cli,
    cluster: bool,
    client: &Client,
    pd_endpoints: &[String],
    opts: &Options,
) -> Result<Vec<String>, u8> {
    let given: Vec<String> = match (&cli.endpoints, &cli.pd) {
        (Some(e), _) => e.split(',').map(|s| s.trim().to_string()).collect(),
        (None, Some(_)) => pd_endpoints.to_vec(),
        (None, None) => vec![DEFAULT_ENDPOINT.to_string()],
    };
    if !cluster {
        return Ok(given.into_iter().filter(|s| !s.is_empty()).collect());
    }
    if cli.pd.is_some() {
        let pd = with_pd(&cli.pd, pd_endpoints, opts)?;
        let stores = match pd.pd() {
            Some(pd) => pd.get_all_stores(true).await.map_err(|e| fail(&e))?,
            None => return Err(invalid("--cluster with --pd needs PD's addresses")),
        };
        if stores.is_empty() {
            eprintln!("rdb-cli: PD knows no store yet");
            return Err(exit::UNAVAILABLE);
        }
        return Ok(stores.into_iter().map(|s| s.address).collect());
    }
    let list = client.member_list().await.map_err(|e| fail(&e))?;
    Ok(list
        .members
        .into_iter()
        .map(|m| m.client_addr)
        .filter(|a| !a.is_empty())
        .collect())
}

/// A PD-mode client for a command about one region (`--region` needs `--pd`); the exit code
/// when there is none.
fn with_pd(pd: &Option<String>, pd_endpoints: &[String], opts: &Options) -> Result<Client, u8> {
    if pd.is_none() {
        return Err(invalid(
            "--region names a region of a PD-mode cluster: give --pd with PD's addresses",
        ));
    }
    Client::with_pd(pd_endpoints, opts.clone()).map_err(|e| fail(&e))
}

fn invalid(cause: &str) -> u8 {
    eprintln!("rdb-cli: invalid input: {cause}");
    exit::INVALID
}

/// A value from its argument (decoded with `codec`), from stdin for `-`, or from a file.
fn value_input(codec: Codec, arg: Option<String>, file: Option<PathBuf>) -> Result<Vec<u8>, u8> {
    match (arg.as_deref(), file) {
        (_, Some(path)) => read_file(&path),
        (Some("-"), None) => {
            let mut v = Vec::new();
            std::io::stdin()
                .lock()
                .read_to_end(&mut v)
                .map_err(|e| invalid(&format!("cannot read the value from stdin: {e}")))?;
            Ok(v)
        }
        (Some(a), None) => codec.decode(a).map_err(|e| invalid(&e)),
        (None, None) => Err(invalid("no value given")),
    }
}

/// The bytes of a file named on the command line.
fn read_file(path: &Path) -> Result<Vec<u8>, u8> {
    std::fs::read(path).map_err(|e| invalid(&format!("cannot read {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from([&["rdb-cli"], args].concat())
    }

    #[test]
    fn pd_commands_parse_with_the_global_pd_option() {
        let cli = parse(&["--pd", "a:1,b:2", "tso"]).unwrap();
        assert_eq!(cli.pd.as_deref(), Some("a:1,b:2"));
        assert!(matches!(cli.command, Command::Tso));

        // Global: it may follow the subcommand too.
        let cli = parse(&["store", "tombstone", "7", "--pd", "a:1", "-o", "json"]).unwrap();
        assert_eq!(cli.pd.as_deref(), Some("a:1"));
        assert_eq!(cli.output, Output::Json);
        assert!(matches!(
            cli.command,
            Command::Store {
                cmd: pd::StoreCmd::Tombstone { id: 7 }
            }
        ));
        assert!(parse(&["store", "tombstone", "seven"]).is_err());

        let cli = parse(&["region", "list", "--start", "a", "--limit", "5"]).unwrap();
        match cli.command {
            Command::Region {
                cmd: pd::RegionCmd::List { start, end, limit },
            } => assert_eq!((start.as_str(), end.as_str(), limit), ("a", "", 5)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&["region", "get", "k"]).unwrap().command,
            Command::Region {
                cmd: pd::RegionCmd::Get { .. }
            }
        ));
        assert!(matches!(
            parse(&["region", "merge", "5", "2"]).unwrap().command,
            Command::Region {
                cmd: pd::RegionCmd::Merge {
                    source: 5,
                    target: 2
                }
            }
        ));
        assert!(
            parse(&["region", "merge", "5"]).is_err(),
            "a merge names both"
        );
        assert!(matches!(
            parse(&["store", "list", "--exclude-tombstones"])
                .unwrap()
                .command,
            Command::Store {
                cmd: pd::StoreCmd::List {
                    exclude_tombstones: true
                }
            }
        ));
        let check = |args: &[&str]| match parse(args).map(|c| c.command) {
            Ok(Command::Check(a)) => Ok((a.region, a.key)),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        assert_eq!(check(&["check"]).unwrap(), (None, None));
        assert_eq!(
            check(&["--pd", "a:1", "check", "--region", "4"]).unwrap(),
            (Some(4), None)
        );
        assert_eq!(
            check(&["check", "k1", "--pd", "a:1"]).unwrap(),
            (None, Some("k1".into()))
        );
        assert!(check(&["check", "k1", "--region", "4"]).is_err());
        assert!(matches!(
            parse(&["member", "list"]).unwrap().command,
            Command::Member {
                cmd: members::MemberCmd::List,
                region: None,
            }
        ));
    }
}
