//! Every on-disk key layout of rdb, in one place (as TiKV's `keys` crate does).
//!
//! - `raft_log`: `index` as 8 big-endian bytes -> encoded `eraftpb::Entry`, so keys sort by index.
//! - `raft_state`: fixed names -> hard state, conf state, apply state, truncated state, identity,
//!   and the pending-snapshot-install marker.
//! - `data`: user keys behind the one-byte prefix `d`, so the state machine can keep its own
//!   records (client-request dedup, `s` and `e`; its applied index, `a`) in the same column
//!   family. Snapshots copy the whole family, which keeps user data, dedup records and the
//!   applied index they correspond to consistent with each other.

use crate::Index;

/// Column family holding Raft log entries by index.
pub const CF_RAFT_LOG: &str = "raft_log";
/// Column family holding hard state, conf state, apply state and snapshot metadata.
pub const CF_RAFT_STATE: &str = "raft_state";
/// Column family holding user data and state-machine records.
pub const CF_DATA: &str = "data";

/// Hard state (term, vote, commit), encoded as `eraftpb::HardState`.
pub const HARD_STATE_KEY: &[u8] = b"hard_state";
/// Conf state (voters), encoded as `eraftpb::ConfState`.
pub const CONF_STATE_KEY: &[u8] = b"conf_state";
/// Applied index and its term, 16 bytes.
pub const APPLY_STATE_KEY: &[u8] = b"apply_state";
/// Index and term of the last entry removed from the log by compaction or a snapshot, 16 bytes.
pub const TRUNCATED_STATE_KEY: &[u8] = b"truncated_state";
/// Cluster id and node id this data directory belongs to, 16 bytes.
pub const IDENT_KEY: &[u8] = b"ident";
/// Settings that change what applying an entry does, fixed when the directory was created
/// (see [`crate::ApplySettings`]).
pub const APPLY_SETTINGS_KEY: &[u8] = b"apply_settings";

/// Set once this node learnt it was removed from its cluster: the index of the removal, 8 bytes.
pub const REMOVED_KEY: &[u8] = b"removed";
/// The conf state the group was bootstrapped with (its voters have the log from index 1).
pub const INITIAL_CONF_STATE_KEY: &[u8] = b"initial_conf_state";

/// In `data`: the applied index and term, written in every apply batch beside the data it
/// describes. At start it must equal the apply state in `raft_state`: if the two column families
/// ever disagree (media damage, a cut MANIFEST), the node refuses to start.
pub const DATA_APPLY_STATE_KEY: &[u8] = b"a";
/// A snapshot install that started but has not finished: the snapshot's descriptor
/// (`snapshot::SnapshotDescriptor`). Present only between the first and the last install batch.
pub const PENDING_SNAPSHOT_KEY: &[u8] = b"pending_snapshot";

/// Lower bound of every key of the `data` column family (user data and state-machine records).
pub const DATA_CF_FIRST: &[u8] = &[0x00];
/// Upper bound (exclusive) of every key of the `data` column family.
pub const DATA_CF_END: &[u8] = &[0xff; 32];

/// Prefix of user keys inside the `data` column family.
pub const DATA_PREFIX: u8 = b'd';
/// Prefix of the records of an application other than the KV store (PD's metadata), in the
/// `data` family.
pub const APP_PREFIX: u8 = b'p';
/// Prefix of member records (`m` + id, see [`crate::membership`]) in the `data` family.
pub const MEMBER_PREFIX: u8 = b'm';
/// Prefix of dedup records: `s` + client id + seq -> (applied index, result).
pub const DEDUP_PREFIX: u8 = b's';
/// Prefix of the dedup expiry records that versions before compaction-filtered expiry wrote
/// (`e` + applied index + client id + seq -> empty): compaction drops them, hashes skip them.
pub const DEDUP_EXPIRY_PREFIX: u8 = b'e';

/// Key of a log entry.
pub fn raft_log_key(index: Index) -> [u8; 8] {
    index.to_be_bytes()
}

/// Index of a log entry key, if it has the right length.
pub fn raft_log_index(key: &[u8]) -> Option<Index> {
    Some(Index::from_be_bytes(key.try_into().ok()?))
}

/// The stored form of a user key.
pub fn data_key(user_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(user_key.len() + 1);
    k.push(DATA_PREFIX);
    k.extend_from_slice(user_key);
    k
}

/// The user key behind a stored data key, if it is one.
pub fn user_key(data_key: &[u8]) -> Option<&[u8]> {
    match data_key.split_first() {
        Some((&DATA_PREFIX, rest)) => Some(rest),
        _ => None,
    }
}

/// Exclusive end of the user key space in the data column family.
pub fn data_end() -> Vec<u8> {
    vec![DATA_PREFIX + 1]
}

/// Key of the dedup record of one client request.
pub fn dedup_key(client_id: u64, seq: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = DEDUP_PREFIX;
    k[1..9].copy_from_slice(&client_id.to_be_bytes());
    k[9..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Two u64s as 16 big-endian bytes (apply state, truncated state, identity).
pub fn encode_pair(a: u64, b: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&a.to_be_bytes());
    v[8..].copy_from_slice(&b.to_be_bytes());
    v
}

/// Inverse of [`encode_pair`]; `None` if the value is not 16 bytes.
pub fn decode_pair(v: &[u8]) -> Option<(u64, u64)> {
    if v.len() != 16 {
        return None;
    }
    let a = u64::from_be_bytes(v[..8].try_into().ok()?);
    let b = u64::from_be_bytes(v[8..].try_into().ok()?);
    Some((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_index() {
        assert!(raft_log_key(9) < raft_log_key(10));
        assert!(raft_log_key(255) < raft_log_key(256));
        assert_eq!(raft_log_index(&raft_log_key(42)), Some(42));
    }

    #[test]
    fn data_keys_round_trip_and_stay_inside_their_range() {
        let k = data_key(b"\xff\xffabc");
        assert_eq!(user_key(&k), Some(&b"\xff\xffabc"[..]));
        assert!(k.as_slice() < data_end().as_slice());
        assert!(user_key(&dedup_key(1, 2)).is_none());
    }

    #[test]
    fn pairs_round_trip() {
        assert_eq!(decode_pair(&encode_pair(3, 4)), Some((3, 4)));
    }
}
