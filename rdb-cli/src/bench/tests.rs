use super::*;
use clap::Parser;

#[derive(Debug, Parser)]
struct Cmd {
    #[command(flatten)]
    bench: BenchArgs,
}

pub(super) fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
    let mut v = vec!["bench"];
    v.extend_from_slice(args);
    Cmd::try_parse_from(v).map(|c| c.bench)
}

pub(super) fn parsed(args: &[&str]) -> BenchArgs {
    match parse(args) {
        Ok(a) => a,
        Err(e) => panic!("{args:?} do not parse: {e}"),
    }
}

pub(super) fn defaults() -> BenchArgs {
    parsed(&[])
}

#[test]
fn defaults_match_the_documented_ones() {
    let a = defaults();
    assert_eq!(a.workload, Workload::Put);
    assert_eq!(a.clients, 16);
    assert_eq!(a.connections, 4);
    assert_eq!(a.keys, 100_000);
    assert_eq!(a.value_size, 256);
    assert_eq!(a.duration_secs, 10);
    assert_eq!(a.ops, None);
    assert!(!a.preload && !a.no_preload && !a.serializable);
    assert_eq!(a.read_ratio, None);
    assert_eq!(a.distribution, None);
    assert_eq!(a.scan_max, 100);
    assert_eq!(a.seed, 1);
    assert_eq!(a.validate(), Ok(()));
    // The put workload: updates only, uniform keys, no preload, no scans.
    assert_eq!(a.mix(), Mix::Only(OpKind::Update));
    assert_eq!(a.distribution(), Some(Distribution::Uniform));
    assert!(!a.should_preload());
    assert_eq!(a.scan_max(), None);
}

#[test]
fn flags_parse_in_kebab_case() {
    let a = parsed(&[
        "--workload",
        "mixed",
        "--clients",
        "3",
        "--connections",
        "2",
        "--keys",
        "10",
        "--value-size",
        "7",
        "--ops",
        "100",
        "--preload",
        "--serializable",
        "--read-ratio",
        "0.9",
        "--distribution",
        "zipfian",
        "--seed",
        "42",
    ]);
    assert_eq!(a.workload, Workload::Mixed);
    assert_eq!(
        (a.clients, a.connections, a.keys, a.value_size),
        (3, 2, 10, 7)
    );
    assert_eq!(a.ops, Some(100));
    assert!(a.preload && a.serializable);
    assert_eq!(a.read_ratio, Some(0.9));
    assert_eq!(
        a.mix(),
        Mix::Split {
            first: OpKind::Read,
            share: 0.9,
            second: OpKind::Update
        }
    );
    assert_eq!(a.distribution(), Some(Distribution::Zipfian));
    assert_eq!(a.seed, 42);
    assert_eq!(a.consistency(), ReadConsistency::Serializable);
    assert_eq!(a.validate(), Ok(()));
    // Without --read-ratio, mixed is half reads.
    assert_eq!(
        parsed(&["--workload", "mixed"]).mix(),
        Mix::Split {
            first: OpKind::Read,
            share: 0.5,
            second: OpKind::Update
        }
    );
}

#[test]
fn ops_and_duration_conflict() {
    assert!(parse(&["--ops", "5"]).is_ok());
    assert!(parse(&["--duration-secs", "5"]).is_ok());
    assert!(parse(&["--ops", "5", "--duration-secs", "5"]).is_err());
    assert!(parse(&["--workload", "bogus"]).is_err());
    assert!(parse(&["--workload", "ycsb-d"]).is_err());
    assert!(parse(&["--distribution", "latest"]).is_err());
    assert!(parse(&["--preload", "--no-preload"]).is_err());
}

#[test]
fn ycsb_presets_map_to_their_mix_zipfian_keys_and_a_preload() {
    let split = |first, share, second| Mix::Split {
        first,
        share,
        second,
    };
    let cases = [
        (
            "ycsb-a",
            Workload::YcsbA,
            split(OpKind::Read, 0.5, OpKind::Update),
            "50% reads, 50% updates",
        ),
        (
            "ycsb-b",
            Workload::YcsbB,
            split(OpKind::Read, 0.95, OpKind::Update),
            "95% reads, 5% updates",
        ),
        (
            "ycsb-c",
            Workload::YcsbC,
            Mix::Only(OpKind::Read),
            "reads only",
        ),
        (
            "ycsb-e",
            Workload::YcsbE,
            split(OpKind::Scan, 0.95, OpKind::Insert),
            "95% scans, 5% inserts",
        ),
    ];
    for (name, workload, mix, words) in cases {
        let a = parsed(&["--workload", name]);
        assert_eq!(a.workload, workload);
        assert_eq!(workload.name(), name);
        assert_eq!(a.mix(), mix, "{name}");
        assert_eq!(a.mix().describe(), words, "{name}");
        assert_eq!(a.distribution(), Some(Distribution::Zipfian), "{name}");
        assert!(a.should_preload(), "{name} does not preload");
        assert_eq!(a.validate(), Ok(()), "{name}");
    }
    // Only ycsb-e scans, and it reports its longest scan.
    assert_eq!(parsed(&["--workload", "ycsb-e"]).scan_max(), Some(100));
    assert_eq!(parsed(&["--workload", "ycsb-a"]).scan_max(), None);

    // scan: scans only, uniform starts, preloads, its own --scan-max.
    let a = parsed(&["--workload", "scan", "--scan-max", "7"]);
    assert_eq!(a.mix(), Mix::Only(OpKind::Scan));
    assert_eq!(a.distribution(), Some(Distribution::Uniform));
    assert!(a.should_preload());
    assert_eq!(a.scan_max(), Some(7));
    assert_eq!(a.validate(), Ok(()));
}

#[test]
fn presets_take_a_distribution_and_no_preload() {
    let a = parsed(&["--workload", "ycsb-a", "--distribution", "uniform"]);
    assert_eq!(a.distribution(), Some(Distribution::Uniform));
    let a = parsed(&["--workload", "ycsb-b", "--no-preload"]);
    assert!(!a.should_preload());
    assert_eq!(a.validate(), Ok(()));
    // The old workloads preload only when asked; --no-preload changes nothing there.
    assert!(parsed(&["--workload", "get", "--preload"]).should_preload());
    assert!(!parsed(&["--workload", "get"]).should_preload());
    assert!(!parsed(&["--workload", "get", "--no-preload"]).should_preload());
    // tso has no keys.
    let t = parsed(&["--workload", "tso"]);
    assert_eq!(t.distribution(), None);
    assert!(!t.should_preload());
    assert_eq!(t.mix(), Mix::Only(OpKind::Tso));
}

#[test]
fn validation_refuses_bad_settings() {
    let check = |f: &dyn Fn(&mut BenchArgs), needle: &str| {
        let mut a = defaults();
        f(&mut a);
        match a.validate() {
            Err(e) => assert!(e.contains(needle), "{e:?} lacks {needle:?}"),
            Ok(()) => panic!("accepted a bad setting ({needle})"),
        }
    };
    check(&|a| a.clients = 0, "--clients");
    check(&|a| a.connections = 0, "--connections");
    check(&|a| a.keys = 0, "--keys");
    check(&|a| a.read_ratio = Some(-0.1), "--read-ratio");
    check(&|a| a.read_ratio = Some(1.5), "--read-ratio");
    check(&|a| a.read_ratio = Some(f64::NAN), "--read-ratio");
    check(&|a| a.ops = Some(0), "--ops");
    check(&|a| a.duration_secs = 0, "--duration-secs");
    check(&|a| a.batch = 0, "--batch");
    check(&|a| a.scan_max = 0, "--scan-max");
    // A preset's mix is fixed: the error names it and the way to another ratio.
    check(
        &|a| {
            a.workload = Workload::YcsbB;
            a.read_ratio = Some(0.5);
        },
        "ycsb-b has its own (95% reads, 5% updates); use --workload mixed",
    );
    check(
        &|a| {
            a.workload = Workload::Scan;
            a.read_ratio = Some(1.0);
        },
        "--read-ratio",
    );
    // Scans and inserts are single requests.
    check(
        &|a| {
            a.workload = Workload::YcsbE;
            a.batch = 10;
        },
        "--batch",
    );
    check(
        &|a| {
            a.workload = Workload::Tso;
            a.distribution = Some(Distribution::Zipfian);
        },
        "--distribution",
    );
    check(
        &|a| {
            a.workload = Workload::Tso;
            a.preload = true;
        },
        "--preload",
    );

    let mut a = defaults();
    a.read_ratio = Some(0.0);
    assert_eq!(a.validate(), Ok(()));
    a.read_ratio = Some(1.0);
    assert_eq!(a.validate(), Ok(()));
    // With --ops the duration is not used.
    a.duration_secs = 0;
    a.ops = Some(1);
    assert_eq!(a.validate(), Ok(()));
    // Batches of reads and updates are fine in the ycsb presets without scans.
    let mut a = defaults();
    a.workload = Workload::YcsbA;
    a.batch = 10;
    assert_eq!(a.validate(), Ok(()));
}

#[test]
fn mixes_pick_kinds_in_their_shares() {
    let mut rng = StdRng::seed_from_u64(9);
    let n = 20_000;
    let share_of = |mix: Mix, kind: OpKind, rng: &mut StdRng| {
        let picks: Vec<OpKind> = (0..n).map(|_| mix.pick(rng)).collect();
        assert!(
            picks.iter().all(|k| mix.kinds().contains(k)),
            "{mix:?} picked a kind it does not list"
        );
        picks.iter().filter(|&&k| k == kind).count() as f64 / n as f64
    };
    let near = |got: f64, want: f64| assert!((got - want).abs() < 0.01, "{got} vs {want}");
    near(
        share_of(Workload::YcsbA.mix(0.0), OpKind::Read, &mut rng),
        0.5,
    );
    near(
        share_of(Workload::YcsbB.mix(0.0), OpKind::Read, &mut rng),
        0.95,
    );
    near(
        share_of(Workload::YcsbC.mix(0.0), OpKind::Read, &mut rng),
        1.0,
    );
    near(
        share_of(Workload::YcsbE.mix(0.0), OpKind::Scan, &mut rng),
        0.95,
    );
    near(
        share_of(Workload::Mixed.mix(0.2), OpKind::Read, &mut rng),
        0.2,
    );
    near(
        share_of(Workload::Put.mix(0.9), OpKind::Update, &mut rng),
        1.0,
    );
}

#[test]
fn requests_name_their_keys() {
    let mut a = defaults();
    a.keys = 1000;
    a.scan_max = 5;
    let inserted = AtomicU64::new(0);
    let mut rng = StdRng::seed_from_u64(3);
    let mut build =
        |kind, key, more: &[u64]| build_request(kind, key, more, &a, &inserted, &mut rng);
    assert_eq!(
        build(OpKind::Read, 7, &[]),
        Request::Get("bench-00000007".into())
    );
    assert_eq!(
        build(OpKind::Update, 7, &[]),
        Request::Put("bench-00000007".into())
    );
    assert_eq!(
        build(OpKind::Read, 7, &[8, 9]),
        Request::BatchGet(vec![
            "bench-00000007".into(),
            "bench-00000008".into(),
            "bench-00000009".into()
        ])
    );
    assert_eq!(
        build(OpKind::Update, 1, &[2]),
        Request::BatchPut(vec!["bench-00000001".into(), "bench-00000002".into()])
    );
    assert_eq!(build(OpKind::Tso, 7, &[]), Request::Timestamp);
    // Inserts write new keys after the key space, one number each, whatever key was drawn.
    assert_eq!(
        build(OpKind::Insert, 7, &[]),
        Request::Put("bench-00001000".into())
    );
    assert_eq!(
        build(OpKind::Insert, 7, &[]),
        Request::Put("bench-00001001".into())
    );
    // Scans start at the drawn key and ask for 1..=scan_max keys, every length in time.
    let mut lengths = std::collections::BTreeSet::new();
    for _ in 0..200 {
        match build(OpKind::Scan, 42, &[]) {
            Request::Scan { start, limit } => {
                assert_eq!(start, "bench-00000042");
                assert!((1..=5).contains(&limit), "limit {limit}");
                lengths.insert(limit);
            }
            other => panic!("not a scan: {other:?}"),
        }
    }
    assert_eq!(lengths.into_iter().collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    assert_eq!(inserted.load(Ordering::Relaxed), 2);
}

#[test]
fn connections_are_capped_by_clients() {
    let mut a = defaults();
    a.clients = 2;
    a.connections = 4;
    assert_eq!(a.effective_connections(), 2);
    a.clients = 16;
    assert_eq!(a.effective_connections(), 4);
}

#[test]
fn endpoints_rotate_per_connection() {
    let eps: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    assert_eq!(rotated(&eps, 0), ["a", "b", "c"]);
    assert_eq!(rotated(&eps, 1), ["b", "c", "a"]);
    assert_eq!(rotated(&eps, 2), ["c", "a", "b"]);
    assert_eq!(rotated(&eps, 3), ["a", "b", "c"]);
    assert_eq!(rotated(&eps, 7), ["b", "c", "a"]);
    assert!(rotated(&[], 3).is_empty());
    assert_eq!(rotated(&eps[..1], 5), ["a"]);
}

#[test]
fn ops_budget_is_shared_and_exact() {
    let shared = Shared::new(Budget::Ops(3), Vec::new());
    let taken = (0..10).filter(|_| shared.take_one()).count();
    assert_eq!(taken, 3);
    let stopped = Shared::new(
        Budget::Until(Instant::now() + Duration::from_secs(60)),
        Vec::new(),
    );
    stopped.stop.store(true, Ordering::Relaxed);
    assert!(!stopped.take_one());
}

#[test]
fn reads_at_a_past_revision_are_single_gets() {
    let a = parsed(&["--workload", "get", "--revision", "42"]);
    assert_eq!(a.revision, 42);
    assert_eq!(a.validate(), Ok(()));
    for other in [
        &["--workload", "put", "--revision", "42"][..],
        &["--workload", "get", "--batch", "8", "--revision", "42"][..],
    ] {
        let e = parsed(other).validate().expect_err("refused");
        assert!(e.contains("--revision"), "{e}");
    }
}
