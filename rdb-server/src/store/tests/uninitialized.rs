//! Uninitialized peers, messages by hand: a vote kept across a restart, PD vouching for them,
//! their bound in number, and a peer PD no longer lists dropped for good.

use super::*;

#[test]
fn an_uninitialized_peer_that_voted_remembers_its_vote_across_a_restart() {
    use raft::prelude::{Message, MessageType};
    let dir = tempfile::tempdir().expect("dir");
    let region = Region {
        id: 2,
        start_key: b"m".to_vec(),
        end_key: Vec::new(),
        epoch: Some(RegionEpoch {
            version: 2,
            conf_ver: 1,
        }),
        peers: (1..=3)
            .map(|s| Peer {
                id: 20 + s,
                store_id: s,
                learner: false,
            })
            .collect(),
    };
    let msg = |ty: MessageType, from: u64, term: u64| {
        let mut m = Message::default();
        m.set_msg_type(ty);
        m.from = from;
        m.to = 23;
        m.term = term;
        RegionMessage {
            region_id: 2,
            from_store: from - 20,
            to_store: 3,
            epoch: RegionEpoch::default(),
            msg: m,
        }
    };
    // What store 3 answers a vote request from `from` at `term`: whether it granted it.
    let vote = |s: &mut StoreCore, from: u64, term: u64| {
        s.step(msg(MessageType::MsgRequestVote, from, term))
            .expect("step");
        let out = s.advance().expect("advance");
        out.messages
            .iter()
            .find(|m| m.msg.get_msg_type() == MessageType::MsgRequestVoteResponse)
            .map(|m| !m.msg.reject)
            .expect("a vote response")
    };
    let mut s = open(dir.path(), 3);
    // A leader's heartbeat names region 2: nothing is created until PD vouches for it.
    s.step(msg(MessageType::MsgHeartbeat, 21, 6)).expect("step");
    assert!(s.core(2).is_none(), "a message alone created a region");
    assert_eq!(s.advance().expect("advance").confirm, vec![2]);
    s.confirm_region(&region);
    s.step(msg(MessageType::MsgHeartbeat, 21, 6)).expect("step");
    assert!(
        s.core(2).is_some() && s.region(2).is_none(),
        "uninitialized"
    );
    s.advance().expect("advance");
    // The leader falls silent for long enough that a candidate may be heard.
    for _ in 0..10 * Settings::default().election_ticks {
        s.tick();
    }
    s.advance().expect("advance");
    assert!(
        vote(&mut s, 22, 7),
        "votes for the first candidate of term 7"
    );
    drop(s);

    let mut s = reopen(dir.path(), 3, &Settings::default());
    let r = s.core(2).expect("the uninitialized peer is back").replica();
    assert_eq!((r.term(), r.id()), (7, 23));
    assert!(
        !vote(&mut s, 21, 7),
        "voted twice in term 7: once before the restart, once after"
    );
}

/// Region `id` over `[start, end)` with peers `id * 10 + store` on stores 1 to 3.
fn region_of(id: u64, start: &[u8], end: &[u8]) -> Region {
    Region {
        id,
        start_key: start.to_vec(),
        end_key: end.to_vec(),
        epoch: Some(RegionEpoch {
            version: 2,
            conf_ver: 1,
        }),
        peers: (1..=3)
            .map(|s| Peer {
                id: id * 10 + s,
                store_id: s,
                learner: false,
            })
            .collect(),
    }
}

#[test]
fn uninitialized_peers_need_pd_to_vouch_for_them_and_are_bounded_in_number() {
    use raft::prelude::MessageType;
    let dir = tempfile::tempdir().expect("dir");
    let mut s = open(dir.path(), 3);
    // Leaders' heartbeats name many regions; PD confirms some of them.
    let named = 300u64;
    for id in 1..=named {
        s.step(leader_message(id, MessageType::MsgHeartbeat, id * 10 + 3))
            .expect("step");
    }
    assert!(
        s.region_ids().is_empty(),
        "a message alone created a region"
    );
    let asked = s.advance().expect("advance").confirm;
    assert_eq!(asked.len(), MAX_ASKED, "regions asked about at once");
    // Asked again only after a while.
    s.step(leader_message(1, MessageType::MsgHeartbeat, 13))
        .expect("step");
    assert!(s.advance().expect("advance").confirm.is_empty());
    for id in 1..=named {
        let k = format!("k{id:04}");
        s.confirm_region(&region_of(id, k.as_bytes(), b""));
    }
    // A peer id PD did not name for this store creates nothing.
    s.step(leader_message(7, MessageType::MsgHeartbeat, 999))
        .expect("step");
    assert!(s.core(7).is_none());
    for id in 1..=named {
        s.step(leader_message(id, MessageType::MsgHeartbeat, id * 10 + 3))
            .expect("step");
    }
    assert_eq!(
        s.region_ids().len(),
        MAX_UNINIT,
        "uninitialized peers at most"
    );
    s.advance().expect("advance");
}

/// A learner added on store 3 and removed before its first snapshot: store 3 made it
/// uninitialized (a leader's message, once PD listed it), and its leader never sends to it
/// again. PD's answer that no longer lists it drops it in the next turn, with a tombstone, so
/// neither the leader's message nor PD's older view that still lists it makes it again. While
/// PD lists it (at any `conf_ver`) it stays.
#[test]
fn an_uninitialized_peer_pd_no_longer_lists_is_dropped_and_never_made_again() {
    use raft::prelude::MessageType;
    let dir = tempfile::tempdir().expect("dir");
    let mut s = open(dir.path(), 3);
    // Region 2 with voters 21, 22 on stores 1, 2 and learner 23 on store 3.
    let mut added = region_of(2, b"m", b"");
    added.peers[2].learner = true;
    added.epoch = Some(RegionEpoch {
        version: 2,
        conf_ver: 2,
    });
    s.step(leader_message(2, MessageType::MsgAppend, 23))
        .expect("step");
    assert_eq!(s.advance().expect("advance").confirm, vec![2]);
    s.confirm_region(&added);
    s.step(leader_message(2, MessageType::MsgAppend, 23))
        .expect("step");
    assert!(
        s.core(2).is_some() && s.region(2).is_none(),
        "store 3 made the learner uninitialized"
    );
    s.advance().expect("advance");

    // PD still lists the peer: at the same membership, and once promoted (a later conf_ver).
    let mut promoted = added.clone();
    promoted.peers[2].learner = false;
    promoted.epoch = Some(RegionEpoch {
        version: 2,
        conf_ver: 3,
    });
    for listed in [&added, &promoted] {
        s.confirm_region(listed);
        let out = s.advance().expect("advance");
        assert!(out.destroyed.is_empty(), "{:?}", out.destroyed);
        assert_eq!(s.region_ids(), vec![2], "a peer PD lists was dropped");
    }

    // The learner is removed before its first snapshot.
    let mut removed = added.clone();
    removed.peers.truncate(2);
    removed.epoch = Some(RegionEpoch {
        version: 2,
        conf_ver: 3,
    });
    s.confirm_region(&removed);
    let out = s.advance().expect("advance");
    assert_eq!(out.destroyed, vec![2]);
    assert!(s.region_ids().is_empty(), "the removed peer stayed");
    assert_eq!(s.engine().tombstone(2).expect("read"), Some(23));

    // Neither the leader's message nor PD's older view makes it again.
    s.step(leader_message(2, MessageType::MsgAppend, 23))
        .expect("step");
    s.advance().expect("advance");
    s.confirm_region(&added);
    s.step(leader_message(2, MessageType::MsgHeartbeat, 23))
        .expect("step");
    s.advance().expect("advance");
    assert!(
        s.region_ids().is_empty() && s.core(2).is_none(),
        "a removed peer was made again"
    );
}

/// A peer removed without hearing so, whose region then merged into one this store does not
/// host: PD no longer knows its region, and PD's region over its start key covers it at a
/// later version with no peer here. It is dropped (with a tombstone); in every other case it
/// stays.
#[test]
fn a_peer_merged_away_without_taking_part_is_dropped_once_pd_covers_it() {
    let dir = tempfile::tempdir().expect("dir");
    let mut s = open(dir.path(), 3);
    let mut mine = region_one();
    mine.id = 5;
    mine.start_key = b"f".to_vec();
    mine.end_key = b"m".to_vec();
    mine.epoch = Some(RegionEpoch {
        version: 4,
        conf_ver: 3,
    });
    s.create_region(&mine).expect("create");
    s.advance().expect("advance");
    let covering = |version: u64, start: &[u8], end: &[u8], stores: &[u64]| Region {
        id: 9,
        start_key: start.to_vec(),
        end_key: end.to_vec(),
        epoch: Some(RegionEpoch {
            version,
            conf_ver: 7,
        }),
        peers: stores
            .iter()
            .map(|&st| Peer {
                id: 90 + st,
                store_id: st,
                learner: false,
            })
            .collect(),
    };
    // Kept: PD's region is older (a split of this region not reported yet), covers only a
    // part, or has a peer here (this store takes part in the merge).
    for c in [
        covering(4, b"", b"", &[1, 2, 4]),
        covering(9, b"g", b"", &[1, 2, 4]),
        covering(9, b"", b"k", &[1, 2, 4]),
        covering(9, b"", b"", &[1, 3, 4]),
    ] {
        s.confirm_covered(5, &c);
        let out = s.advance().expect("advance");
        assert!(out.destroyed.is_empty(), "dropped for {c:?}");
        assert_eq!(s.region_ids(), vec![5]);
    }
    // Dropped: merged into a region on other stores.
    s.confirm_covered(5, &covering(5, b"a", b"", &[1, 2, 4]));
    let out = s.advance().expect("advance");
    assert_eq!(out.destroyed, vec![5]);
    assert!(s.region_ids().is_empty());
    assert_eq!(s.engine().tombstone(5).expect("tombstone"), Some(13));
}
