//! `rdb-soak`: the fault-injection run for as long as you like, with random or given seeds.
//!
//! ```text
//! cargo run -p rdb-tests --bin rdb-soak -- --duration 600
//! cargo run -p rdb-tests --bin rdb-soak -- --duration 60 --seed 42 --rounds 3
//! ```
//! Needs the rdb-server binary built (`cargo build --workspace --bins`). A failing round saves
//! its history as JSON and prints the checker's explanation; the exit code is non-zero. Every
//! round ends with the replica check (every node's hash at one index), which must agree.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rdb_tests::fault::{run, FaultConfig};
use rdb_tests::linearizability::CheckResult;

/// Long randomized fault-injection runs with linearizability checking.
#[derive(Debug, Parser)]
struct Args {
    /// Seconds of faults per round.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Seed of the first round; random when not given.
    #[arg(long)]
    seed: Option<u64>,
    /// Rounds to run, each with the next seed.
    #[arg(long, default_value_t = 1)]
    rounds: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Also cut links between nodes (each node in its own network namespace; needs root).
    #[arg(long)]
    partitions: bool,
    /// Extra cluster settings, TOML lines (e.g. "snapshot_threshold = 300").
    #[arg(long, default_value = "")]
    settings: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rdb-soak: {e}");
            return ExitCode::FAILURE;
        }
    };
    let first = args.seed.unwrap_or_else(rand::random);
    for seed in first..first + args.rounds {
        let cfg = FaultConfig {
            duration: Duration::from_secs(args.duration),
            seed,
            clients: args.clients,
            partitions: args.partitions,
            settings: args.settings.replace("\\n", "\n"),
            ..FaultConfig::default()
        };
        let report = rt.block_on(run(&cfg));
        let (ok, failed, indeterminate) = report.counts();
        let verdict = match &report.result {
            CheckResult::Linearizable => "linearizable".to_string(),
            CheckResult::Illegal(v) => format!("NOT linearizable on key {:?}", v.key),
            CheckResult::Unknown { key } => format!("unknown (budget ran out on key {key:?})"),
        };
        println!(
            "seed {seed}: {} ops ({ok} ok, {failed} failed, {indeterminate} indeterminate), {} faults: {verdict}",
            report.history.len(),
            report.faults.len(),
        );
        if !matches!(report.result, CheckResult::Linearizable) {
            let path = std::env::temp_dir().join(format!("rdb-soak-{seed}.json"));
            match report.save(&path) {
                Ok(()) => eprintln!("history saved to {}", path.display()),
                Err(e) => eprintln!("could not save the history: {e}"),
            }
            if let CheckResult::Illegal(v) = &report.result {
                eprintln!("{v}");
            }
            return ExitCode::FAILURE;
        }
        match &report.replicas {
            Ok(r) if r.consistent() => {
                println!("seed {seed}: replicas identical at index {}", r.index)
            }
            Ok(r) => {
                eprintln!("seed {seed}: the replicas differ: {r:#?}");
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("seed {seed}: replica check failed: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
