//! PD's calls and their answers: typed refusals and lookups of missing things as `None`,
//! counts refused before sending, the expected cluster id stamped on every call, and region
//! scans answered in pages.

use std::sync::atomic::Ordering;

use super::*;

#[tokio::test]
async fn refusals_are_typed_and_lookups_of_missing_things_are_none() {
    let fake = leader_fake();
    let pd = PdClient::with_options([serve(fake).await], opts()).unwrap();
    assert!(!pd.is_bootstrapped().await.unwrap());
    assert_eq!(pd.get_region(b"k".to_vec()).await.unwrap(), None);

    let store = Store {
        id: 1,
        address: "127.0.0.1:2379".into(),
        ..Default::default()
    };
    let region = Region {
        id: 2,
        epoch: RegionEpoch {
            version: 5,
            conf_ver: 1,
        },
        peers: vec![Peer {
            id: 3,
            store_id: 1,
            learner: false,
        }],
        ..Default::default()
    };
    pd.bootstrap(store.clone(), region.clone(), 7)
        .await
        .unwrap();
    assert!(pd.is_bootstrapped().await.unwrap());
    assert!(matches!(
        pd.bootstrap(store, region.clone(), 7).await,
        Err(Error::AlreadyBootstrapped(_))
    ));

    let got = pd.get_region("any key").await.unwrap().unwrap();
    assert_eq!(got.region, region);
    assert_eq!(
        pd.get_region_by_id(2).await.unwrap().unwrap().region,
        region
    );
    assert_eq!(pd.get_region_by_id(9).await.unwrap(), None);
    assert_eq!(pd.get_store(9).await.unwrap(), None);
    assert!(matches!(
        pd.set_store_tombstone(9).await,
        Err(Error::NotFound(_))
    ));

    let older = Region {
        epoch: RegionEpoch {
            version: 4,
            conf_ver: 1,
        },
        ..region.clone()
    };
    let leader = Peer {
        id: 3,
        store_id: 1,
        learner: false,
    };
    assert!(matches!(
        pd.region_heartbeat(older, leader, 0, 0).await,
        Err(Error::StaleEpoch(_))
    ));
    let newer = Region {
        epoch: RegionEpoch {
            version: 6,
            conf_ver: 1,
        },
        ..region
    };
    pd.region_heartbeat(newer.clone(), leader, 1 << 20, 1000)
        .await
        .unwrap();
    let scanned = pd.scan_regions("", "", 0).await.unwrap();
    assert_eq!(scanned.len(), 1);
    assert_eq!(scanned[0].region, newer);
    assert_eq!(scanned[0].leader, Some(leader));
    assert_eq!(scanned[0].approximate_keys, 1000);

    pd.store_heartbeat(StoreStats {
        store_id: 1,
        region_count: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    pd.set_store_tombstone(1).await.unwrap();
    assert_eq!(pd.get_all_stores(true).await.unwrap(), vec![]);
    let all = pd.get_all_stores(false).await.unwrap();
    assert_eq!(all[0].state, StoreState::Tombstone);
}

#[tokio::test]
async fn bad_counts_are_refused_before_sending() {
    let pd = PdClient::with_options([dead_addr()], opts()).unwrap();
    assert!(matches!(
        pd.timestamps(0).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        pd.timestamps(MAX_TSO_BATCH + 1).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        pd.alloc_ids(0).await,
        Err(Error::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn a_client_that_expects_a_cluster_stamps_every_call_and_another_cluster_is_final() {
    let fake = Arc::new(Fake {
        cluster_id: 41,
        clock: Mutex::new((1_700_000_000_000, 0)),
        ..Fake::default()
    });
    let pd = PdClient::with_options([serve(fake.clone()).await], opts()).unwrap();
    // Unstamped until told.
    assert_eq!(pd.cluster_id().await.unwrap(), 41);
    assert_eq!(fake.last_stamp.load(Ordering::SeqCst), 0);
    pd.set_cluster_id(41);
    assert_eq!(pd.expected_cluster_id(), 41);
    pd.alloc_ids(1).await.unwrap();
    assert_eq!(fake.last_stamp.load(Ordering::SeqCst), 41);
    // Clones share it, the timestamp batch included.
    pd.clone().timestamp().await.unwrap();
    assert_eq!(fake.last_stamp.load(Ordering::SeqCst), 41);

    pd.set_cluster_id(42);
    let before = fake.calls.load(Ordering::SeqCst);
    match pd.alloc_ids(1).await {
        Err(Error::ClusterMismatch(m)) => {
            assert!(m.contains("41") && m.contains("42"), "{m}")
        }
        other => panic!("expected a cluster mismatch: {other:?}"),
    }
    assert_eq!(
        fake.calls.load(Ordering::SeqCst),
        before + 1,
        "a mismatch is not retried"
    );
    assert!(matches!(
        pd.timestamp().await,
        Err(Error::ClusterMismatch(_))
    ));
}

#[tokio::test]
async fn a_region_scan_answered_in_pages_returns_every_region_once_in_order() {
    let fake = Arc::new(Fake {
        scan_page: 3,
        ..Fake::default()
    });
    let pd = PdClient::with_options([serve(fake.clone()).await], opts()).unwrap();
    let leader = Peer {
        id: 100,
        store_id: 1,
        learner: false,
    };
    let bounds: Vec<Vec<u8>> = (0..10u8).map(|i| vec![b'a' + i]).collect();
    for i in 0..=bounds.len() {
        let region = Region {
            id: i as u64 + 1,
            start_key: if i == 0 {
                vec![]
            } else {
                bounds[i - 1].clone()
            },
            end_key: bounds.get(i).cloned().unwrap_or_default(),
            peers: vec![leader],
            ..Default::default()
        };
        pd.region_heartbeat(region, leader, 0, 0).await.unwrap();
    }
    let ids = |rs: Vec<RegionInfo>| rs.into_iter().map(|r| r.region.id).collect::<Vec<_>>();
    let before = fake.calls.load(Ordering::SeqCst);
    let all = pd.scan_regions("", "", 0).await.unwrap();
    assert_eq!(ids(all), (1..=11).collect::<Vec<_>>());
    assert_eq!(
        fake.calls.load(Ordering::SeqCst) - before,
        4,
        "11 regions in pages of 3"
    );
    // A limit and a range still hold across pages.
    assert_eq!(
        ids(pd.scan_regions("b", "", 5).await.unwrap()),
        vec![3, 4, 5, 6, 7]
    );
    assert_eq!(
        ids(pd.scan_regions("b", "h", 0).await.unwrap()),
        vec![3, 4, 5, 6, 7, 8]
    );
}
