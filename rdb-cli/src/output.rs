//! Rendering results as a table (for people) or JSON (for scripts).

use std::io::Write;

use rdb_client::{CasOutcome, CheckReport, NodeStatus, ScanPage};
use serde_json::json;

use crate::codec::Codec;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns / plain values.
    Table,
    /// One JSON document.
    Json,
}

/// Prints results in one format; each method returns the exit code for success. Keys and
/// values are printed in the codec's form (escaped or hex), in tables and JSON alike.
pub struct Printer {
    format: Output,
    codec: Codec,
}

impl Printer {
    /// A printer for `format`, printing keys and values with `codec`.
    pub fn new(format: Output, codec: Codec) -> Printer {
        Printer { format, codec }
    }

    fn text(&self, b: &[u8]) -> String {
        self.codec.encode(b)
    }

    /// True when printing JSON (for commands that print their own documents).
    pub fn is_json(&self) -> bool {
        self.format == Output::Json
    }

    /// A write succeeded.
    pub fn ok(&self, op: &str, key: &[u8]) -> u8 {
        match self.format {
            Output::Table => println!("OK"),
            Output::Json => println!(
                "{}",
                json!({"op": op, "key": self.text(key), "ok": true, "encoding": self.codec.name()})
            ),
        }
        0
    }

    /// A value was found.
    pub fn value(&self, key: &[u8], v: &[u8]) -> u8 {
        match self.format {
            Output::Table => println!("{}", self.text(v)),
            Output::Json => println!(
                "{}",
                json!({"key": self.text(key), "found": true, "value": self.text(v),
                       "encoding": self.codec.name()})
            ),
        }
        0
    }

    /// A value written to stdout byte for byte (`get --raw`).
    pub fn raw(&self, v: &[u8]) -> u8 {
        let mut out = std::io::stdout().lock();
        match out.write_all(v).and_then(|()| out.flush()) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("rdb-cli: cannot write the value: {e}");
                crate::exit::FAILURE
            }
        }
    }

    /// No value under `key`.
    pub fn not_found(&self, key: &[u8]) {
        match self.format {
            Output::Table => eprintln!("rdb-cli: key \"{}\" not found", self.text(key)),
            Output::Json => println!(
                "{}",
                json!({"key": self.text(key), "found": false, "encoding": self.codec.name()})
            ),
        }
    }

    /// A delete ran.
    pub fn deleted(&self, key: &[u8], existed: bool) -> u8 {
        match self.format {
            Output::Table => println!("OK (existed: {existed})"),
            Output::Json => println!(
                "{}",
                json!({"op": "delete", "key": self.text(key), "existed": existed,
                       "encoding": self.codec.name()})
            ),
        }
        0
    }

    /// A compare-and-swap ran.
    pub fn cas(&self, key: &[u8], o: &CasOutcome) {
        let current = o.current.as_deref().map(|c| self.text(c));
        match self.format {
            Output::Table if o.succeeded => println!("OK"),
            Output::Table => println!(
                "compare failed; current value: {}",
                current.as_deref().unwrap_or("<absent or unknown>")
            ),
            Output::Json => println!(
                "{}",
                json!({"op": "cas", "key": self.text(key), "succeeded": o.succeeded,
                       "current": current, "encoding": self.codec.name()})
            ),
        }
    }

    /// A scan page.
    pub fn scan(&self, page: &ScanPage) -> u8 {
        match self.format {
            Output::Table => {
                let mut out = std::io::stdout().lock();
                for (k, v) in &page.kvs {
                    // Neither form contains a tab, so the columns split unambiguously.
                    if writeln!(out, "{}\t{}", self.text(k), self.text(v)).is_err() {
                        return crate::exit::FAILURE;
                    }
                }
                if page.more {
                    eprintln!("(more keys follow; raise --limit or continue from the last key)");
                }
            }
            Output::Json => {
                let kvs: Vec<_> = page
                    .kvs
                    .iter()
                    .map(|(k, v)| json!({"key": self.text(k), "value": self.text(v)}))
                    .collect();
                println!(
                    "{}",
                    json!({"kvs": kvs, "more": page.more, "encoding": self.codec.name()})
                );
            }
        }
        0
    }

    /// A replica check: one row per node.
    pub fn check(&self, r: &CheckReport) {
        match self.format {
            Output::Json => {
                let nodes: Vec<_> = r
                    .nodes
                    .iter()
                    .map(|n| {
                        json!({
                            "endpoint": n.endpoint, "node_id": n.node_id, "ready": n.ready,
                            "hash": n.ready.then(|| format!("{:016x}", n.hash)),
                            "records": n.ready.then_some(n.records),
                            "applied_index": n.applied_index, "error": n.error,
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    json!({"index": r.index, "consistent": r.consistent(), "nodes": nodes})
                );
            }
            Output::Table => {
                let header = ["ENDPOINT", "ID", "HASH", "RECORDS", "APPLIED", "STATE"];
                let mut rows: Vec<Vec<String>> =
                    vec![header.iter().map(|s| s.to_string()).collect()];
                let first = r.nodes.iter().find(|n| n.ready);
                for n in &r.nodes {
                    let state = match (&n.error, first) {
                        (_, Some(f)) if n.ready && (f.hash, f.records) == (n.hash, n.records) => {
                            "ok".to_string()
                        }
                        _ if n.ready => "DIFFERS".to_string(),
                        (Some(e), _) => format!("no hash: {e}"),
                        (None, _) => "no hash".to_string(),
                    };
                    rows.push(vec![
                        n.endpoint.clone(),
                        n.node_id.map_or("-".into(), |id| id.to_string()),
                        if n.ready {
                            format!("{:016x}", n.hash)
                        } else {
                            "-".into()
                        },
                        if n.ready {
                            n.records.to_string()
                        } else {
                            "-".into()
                        },
                        n.applied_index.to_string(),
                        state,
                    ]);
                }
                println!("hash point at index {}", r.index);
                print_table(&rows);
            }
        }
    }

    /// Every endpoint's status, one row each.
    pub fn status(&self, all: &[(String, Result<NodeStatus, rdb_client::Error>)]) {
        match self.format {
            Output::Json => {
                let rows: Vec<_> = all
                    .iter()
                    .map(|(ep, r)| match r {
                        Ok(s) => json!({
                            "endpoint": ep, "node_id": s.node_id, "cluster_id": s.cluster_id,
                            "role": s.role, "term": s.term, "leader_id": s.leader_id,
                            "commit_index": s.commit_index, "applied_index": s.applied_index,
                            "first_index": s.first_index, "last_index": s.last_index,
                        }),
                        Err(e) => json!({"endpoint": ep, "error": e.to_string()}),
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(rows));
            }
            Output::Table => {
                let header = [
                    "ENDPOINT", "ID", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "FIRST",
                    "LAST",
                ];
                let mut rows: Vec<Vec<String>> =
                    vec![header.iter().map(|s| s.to_string()).collect()];
                for (ep, r) in all {
                    rows.push(match r {
                        Ok(s) => vec![
                            ep.clone(),
                            s.node_id.to_string(),
                            s.role.clone(),
                            s.term.to_string(),
                            s.leader_id.to_string(),
                            s.commit_index.to_string(),
                            s.applied_index.to_string(),
                            s.first_index.to_string(),
                            s.last_index.to_string(),
                        ],
                        Err(e) => vec![ep.clone(), "-".into(), format!("error: {e}")],
                    });
                }
                print_table(&rows);
            }
        }
    }
}

/// Prints rows as aligned columns (the first row is the header).
fn print_table(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}
