//! `rdb-cli snapshot save FILE`: saves a consistent backup of the cluster's data, which
//! `rdb-server --restore FILE --config ...` turns into the data directories of a new cluster.

use std::path::PathBuf;

use clap::Subcommand;
use rdb_client::{Client, SavedSnapshot};
use serde_json::json;

use crate::fail;
use crate::output::Printer;

/// `rdb-cli snapshot ...`
#[derive(Debug, Subcommand, PartialEq, Eq)]
pub enum SnapshotCmd {
    /// Save a consistent backup of the data to FILE: every write acknowledged before the
    /// command started is in it. The leader builds it before sending, so for a large data set
    /// raise --timeout-ms (the time allowed until the first byte arrives).
    Save {
        /// Where to write the backup (written beside it as FILE.partial, then renamed).
        file: PathBuf,
    },
}

/// Runs a `snapshot` command; returns the exit code.
pub async fn run(cmd: SnapshotCmd, client: &Client, p: &Printer) -> u8 {
    match cmd {
        SnapshotCmd::Save { file } => match client.save_snapshot(&file).await {
            Ok(saved) => {
                print_saved(p, &saved);
                0
            }
            Err(e) => fail(&e),
        },
    }
}

fn print_saved(p: &Printer, s: &SavedSnapshot) {
    if p.is_json() {
        outln!(
            "{}",
            json!({
                "op": "snapshot save",
                "file": s.path.display().to_string(),
                "index": s.index,
                "term": s.term,
                "bytes": s.bytes,
                "crc32": format!("{:08x}", s.checksum),
                "keys": s.keys,
                "cluster_id": s.cluster_id,
                "node_id": s.node_id,
            })
        );
    } else {
        outln!(
            "saved {}: index {}, term {}, {} bytes, crc32 {:08x}, {} keys (from node {} of cluster {})",
            s.path.display(),
            s.index,
            s.term,
            s.bytes,
            s.checksum,
            s.keys,
            s.node_id,
            s.cluster_id
        );
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::SnapshotCmd;
    use crate::{Cli, Command};

    #[test]
    fn snapshot_save_takes_a_file_and_the_global_options() {
        let cli =
            Cli::try_parse_from(["rdb-cli", "snapshot", "save", "b.rdb", "-o", "json"]).unwrap();
        assert!(cli.output == crate::output::Output::Json);
        assert!(matches!(
            cli.command,
            Command::Snapshot {
                cmd: SnapshotCmd::Save { file }
            } if file == std::path::Path::new("b.rdb")
        ));
        assert!(Cli::try_parse_from(["rdb-cli", "snapshot", "save"]).is_err());
    }
}
