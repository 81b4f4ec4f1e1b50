//! Rendering results as a table (for people) or JSON (for scripts).

use rdb_client::{CasOutcome, NodeStatus, ScanPage};
use serde_json::json;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns / plain values.
    Table,
    /// One JSON document.
    Json,
}

/// Prints results in one format; each method returns the exit code for success.
pub struct Printer {
    format: Output,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Printer {
    /// A printer for `format`.
    pub fn new(format: Output) -> Printer {
        Printer { format }
    }

    /// True when printing JSON (for commands that print their own documents).
    pub fn is_json(&self) -> bool {
        self.format == Output::Json
    }

    /// A write succeeded.
    pub fn ok(&self, op: &str, key: &str) -> u8 {
        match self.format {
            Output::Table => println!("OK"),
            Output::Json => println!("{}", json!({"op": op, "key": key, "ok": true})),
        }
        0
    }

    /// A value was found.
    pub fn value(&self, key: &str, v: &[u8]) -> u8 {
        match self.format {
            Output::Table => println!("{}", text(v)),
            Output::Json => println!("{}", json!({"key": key, "found": true, "value": text(v)})),
        }
        0
    }

    /// No value under `key`.
    pub fn not_found(&self, key: &str) {
        match self.format {
            Output::Table => eprintln!("rdb-cli: key {key:?} not found"),
            Output::Json => println!("{}", json!({"key": key, "found": false})),
        }
    }

    /// A delete ran.
    pub fn deleted(&self, key: &str, existed: bool) -> u8 {
        match self.format {
            Output::Table => println!("OK (existed: {existed})"),
            Output::Json => println!(
                "{}",
                json!({"op": "delete", "key": key, "existed": existed})
            ),
        }
        0
    }

    /// A compare-and-swap ran.
    pub fn cas(&self, key: &str, o: &CasOutcome) {
        let current = o.current.as_deref().map(text);
        match self.format {
            Output::Table if o.succeeded => println!("OK"),
            Output::Table => println!(
                "compare failed; current value: {}",
                current.as_deref().unwrap_or("<absent or unknown>")
            ),
            Output::Json => println!(
                "{}",
                json!({"op": "cas", "key": key, "succeeded": o.succeeded, "current": current})
            ),
        }
    }

    /// A scan page.
    pub fn scan(&self, page: &ScanPage) -> u8 {
        match self.format {
            Output::Table => {
                for (k, v) in &page.kvs {
                    println!("{}\t{}", text(k), text(v));
                }
                if page.more {
                    eprintln!("(more keys follow; raise --limit or continue from the last key)");
                }
            }
            Output::Json => {
                let kvs: Vec<_> = page
                    .kvs
                    .iter()
                    .map(|(k, v)| json!({"key": text(k), "value": text(v)}))
                    .collect();
                println!("{}", json!({"kvs": kvs, "more": page.more}));
            }
        }
        0
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
                let widths: Vec<usize> = (0..header.len())
                    .map(|i| {
                        rows.iter()
                            .filter_map(|r| r.get(i))
                            .map(|c| c.len())
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
        }
    }
}
