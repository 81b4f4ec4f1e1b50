//! The simulation as tests: `cargo test -p rdb-server simulation`.
//!
//! - `simulation_seeds_*`: the default run, 200 seeds (config-file clusters and PD-mode
//!   stores, about half each) in four parallel tests.
//! - `simulation_catches_*`: each planted bug must make some seed of the default run fail
//!   (the cores', the clients', PD's scheduler's in runs with `scheduling`, and reads that
//!   misreport versions, which only the check of versions can tell).
//! - `simulation_replay`: `RDB_SIM_SEED=S [RDB_SIM_TICKS=T]` replays one seed with its trace.
//! - `simulation_long` (ignored): `RDB_SIM_MINUTES=N` runs fresh seeds for N minutes.

use std::time::{Duration, Instant};

use super::{run, Failure, Planted, Scenario, Stats};
use crate::raft_core::PlantedBugs;

/// Seeds in the default run.
const DEFAULT_SEEDS: u64 = 200;
/// The default run is split in this many tests, so the test harness runs them in parallel.
const PARTS: u64 = 4;

/// Finds the shortest run (in ticks of workload) of the failing scenario that still fails.
fn shortest(f: &Failure) -> Failure {
    let (mut lo, mut hi) = (1, f.scenario.ticks);
    let mut best = f.clone();
    while lo < hi {
        let mid = (lo + hi) / 2;
        let mut sc = f.scenario.clone();
        sc.ticks = mid;
        match run(&sc) {
            Err(g) => {
                best = *g;
                hi = mid;
            }
            Ok(_) => lo = mid + 1,
        }
    }
    best
}

fn report(f: &Failure) -> String {
    let s = shortest(f);
    format!(
        "seed {} failed; shortest failing run: {} ticks.\nreplay: RDB_SIM_SEED={} RDB_SIM_TICKS={} \
         cargo test -p rdb-server simulation_replay -- --nocapture\n{s}",
        f.scenario.seed, s.scenario.ticks, f.scenario.seed, s.scenario.ticks
    )
}

/// Runs seeds `from..to` with `planted`; returns the first failure.
fn run_seeds(from: u64, to: u64, planted: Planted) -> Result<Stats, Box<Failure>> {
    let mut total = Stats::default();
    for seed in from..to {
        let mut sc = Scenario::from_seed(seed);
        sc.planted = planted;
        let stats = run(&sc)?;
        total.ops += stats.ops;
        total.ok += stats.ok;
        total.faults += stats.faults;
        total.snapshots += stats.snapshots;
        total.applied += stats.applied;
        total.late_retries += stats.late_retries;
        total.member_changes += stats.member_changes;
        total.removed += stats.removed;
        total.merged += stats.merged;
        total.operators += stats.operators;
        total.regions += stats.regions;
        total.moved_retries += stats.moved_retries;
        total.lost_bytes += stats.lost_bytes;
        total.conditional.0 += stats.conditional.0;
        total.conditional.1 += stats.conditional.1;
    }
    Ok(total)
}

fn default_part(part: u64) {
    let per = DEFAULT_SEEDS / PARTS;
    let started = Instant::now();
    match run_seeds(part * per, (part + 1) * per, Planted::default()) {
        Ok(t) => eprintln!(
            "seeds {}..{}: {} operations checked ({} succeeded), {} entries applied, {} faults, \
             {} snapshots delivered, {} retries past half the dedup window, {} retries to \
             another region than the earlier attempts, {} membership changes applied, {} peers \
             removed, {} merges applied by replicas, {} operators started by PD, {} regions at \
             the end, {} unsynced log bytes lost to power cuts, {} conditional writes answered \
             ({} held), {:?}",
            part * per,
            (part + 1) * per,
            t.ops,
            t.ok,
            t.applied,
            t.faults,
            t.snapshots,
            t.late_retries,
            t.moved_retries,
            t.member_changes,
            t.removed,
            t.merged,
            t.operators,
            t.regions,
            t.lost_bytes,
            t.conditional.0,
            t.conditional.1,
            started.elapsed()
        ),
        Err(f) => panic!("{}", report(&f)),
    }
}

#[test]
fn simulation_seeds_0() {
    default_part(0);
}

#[test]
fn simulation_seeds_1() {
    default_part(1);
}

#[test]
fn simulation_seeds_2() {
    default_part(2);
}

#[test]
fn simulation_seeds_3() {
    default_part(3);
}

/// The default run with `planted` must fail on some seed.
fn must_catch(planted: Planted, what: &str) {
    match run_seeds(0, DEFAULT_SEEDS, planted) {
        Ok(_) => panic!("{what}: no seed of the default run failed"),
        Err(f) => eprintln!(
            "{what}: caught by seed {}: {}",
            f.scenario.seed,
            f.reason.lines().next().unwrap_or("")
        ),
    }
}

#[test]
fn simulation_catches_acknowledging_before_fsync() {
    must_catch(
        Planted {
            core: PlantedBugs {
                ack_before_sync: true,
                ..Default::default()
            },
            ..Default::default()
        },
        "acknowledge before fsync",
    );
}

#[test]
fn simulation_catches_reads_without_read_index() {
    must_catch(
        Planted {
            core: PlantedBugs {
                read_without_index: true,
                ..Default::default()
            },
            ..Default::default()
        },
        "read without ReadIndex",
    );
}

#[test]
fn simulation_catches_follower_reads_before_apply() {
    must_catch(
        Planted {
            core: PlantedBugs {
                follower_read_before_apply: true,
                ..Default::default()
            },
            ..Default::default()
        },
        "a follower read answered before applying the read index",
    );
}

#[test]
fn simulation_catches_retries_applied_twice() {
    must_catch(
        Planted {
            retries_with_new_ids: true,
            ..Default::default()
        },
        "retried write applied twice",
    );
}

#[test]
fn simulation_catches_pd_that_never_repairs() {
    must_catch(
        Planted {
            pd_never_repairs: true,
            ..Default::default()
        },
        "PD never replaces a lost store's peers",
    );
}

#[test]
fn simulation_catches_reads_that_misreport_versions() {
    must_catch(
        Planted {
            reads_report_create_revision: true,
            ..Default::default()
        },
        "reads answer a key's create_revision as its mod_revision",
    );
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn simulation_replays_a_seed_exactly() {
    for seed in [3, 11] {
        let sc = Scenario::from_seed(seed);
        let a = run(&sc).map_err(|f| f.to_string()).unwrap();
        let b = run(&sc).map_err(|f| f.to_string()).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint, "seed {seed} ran two ways");
        assert!(a.ops > 50, "seed {seed} did little: {a:?}");
    }
}

#[test]
fn simulation_replay() {
    let Some(seed) = env_u64("RDB_SIM_SEED") else {
        eprintln!("set RDB_SIM_SEED (and optionally RDB_SIM_TICKS) to replay a seed");
        return;
    };
    let mut sc = Scenario::from_seed(seed);
    if let Some(t) = env_u64("RDB_SIM_TICKS") {
        sc.ticks = t;
    }
    match run(&sc) {
        Ok(stats) => eprintln!("seed {seed} passed: {stats:?}"),
        Err(f) => panic!("{f}"),
    }
}

#[test]
#[ignore = "long mode: RDB_SIM_MINUTES=N cargo test -p rdb-server simulation_long -- --ignored"]
fn simulation_long() {
    let minutes = env_u64("RDB_SIM_MINUTES").unwrap_or(1);
    let until = Instant::now() + Duration::from_secs(60 * minutes);
    let first = env_u64("RDB_SIM_FIRST_SEED").unwrap_or(1_000_000);
    let mut seed = first;
    while Instant::now() < until {
        if let Err(f) = run_seeds(seed, seed + 1, Planted::default()) {
            panic!("{}", report(&f));
        }
        seed += 1;
    }
    eprintln!("seeds {first}..{seed} passed");
}
