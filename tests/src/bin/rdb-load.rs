//! `rdb-load`: writes under a procedure (node replacement, rolling restart) and checks that no
//! acknowledged write was lost, for the scripts.
//!
//! ```text
//! rdb-load write  --endpoints A,B,C --log acked.txt --stop-file STOP [--writers 4] [--prefix p]
//! rdb-load verify --endpoints A,B,C --log acked.txt
//! ```
//! `write` runs until STOP exists, appending each acknowledged `key value` to the log, then
//! prints `acked N failed M` (and each failure) and exits 1 if any write failed. `verify` reads
//! every logged key back (linearizable) and exits 1 on the first one missing or different.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Parser, Subcommand};
use rdb_client::{Client, Options, ReadConsistency};

/// Writes while something happens to the cluster, then checks the writes.
#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Write until the stop file appears, logging every acknowledged write.
    Write {
        /// Client addresses, comma-separated.
        #[arg(long, value_delimiter = ',')]
        endpoints: Vec<String>,
        /// Where acknowledged writes are appended.
        #[arg(long)]
        log: PathBuf,
        /// Stop once this file exists.
        #[arg(long)]
        stop_file: PathBuf,
        /// Concurrent writers.
        #[arg(long, default_value_t = 4)]
        writers: usize,
        /// Key prefix (distinct per run).
        #[arg(long, default_value = "load")]
        prefix: String,
    },
    /// Read every logged write back.
    Verify {
        /// Client addresses, comma-separated.
        #[arg(long, value_delimiter = ',')]
        endpoints: Vec<String>,
        /// The log `write` made.
        #[arg(long)]
        log: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rdb-load: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args.cmd)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("rdb-load: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A client that keeps retrying a write across a handover or an election (20 s).
fn client(endpoints: &[String]) -> Result<Client, rdb_client::Error> {
    let opts = Options {
        deadline: Duration::from_secs(20),
        ..Options::default()
    };
    Client::with_options(endpoints.to_vec(), opts)
}

async fn run(cmd: Cmd) -> Result<bool, Box<dyn std::error::Error>> {
    match cmd {
        Cmd::Write {
            endpoints,
            log,
            stop_file,
            writers,
            prefix,
        } => {
            let client = client(&endpoints)?;
            let out = Arc::new(Mutex::new(std::fs::File::create(&log)?));
            let stop = Arc::new(AtomicBool::new(false));
            let failures = Arc::new(Mutex::new(Vec::new()));
            let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let tasks: Vec<_> = (0..writers)
                .map(|w| {
                    let (client, out, stop, failures, acked, prefix) = (
                        client.clone(),
                        out.clone(),
                        stop.clone(),
                        failures.clone(),
                        acked.clone(),
                        prefix.clone(),
                    );
                    tokio::spawn(async move {
                        let mut i = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            let (k, v) = (format!("{prefix}-{w}-{i:08}"), format!("v{i}"));
                            match client.put(k.clone(), v.clone()).await {
                                Ok(()) => {
                                    let mut f = out.lock().unwrap_or_else(|p| p.into_inner());
                                    let _ = writeln!(f, "{k} {v}");
                                    acked.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) => failures
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .push(format!("{k}: {e}")),
                            }
                            i += 1;
                        }
                    })
                })
                .collect();
            while !stop_file.exists() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            stop.store(true, Ordering::Relaxed);
            for t in tasks {
                t.await?;
            }
            out.lock().unwrap_or_else(|p| p.into_inner()).sync_all()?;
            let failures = failures.lock().unwrap_or_else(|p| p.into_inner());
            println!(
                "acked {} failed {}",
                acked.load(Ordering::Relaxed),
                failures.len()
            );
            for f in failures.iter() {
                println!("failed write {f}");
            }
            Ok(failures.is_empty())
        }
        Cmd::Verify { endpoints, log } => {
            let client = client(&endpoints)?;
            let text = std::fs::read_to_string(&log)?;
            let pairs: Vec<(String, String)> = text
                .lines()
                .filter_map(|l| l.split_once(' '))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            // 16 readers over interleaved shares of the log.
            let pairs = Arc::new(pairs);
            let tasks: Vec<_> = (0..16)
                .map(|r| {
                    let (client, pairs) = (client.clone(), pairs.clone());
                    tokio::spawn(async move {
                        for (k, v) in pairs.iter().skip(r).step_by(16) {
                            let got = client
                                .get_with(k.clone(), ReadConsistency::Linearizable)
                                .await
                                .map_err(|e| format!("reading {k}: {e}"))?;
                            if got.as_deref() != Some(v.as_bytes()) {
                                return Err(format!("lost: {k} (expected {v}, read {got:?})"));
                            }
                        }
                        Ok::<(), String>(())
                    })
                })
                .collect();
            let mut ok = true;
            for t in tasks {
                if let Err(e) = t.await? {
                    println!("{e}");
                    ok = false;
                }
            }
            if ok {
                println!("verified {}", pairs.len());
            }
            Ok(ok)
        }
    }
}
