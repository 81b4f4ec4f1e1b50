//! Running the clients: connections, the shared budget, one task per client keeping one
//! request in flight, and the loop that watches them (progress, Ctrl-C).

use super::*;

/// `endpoints` rotated left by `i`, so connection `i` tries a different node first.
pub(super) fn rotated(endpoints: &[String], i: usize) -> Vec<String> {
    let mut v = endpoints.to_vec();
    if !v.is_empty() {
        let n = i % v.len();
        v.rotate_left(n);
    }
    v
}

/// Counters the tasks bump as they go, for the progress bar.
#[derive(Default)]
pub(super) struct Live {
    pub(super) ok: AtomicU64,
    pub(super) errors: AtomicU64,
}

/// When the measured phase ends.
#[derive(Clone, Copy)]
pub(super) enum Budget {
    /// Stop issuing requests at this instant.
    Until(Instant),
    /// Stop once this many requests were issued by all tasks together.
    Ops(u64),
}

/// Everything a measuring task shares with the others.
pub(super) struct Shared {
    pub(super) budget: Budget,
    pub(super) issued: AtomicU64,
    pub(super) stop: AtomicBool,
    pub(super) live: Live,
    pub(super) value: Vec<u8>,
    /// Inserts issued so far; insert `n` writes key number `keys + n`.
    pub(super) inserted: AtomicU64,
}

impl Shared {
    pub(super) fn new(budget: Budget, value: Vec<u8>) -> Shared {
        Shared {
            budget,
            issued: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            live: Live::default(),
            value,
            inserted: AtomicU64::new(0),
        }
    }

    /// Claims the right to issue one more request; false when the run is over.
    pub(super) fn take_one(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        match self.budget {
            Budget::Until(t) => Instant::now() < t,
            Budget::Ops(n) => self.issued.fetch_add(1, Ordering::Relaxed) < n,
        }
    }
}

/// What a measuring task talks to.
#[derive(Clone)]
pub(super) enum Conn {
    Kv(Client),
    Pd(PdClient),
}

/// One request, with its keys named, ready to send (built before the clock starts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Request {
    Timestamp,
    Get(String),
    BatchGet(Vec<String>),
    Put(String),
    BatchPut(Vec<String>),
    Scan { start: String, limit: u32 },
}

/// Builds the request of `kind` for the chosen key number `key` (and `more` for batches).
/// Inserts take the next number after the key space from `inserted`; scans draw their
/// length from `rng`.
pub(super) fn build_request(
    kind: OpKind,
    key: u64,
    more: &[u64],
    args: &BenchArgs,
    inserted: &AtomicU64,
    rng: &mut impl Rng,
) -> Request {
    let batch = || {
        std::iter::once(key)
            .chain(more.iter().copied())
            .map(key_name)
            .collect()
    };
    match kind {
        OpKind::Tso => Request::Timestamp,
        OpKind::Read if more.is_empty() => Request::Get(key_name(key)),
        OpKind::Read => Request::BatchGet(batch()),
        OpKind::Update if more.is_empty() => Request::Put(key_name(key)),
        OpKind::Update => Request::BatchPut(batch()),
        OpKind::Insert => {
            let n = inserted.fetch_add(1, Ordering::Relaxed);
            Request::Put(key_name(args.keys.saturating_add(n)))
        }
        OpKind::Scan => Request::Scan {
            start: key_name(key),
            limit: rng.gen_range(1..=args.scan_max.max(1)),
        },
    }
}

/// What a successful request returned.
pub(super) struct Done {
    /// False for a get that found no value (or a batch get that missed a key).
    pub(super) found: bool,
    /// Pairs a scan returned.
    pub(super) rows: u64,
}

impl Done {
    pub(super) fn found(found: bool) -> Done {
        Done { found, rows: 0 }
    }
}

/// Sends one request and waits for its answer.
pub(super) async fn send(
    conn: &Conn,
    req: Request,
    value: &[u8],
    consistency: ReadConsistency,
    revision: u64,
) -> Result<Done, Error> {
    let client = match conn {
        Conn::Pd(pd) => return pd.timestamp().await.map(|_| Done::found(true)),
        Conn::Kv(client) => client,
    };
    match req {
        Request::Timestamp => Err(Error::Unsupported(
            "timestamps come from PD, not from a KV node".into(),
        )),
        Request::Get(key) => client
            .get_versioned(key, revision, consistency)
            .await
            .map(|v| Done::found(v.version.is_some())),
        Request::BatchGet(keys) => client
            .batch_get(keys, consistency)
            .await
            .map(|v| Done::found(v.iter().all(Option::is_some))),
        Request::Put(key) => client
            .put(key, value.to_vec())
            .await
            .map(|_| Done::found(true)),
        Request::BatchPut(keys) => client
            .batch_put(keys.into_iter().map(|k| (k, value.to_vec())))
            .await
            .map(|_| Done::found(true)),
        Request::Scan { start, limit } => {
            let range = ScanRange {
                start: start.into_bytes(),
                // Stay among the benchmark's keys.
                end: rdb_client::prefix_end(KEY_PREFIX),
                prefix: Vec::new(),
                limit,
            };
            client.scan(range, consistency).await.map(|page| Done {
                found: true,
                rows: page.kvs.len() as u64,
            })
        }
    }
}

/// One measuring task: one request in flight at a time until the budget is spent.
pub(super) async fn measure_task(
    conn: Conn,
    args: BenchArgs,
    seed: u64,
    shared: Arc<Shared>,
    mut stats: Stats,
) -> Stats {
    let mut rng = StdRng::seed_from_u64(seed);
    let consistency = args.consistency();
    let mix = args.mix();
    let chooser = KeyChooser::new(
        args.distribution().unwrap_or(Distribution::Uniform),
        args.keys,
    );
    while shared.take_one() {
        // Same draw order as before the presets (key, kind, batch keys), so a seed gives
        // the old workloads the same uniform key sequence.
        let key = chooser.next(&mut rng);
        let kind = mix.pick(&mut rng);
        let more: Vec<u64> = (1..args.batch).map(|_| chooser.next(&mut rng)).collect();
        let req = build_request(kind, key, &more, &args, &shared.inserted, &mut rng);
        let started = Instant::now();
        match send(&conn, req, &shared.value, consistency, args.revision).await {
            Ok(done) => {
                stats.record_ok(kind, started, done.rows);
                if !done.found {
                    stats.not_found += 1;
                }
                shared.live.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                stats.record_err(kind, &e);
                shared.live.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    stats
}

/// One preload task: writes keys taken from a shared cursor until all are written.
pub(super) async fn preload_task(
    client: Client,
    keys: u64,
    next: Arc<AtomicU64>,
    shared: Arc<Shared>,
    mut stats: Stats,
) -> Stats {
    while !shared.stop.load(Ordering::Relaxed) {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= keys {
            break;
        }
        let started = Instant::now();
        match client.put(key_name(i), shared.value.clone()).await {
            Ok(_) => {
                stats.record_ok(OpKind::Insert, started, 0);
                shared.live.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                stats.record_err(OpKind::Insert, &e);
                shared.live.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    stats
}

pub(super) fn bar_style(template: &str) -> ProgressStyle {
    ProgressStyle::default_bar()
        .template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// Waits for every task, merging their stats into `total`, refreshing `bar` with `refresh`
/// and turning Ctrl-C into a stop request. Returns the merged stats and whether Ctrl-C was
/// pressed.
pub(super) async fn drive(
    mut set: JoinSet<Stats>,
    shared: &Shared,
    bar: &ProgressBar,
    mut total: Stats,
    refresh: impl Fn(&ProgressBar, u64, u64),
) -> Result<(Stats, bool), String> {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut interrupted = false;
    loop {
        tokio::select! {
            joined = set.join_next() => match joined {
                None => break,
                Some(Ok(stats)) => total.merge(stats)?,
                Some(Err(e)) => return Err(format!("a benchmark task failed: {e}")),
            },
            _ = tick.tick() => refresh(
                bar,
                shared.live.ok.load(Ordering::Relaxed),
                shared.live.errors.load(Ordering::Relaxed),
            ),
            r = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                shared.stop.store(true, Ordering::Relaxed);
                if r.is_ok() {
                    bar.suspend(|| eprintln!("interrupted: waiting for requests in flight"));
                }
            }
        }
    }
    Ok((total, interrupted))
}
