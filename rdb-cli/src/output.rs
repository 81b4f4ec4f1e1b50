//! Rendering results as a table (for people) or JSON (for scripts).

use rdb_client::pd::{Members, OperatorRecord, RegionInfo, Store};
use rdb_client::{
    CasOutcome, DeleteOutcome, KeyVersion, NodeStatus, ScanPage, Timestamp, Versioned,
};
use serde_json::{json, Value};

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

    /// A put was acknowledged at `revision` (the table prints `OK` as it always did).
    pub fn put(&self, key: &[u8], revision: u64) -> u8 {
        match self.format {
            Output::Table => outln!("OK"),
            Output::Json => outln!(
                "{}",
                json!({"op": "put", "key": self.text(key), "ok": true, "revision": revision,
                       "encoding": self.codec.name()})
            ),
        }
        0
    }

    /// A value was found: the table prints the value, JSON its versions too, and the revision
    /// the read reflects (specs/018-versions).
    pub fn value(&self, key: &[u8], v: &Versioned, revision: u64) -> u8 {
        match self.format {
            Output::Table => outln!("{}", self.text(&v.value)),
            Output::Json => outln!(
                "{}",
                json!({"key": self.text(key), "found": true, "value": self.text(&v.value),
                       "create_revision": v.create_revision, "mod_revision": v.mod_revision,
                       "version": v.version, "revision": revision,
                       "encoding": self.codec.name()})
            ),
        }
        0
    }

    /// A value written to stdout byte for byte (`get --raw`).
    pub fn raw(&self, v: &[u8]) -> u8 {
        crate::stdout::write_bytes(v);
        0
    }

    /// No value under `key`.
    pub fn not_found(&self, key: &[u8], revision: u64) {
        match self.format {
            Output::Table => eprintln!("rdb-cli: key \"{}\" not found", self.text(key)),
            Output::Json => outln!(
                "{}",
                json!({"key": self.text(key), "found": false, "revision": revision,
                       "encoding": self.codec.name()})
            ),
        }
    }

    /// A delete ran.
    pub fn deleted(&self, key: &[u8], o: &DeleteOutcome) -> u8 {
        let existed = o.existed;
        match self.format {
            Output::Table => outln!("OK (existed: {existed})"),
            Output::Json => outln!(
                "{}",
                json!({"op": "delete", "key": self.text(key), "existed": existed,
                       "revision": o.revision, "encoding": self.codec.name()})
            ),
        }
        0
    }

    /// History below a revision was dropped: `compacted` is where it starts now.
    pub fn compacted(&self, compacted: u64) -> u8 {
        match self.format {
            Output::Table => outln!("OK (history starts at revision {compacted})"),
            Output::Json => outln!("{}", json!({"op": "compact", "compacted": compacted})),
        }
        0
    }

    /// A compare-and-swap ran.
    pub fn cas(&self, key: &[u8], o: &CasOutcome) {
        let current = o.current.as_deref().map(|c| self.text(c));
        match self.format {
            Output::Table if o.succeeded => outln!("OK"),
            Output::Table => outln!(
                "compare failed; current value: {}{}",
                current.as_deref().unwrap_or("<absent or unknown>"),
                versions_text(o.current_version.as_ref())
            ),
            Output::Json => outln!(
                "{}",
                json!({"op": "cas", "key": self.text(key), "succeeded": o.succeeded,
                       "current": current, "current_version": versions_json(o.current_version.as_ref()),
                       "revision": o.revision, "encoding": self.codec.name()})
            ),
        }
    }

    /// A conditional delete whose condition did not hold.
    pub fn delete_refused(&self, key: &[u8], o: &DeleteOutcome) {
        match self.format {
            Output::Table => outln!(
                "compare failed; nothing deleted; the key is {}",
                match &o.current {
                    Some(_) => format!("there{}", versions_text(o.current.as_ref())),
                    None if o.existed => "there".into(),
                    None => "absent or unknown".into(),
                }
            ),
            Output::Json => outln!(
                "{}",
                json!({"op": "delete", "key": self.text(key), "succeeded": false,
                       "current_version": versions_json(o.current.as_ref()),
                       "revision": o.revision, "encoding": self.codec.name()})
            ),
        }
    }

    /// A scan page.
    pub fn scan(&self, page: &ScanPage) -> u8 {
        match self.format {
            Output::Table => {
                for (k, v) in &page.kvs {
                    // Neither form contains a tab, so the columns split unambiguously.
                    outln!("{}\t{}", self.text(k), self.text(v));
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
                outln!(
                    "{}",
                    json!({"kvs": kvs, "more": page.more, "encoding": self.codec.name()})
                );
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
                            "followers": s.followers.iter().map(|(id, m, lag)| json!({
                                "id": id, "match_index": m, "lag": lag})).collect::<Vec<_>>(),
                            "store": s.store,
                            "regions": s.regions.iter().map(|g| json!({
                                "region_id": g.region_id, "peer_id": g.peer_id,
                                "role": g.role, "term": g.term, "leader_peer_id": g.leader.0,
                                "leader_store_id": g.leader.1,
                                "commit_index": g.commit_index,
                                "applied_index": g.applied_index, "lag": g.lag,
                            })).collect::<Vec<_>>(),
                        }),
                        Err(e) => json!({"endpoint": ep, "error": e.to_string()}),
                    })
                    .collect();
                outln!("{}", serde_json::Value::Array(rows));
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
                        // A store has no role of its own: its regions follow.
                        Ok(s) if s.store => vec![
                            ep.clone(),
                            s.node_id.to_string(),
                            format!("store ({} regions)", s.regions.len()),
                        ],
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
                for s in all.iter().filter_map(|(_, r)| r.as_ref().ok()) {
                    if s.followers.is_empty() {
                        continue;
                    }
                    outln!();
                    let mut rows = vec![vec![
                        "FOLLOWER".to_string(),
                        "MATCH".to_string(),
                        "LAG".to_string(),
                    ]];
                    for (id, m, lag) in &s.followers {
                        rows.push(vec![id.to_string(), m.to_string(), lag.to_string()]);
                    }
                    outln!("as seen by leader {}:", s.node_id);
                    print_table(&rows);
                }
                for s in all.iter().filter_map(|(_, r)| r.as_ref().ok()) {
                    if !s.store || s.regions.is_empty() {
                        continue;
                    }
                    outln!();
                    outln!("regions of store {}:", s.node_id);
                    let mut rows = vec![self::header(&[
                        "REGION", "PEER", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAG",
                    ])];
                    for g in &s.regions {
                        let leader = match g.leader {
                            (0, _) => "-".to_string(),
                            (peer, 0) => format!("peer {peer}"),
                            (peer, store) => format!("peer {peer} (store {store})"),
                        };
                        rows.push(vec![
                            g.region_id.to_string(),
                            g.peer_id.to_string(),
                            g.role.clone(),
                            g.term.to_string(),
                            leader,
                            g.commit_index.to_string(),
                            g.applied_index.to_string(),
                            g.lag.to_string(),
                        ]);
                    }
                    print_table(&rows);
                }
            }
        }
    }
}

/// Endpoints' health (`endpoint health`).
impl Printer {
    /// One row per endpoint: healthy or not, how long the check took, and why not.
    pub fn health(&self, all: &[rdb_client::EndpointHealth]) {
        match self.format {
            Output::Json => {
                let rows: Vec<_> = all
                    .iter()
                    .map(|h| {
                        json!({"endpoint": h.endpoint, "health": h.healthy,
                               "took_ms": h.took.as_secs_f64() * 1000.0, "error": h.error})
                    })
                    .collect();
                outln!("{}", Value::Array(rows));
            }
            Output::Table => {
                let mut rows = vec![header(&["ENDPOINT", "HEALTH", "TOOK", "ERROR"])];
                for h in all {
                    rows.push(vec![
                        h.endpoint.clone(),
                        h.healthy.to_string(),
                        format!("{:.1}ms", h.took.as_secs_f64() * 1000.0),
                        h.error.clone().unwrap_or_default(),
                    ]);
                }
                print_table(&rows);
            }
        }
    }
}

/// PD's answers.
impl Printer {
    /// A timestamp: its u64 form, and physical (as RFC 3339 UTC) / logical.
    pub fn timestamp(&self, ts: Timestamp) -> u8 {
        let time = crate::pd::rfc3339_utc(ts.physical);
        match self.format {
            Output::Table => {
                outln!("{}", ts.as_u64());
                outln!("physical {} ({time})  logical {}", ts.physical, ts.logical);
            }
            Output::Json => outln!(
                "{}",
                json!({"timestamp": ts.as_u64(), "physical": ts.physical,
                       "logical": ts.logical, "time": time})
            ),
        }
        0
    }

    /// Every store, one row each.
    pub fn stores(&self, stores: &[Store]) -> u8 {
        match self.format {
            Output::Json => {
                let rows: Vec<_> = stores
                    .iter()
                    .map(|s| {
                        json!({"id": s.id, "address": s.address, "state": s.state.name(),
                               "last_heartbeat_ms_ago": s.last_heartbeat_ms_ago,
                               "region_count": s.region_count, "leader_count": s.leader_count,
                               "capacity_bytes": s.capacity_bytes,
                               "available_bytes": s.available_bytes,
                               "used_bytes": s.used_bytes,
                               "labels": s.labels.iter()
                                   .map(|(k, v)| (k.clone(), Value::from(v.clone())))
                                   .collect::<serde_json::Map<_, _>>()})
                    })
                    .collect();
                outln!("{}", Value::Array(rows));
            }
            Output::Table => {
                let mut rows = vec![header(&[
                    "ID",
                    "ADDRESS",
                    "STATE",
                    "REGIONS",
                    "LEADERS",
                    "USED",
                    "AVAILABLE",
                    "CAPACITY",
                    "LAST_HEARTBEAT_MS_AGO",
                    "LABELS",
                ])];
                for s in stores {
                    rows.push(vec![
                        s.id.to_string(),
                        s.address.clone(),
                        s.state.name(),
                        s.region_count.to_string(),
                        s.leader_count.to_string(),
                        human_bytes(s.used_bytes),
                        human_bytes(s.available_bytes),
                        human_bytes(s.capacity_bytes),
                        s.last_heartbeat_ms_ago.to_string(),
                        labels(&s.labels),
                    ]);
                }
                print_table(&rows);
            }
        }
        0
    }

    /// PD's operators (`operator list`).
    pub fn operators(&self, ops: &[OperatorRecord]) -> u8 {
        match self.format {
            Output::Json => {
                let rows: Vec<_> = ops
                    .iter()
                    .map(|o| {
                        json!({"id": o.id, "region_id": o.region_id, "kind": o.kind,
                               "steps": o.steps, "done": o.done, "status": o.status,
                               "age_ms": o.age.as_millis() as u64, "reason": o.reason})
                    })
                    .collect();
                outln!("{}", Value::Array(rows));
            }
            Output::Table => {
                let mut rows = vec![header(&[
                    "ID", "REGION", "KIND", "STATUS", "AGE", "STEPS", "REASON",
                ])];
                for o in ops {
                    // The steps done are marked, so the row shows where it is.
                    let steps: Vec<String> = o
                        .steps
                        .iter()
                        .enumerate()
                        .map(|(i, s)| {
                            if (i as u32) < o.done {
                                format!("[done] {s}")
                            } else {
                                s.clone()
                            }
                        })
                        .collect();
                    rows.push(vec![
                        o.id.to_string(),
                        o.region_id.to_string(),
                        o.kind.clone(),
                        o.status.clone(),
                        format!("{:.1}s", o.age.as_secs_f64()),
                        steps.join("; "),
                        o.reason.clone(),
                    ]);
                }
                print_table(&rows);
            }
        }
        0
    }

    /// Leadership moved to `id`.
    pub fn leader_transferred(&self, id: u64) {
        match self.format {
            Output::Table => outln!("OK: node {id} leads"),
            Output::Json => outln!(
                "{}",
                json!({"op": "leader transfer", "leader_id": id, "ok": true})
            ),
        }
    }

    /// Region `source` prepared its merge into `target`.
    pub fn merge_started(&self, source: u64, target: u64) {
        match self.format {
            Output::Table => outln!("OK: region {source} is merging into region {target}"),
            Output::Json => outln!(
                "{}",
                json!({"op": "region merge", "source": source, "target": target, "ok": true})
            ),
        }
    }

    /// A store was marked Tombstone.
    pub fn store_tombstoned(&self, id: u64) -> u8 {
        match self.format {
            Output::Table => outln!("OK"),
            Output::Json => outln!(
                "{}",
                json!({"op": "store tombstone", "store_id": id, "ok": true})
            ),
        }
        0
    }

    /// A store's removal started (or was cancelled).
    pub fn store_removing(&self, id: u64, cancel: bool) -> u8 {
        match self.format {
            Output::Table if cancel => outln!("store {id} stays: its removal was cancelled"),
            Output::Table => outln!(
                "store {id} is being removed: PD moves its regions to other stores, then \
                 tombstones it (rdb-cli --pd ... store list shows the progress)"
            ),
            Output::Json => outln!(
                "{}",
                json!({"op": "store remove", "store_id": id, "cancel": cancel, "ok": true})
            ),
        }
        0
    }

    fn region_json(&self, r: &RegionInfo, stores: &StoreStates) -> Value {
        let g = &r.region;
        json!({
            "id": g.id, "start_key": self.text(&g.start_key), "end_key": self.text(&g.end_key),
            "epoch": {"version": g.epoch.version, "conf_ver": g.epoch.conf_ver},
            "peers": g.peers.iter()
                .map(|p| json!({"id": p.id, "store_id": p.store_id, "learner": p.learner,
                                "store_state": stores.get(&p.store_id).map_or("up", |s| s)}))
                .collect::<Vec<_>>(),
            "leader": r.leader.map(|p| json!({"id": p.id, "store_id": p.store_id})),
            "approximate_size": r.approximate_size, "approximate_keys": r.approximate_keys,
        })
    }

    /// Regions, one row each. In tables an empty start key shows as `-inf` and an empty end
    /// key as `+inf`; JSON gives the keys as they are.
    /// Peers are `id@store`, marked `(learner)` and, on a store that is down or tombstoned
    /// (`stores`), `(down)` or `(tombstone)`.
    pub fn regions(&self, regions: &[RegionInfo], stores: &StoreStates) -> u8 {
        match self.format {
            Output::Json => {
                let rows: Vec<_> = regions
                    .iter()
                    .map(|r| self.region_json(r, stores))
                    .collect();
                outln!(
                    "{}",
                    json!({"regions": rows, "encoding": self.codec.name()})
                );
            }
            Output::Table => {
                let mut rows = vec![header(&[
                    "ID", "START", "END", "VERSION", "CONF_VER", "PEERS", "LEADER", "SIZE", "KEYS",
                ])];
                for r in regions {
                    rows.push(self.region_row(r, stores));
                }
                print_table(&rows);
            }
        }
        0
    }

    fn region_row(&self, r: &RegionInfo, stores: &StoreStates) -> Vec<String> {
        let g = &r.region;
        let bound = |k: &[u8], none: &str| {
            if k.is_empty() {
                none.to_string()
            } else {
                self.text(k)
            }
        };
        let peers: Vec<String> = g
            .peers
            .iter()
            .map(|p| {
                let learner = if p.learner { "(learner)" } else { "" };
                let state = stores
                    .get(&p.store_id)
                    .map_or(String::new(), |s| format!("({s})"));
                format!("{}@{}{learner}{state}", p.id, p.store_id)
            })
            .collect();
        vec![
            g.id.to_string(),
            bound(&g.start_key, "-inf"),
            bound(&g.end_key, "+inf"),
            g.epoch.version.to_string(),
            g.epoch.conf_ver.to_string(),
            peers.join(","),
            r.leader
                .map_or("-".into(), |p| format!("{}@{}", p.id, p.store_id)),
            r.approximate_size.to_string(),
            r.approximate_keys.to_string(),
        ]
    }

    /// The region holding `key`.
    pub fn region(&self, key: &[u8], r: &RegionInfo, stores: &StoreStates) -> u8 {
        match self.format {
            Output::Json => outln!(
                "{}",
                json!({"key": self.text(key), "found": true,
                       "region": self.region_json(r, stores),
                       "encoding": self.codec.name()})
            ),
            Output::Table => {
                let mut rows = vec![header(&[
                    "ID", "START", "END", "VERSION", "CONF_VER", "PEERS", "LEADER", "SIZE", "KEYS",
                ])];
                rows.push(self.region_row(r, stores));
                print_table(&rows);
            }
        }
        0
    }

    /// No region holds `key`.
    pub fn no_region(&self, key: &[u8]) {
        match self.format {
            Output::Table => eprintln!("rdb-cli: no region holds key \"{}\"", self.text(key)),
            Output::Json => outln!(
                "{}",
                json!({"key": self.text(key), "found": false, "encoding": self.codec.name()})
            ),
        }
    }

    /// The PD nodes; the leader is marked, learners named, and when the leader answered, how
    /// far each node holds its log (`MATCH`) and is behind its commit index (`LAG`).
    pub fn members(&self, m: &Members) -> u8 {
        let leader_id = m.leader.as_ref().map(|l| l.id);
        let from_leader = m.node_id != 0 && leader_id == Some(m.node_id);
        let role = |x: &rdb_client::pd::Member| match leader_id {
            _ if x.learner => "learner",
            Some(l) if l == x.id => "leader",
            Some(_) => "follower",
            None if m.node_id == 0 => "voter",
            None => "-",
        };
        match self.format {
            Output::Json => {
                let rows: Vec<_> = m
                    .members
                    .iter()
                    .map(|x| {
                        let mut row = json!({"id": x.id, "client_addr": x.client_addr,
                               "peer_addr": x.peer_addr, "leader": Some(x.id) == leader_id,
                               "role": if x.learner { "learner" } else { "voter" }});
                        if from_leader {
                            row["match_index"] = json!(x.match_index);
                        }
                        row
                    })
                    .collect();
                let mut doc = json!({"members": rows, "leader_id": leader_id});
                if from_leader {
                    doc["commit_index"] = json!(m.commit_index);
                }
                outln!("{doc}");
            }
            Output::Table => {
                let mut rows = vec![header(&[
                    "ID",
                    "CLIENT_ADDR",
                    "PEER_ADDR",
                    "ROLE",
                    "MATCH",
                    "LAG",
                ])];
                for x in &m.members {
                    let (matched, lag) = if from_leader {
                        (
                            x.match_index.to_string(),
                            m.commit_index.saturating_sub(x.match_index).to_string(),
                        )
                    } else {
                        ("-".into(), "-".into())
                    };
                    rows.push(vec![
                        x.id.to_string(),
                        x.client_addr.clone(),
                        x.peer_addr.clone(),
                        role(x).into(),
                        matched,
                        lag,
                    ]);
                }
                print_table(&rows);
            }
        }
        0
    }
}

/// The stores that are not up, by id (`down`, `tombstone`), to mark their peers.
pub type StoreStates = std::collections::HashMap<u64, String>;

/// Bytes for people: `0`, `512 B`, `1.5 MiB`, `3.2 GiB`, ...
/// A store's labels as typed (`zone=a,host=h1`), `-` for none.
fn labels(labels: &[(String, String)]) -> String {
    if labels.is_empty() {
        return "-".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return if n == 0 { "0".into() } else { format!("{n} B") };
    }
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

pub(crate) fn header(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Prints rows as aligned columns (the first row is the header).
pub(crate) fn print_table(rows: &[Vec<String>]) {
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
        outln!("{}", line.join("  ").trim_end());
    }
}

/// `(version N, mod_revision R)` after a failed compare, when the versions are known.
fn versions_text(v: Option<&KeyVersion>) -> String {
    v.map_or(String::new(), |v| {
        format!(" (version {}, mod_revision {})", v.version, v.mod_revision)
    })
}

/// A key's versions in JSON output (null when unknown).
fn versions_json(v: Option<&KeyVersion>) -> serde_json::Value {
    match v {
        Some(v) => json!({"create_revision": v.create_revision,
                          "mod_revision": v.mod_revision, "version": v.version}),
        None => serde_json::Value::Null,
    }
}
