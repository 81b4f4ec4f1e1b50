//! `rdb-cli`: talk to an rdb cluster from the shell.
//!
//! Exit codes (for scripts): 0 success, 1 other failure, 2 invalid input, 3 key not found,
//! 4 unavailable, 5 indeterminate (a write may or may not have applied), 6 compare-and-swap
//! did not match.

mod bench;
mod output;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rdb_client::{Client, Error, Options, ReadConsistency, ScanRange};

use crate::output::{Output, Printer};

/// Exit codes, one per outcome a script may want to tell apart.
pub mod exit {
    /// Anything else went wrong.
    pub const FAILURE: u8 = 1;
    /// The input was refused (also clap's code for bad usage).
    pub const INVALID: u8 = 2;
    /// `get` found no such key.
    pub const NOT_FOUND: u8 = 3;
    /// No leader / no quorum before the deadline; writes were not applied.
    pub const UNAVAILABLE: u8 = 4;
    /// A write's outcome is unknown.
    pub const INDETERMINATE: u8 = 5;
    /// `cas` found another value.
    pub const CAS_FAILED: u8 = 6;
}

/// Command-line client for rdb.
#[derive(Debug, Parser)]
#[command(name = "rdb-cli", version, about)]
struct Cli {
    /// Comma-separated client addresses of the cluster's nodes.
    #[arg(
        long,
        env = "RDB_ENDPOINTS",
        default_value = "127.0.0.1:2379",
        global = true
    )]
    endpoints: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    /// Overall deadline of one command, retries included, in milliseconds.
    #[arg(long, default_value_t = 10_000, global = true)]
    timeout_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a value.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Read a value (exit 3 if absent).
    Get {
        /// The key.
        key: String,
        /// Read this node's state without a ReadIndex round (possibly stale).
        #[arg(long)]
        serializable: bool,
    },
    /// Remove a key.
    Delete {
        /// The key.
        key: String,
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
        /// At most this many pairs (0: the server's maximum).
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
        /// The new value.
        new: String,
        /// The value the key must hold.
        #[arg(long, required_unless_present = "absent", conflicts_with = "absent")]
        expected: Option<String>,
        /// The key must be absent.
        #[arg(long)]
        absent: bool,
    },
    /// Show every endpoint's view of the cluster in one table (exit 4 if any is down).
    Status,
    /// Measure throughput and latency.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    let endpoints: Vec<String> = cli
        .endpoints
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let opts = Options {
        deadline: Duration::from_millis(cli.timeout_ms),
        ..Options::default()
    };
    let client = match Client::with_options(&endpoints, opts.clone()) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let p = Printer::new(cli.output);
    match cli.command {
        Command::Put { key, value } => match client.put(key.clone(), value).await {
            Ok(()) => p.ok("put", &key),
            Err(e) => fail(&e),
        },
        Command::Get { key, serializable } => {
            match client
                .get_with(key.clone(), consistency(serializable))
                .await
            {
                Ok(Some(v)) => p.value(&key, &v),
                Ok(None) => {
                    p.not_found(&key);
                    exit::NOT_FOUND
                }
                Err(e) => fail(&e),
            }
        }
        Command::Delete { key } => match client.delete(key.clone()).await {
            Ok(existed) => p.deleted(&key, existed),
            Err(e) => fail(&e),
        },
        Command::Scan {
            start,
            end,
            prefix,
            limit,
            serializable,
        } => {
            let range = ScanRange {
                start: start.into_bytes(),
                end: end.into_bytes(),
                prefix: prefix.into_bytes(),
                limit,
            };
            match client.scan(range, consistency(serializable)).await {
                Ok(page) => p.scan(&page),
                Err(e) => fail(&e),
            }
        }
        Command::Cas {
            key,
            new,
            expected,
            absent: _,
        } => match client
            .cas(key.clone(), expected.map(String::into_bytes), new)
            .await
        {
            Ok(outcome) => {
                p.cas(&key, &outcome);
                if outcome.succeeded {
                    0
                } else {
                    exit::CAS_FAILED
                }
            }
            Err(e) => fail(&e),
        },
        Command::Status => {
            let all = client.status_all().await;
            p.status(&all);
            if all.iter().all(|(_, r)| r.is_ok()) {
                0
            } else {
                exit::UNAVAILABLE
            }
        }
        Command::Bench(args) => match bench::run(&endpoints, opts, args, &p).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("rdb-cli: bench: {e}");
                exit::FAILURE
            }
        },
    }
}

fn consistency(serializable: bool) -> ReadConsistency {
    if serializable {
        ReadConsistency::Serializable
    } else {
        ReadConsistency::Linearizable
    }
}

/// Prints the one-line cause and returns the exit code for it.
fn fail(e: &Error) -> u8 {
    eprintln!("rdb-cli: {e}");
    match e {
        Error::InvalidArgument(_) => exit::INVALID,
        Error::NotLeader { .. } | Error::Unavailable(_) => exit::UNAVAILABLE,
        Error::Indeterminate(_) => exit::INDETERMINATE,
    }
}
