//! `rdb-cli snapshot save FILE`: saves a consistent backup of the cluster's data, which
//! `rdb-server --restore FILE --config ...` turns into the data directories of a new cluster.
//! With `--pd`: every region of a PD-mode cluster, each from its leader at its own read barrier,
//! into one file, which `rdb-server --restore FILE --pd ... --data-dir ...` turns into the
//! stores of a new PD-mode cluster.

use std::path::PathBuf;

use clap::Subcommand;
use rdb_client::{Client, SavedSnapshot};
use serde_json::json;

use crate::codec::Codec;
use crate::fail;
use crate::output::Printer;

/// `rdb-cli snapshot ...`
#[derive(Debug, Subcommand, PartialEq, Eq)]
pub enum SnapshotCmd {
    /// Save a consistent backup of the data to FILE: every write acknowledged before the
    /// command started is in it. The leader builds it before sending, so for a large data set
    /// raise --timeout-ms (the time allowed until the first byte arrives). With --pd: every
    /// region, each from its leader (--timeout-ms applies to each region).
    Save {
        /// Where to write the backup (written beside it as FILE.partial, then renamed).
        file: PathBuf,
    },
}

/// Runs a `snapshot` command; returns the exit code.
pub async fn run(cmd: SnapshotCmd, client: &Client, p: &Printer, codec: Codec) -> u8 {
    match cmd {
        SnapshotCmd::Save { file } => match client.save_snapshot(&file).await {
            Ok(saved) => {
                print_saved(p, &saved, codec);
                0
            }
            Err(e) => fail(&e),
        },
    }
}

fn print_saved(p: &Printer, s: &SavedSnapshot, codec: Codec) {
    if !s.regions.is_empty() {
        return print_saved_regions(p, s, codec);
    }
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

/// A PD-mode cluster's backup: the file, then one line (a JSON array) per region.
fn print_saved_regions(p: &Printer, s: &SavedSnapshot, codec: Codec) {
    if p.is_json() {
        let regions: Vec<_> = s
            .regions
            .iter()
            .map(|r| {
                json!({
                    "region": r.region.id,
                    "start_key": codec.encode(&r.region.start_key),
                    "end_key": codec.encode(&r.region.end_key),
                    "store": r.store_id,
                    "index": r.index,
                    "term": r.term,
                    "keys": r.keys,
                })
            })
            .collect();
        outln!(
            "{}",
            json!({
                "op": "snapshot save",
                "file": s.path.display().to_string(),
                "bytes": s.bytes,
                "crc32": format!("{:08x}", s.checksum),
                "keys": s.keys,
                "cluster_id": s.cluster_id,
                "regions": regions,
                "encoding": codec.name(),
            })
        );
        return;
    }
    outln!(
        "saved {}: {} regions, {} bytes, crc32 {:08x}, {} keys (cluster {})",
        s.path.display(),
        s.regions.len(),
        s.bytes,
        s.checksum,
        s.keys,
        s.cluster_id
    );
    for r in &s.regions {
        outln!(
            "  region {} ['{}', '{}'): index {}, term {}, {} keys (from store {})",
            r.region.id,
            codec.encode(&r.region.start_key),
            codec.encode(&r.region.end_key),
            r.index,
            r.term,
            r.keys,
            r.store_id
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
