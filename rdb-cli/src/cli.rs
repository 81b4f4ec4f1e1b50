//! The command line: options, subcommands and their arguments (clap), with the checks and
//! readings of them that come before any request (where a command may go, TLS files, values).

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use rdb_client::ReadConsistency;

use crate::codec::Codec;
use crate::output::Output;
use crate::{backup, batch, bench, check, invalid, members, pd};

/// Command-line client for rdb.
#[derive(Debug, Parser)]
#[command(name = "rdb-cli", version, about)]
pub(crate) struct Cli {
    /// Comma-separated client addresses of the cluster's nodes [default: 127.0.0.1:2379, unless
    /// --pd is given].
    #[arg(long, env = "RDB_ENDPOINTS", global = true)]
    pub(crate) endpoints: Option<String>,
    /// Comma-separated client addresses of the PD nodes (for tso, store, region, member,
    /// check of every region, and with --regions for every KV command).
    #[arg(long, env = "RDB_PD", global = true)]
    pub(crate) pd: Option<String>,
    /// A PD-mode cluster (`rdb-server --pd`): send each KV request to the leader of its key's
    /// region, found through PD's region map (needs --pd). Without it, requests go to
    /// --endpoints, and the stores there route them.
    #[arg(long, env = "RDB_REGIONS", global = true, requires = "pd")]
    pub(crate) regions: bool,
    /// CA certificate (PEM) that signs the nodes' certificates: talk TLS (https).
    #[arg(long, env = "RDB_CACERT", global = true)]
    pub(crate) cacert: Option<std::path::PathBuf>,
    /// This client's certificate (PEM), for nodes that require one (with --key).
    #[arg(
        long = "cert",
        id = "client_cert",
        env = "RDB_CERT",
        global = true,
        requires = "client_key"
    )]
    pub(crate) client_cert: Option<std::path::PathBuf>,
    /// This client's private key (PEM) (with --cert).
    #[arg(
        long = "key",
        id = "client_key",
        env = "RDB_KEY",
        global = true,
        requires = "client_cert"
    )]
    pub(crate) client_key: Option<std::path::PathBuf>,
    /// The namespace of the KV commands' keys (created with `namespace create`) [default:
    /// default].
    #[arg(long, short = 'n', env = "RDB_NAMESPACE", global = true)]
    pub(crate) namespace: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, global = true)]
    pub(crate) output: Output,
    /// Overall deadline of one command, retries included, in milliseconds.
    #[arg(long, default_value_t = 10_000, global = true)]
    pub(crate) timeout_ms: u64,
    /// Keys and values in arguments and output are hex digits, two per byte (`--hex 00ff`).
    #[arg(long, global = true, conflicts_with = "escape")]
    pub(crate) hex: bool,
    /// Keys and values in arguments may use escapes: \\, \n, \r, \t, \0, \xNN. Output
    /// always uses this form (unless --hex), so printed keys can be given back.
    #[arg(long, global = true)]
    pub(crate) escape: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// `rdb-cli endpoint ...`.
#[derive(Debug, Clone, Copy, Subcommand)]
pub(crate) enum EndpointCmd {
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

/// How reads in a namespace are served when a command does not say.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum ModeArg {
    /// Linearizable reads (a read barrier first), as in `default`.
    Strong,
    /// Reads from the replica asked, without a barrier: possibly stale, never uncommitted.
    /// Writes go through the log and a majority, as in every namespace.
    Eventual,
}

/// `rdb-cli namespace ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum NamespaceCmd {
    /// Create namespace NAME (1 to 64 letters, digits, '-', '_' or '.'); nothing to do when it
    /// exists with that mode already.
    Create {
        /// The namespace's name.
        name: String,
        /// How its reads are served when a command does not say.
        #[arg(long, value_enum)]
        mode: ModeArg,
    },
    /// Every namespace created, with its mode (`default` always exists, strong).
    List,
}

/// `rdb-cli leader ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum LeaderCmd {
    /// Hand leadership to node ID (a voter) and wait until it leads.
    Transfer {
        /// The node to lead next.
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
        /// Read the key as of this revision (0: the newest); `-o json` prints its versions
        /// (`create_revision`, `mod_revision`, `version`) and the revision read.
        #[arg(long, default_value_t = 0)]
        rev: u64,
    },
    /// Remove a key (with --expected-version or --expected-mod-revision: only if its current
    /// version matches; exit 6 if not).
    Delete {
        /// The key.
        key: String,
        /// Delete only if the key's version is this.
        #[arg(long, conflicts_with = "expected_mod_revision")]
        expected_version: Option<u64>,
        /// Delete only if the key's last change was at this revision.
        #[arg(long)]
        expected_mod_revision: Option<u64>,
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
        /// The keys as of this revision (0: the newest); every page reads at it.
        #[arg(long, default_value_t = 0)]
        rev: u64,
    },
    /// Compare-and-swap: set KEY to NEW if it holds --expected (or is absent with --absent),
    /// or if its version is --expected-version or its last change --expected-mod-revision.
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
        #[arg(long, conflicts_with_all = ["absent", "expected_file", "expected_version", "expected_mod_revision"])]
        expected: Option<String>,
        /// Read the value the key must hold from this file (byte for byte).
        #[arg(long, conflicts_with_all = ["absent", "expected_version", "expected_mod_revision"])]
        expected_file: Option<PathBuf>,
        /// The key must be absent.
        #[arg(long, conflicts_with_all = ["expected_version", "expected_mod_revision"],
              required_unless_present_any = ["expected", "expected_file", "expected_version", "expected_mod_revision"])]
        absent: bool,
        /// The key's version must be this (0: the key must not exist).
        #[arg(long, conflicts_with = "expected_mod_revision")]
        expected_version: Option<u64>,
        /// The key's last change must be at this revision (0: the key must not exist).
        #[arg(long)]
        expected_mod_revision: Option<u64>,
    },
    /// Drop the history below REVISION: reads below it fail from then on (exit 2), and the
    /// replicas delete it in the background. With --regions: every region (each counts its
    /// own revisions; one that has not reached REVISION keeps only its newest versions).
    Compact {
        /// History below this revision goes (one the cluster has not reached: exit 2).
        revision: u64,
    },
    /// Namespaces: `namespace create NAME --mode strong|eventual`, `namespace list`. Keys of
    /// one are never visible from another; give --namespace (or RDB_NAMESPACE) to use one.
    Namespace {
        #[command(subcommand)]
        cmd: NamespaceCmd,
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

/// Where the KV and group commands go without --endpoints (and without --pd).
pub(crate) const DEFAULT_ENDPOINT: &str = "127.0.0.1:2379";

/// Why the command cannot go where the options send it, if it cannot: a command for one Raft
/// group with --regions (a PD-mode cluster has none), or a command for --endpoints given only
/// --pd (it would silently go to the default endpoint).
pub(crate) fn misdirected(cli: &Cli) -> Option<String> {
    let (name, kv) = match &cli.command {
        Command::Put { .. } => ("put", true),
        Command::Get { .. } => ("get", true),
        Command::Delete { .. } => ("delete", true),
        Command::Batch { .. } => ("batch", true),
        Command::Scan { .. } => ("scan", true),
        Command::Cas { .. } => ("cas", true),
        Command::Compact { .. } => ("compact", true),
        Command::Namespace { .. } => ("namespace", true),
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
pub(crate) fn tls_options(cli: &Cli) -> Result<Option<rdb_client::TlsOptions>, String> {
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

/// The read consistency that `--serializable` (or its absence) asks for: without it, the
/// namespace's (linearizable, or serializable in an `eventual` namespace).
pub(crate) fn consistency(client: &rdb_client::Client, serializable: bool) -> ReadConsistency {
    if serializable {
        ReadConsistency::Serializable
    } else {
        client.default_consistency()
    }
}

/// A value from its argument (decoded with `codec`), from stdin for `-`, or from a file.
pub(crate) fn value_input(
    codec: Codec,
    arg: Option<String>,
    file: Option<PathBuf>,
) -> Result<Vec<u8>, u8> {
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
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, u8> {
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
