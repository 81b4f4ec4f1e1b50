//! `rdb-cli batch ...`: several keys in one request (one Raft entry for writes).

use clap::Subcommand;
use rdb_client::Client;
use serde_json::json;

use crate::codec::Codec;
use crate::output::Printer;

/// `rdb-cli batch ...`.
#[derive(Debug, Subcommand, PartialEq, Eq)]
pub enum BatchCmd {
    /// Write pairs `KEY VALUE [KEY VALUE ...]` in one Raft entry: all or none.
    Put {
        /// Keys and values, alternating.
        #[arg(required = true, num_args = 2..)]
        pairs: Vec<String>,
    },
    /// Read several keys as of one applied index; prints `key<TAB>value` per found key
    /// (`-o json`: every key, found or not). Exit 3 if any key is absent.
    Get {
        /// The keys.
        #[arg(required = true)]
        keys: Vec<String>,
        /// Read this node's state without a ReadIndex round (possibly stale).
        #[arg(long)]
        serializable: bool,
    },
    /// Remove several keys in one Raft entry: all or none; prints how many existed.
    Delete {
        /// The keys.
        #[arg(required = true)]
        keys: Vec<String>,
    },
}

/// Runs a batch command; returns the exit code.
pub async fn run(client: &Client, cmd: BatchCmd, codec: Codec, p: &Printer) -> u8 {
    let decode = |args: &[String]| -> Result<Vec<Vec<u8>>, u8> {
        args.iter()
            .map(|a| {
                codec.decode(a).map_err(|e| {
                    eprintln!("rdb-cli: {e}");
                    crate::exit::INVALID
                })
            })
            .collect()
    };
    match cmd {
        BatchCmd::Put { pairs } => {
            if pairs.len() % 2 != 0 {
                eprintln!("rdb-cli: batch put takes KEY VALUE pairs; the last key has no value");
                return crate::exit::INVALID;
            }
            let bytes = match decode(&pairs) {
                Ok(b) => b,
                Err(code) => return code,
            };
            let n = bytes.len() / 2;
            let mut it = bytes.into_iter();
            let kvs: Vec<(Vec<u8>, Vec<u8>)> = (0..n)
                .filter_map(|_| Some((it.next()?, it.next()?)))
                .collect();
            match client.batch_put(kvs).await {
                Ok(()) => {
                    if p.is_json() {
                        outln!("{}", json!({"op": "batch put", "pairs": n, "ok": true}));
                    } else {
                        outln!("OK ({n} pairs)");
                    }
                    0
                }
                Err(e) => crate::fail(&e),
            }
        }
        BatchCmd::Get { keys, serializable } => {
            let keys = match decode(&keys) {
                Ok(k) => k,
                Err(code) => return code,
            };
            let c = crate::cli::consistency(client, serializable);
            match client.batch_get(keys.clone(), c).await {
                Ok(values) => {
                    let missing = values.iter().any(Option::is_none);
                    if p.is_json() {
                        let rows: Vec<_> = keys
                            .iter()
                            .zip(&values)
                            .map(|(k, v)| match v {
                                Some(v) => json!({"key": codec.encode(k), "found": true,
                                                   "value": codec.encode(v)}),
                                None => json!({"key": codec.encode(k), "found": false}),
                            })
                            .collect();
                        outln!("{}", json!({"results": rows, "encoding": codec.name()}));
                    } else {
                        for (k, v) in keys.iter().zip(&values) {
                            if let Some(v) = v {
                                outln!("{}\t{}", codec.encode(k), codec.encode(v));
                            }
                        }
                    }
                    if missing {
                        crate::exit::NOT_FOUND
                    } else {
                        0
                    }
                }
                Err(e) => crate::fail(&e),
            }
        }
        BatchCmd::Delete { keys } => {
            let keys = match decode(&keys) {
                Ok(k) => k,
                Err(code) => return code,
            };
            match client.batch_delete(keys).await {
                Ok(deleted) => {
                    if p.is_json() {
                        outln!(
                            "{}",
                            json!({"op": "batch delete", "deleted": deleted, "ok": true})
                        );
                    } else {
                        outln!("OK ({deleted} existed)");
                    }
                    0
                }
                Err(e) => crate::fail(&e),
            }
        }
    }
}
