//! The shipped Grafana dashboard and alert rules against a real Prometheus (Debian's
//! `prometheus` and `promtool`, which `scripts/setup.sh` installs): the committed dashboard is
//! what `dashboards/generate.py` writes, the alert rules load, and every dashboard query parses
//! and returns series from a live three-node cluster and a PD-mode cluster that Prometheus
//! scrapes; PD's gauges follow a store that stops.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdb_tests::cluster::{free_port, TestCluster};
use rdb_tests::regions::{RegionCluster, Setup, Split};
use serde_json::Value;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// The repository's root (this crate is `tests/` in it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

/// `GET path` on `addr` over HTTP/1.0; the body of a 200 answer, `None` otherwise.
fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(SECS(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    (head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200")).then(|| body.into())
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs an instant query; the JSON answer (status "success" or an error with its cause).
fn query(prom: &str, q: &str) -> Value {
    let body = http_get(prom, &format!("/api/v1/query?query={}", encode(q)))
        .unwrap_or_else(|| format!("{{\"status\":\"error\",\"error\":\"no answer to {q}\"}}"));
    serde_json::from_str(&body).unwrap_or(Value::Null)
}

/// Prometheus as a child process, stopped when dropped.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn require(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(found, "{tool} is missing: run scripts/setup.sh (as root)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_queries_and_alert_rules_work_in_a_real_prometheus() {
    require("prometheus");
    require("promtool");
    let dashboards = root().join("dashboards");

    // The committed dashboard is the generator's output.
    let o = Command::new("python3")
        .arg(dashboards.join("generate.py"))
        .arg("--stdout")
        .output()
        .expect("python3");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let committed = std::fs::read_to_string(dashboards.join("rdb.json")).expect("rdb.json");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        committed,
        "dashboards/rdb.json is not what dashboards/generate.py writes: run it"
    );

    // The alert rules are valid.
    let rules = dashboards.join("alerts.yml");
    let o = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool");
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );

    // A cluster with traffic, and a PD-mode cluster, scraped every second.
    let c = TestCluster::start(3);
    c.wait_leader(SECS(20)).await;
    let client = c.client();
    let mut regions = RegionCluster::start_setup(
        3,
        Split {
            keys: 1_000_000,
            check_ms: 1_000,
        },
        Setup {
            replicas: 3,
            pd_tables: "[pd]\nstore_down_after_secs = 3\n".into(),
            ..Setup::default()
        },
    );
    regions.wait_regions(1, SECS(30)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let targets: Vec<String> = c
        .nodes
        .iter()
        .chain(&regions.pd.nodes)
        .map(|n| n.metrics_addr.clone())
        .chain(regions.metrics_addrs.iter().cloned())
        .map(|a| format!("\"{a}\""))
        .collect();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - \"{}\"\n\
             scrape_configs:\n  - job_name: rdb\n    static_configs:\n      - targets: [{}]\n",
            rules.display(),
            targets.join(", ")
        ),
    )
    .expect("config");
    let prom = format!("127.0.0.1:{}", free_port());
    let _prometheus = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={prom}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).expect("log"))
            .spawn()
            .expect("start prometheus"),
    );

    // Traffic until every node has been scraped a few times.
    let deadline = Instant::now() + SECS(60);
    let mut i = 0u64;
    loop {
        for _ in 0..20 {
            i += 1;
            let _ = client.put(format!("k{}", i % 100), "v").await;
            let _ = client.get(format!("k{}", i % 100)).await;
        }
        let up = query(
            &prom,
            "count(up{job=\"rdb\"} == 1) and count(rdb_requests_total) > 0",
        );
        let scraped = query(&prom, "min(count_over_time(up{job=\"rdb\"}[1m]))");
        let n = |v: &Value| {
            v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        if n(&up) >= 3.0 && n(&scraped) >= 5.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape the nodes: {up} / {scraped}\n{}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every query parses; each returns series unless its metric has no sample yet (a labelled
    // counter no event has made: none in every node's own /metrics either).
    let exported: String = c
        .nodes
        .iter()
        .chain(&regions.pd.nodes)
        .map(|n| n.metrics_addr.clone())
        .chain(regions.metrics_addrs.iter().cloned())
        .filter_map(|a| http_get(&a, "/metrics"))
        .collect();
    let dashboard: Value = serde_json::from_str(&committed).expect("dashboard JSON");
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"]
                .as_str()
                .expect("expr")
                .replace("$instance", ".*");
            let r = query(&prom, &expr);
            assert_eq!(
                r["status"], "success",
                "panel {}: {expr} was refused: {r}",
                panel["title"]
            );
            let series = r["data"]["result"].as_array().map_or(0, Vec::len);
            let metric = expr
                .split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                .find(|w| w.starts_with("rdb_"))
                .expect("an rdb metric")
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count")
                .to_string();
            let sampled = exported.lines().any(|l| l.starts_with(&metric));
            assert!(
                series > 0 || !sampled,
                "panel {}: {expr} returned no series though {metric} is exported",
                panel["title"]
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} queries");

    // PD's gauges: three stores up and one region; a store that stops is down, and the region
    // with a peer on it under-replicated.
    let value = |q: &str| {
        query(&prom, q)["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse::<f64>().ok())
    };
    let wait_value = |q: &'static str, want: f64| {
        let deadline = Instant::now() + SECS(30);
        let value = &value;
        async move {
            loop {
                let got = value(q);
                if got == Some(want) {
                    return;
                }
                assert!(Instant::now() < deadline, "{q} is {got:?}, wanted {want}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    wait_value("sum(rdb_pd_stores{state=\"up\"})", 3.0).await;
    wait_value("sum(rdb_pd_regions)", 1.0).await;
    wait_value("sum(rdb_pd_regions_under_replicated)", 0.0).await;
    regions.kill(1);
    wait_value("sum(rdb_pd_stores{state=\"down\"})", 1.0).await;
    wait_value("sum(rdb_pd_regions_under_replicated)", 1.0).await;
    // `region list` marks the peer on the stopped store.
    let o = Command::new(rdb_tests::cluster::bin_dir().join("rdb-cli"))
        .args(["--pd", &regions.pd_addr(), "region", "list"])
        .output()
        .expect("rdb-cli");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.matches("(down)").count() == 1,
        "{out}"
    );

    // The alert rules are loaded and evaluate without errors.
    let rules = http_get(&prom, "/api/v1/rules").expect("rules");
    let rules: Value = serde_json::from_str(&rules).expect("rules JSON");
    let loaded: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    assert_eq!(loaded.len(), 6, "{rules}");
    for r in loaded {
        assert_ne!(r["health"], "err", "{r}");
    }
}
