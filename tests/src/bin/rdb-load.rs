//! `rdb-load`: writes under a procedure (node replacement, rolling restart) and checks that no
//! acknowledged write was lost, for the scripts.
//!
//! ```text
//! rdb-load write  --endpoints A,B,C --log acked.txt --stop-file STOP [--writers 4] [--prefix p]
//!                 [--keys N]
//! rdb-load verify --endpoints A,B,C --log acked.txt
//! ```
//! (`--pd P` instead of `--endpoints`: a PD-mode cluster, each request sent to its key's region.)
//!
//! `write` runs until STOP exists, appending each acknowledged `key value` to the log, and each
//! write whose outcome is unknown (its call failed) as `key value ?`, then prints `acked N
//! failed M` (and each failure) and exits 1 if any write failed. Every write is to a new key,
//! or with `--keys N` each writer overwrites its own N keys in turn. `verify` reads every
//! logged key back (linearizable) and exits 1 if one holds neither its last acknowledged value
//! nor a value written after it with an unknown outcome.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand};
use rdb_client::{Client, Options, ReadConsistency};
use rdb_tests::regions::KeyWrites;

/// Writes while something happens to the cluster, then checks the writes.
#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where the cluster is: its nodes, or its PD nodes.
#[derive(Debug, ClapArgs)]
#[group(required = true, multiple = false)]
struct Target {
    /// Client addresses, comma-separated.
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// PD client addresses, comma-separated: a PD-mode cluster, routed by PD's region map.
    #[arg(long, value_delimiter = ',')]
    pd: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Write until the stop file appears, logging every acknowledged write.
    Write {
        #[command(flatten)]
        target: Target,
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
        /// Keys per writer, overwritten in turn; 0 writes a new key each time.
        #[arg(long, default_value_t = 0)]
        keys: u64,
    },
    /// Read every logged write back.
    Verify {
        #[command(flatten)]
        target: Target,
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
fn client(target: &Target) -> Result<Client, rdb_client::Error> {
    let opts = Options {
        deadline: Duration::from_secs(20),
        ..Options::default()
    };
    if target.pd.is_empty() {
        Client::with_options(target.endpoints.to_vec(), opts)
    } else {
        Client::with_pd(&target.pd, opts)
    }
}

/// What each logged key may hold, from the log in the order written: a `key value` line is
/// acknowledged, a `key value ?` line has an unknown outcome. Each key has one writer, so its
/// lines are in the order its writes were made.
fn key_writes(log: &str) -> BTreeMap<String, KeyWrites> {
    let mut all = BTreeMap::<String, KeyWrites>::new();
    for line in log.lines() {
        let mut words = line.split(' ');
        let (Some(k), Some(v)) = (words.next(), words.next()) else {
            continue;
        };
        let kw = all.entry(k.to_string()).or_default();
        if words.next() == Some("?") {
            kw.unknown.push(v.to_string());
        } else {
            kw.acked = Some(v.to_string());
            kw.unknown.clear();
        }
    }
    all
}

async fn run(cmd: Cmd) -> Result<bool, Box<dyn std::error::Error>> {
    match cmd {
        Cmd::Write {
            target,
            log,
            stop_file,
            writers,
            prefix,
            keys,
        } => {
            let client = client(&target)?;
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
                            let n = if keys == 0 { i } else { i % keys };
                            let (k, v) = (format!("{prefix}-{w}-{n:08}"), format!("v{i}"));
                            let put = client.put(k.clone(), v.clone()).await;
                            let mut f = out.lock().unwrap_or_else(|p| p.into_inner());
                            match put {
                                Ok(_) => {
                                    let _ = writeln!(f, "{k} {v}");
                                    acked.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) => {
                                    let _ = writeln!(f, "{k} {v} ?");
                                    failures
                                        .lock()
                                        .unwrap_or_else(|p| p.into_inner())
                                        .push(format!("{k}: {e}"))
                                }
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
        Cmd::Verify { target, log } => {
            let client = client(&target)?;
            let text = std::fs::read_to_string(&log)?;
            let pairs: Vec<(String, KeyWrites)> = key_writes(&text).into_iter().collect();
            // 16 readers over interleaved shares of the log.
            let pairs = Arc::new(pairs);
            let tasks: Vec<_> = (0..16)
                .map(|r| {
                    let (client, pairs) = (client.clone(), pairs.clone());
                    tokio::spawn(async move {
                        for (k, kw) in pairs.iter().skip(r).step_by(16) {
                            let got = client
                                .get_with(k.clone(), ReadConsistency::Linearizable)
                                .await
                                .map_err(|e| format!("reading {k}: {e}"))?;
                            let got = got.map(|v| String::from_utf8_lossy(&v).into_owned());
                            if !kw.allows(got.as_deref()) {
                                return Err(format!(
                                    "lost: {k} holds {}, expected {}{}",
                                    got.as_deref().unwrap_or("nothing"),
                                    kw.acked.as_deref().unwrap_or("nothing"),
                                    if kw.unknown.is_empty() {
                                        String::new()
                                    } else {
                                        format!(" or one of {}", kw.unknown.join(", "))
                                    }
                                ));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_may_hold_its_last_acknowledged_value_or_a_later_unknown_one() {
        let all = key_writes("a v0\na v1 ?\nb v0 ?\na v2\na v3 ?\nc v5\n");
        let a = &all["a"];
        assert!(a.allows(Some("v2")) && a.allows(Some("v3")));
        assert!(!a.allows(Some("v1")) && !a.allows(Some("v0")) && !a.allows(None));
        // Never acknowledged: absent, or the unknown write.
        assert!(all["b"].allows(None) && all["b"].allows(Some("v0")));
        assert!(all["c"].allows(Some("v5")) && !all["c"].allows(None));
    }
}
