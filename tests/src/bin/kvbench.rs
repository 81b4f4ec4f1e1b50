//! `kvbench`: one closed-loop load generator with two backends, rdb (through `rdb-client`) and
//! etcd (its v3 gRPC KV API), so the two are measured by the same code, side by side
//! (`scripts/bench-etcd.sh` runs it in alternating rounds).
//!
//! ```text
//! kvbench --backend rdb  --endpoints A,B,C --workload put --clients 64 --connections 8
//! kvbench --backend etcd --endpoints A,B,C --workload get --clients 64 --connections 8
//! ```
//! `--clients` tasks each keep one request in flight, spread round-robin over `--connections`
//! connections. Keys are drawn uniformly from `--keys` names with a seeded generator; values are
//! `--value-size` bytes. For rdb each connection is a `Client` over every endpoint (it finds the
//! leader, as an application would); for etcd each connection is a gRPC channel to one member,
//! the members taken in turn (any member serves etcd's API, as etcd's own benchmark uses it).
//! Only successful calls count. Prints one JSON line: ops, ops per second, p50/p99/max in ms,
//! errors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdb_client::{Client, Options, ReadConsistency};
use tonic::transport::{Channel, Endpoint};

/// The generated client of etcd's KV service.
mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
use etcdserverpb::kv_client::KvClient as EtcdKv;
use etcdserverpb::{PutRequest, RangeRequest};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    Rdb,
    Etcd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// Puts.
    Put,
    /// Linearizable gets.
    Get,
    /// Serializable gets (a member's local state).
    GetSerializable,
}

/// A closed-loop benchmark of rdb or etcd.
#[derive(Debug, Parser)]
struct Args {
    #[arg(long, value_enum)]
    backend: Backend,
    /// Client addresses, comma-separated.
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    #[arg(long, value_enum, default_value_t = Workload::Put)]
    workload: Workload,
    /// Concurrent requests.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Connections the requests are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Seed of the key choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// rdb only: send linearizable reads to the leader only (the client's default spreads them
    /// over every node).
    #[arg(long)]
    leader_reads: bool,
}

/// One connection of either backend.
#[derive(Clone)]
enum Conn {
    Rdb(Client),
    Etcd(EtcdKv<Channel>),
}

impl Conn {
    async fn call(&mut self, w: Workload, key: Vec<u8>, value: &[u8]) -> Result<(), String> {
        match (self, w) {
            (Conn::Rdb(c), Workload::Put) => c
                .put(key, value.to_vec())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            (Conn::Rdb(c), Workload::Get) => c
                .get_with(key, ReadConsistency::Linearizable)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            (Conn::Rdb(c), Workload::GetSerializable) => c
                .get_with(key, ReadConsistency::Serializable)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            (Conn::Etcd(c), Workload::Put) => c
                .put(PutRequest {
                    key,
                    value: value.to_vec(),
                    lease: 0,
                })
                .await
                .map(drop)
                .map_err(|s| s.to_string()),
            (Conn::Etcd(c), get) => c
                .range(RangeRequest {
                    key,
                    serializable: get == Workload::GetSerializable,
                    ..Default::default()
                })
                .await
                .map(drop)
                .map_err(|s| s.to_string()),
        }
    }
}

async fn connect(args: &Args) -> Result<Vec<Conn>, Box<dyn std::error::Error>> {
    let mut conns = Vec::new();
    for i in 0..args.connections.max(1) {
        conns.push(match args.backend {
            Backend::Rdb => {
                let mut eps = args.endpoints.clone();
                let n = eps.len().max(1);
                eps.rotate_left(i % n);
                let opts = Options {
                    deadline: Duration::from_secs(10),
                    spread_reads: !args.leader_reads,
                    ..Options::default()
                };
                Conn::Rdb(Client::with_options(eps, opts)?)
            }
            Backend::Etcd => {
                let ep = &args.endpoints[i % args.endpoints.len()];
                let ch = Endpoint::from_shared(format!("http://{ep}"))?
                    .tcp_nodelay(true)
                    .connect()
                    .await?;
                Conn::Etcd(EtcdKv::new(ch))
            }
        });
    }
    Ok(conns)
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    if args.endpoints.is_empty() {
        return Err("--endpoints is required".into());
    }
    let conns = connect(&args).await?;
    let args = Arc::new(args);
    let value: Arc<Vec<u8>> = Arc::new(vec![b'x'; args.value_size]);
    let started = Instant::now();
    let end = started + Duration::from_secs(args.duration_secs);
    let tasks: Vec<_> = (0..args.clients)
        .map(|t| {
            let mut conn = conns[t % conns.len()].clone();
            let (args, value) = (args.clone(), value.clone());
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(args.seed.wrapping_mul(1_000_003) + t as u64);
                let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
                    .expect("histogram bounds");
                let mut errors = 0u64;
                let mut last_error = String::new();
                while Instant::now() < end {
                    let key = format!("bench-{:08}", rng.gen_range(0..args.keys)).into_bytes();
                    let t0 = Instant::now();
                    match conn.call(args.workload, key, &value).await {
                        Ok(()) => {
                            let _ = hist.record((t0.elapsed().as_micros() as u64).max(1));
                        }
                        Err(e) => {
                            errors += 1;
                            last_error = e;
                        }
                    }
                }
                (hist, errors, last_error)
            })
        })
        .collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let (mut errors, mut last_error) = (0u64, String::new());
    for t in tasks {
        let (h, e, le) = t.await?;
        hist.add(h)?;
        errors += e;
        if !le.is_empty() {
            last_error = le;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{}",
        serde_json::json!({
            "backend": format!("{:?}", args.backend).to_lowercase(),
            "workload": format!("{:?}", args.workload).to_lowercase(),
            "clients": args.clients,
            "connections": args.connections,
            "ops": hist.len(),
            "ops_per_sec": (hist.len() as f64 / secs).round(),
            "p50_ms": ms(0.5),
            "p99_ms": ms(0.99),
            "max_ms": hist.max() as f64 / 1000.0,
            "errors": errors,
            "last_error": last_error,
        })
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kvbench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvbench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
