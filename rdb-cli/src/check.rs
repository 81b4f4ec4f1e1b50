//! `rdb-cli check`: every replica hashes its data at one log index, and the hashes are
//! compared. With --endpoints, the nodes of one Raft group, one row per node; with --pd, every
//! region (or the one `--region ID` or a KEY names), one row per region.
//!
//! A report names the replicas that differ from the majority of the replicas, or says that no
//! majority agrees. Exit 7 when any replicas differ or any replica gave no hash before the
//! deadline; a region (or group) where no hash point could be made exits as its error does.

use clap::Args;
use rdb_client::{CheckReport, Client, NodeHash, RegionCheck, RegionScope, ReplicaState};
use serde_json::{json, Value};

use crate::codec::Codec;
use crate::output::{header, print_table, Printer};
use crate::{exit, exit_code, fail};

/// `rdb-cli check [--region ID | KEY]`
#[derive(Debug, Args, PartialEq, Eq)]
pub struct CheckArgs {
    /// With --pd: check only the region with this id.
    #[arg(long, conflicts_with = "key")]
    pub region: Option<u64>,
    /// With --pd: check only the region whose range holds this key.
    pub key: Option<String>,
}

/// Checks the group of the configured endpoints; returns the exit code.
pub async fn run_group(client: &Client, p: &Printer) -> u8 {
    let report = match client.check().await {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    if p.is_json() {
        outln!("{}", group_json(&report));
    } else {
        outln!("hash point at index {}", report.index);
        print_table(&group_rows(&report));
    }
    if report.consistent() {
        return 0;
    }
    if !p.is_json() {
        eprintln!("rdb-cli: check: {}", problems(&report, "node").join("; "));
    }
    exit::CHECK_FAILED
}

/// PD mode: checks the regions `args` names (all by default); returns the exit code.
pub async fn run_regions(client: &Client, args: CheckArgs, p: &Printer, codec: Codec) -> u8 {
    let scope = match (args.region, args.key) {
        (Some(id), _) => RegionScope::Id(id),
        (None, Some(key)) => match codec.decode(&key) {
            Ok(k) => RegionScope::Key(k),
            Err(e) => return crate::invalid(&e),
        },
        (None, None) => RegionScope::All,
    };
    let checks = match client.check_regions(scope).await {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    if p.is_json() {
        let regions: Vec<Value> = checks.iter().map(|c| region_json(c, codec)).collect();
        let consistent = checks.iter().all(RegionCheck::consistent);
        outln!(
            "{}",
            json!({"consistent": consistent, "regions": regions, "encoding": codec.name()})
        );
    } else {
        print_table(&region_rows(&checks));
    }
    let mut code = 0;
    for c in &checks {
        let id = c.region.id;
        match &c.report {
            Ok(r) if r.consistent() => {}
            Ok(r) => {
                if !p.is_json() {
                    eprintln!(
                        "rdb-cli: check: region {id}: {}",
                        problems(r, "store").join("; ")
                    );
                }
                code = exit::CHECK_FAILED;
            }
            Err(e) => {
                // Exit as the error does, unless replicas were found to differ.
                eprintln!("rdb-cli: check: region {id}: no hash point: {e}");
                if code == 0 {
                    code = exit_code(e);
                }
            }
        }
    }
    code
}

/// A replica as people read it: `node 3 at 127.0.0.1:2579` (or `store 3 ...`).
fn name(n: &NodeHash, noun: &str) -> String {
    match (n.node_id, n.endpoint.is_empty()) {
        (Some(id), false) => format!("{noun} {id} at {}", n.endpoint),
        (Some(id), true) => format!("{noun} {id}"),
        (None, _) => n.endpoint.clone(),
    }
}

/// What is wrong with a report that is not consistent, one phrase per kind of problem.
fn problems(r: &CheckReport, noun: &str) -> Vec<String> {
    let mut out = Vec::new();
    let total = r.nodes.len();
    let differing = r.differing();
    if !differing.is_empty() {
        let names: Vec<String> = differing.iter().map(|n| name(n, noun)).collect();
        let verb = if names.len() == 1 {
            "differs"
        } else {
            "differ"
        };
        out.push(format!(
            "{} {verb} from the majority ({} of {total} agree)",
            names.join(", "),
            r.agreeing().len()
        ));
    }
    if r.majority().is_none() && r.nodes.iter().any(|n| n.ready) {
        out.push(format!(
            "no majority of the {total} replicas agrees on a hash"
        ));
    }
    for n in r.missing() {
        let why = n.error.as_deref().unwrap_or("no answer");
        out.push(format!("{} gave no hash ({why})", name(n, noun)));
    }
    out
}

/// A replica's state, for a table.
fn state_word(r: &CheckReport, i: usize) -> String {
    match r.state(i) {
        ReplicaState::Agrees => "ok".into(),
        ReplicaState::Differs => "DIFFERS".into(),
        ReplicaState::NoMajority => "NO MAJORITY".into(),
        ReplicaState::NoHash => match &r.nodes[i].error {
            Some(e) => format!("no hash: {e}"),
            None => "no hash".into(),
        },
    }
}

/// A replica's state, for JSON.
fn state_name(s: ReplicaState) -> &'static str {
    match s {
        ReplicaState::Agrees => "agrees",
        ReplicaState::Differs => "differs",
        ReplicaState::NoMajority => "no_majority",
        ReplicaState::NoHash => "no_hash",
    }
}

fn hex(h: u64) -> String {
    format!("{h:016x}")
}

fn nodes_json(r: &CheckReport, id_field: &str) -> Vec<Value> {
    r.nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            json!({
                "endpoint": n.endpoint, id_field: n.node_id, "ready": n.ready,
                "hash": n.ready.then(|| hex(n.hash)),
                "records": n.ready.then_some(n.records),
                "applied_index": n.applied_index, "state": state_name(r.state(i)),
                "error": n.error,
            })
        })
        .collect()
}

fn majority_json(r: &CheckReport) -> Value {
    match r.majority() {
        Some((hash, records)) => json!({"hash": hex(hash), "records": records}),
        None => Value::Null,
    }
}

/// The group's report: `index`, `consistent` and `nodes` as before, and which replicas
/// differ from the majority (`majority` is null when there is none).
fn group_json(r: &CheckReport) -> Value {
    let endpoints = |ns: Vec<&NodeHash>| -> Vec<String> {
        ns.into_iter().map(|n| n.endpoint.clone()).collect()
    };
    json!({
        "index": r.index, "consistent": r.consistent(), "majority": majority_json(r),
        "differing": endpoints(r.differing()), "no_hash": endpoints(r.missing()),
        "nodes": nodes_json(r, "node_id"),
    })
}

fn group_rows(r: &CheckReport) -> Vec<Vec<String>> {
    let mut rows = vec![header(&[
        "ENDPOINT", "ID", "HASH", "RECORDS", "APPLIED", "STATE",
    ])];
    for (i, n) in r.nodes.iter().enumerate() {
        rows.push(vec![
            n.endpoint.clone(),
            n.node_id.map_or("-".into(), |id| id.to_string()),
            if n.ready { hex(n.hash) } else { "-".into() },
            if n.ready {
                n.records.to_string()
            } else {
                "-".into()
            },
            n.applied_index.to_string(),
            state_word(r, i),
        ]);
    }
    rows
}

/// One region's check: its range, and the group report of its peers (node ids are store ids).
fn region_json(c: &RegionCheck, codec: Codec) -> Value {
    let g = &c.region;
    let mut doc = json!({
        "region_id": g.id, "start_key": codec.encode(&g.start_key),
        "end_key": codec.encode(&g.end_key), "consistent": c.consistent(),
    });
    let fields = match &c.report {
        Ok(r) => {
            let stores =
                |ns: Vec<&NodeHash>| -> Vec<Option<u64>> { ns.iter().map(|n| n.node_id).collect() };
            json!({
                "index": r.index, "majority": majority_json(r),
                "agreeing": stores(r.agreeing()), "differing": stores(r.differing()),
                "no_hash": stores(r.missing()), "nodes": nodes_json(r, "store_id"),
                "error": Value::Null,
            })
        }
        Err(e) => json!({"index": Value::Null, "error": e.to_string()}),
    };
    if let (Some(doc), Value::Object(fields)) = (doc.as_object_mut(), fields) {
        doc.extend(fields);
    }
    doc
}

fn region_rows(checks: &[RegionCheck]) -> Vec<Vec<String>> {
    let mut rows = vec![header(&["REGION", "INDEX", "AGREE", "DIFFER", "STATE"])];
    for c in checks {
        let id = c.region.id.to_string();
        let r = match &c.report {
            Ok(r) => r,
            Err(e) => {
                let state = format!("no hash point: {e}");
                rows.push(vec![id, "-".into(), "-".into(), "-".into(), state]);
                continue;
            }
        };
        let differing: Vec<String> = r
            .differing()
            .iter()
            .map(|n| {
                n.node_id
                    .map_or(n.endpoint.clone(), |s| format!("store {s}"))
            })
            .collect();
        let state = if r.consistent() {
            "ok".to_string()
        } else if !differing.is_empty() {
            "DIFFERS".to_string()
        } else if r.majority().is_none() && r.nodes.iter().any(|n| n.ready) {
            "NO MAJORITY".to_string()
        } else {
            let missing: Vec<String> = r.missing().iter().map(|n| name(n, "store")).collect();
            format!("no hash: {}", missing.join(", "))
        };
        rows.push(vec![
            id,
            r.index.to_string(),
            format!("{} of {}", r.agreeing().len(), r.nodes.len()),
            if differing.is_empty() {
                "-".into()
            } else {
                differing.join(",")
            },
            state,
        ]);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(hashes: &[Option<u64>]) -> CheckReport {
        CheckReport {
            index: 9,
            nodes: (1..)
                .zip(hashes)
                .map(|(id, &h)| NodeHash {
                    endpoint: format!("h:{id}"),
                    node_id: Some(id),
                    ready: h.is_some(),
                    hash: h.unwrap_or_default(),
                    records: 4,
                    applied_index: 9,
                    error: h.is_none().then(|| "no answer in time".into()),
                })
                .collect(),
        }
    }

    #[test]
    fn problems_name_the_replica_that_differs_from_the_majority() {
        let r = report(&[Some(1), Some(2), Some(1)]);
        assert_eq!(
            problems(&r, "node"),
            ["node 2 at h:2 differs from the majority (2 of 3 agree)"]
        );
        assert_eq!(state_word(&r, 1), "DIFFERS");
        assert_eq!(state_word(&r, 0), "ok");
        let doc = group_json(&r);
        assert_eq!(doc["differing"], json!(["h:2"]));
        assert_eq!(doc["nodes"][1]["state"], "differs");
    }

    #[test]
    fn problems_say_when_no_majority_agrees_and_who_gave_no_hash() {
        let r = report(&[Some(1), Some(2), Some(3)]);
        assert_eq!(
            problems(&r, "store"),
            ["no majority of the 3 replicas agrees on a hash"]
        );
        assert_eq!(state_word(&r, 2), "NO MAJORITY");
        assert_eq!(group_json(&r)["majority"], Value::Null);

        let r = report(&[Some(1), None, Some(1)]);
        assert_eq!(
            problems(&r, "store"),
            ["store 2 at h:2 gave no hash (no answer in time)"]
        );
        assert!(problems(&report(&[Some(5), Some(5)]), "node").is_empty());
    }
}
