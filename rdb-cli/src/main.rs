//! `rdb-cli`: talk to an rdb cluster from the shell.
//!
//! Exit codes (for scripts): 0 success, 1 other failure, 2 invalid input, 3 key (or PD store
//! or region) not found, 4 unavailable, 5 indeterminate (a write may or may not have applied),
//! 6 compare-and-swap (or conditional delete) did not match, 7 `check`: the replicas differ
//! or a node gave no hash, 8 TLS configuration: the client's TLS settings do not fit the node
//! (plaintext against TLS or the reverse, a client certificate missing or refused, a CA that
//! did not sign the node's certificate); retrying will not help.
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
mod cli;
mod codec;
mod diagnose;
mod endpoint;
mod members;
mod namespace;
mod output;
mod pd;
mod stdout;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rdb_client::{Client, Error, Options, ScanRange, VersionedRead};

use crate::cli::{
    consistency, misdirected, read_file, tls_options, value_input, Cli, Command, EndpointCmd,
    LeaderCmd, DEFAULT_ENDPOINT,
};
use crate::codec::Codec;
use crate::endpoint::{endpoint_targets, status_of, status_printed};
use crate::output::Printer;

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
    // Bound to its namespace once (which must exist) for every KV command.
    let client = match cli.namespace.as_deref() {
        Some(name) if !matches!(cli.command, Command::Namespace { .. }) => {
            match client.namespace(name).await {
                Ok(c) => c,
                Err(e) => return fail(&e),
            }
        }
        _ => client,
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
                Ok(revision) => p.put(&key, revision),
                Err(e) => fail(&e),
            }
        }
        Command::Get {
            key,
            serializable,
            raw,
            rev,
        } => {
            let key = match arg(&key) {
                Ok(k) => k,
                Err(code) => return code,
            };
            match client
                .get_versioned(key.clone(), rev, consistency(&client, serializable))
                .await
            {
                Ok(VersionedRead {
                    version: Some(v), ..
                }) if raw => p.raw(&v.value),
                Ok(VersionedRead {
                    version: Some(v),
                    revision,
                }) => p.value(&key, &v, revision),
                Ok(VersionedRead {
                    version: None,
                    revision,
                }) => {
                    p.not_found(&key, revision);
                    exit::NOT_FOUND
                }
                Err(e) => fail(&e),
            }
        }
        Command::Batch { cmd } => batch::run(&client, cmd, codec, &p).await,
        Command::Delete {
            key,
            expected_version,
            expected_mod_revision,
        } => {
            let key = match arg(&key) {
                Ok(k) => k,
                Err(code) => return code,
            };
            match condition(expected_version, expected_mod_revision) {
                None => match client.delete_versioned(key.clone()).await {
                    Ok(o) => p.deleted(&key, &o),
                    Err(e) => fail(&e),
                },
                Some(c) => match client.delete_if(key.clone(), c).await {
                    Ok(o) if o.refused => {
                        p.delete_refused(&key, &o);
                        exit::CAS_FAILED
                    }
                    Ok(o) => p.deleted(&key, &o),
                    Err(e) => fail(&e),
                },
            }
        }
        Command::Namespace { cmd } => namespace::run(&client, cmd, &p).await,
        Command::Compact { revision } => match client.compact(revision).await {
            Ok(compacted) => p.compacted(compacted),
            Err(e) => fail(&e),
        },
        Command::Scan {
            start,
            end,
            prefix,
            limit,
            serializable,
            rev,
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
            match client
                .scan_at(range, rev, consistency(&client, serializable))
                .await
            {
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
            expected_version,
            expected_mod_revision,
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
            let swapped = match condition(expected_version, expected_mod_revision) {
                Some(c) => client.cas_if(key.clone(), c, new).await,
                None => client.cas(key.clone(), expected, new).await,
            };
            match swapped {
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

/// The version condition `--expected-version` or `--expected-mod-revision` gives (clap lets
/// at most one through).
fn condition(version: Option<u64>, mod_revision: Option<u64>) -> Option<rdb_client::Condition> {
    match (version, mod_revision) {
        (Some(v), _) => Some(rdb_client::Condition::Version(v)),
        (None, Some(r)) => Some(rdb_client::Condition::ModRevision(r)),
        (None, None) => None,
    }
}

/// The exit code for an error.
pub(crate) fn exit_code(e: &Error) -> u8 {
    match e {
        // A read at a revision outside the history kept: asking again will not help.
        Error::InvalidArgument(_) | Error::Compacted(_) | Error::FutureRevision(_) => exit::INVALID,
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

/// Prints a refused input and returns its exit code.
fn invalid(cause: &str) -> u8 {
    eprintln!("rdb-cli: invalid input: {cause}");
    exit::INVALID
}
