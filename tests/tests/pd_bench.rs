//! The PD heartbeat bench (`rdb-pd-bench`) at a tiny scale: it starts its own rdb-pd, seeds
//! the regions and heartbeats every one of them, and its JSON report says so.

use std::process::Command;

use rdb_tests::cluster::{bin_dir, explain};

#[test]
fn the_bench_heartbeats_every_region_of_a_tiny_cluster_and_reports_it() {
    let out = Command::new(bin_dir().join("rdb-pd-bench"))
        .args(["--stores", "3", "--regions", "50", "--secs", "2"])
        .args(["--concurrency", "4", "--connections", "2", "--json"])
        .output()
        .expect("run rdb-pd-bench (cargo build --workspace --bins first)");
    assert!(out.status.success(), "{}", explain(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let r: serde_json::Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("the report is not one JSON line ({e}): {stdout}"));
    let num = |k: &str| {
        r[k].as_f64()
            .unwrap_or_else(|| panic!("report field {k} is not a number: {r}"))
    };
    assert_eq!((num("stores"), num("regions")), (3.0, 50.0), "{r}");
    assert_eq!(num("regions_heartbeaten"), 50.0, "every region once: {r}");
    assert!(num("heartbeats") >= 50.0, "{r}");
    assert!(
        num("pass_secs") > 0.0 && num("pass_secs") <= num("run_secs"),
        "{r}"
    );
    assert_eq!(num("errors"), 0.0, "{r}");
    assert!(num("heartbeats_per_sec") > 0.0, "{r}");
    assert!(num("p50_ms") > 0.0 && num("p99_ms") >= num("p50_ms"), "{r}");
    // A healthy cluster needs no scheduling.
    assert_eq!(num("operators"), 0.0, "{r}");
    // The bench started PD itself, so it knows its process.
    assert!(num("pd_cpu_percent") >= 0.0, "{r}");
    assert!(
        num("pd_rss_mib") > 0.0 && num("pd_hwm_mib") >= num("pd_rss_mib"),
        "{r}"
    );
}
