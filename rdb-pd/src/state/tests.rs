//! Apply over `PdState`: the oracle's window, ids, stores and their tokens, regions and their
//! checks, scans in pages, and a reload of what apply wrote.

use rdb_proto::pd::{
    AllocIdRequest, BootstrapRegionsRequest, BootstrapRequest, GetRegionResponse, InitCluster,
    RegionEpoch, ScanRegionsResponse, TsoAdvance,
};

use super::*;

fn run(s: &mut PdState, op: Op) -> Result<PdOutput, String> {
    apply_command(s, PdCommand { op: Some(op) }, 1, &mut Vec::new())
}

fn region(id: u64, start: &[u8], end: &[u8], version: u64) -> Region {
    Region {
        id,
        start_key: start.to_vec(),
        end_key: end.to_vec(),
        epoch: Some(RegionEpoch {
            version,
            conf_ver: 1,
        }),
        peers: vec![],
    }
}

#[test]
fn a_tso_window_never_starts_below_the_last_one_whatever_the_proposers_clock() {
    let mut s = PdState::default();
    let adv = |now_ms| {
        Op::TsoAdvance(TsoAdvance {
            now_ms,
            window_ms: 3000,
        })
    };
    assert_eq!(
        run(&mut s, adv(10_000)),
        Ok(PdOutput::TsoAdvanced {
            base: 10_000,
            limit: 13_000,
            term: 1
        })
    );
    // A clock stepped back: the window starts at the old limit.
    assert_eq!(
        run(&mut s, adv(5_000)),
        Ok(PdOutput::TsoAdvanced {
            base: 13_000,
            limit: 16_000,
            term: 1
        })
    );
}

#[test]
fn ids_never_repeat_and_a_zero_count_is_refused() {
    let mut s = PdState::default();
    let alloc = |count| Op::AllocId(AllocIdRequest { count });
    assert_eq!(run(&mut s, alloc(5)), Ok(PdOutput::Ids { first: 1 }));
    assert_eq!(run(&mut s, alloc(1)), Ok(PdOutput::Ids { first: 6 }));
    assert!(run(&mut s, alloc(0)).is_err());
}

#[test]
fn regions_are_found_by_key_and_a_stale_epoch_is_refused() {
    let mut s = PdState::default();
    run(&mut s, Op::AllocId(AllocIdRequest { count: 1 })).unwrap();
    let boot = Op::Bootstrap(BootstrapRequest {
        store: Some(Store {
            id: 1,
            address: "a:1".into(),
            ..Default::default()
        }),
        region: Some(region(2, b"", b"", 1)),
        store_token: 0,
    });
    assert_eq!(run(&mut s, boot.clone()), Ok(PdOutput::Done));
    assert!(matches!(
        run(&mut s, boot),
        Ok(PdOutput::Refused(ErrorCode::AlreadyBootstrapped, _))
    ));
    assert_eq!(s.region_for(b"zzz").map(|r| r.id), Some(2));
    // A split into [.., m) and [m, ..).
    run(&mut s, Op::PutRegion(region(2, b"", b"m", 2))).unwrap();
    run(&mut s, Op::PutRegion(region(3, b"m", b"", 2))).unwrap();
    assert_eq!(s.region_for(b"a").map(|r| r.id), Some(2));
    assert_eq!(s.region_for(b"m").map(|r| r.id), Some(3));
    assert_eq!(
        s.scan(b"b", b"", 0, SCAN_PAGE_BYTES)
            .regions
            .iter()
            .map(|r| r.id)
            .collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert_eq!(
        s.scan(b"", b"m", 0, SCAN_PAGE_BYTES)
            .regions
            .iter()
            .map(|r| r.id)
            .collect::<Vec<_>>(),
        vec![2]
    );
    assert!(matches!(
        run(&mut s, Op::PutRegion(region(2, b"", b"", 1))),
        Ok(PdOutput::Refused(ErrorCode::StaleEpoch, _))
    ));
    assert_eq!(s.region_for(b"z").map(|r| r.id), Some(3), "nothing changed");
}

#[test]
fn a_merged_region_drops_the_region_it_covers_and_a_split_half_drops_nothing() {
    let mut s = PdState::default();
    for r in [
        region(2, b"", b"m", 2),
        region(3, b"m", b"t", 2),
        region(4, b"t", b"", 2),
    ] {
        run(&mut s, Op::PutRegion(r)).unwrap();
    }
    // A split half of region 3 at a newer version covers none of the others whole.
    run(&mut s, Op::PutRegion(region(5, b"p", b"t", 3))).unwrap();
    assert_eq!(s.region_for(b"n").map(|r| r.id), Some(3));
    assert_eq!(s.region_for(b"q").map(|r| r.id), Some(5));
    // Region 3 (now [m, p)) merged into region 2: 2 covers it, at a newer version.
    run(&mut s, Op::PutRegion(region(3, b"m", b"p", 3))).unwrap();
    let mut writes = Vec::new();
    let merged = Op::PutRegion(region(2, b"", b"p", 5));
    apply_command(&mut s, PdCommand { op: Some(merged) }, 1, &mut writes).unwrap();
    assert!(!s.regions.contains_key(&3), "the source is dropped");
    assert!(
        writes.contains(&(region_key(3), None)),
        "and its record deleted"
    );
    assert_eq!(s.region_for(b"n").map(|r| r.id), Some(2));
    assert_eq!(s.region_for(b"q").map(|r| r.id), Some(5));
    assert_eq!(s.region_for(b"u").map(|r| r.id), Some(4));
    // The source's stale report cannot bring it back.
    assert!(matches!(
        run(&mut s, Op::PutRegion(region(3, b"m", b"p", 4))),
        Ok(PdOutput::Refused(ErrorCode::StaleEpoch, _))
    ));
}

#[test]
fn the_state_written_through_reloads_identically() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    engine
        .bootstrap_or_check(
            rdb_storage::Ident {
                cluster_id: 1,
                node_id: 1,
            },
            &[1],
            &[],
        )
        .unwrap();
    let mut app = PdApp::open(engine.clone()).unwrap();
    let cmds = [
        Op::AllocId(AllocIdRequest { count: 3 }),
        Op::InitCluster(InitCluster { cluster_id: 77 }),
        Op::Bootstrap(BootstrapRequest {
            store: Some(Store {
                id: 1,
                address: "a:1".into(),
                ..Default::default()
            }),
            region: Some(Region {
                peers: vec![Peer {
                    id: 3,
                    store_id: 1,
                    learner: false,
                }],
                ..region(2, b"", b"", 1)
            }),
            store_token: 99,
        }),
        Op::TsoAdvance(TsoAdvance {
            now_ms: 7,
            window_ms: 100,
        }),
    ];
    let entries: Vec<Entry> = cmds
        .into_iter()
        .enumerate()
        .map(|(i, op)| Entry {
            index: i as u64 + 1,
            term: 1,
            data: PdCommand { op: Some(op) }.encode_to_vec().into(),
            ..Default::default()
        })
        .collect();
    app.apply(&entries).unwrap();
    let live = app.state.read().unwrap().clone();
    let reloaded = PdApp::open(engine).unwrap();
    assert_eq!(*reloaded.state.read().unwrap(), live);
    assert_eq!(reloaded.applied_index().unwrap(), 4);
    assert_eq!(live.next_id, 4);
    assert_eq!(live.tso_limit, 107);
    assert_eq!(live.cluster_id, 77);
    assert_eq!(live.store_tokens.get(&1), Some(&99));
    assert_eq!(live.replicas, 1, "the first region's peer count");
}

fn alloc(s: &mut PdState, count: u32) -> u64 {
    match run(s, Op::AllocId(AllocIdRequest { count })) {
        Ok(PdOutput::Ids { first }) => first,
        other => panic!("alloc: {other:?}"),
    }
}

fn register(s: &mut PdState, id: u64, address: &str, token: u64) -> PdOutput {
    run(
        s,
        Op::RegisterStore(PutStoreRequest {
            store: Some(Store {
                id,
                address: address.into(),
                ..Default::default()
            }),
            store_token: token,
        }),
    )
    .unwrap()
}

fn refusal(out: PdOutput) -> (ErrorCode, String) {
    match out {
        PdOutput::Refused(code, m) => (code, m),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn the_cluster_id_is_set_once_and_the_first_one_applied_wins() {
    let mut s = PdState::default();
    let init = |id| Op::InitCluster(InitCluster { cluster_id: id });
    assert_eq!(run(&mut s, init(5)), Ok(PdOutput::ClusterId(5)));
    // A second leader's (or a retried) proposal learns the id already set.
    assert_eq!(run(&mut s, init(9)), Ok(PdOutput::ClusterId(5)));
    assert_eq!(s.cluster_id, 5);
    assert!(run(&mut s, init(0)).is_err());
}

#[test]
fn a_store_id_pd_never_handed_out_is_refused() {
    let mut s = PdState::default();
    let (code, m) = refusal(register(&mut s, 1, "a:1", 7));
    assert_eq!(code, ErrorCode::InvalidArgument);
    assert!(m.contains("store id 1 was never handed out"), "{m}");
    assert_eq!(alloc(&mut s, 2), 1);
    assert_eq!(register(&mut s, 2, "a:2", 7), PdOutput::Done);
    refusal(register(&mut s, 3, "a:3", 7));
    refusal(register(&mut s, 0, "a:0", 7));
    // Bootstrap with a store from elsewhere changes nothing.
    let boot = Op::Bootstrap(BootstrapRequest {
        store: Some(Store {
            id: 40,
            address: "a:40".into(),
            ..Default::default()
        }),
        region: Some(region(1, b"", b"", 1)),
        store_token: 7,
    });
    refusal(run(&mut s, boot).unwrap());
    assert!(!s.bootstrapped);
    assert!(s.regions.is_empty());
    assert_eq!(s.stores.keys().copied().collect::<Vec<_>>(), vec![2]);
}

#[test]
fn a_store_moves_only_with_the_token_it_registered_with() {
    let mut s = PdState::default();
    alloc(&mut s, 3);
    assert_eq!(register(&mut s, 1, "a:1", 7), PdOutput::Done);
    for token in [8, 0] {
        let (code, m) = refusal(register(&mut s, 1, "evil:1", token));
        assert_eq!(code, ErrorCode::InvalidArgument);
        assert!(m.contains("store 1") && m.contains("token"), "{m}");
    }
    assert_eq!(s.stores[&1].address, "a:1");
    assert_eq!(register(&mut s, 1, "a:11", 7), PdOutput::Done);
    assert_eq!(s.stores[&1].address, "a:11");
    // A store registered before tokens (none recorded) takes the first one given.
    run(
        &mut s,
        Op::PutStore(Store {
            id: 2,
            address: "a:2".into(),
            ..Default::default()
        }),
    )
    .unwrap();
    assert_eq!(register(&mut s, 2, "a:2", 0), PdOutput::Done);
    assert_eq!(register(&mut s, 2, "a:22", 5), PdOutput::Done);
    refusal(register(&mut s, 2, "a:2", 6));
    assert_eq!(s.store_tokens.get(&2), Some(&5));
}

#[test]
fn ids_a_store_reports_are_never_handed_out_again() {
    let mut s = PdState::default();
    assert_eq!(alloc(&mut s, 1), 1);
    register(&mut s, 1, "a:1", 7);
    let mut r = region(50, b"", b"", 1);
    r.peers = vec![
        Peer {
            id: 60,
            store_id: 1,
            learner: false,
        },
        Peer {
            id: 61,
            store_id: 1,
            learner: false,
        },
    ];
    assert!(s.reserves(&r));
    let boot = Op::Bootstrap(BootstrapRequest {
        store: Some(Store {
            id: 1,
            address: "a:1".into(),
            ..Default::default()
        }),
        region: Some(r.clone()),
        store_token: 7,
    });
    assert_eq!(run(&mut s, boot), Ok(PdOutput::Done));
    assert!(!s.reserves(&r));
    assert_eq!(alloc(&mut s, 1), 62);
    // From a heartbeat too: a split's new region with ids PD never gave.
    let mut left = region(50, b"", b"m", 2);
    left.peers = r.peers.clone();
    let mut right = region(90, b"m", b"", 2);
    right.peers = vec![Peer {
        id: 95,
        store_id: 1,
        learner: false,
    }];
    run(&mut s, Op::PutRegion(left)).unwrap();
    assert_eq!(run(&mut s, Op::PutRegion(right)), Ok(PdOutput::Done));
    assert_eq!(alloc(&mut s, 1), 96);
    // Ids that would use up the id space are refused.
    let huge = region(MAX_REPORTED_ID, b"x", b"y", 3);
    assert_eq!(
        refusal(run(&mut s, Op::PutRegion(huge)).unwrap()).0,
        ErrorCode::InvalidArgument
    );
    assert_eq!(alloc(&mut s, 1), 97);
}

#[test]
fn a_region_overlapping_a_newer_region_is_stale_whatever_its_own_epoch() {
    let mut s = PdState::default();
    run(&mut s, Op::PutRegion(region(2, b"", b"", 1))).unwrap();
    // Region 2 split at m into 2 and 3; PD heard region 3 first.
    assert_eq!(
        run(&mut s, Op::PutRegion(region(3, b"m", b"", 2))),
        Ok(PdOutput::Done)
    );
    // Region 2's old leader, not yet past the split, reports its old range: stale, though
    // PD still holds that very epoch for region 2.
    assert_eq!(
        s.check_region(&region(2, b"", b"", 1)).map_err(|e| e.0),
        Err(ErrorCode::StaleEpoch)
    );
    // A forged region over region 3's keys at an older version: stale too.
    let (code, m) = refusal(run(&mut s, Op::PutRegion(region(9, b"p", b"q", 1))).unwrap());
    assert_eq!(code, ErrorCode::StaleEpoch);
    assert!(m.contains("region 3"), "{m}");
    assert!(!s.regions.contains_key(&9));
    // The new left half, at the new version, is fine; so is one not overlapping region 3.
    assert_eq!(
        run(&mut s, Op::PutRegion(region(2, b"", b"m", 2))),
        Ok(PdOutput::Done)
    );
    assert_eq!(s.check_region(&region(2, b"", b"m", 2)), Ok(()));
    let (code, _) = refusal(run(&mut s, Op::PutRegion(region(4, b"z", b"a", 5))).unwrap());
    assert_eq!(code, ErrorCode::InvalidArgument, "an empty range");
}

#[test]
fn a_heartbeat_leader_must_be_a_peer_on_a_known_live_store() {
    let mut s = PdState::default();
    alloc(&mut s, 2);
    register(&mut s, 1, "a:1", 7);
    register(&mut s, 2, "a:2", 8);
    let mut r = region(10, b"", b"", 1);
    r.peers = vec![
        Peer {
            id: 11,
            store_id: 1,
            learner: false,
        },
        Peer {
            id: 12,
            store_id: 2,
            learner: false,
        },
        Peer {
            id: 13,
            store_id: 3,
            learner: false,
        },
    ];
    assert_eq!(
        s.check_leader(
            &r,
            Some(&Peer {
                id: 11,
                store_id: 1,
                learner: false,
            })
        ),
        Ok(())
    );
    for (leader, says) in [
        (None, "names no leader"),
        (
            Some(Peer {
                id: 14,
                store_id: 1,
                learner: false,
            }),
            "not one of its peers",
        ),
        (
            Some(Peer {
                id: 11,
                store_id: 2,
                learner: false,
            }),
            "not one of its peers",
        ),
        (
            Some(Peer {
                id: 13,
                store_id: 3,
                learner: false,
            }),
            "does not know",
        ),
    ] {
        let m = s.check_leader(&r, leader.as_ref()).unwrap_err();
        assert!(m.contains(says), "{m}");
    }
    run(
        &mut s,
        Op::SetStoreState(rdb_proto::pd::SetStoreStateRequest {
            store_id: 2,
            state: StoreState::Tombstone as i32,
        }),
    )
    .unwrap();
    let m = s
        .check_leader(
            &r,
            Some(&Peer {
                id: 12,
                store_id: 2,
                learner: false,
            }),
        )
        .unwrap_err();
    assert!(m.contains("tombstone"), "{m}");
}

#[test]
fn a_scan_over_many_large_regions_pages_within_the_size_cap_and_misses_nothing() {
    let mut s = PdState::default();
    // 1,200 regions bounded by 4,000-byte keys: about 9.6 MB in one answer.
    let bound = |i: u32| {
        let mut k = vec![b'k'; 4000];
        k[..4].copy_from_slice(&i.to_be_bytes());
        k
    };
    let n = 1200u32;
    for i in 0..=n {
        let start = if i == 0 { vec![] } else { bound(i) };
        let end = if i == n { vec![] } else { bound(i + 1) };
        let mut r = region(u64::from(i) + 1, &start, &end, 1);
        r.peers = vec![Peer {
            id: 5000 + u64::from(i),
            store_id: 1,
            learner: false,
        }];
        s.put_region(r);
    }
    let mut start = Vec::new();
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = s.scan(&start, b"", 0, SCAN_PAGE_BYTES);
        // The answer as the service builds it, with a leader and statistics per region.
        let answer = ScanRegionsResponse {
            error: None,
            regions: page
                .regions
                .iter()
                .map(|r| GetRegionResponse {
                    error: None,
                    region: Some(r.clone()),
                    leader: r.peers.first().copied(),
                    approximate_size: u64::MAX,
                    approximate_keys: u64::MAX,
                })
                .collect(),
            next_start_key: page.next_start_key.clone().unwrap_or_default(),
        };
        // The cap counts the regions; the continuation key comes on top.
        assert!(
            answer.encoded_len() <= SCAN_PAGE_BYTES + answer.next_start_key.len() + 8,
            "a page of {} bytes",
            answer.encoded_len()
        );
        pages += 1;
        seen.extend(page.regions.iter().map(|r| r.id));
        match page.next_start_key {
            Some(next) => start = next,
            None => break,
        }
    }
    assert_eq!(seen, (1..=u64::from(n) + 1).collect::<Vec<_>>());
    assert!(pages >= 9, "{pages} pages");
    // A limit ends the scan, and a page cut short resumes exactly at the next region.
    let page = s.scan(&bound(7), b"", 3, SCAN_PAGE_BYTES);
    assert_eq!(
        page.regions.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![8, 9, 10]
    );
    assert_eq!(page.next_start_key, None);
    // One region larger than the cap still comes, alone.
    let page = s.scan(b"", b"", 0, 10);
    assert_eq!(page.regions.len(), 1);
    assert_eq!(page.next_start_key, Some(bound(1)));
}

fn tombstone(s: &mut PdState, store_id: u64) -> PdOutput {
    set_state(s, store_id, StoreState::Tombstone)
}

fn set_state(s: &mut PdState, store_id: u64, state: StoreState) -> PdOutput {
    run(
        s,
        Op::SetStoreState(rdb_proto::pd::SetStoreStateRequest {
            store_id,
            state: state as i32,
        }),
    )
    .unwrap()
}

#[test]
fn a_store_is_removed_only_while_enough_stores_stay_and_a_removal_can_be_cancelled() {
    let mut s = PdState::default();
    alloc(&mut s, 4);
    for id in 1..=4 {
        register(&mut s, id, &format!("a:{id}"), id + 10);
    }
    s.replicas = 3;
    assert_eq!(set_state(&mut s, 4, StoreState::Offline), PdOutput::Done);
    assert_eq!(s.stores[&4].state, StoreState::Offline as i32);
    // Three stores left for three replicas: none of them can go.
    let (code, m) = refusal(set_state(&mut s, 1, StoreState::Offline));
    assert_eq!(code, ErrorCode::FailedPrecondition);
    assert!(
        m.contains("would leave 2 stores for a replication factor of 3"),
        "{m}"
    );
    assert_eq!(s.stores[&1].state, StoreState::Up as i32, "nothing changed");
    // Cancelled: store 4 stays, and then store 1 may go.
    assert_eq!(set_state(&mut s, 4, StoreState::Up), PdOutput::Done);
    assert_eq!(s.stores[&4].state, StoreState::Up as i32);
    assert_eq!(set_state(&mut s, 1, StoreState::Offline), PdOutput::Done);
}

#[test]
fn a_store_holding_a_replica_is_not_tombstoned_and_a_store_holding_none_is() {
    let mut s = PdState::default();
    alloc(&mut s, 3);
    for id in 1..=3 {
        register(&mut s, id, &format!("a:{id}"), id + 10);
    }
    let peers = |stores: &[u64]| -> Vec<Peer> {
        stores
            .iter()
            .map(|&store_id| Peer {
                id: 100 + store_id,
                store_id,
                learner: false,
            })
            .collect()
    };
    let first = Region {
        peers: peers(&[1, 2]),
        ..region(20, b"", b"m", 1)
    };
    let second = Region {
        peers: peers(&[1]),
        ..region(21, b"m", b"", 1)
    };
    for r in [first, second] {
        assert_eq!(run(&mut s, Op::PutRegion(r)), Ok(PdOutput::Done));
    }
    let (code, m) = refusal(tombstone(&mut s, 1));
    assert_eq!(code, ErrorCode::FailedPrecondition);
    assert!(
        m.contains("store 1 holds a replica of 2 regions (20, 21)"),
        "{m}"
    );
    assert!(m.contains("store remove 1"), "{m}");
    let (_, m) = refusal(tombstone(&mut s, 2));
    assert!(m.contains("of region 20;"), "{m}");
    assert_eq!(s.stores[&1].state, StoreState::Up as i32, "nothing changed");
    // Store 3 holds nothing: it goes, and asking again is no error.
    assert_eq!(tombstone(&mut s, 3), PdOutput::Done);
    assert_eq!(s.stores[&3].state, StoreState::Tombstone as i32);
    assert_eq!(tombstone(&mut s, 3), PdOutput::Done);
    let (code, _) = refusal(tombstone(&mut s, 9));
    assert_eq!(code, ErrorCode::NotFound);
    // A tombstone never comes back, not even as a store being removed.
    let (code, _) = refusal(set_state(&mut s, 3, StoreState::Offline));
    assert_eq!(code, ErrorCode::FailedPrecondition);
    assert_eq!(s.stores[&3].state, StoreState::Tombstone as i32);
}

#[test]
fn a_restored_cluster_records_every_region_at_once_and_reserves_their_ids() {
    let mut s = PdState::default();
    // Stores 1 and 2, then peer ids 3..=8.
    run(&mut s, Op::AllocId(AllocIdRequest { count: 8 })).unwrap();
    let placed = |id: u64, start: &[u8], end: &[u8], first_peer: u64| Region {
        peers: (0..2)
            .map(|i| Peer {
                id: first_peer + i,
                store_id: 1 + i,
                learner: false,
            })
            .collect(),
        ..region(id, start, end, 3)
    };
    let good = vec![
        placed(1, b"", b"g", 3),
        placed(40, b"g", b"p", 5),
        placed(23, b"p", b"", 7),
    ];
    let boot = |regions: Vec<Region>| Op::BootstrapRegions(BootstrapRegionsRequest { regions });
    let refused = |s: &mut PdState, regions: Vec<Region>, why: &str| {
        let out = run(s, boot(regions));
        assert!(
            matches!(&out, Ok(PdOutput::Refused(ErrorCode::InvalidArgument, _))),
            "{why}: {out:?}"
        );
        assert!(
            !s.bootstrapped && s.regions.is_empty(),
            "{why}: nothing changed"
        );
    };
    refused(&mut s, Vec::new(), "no region");
    refused(&mut s, good[..2].to_vec(), "the last region missing");
    refused(&mut s, vec![good[0].clone(), good[2].clone()], "a gap");
    refused(
        &mut s,
        vec![good[1].clone(), good[0].clone(), good[2].clone()],
        "out of order",
    );
    let mut twice = good.clone();
    twice[1].id = 1;
    refused(&mut s, twice, "a region id twice");
    let mut same_store = good.clone();
    same_store[2].peers[1].store_id = 1;
    refused(&mut s, same_store, "two peers on one store");
    let mut unknown_store = good.clone();
    unknown_store[0].peers[0].store_id = 9;
    refused(&mut s, unknown_store, "a store PD never handed out");

    assert_eq!(run(&mut s, boot(good.clone())), Ok(PdOutput::Done));
    assert!(s.bootstrapped);
    assert_eq!(s.replicas, 2);
    assert_eq!(s.region_for(b"h").map(|r| r.id), Some(40));
    assert_eq!(s.region_for(b"zz").map(|r| r.id), Some(23));
    // Every id the regions name is below what AllocId hands out next.
    assert_eq!(
        run(&mut s, Op::AllocId(AllocIdRequest { count: 1 })),
        Ok(PdOutput::Ids { first: 41 })
    );
    assert!(matches!(
        run(&mut s, boot(good)),
        Ok(PdOutput::Refused(ErrorCode::AlreadyBootstrapped, _))
    ));
}
