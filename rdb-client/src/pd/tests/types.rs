//! Values the client parses or compares without a PD: store labels, timestamps in their
//! `u64` form, and whether a change of PD members is in effect.

use super::*;

#[test]
fn store_labels_parse_or_say_which_part_is_wrong() {
    assert_eq!(
        parse_labels("zone=a, host=h1").unwrap(),
        vec![("zone".into(), "a".into()), ("host".into(), "h1".into())]
    );
    assert_eq!(parse_labels("").unwrap(), Vec::new());
    assert!(parse_labels("zone").unwrap_err().contains("KEY=VALUE"));
    assert!(parse_labels("zone=a,zone=b").unwrap_err().contains("twice"));
    assert!(parse_labels("zone=a b").unwrap_err().contains("letters"));
    assert!(parse_labels("=a").is_err());
}

#[test]
fn timestamp_u64_form_and_order() {
    let ts = Timestamp {
        physical: 1_700_000_000_123,
        logical: 7,
    };
    assert_eq!(ts.as_u64(), (1_700_000_000_123 << 16) | 7);
    assert_eq!(Timestamp::from_u64(ts.as_u64()), ts);
    let later_logical = Timestamp { logical: 8, ..ts };
    let later_physical = Timestamp {
        physical: ts.physical + 1,
        logical: 0,
    };
    assert!(ts < later_logical && later_logical < later_physical);
    assert!(ts.as_u64() < later_logical.as_u64());
    assert!(later_logical.as_u64() < later_physical.as_u64());
}

#[test]
fn a_change_of_pd_members_is_in_effect_only_as_asked() {
    use crate::MemberChange as C;
    let member = |id: u64, learner: bool| Member {
        id,
        client_addr: format!("10.0.0.{id}:2399"),
        peer_addr: format!("10.0.0.{id}:2400"),
        learner,
        match_index: 0,
    };
    let m = Members {
        members: vec![member(1, false), member(4, true)],
        removed: vec![3],
        ..Members::default()
    };
    let add = |id: u64, host: &str, learner: bool| {
        let (peer_addr, client_addr) = (format!("{host}:2400"), format!("{host}:2399"));
        if learner {
            C::AddLearner {
                id,
                peer_addr,
                client_addr,
            }
        } else {
            C::AddVoter {
                id,
                peer_addr,
                client_addr,
            }
        }
    };
    // The same node at the same addresses: in effect (a retried add succeeds).
    assert!(m.hold(&add(1, "10.0.0.1", false)));
    assert!(m.hold(&add(4, "10.0.0.4", true)));
    // Another node under a member's id, or a learner asked to vote: not in effect.
    assert!(!m.hold(&add(1, "10.0.0.9", false)));
    assert!(!m.hold(&add(4, "10.0.0.4", false)));
    assert!(!m.hold(&C::Promote(4)));
    assert!(m.hold(&C::Promote(1)));
    // Removed: only an id the group removed, not one it never had.
    assert!(m.hold(&C::Remove(3)));
    assert!(!m.hold(&C::Remove(7)));
    assert!(!m.hold(&C::Remove(1)));
}
