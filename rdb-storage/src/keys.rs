//! Every on-disk key layout of rdb, in one place (as TiKV's `keys` crate does).
//!
//! - `raft_log`: `index` as 8 big-endian bytes -> encoded `eraftpb::Entry`, so keys sort by index.
//! - `raft_state`: fixed names -> hard state, conf state, apply state, truncated state, identity,
//!   and the pending-snapshot-install marker.
//! - `data`: user keys behind the one-byte prefix `d` (each key's newest version), their older
//!   versions behind `h` (specs/018-versions), so the state machine can keep its own records
//!   (client-request dedup, `s` and `e`; its applied index, `a`; its revisions, `v`) in the
//!   same column family. Snapshots copy the group's part of the family, which keeps user
//!   data, history, dedup records and the applied index they correspond to consistent.

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
/// Cluster id and node id this data directory belongs to, 16 bytes (a store: PD's cluster id
/// and the store id).
pub const IDENT_KEY: &[u8] = b"ident";
/// What kind of process owns this data directory (see `engine::DirKind`).
pub const KIND_KEY: &[u8] = b"kind";
/// A PD-mode store's secret token, 8 bytes (see `region::StoreIdent`).
pub const STORE_TOKEN_KEY: &[u8] = b"store_token";
/// Prefix of a PD-mode store's records of other stores' peer addresses: this prefix, the store
/// id (8 bytes, big endian); the value is the address (see `Engine::store_addrs`).
pub const STORE_ADDR_PREFIX: &[u8] = b"store_addr/";
/// Settings that change what applying an entry does, fixed when the directory was created
/// (see [`crate::ApplySettings`]).
pub const APPLY_SETTINGS_KEY: &[u8] = b"apply_settings";

/// Set while a directory of the format before versioned keys is upgraded: the last `d` key
/// rewritten (see `crate::upgrade`).
pub const UPGRADE_CURSOR_KEY: &[u8] = b"upgrade_cursor";

/// An uninitialized region's peer id on this store, 8 bytes: what a restart starts it as again
/// (it may have voted, and must not forget it).
pub const UNINIT_PEER_KEY: &[u8] = b"uninit_peer";

/// A region peer removed from this store by a membership change: the peer id it had, 8 bytes.
/// A message for that peer (or an older one) never creates the region here again.
pub const TOMBSTONE_KEY: &[u8] = b"tombstone";
/// A removed region peer whose user data is still to be deleted: its last meta (its range).
pub const GARBAGE_KEY: &[u8] = b"garbage";

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
/// Prefix of the older versions of user keys (specs/018-versions): this prefix, the user key
/// in memcomparable encoding, the version's revision inverted (8 bytes big endian), so that a
/// key's history sorts newest first and no key's history interleaves another's.
pub const HISTORY_PREFIX: u8 = b'h';
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

/// Prefix of a region's own records in the `data` family (PD mode): `r` + region id (8 bytes
/// big endian) + [`REGION_APPLY_SUFFIX`] (its applied index), [`REGION_META_SUFFIX`] (its
/// range, epoch and peers) or [`DEDUP_PREFIX`] + client id + seq (its dedup records). In
/// `raft_state` the same prefix carries the region's hard, conf, apply and truncated state.
pub const REGION_PREFIX: u8 = b'r';
/// After a region's prefix in `data`: its applied index and term (the `a` of a static node).
pub const REGION_APPLY_SUFFIX: u8 = b'a';
/// After a region's prefix in `data`: the region's `rdb.pd.Region` (range, epoch, peers),
/// written by the apply batch that changed it, so snapshots carry it.
pub const REGION_META_SUFFIX: u8 = b'm';
/// After a region's prefix in `data`: its merge state (`rdb.command.MergeState`), present from
/// the apply of its PrepareMerge until its rollback (or the merge removes the region).
pub const REGION_MERGE_SUFFIX: u8 = b'g';
/// After a region's prefix in `data`: the region's revisions (specs/018-versions: the last
/// revision it applied and its compacted revision). A static node's is [`NODE_REVISIONS_KEY`].
pub const REGION_REVISIONS_SUFFIX: u8 = b'v';
/// In `data`: a static node's revisions (see [`REGION_REVISIONS_SUFFIX`]).
pub const NODE_REVISIONS_KEY: &[u8] = b"v";

/// After a region's prefix in `data`: a member record (peer id, 8 bytes big endian, then its
/// `MemberRecord`): the peer and client addresses of a config-file cluster's nodes, which its
/// one region's log changes and its snapshots carry (PD-mode stores learn addresses from PD).
pub const REGION_MEMBER_SUFFIX: u8 = b'n';

/// Whose Raft group a key belongs to in a store's one RocksDB.
///
/// A static node (config-file cluster) hosts one group and keeps the layout it always had:
/// unprefixed Raft keys, `a` and `s` records. A store in PD mode hosts many regions, each a
/// Raft group whose log, Raft state and own records carry the region id, while user data stays
/// shared under `d` and each region owns the keys of its range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Space {
    /// The one group of a static node.
    Node,
    /// A region of a PD-mode store.
    Region(u64),
}

impl Space {
    /// Key of a log entry of this group.
    pub fn log_key(self, index: Index) -> Vec<u8> {
        match self {
            Space::Node => raft_log_key(index).to_vec(),
            Space::Region(id) => {
                let mut k = Vec::with_capacity(16);
                k.extend_from_slice(&id.to_be_bytes());
                k.extend_from_slice(&index.to_be_bytes());
                k
            }
        }
    }

    /// Index of a log entry key of this group; `None` for a key of another group or shape.
    pub fn log_index(self, key: &[u8]) -> Option<Index> {
        match self {
            Space::Node => raft_log_index(key),
            Space::Region(id) => {
                let (r, idx) = key.split_at_checked(8)?;
                if r != id.to_be_bytes() {
                    return None;
                }
                raft_log_index(idx)
            }
        }
    }

    /// Bounds `[lower, upper)` of every log key of this group.
    pub fn log_bounds(self) -> (Vec<u8>, Vec<u8>) {
        match self {
            Space::Node => (raft_log_key(0).to_vec(), vec![0xff; 9]),
            Space::Region(id) => (id.to_be_bytes().to_vec(), (id + 1).to_be_bytes().to_vec()),
        }
    }

    /// Key of one of this group's records in `raft_state` (hard state, conf state, ...).
    pub fn state_key(self, name: &[u8]) -> Vec<u8> {
        match self {
            Space::Node => name.to_vec(),
            Space::Region(id) => {
                let mut k = region_prefix(id);
                k.extend_from_slice(name);
                k
            }
        }
    }

    /// Key of this group's applied index in `data` (beside the data it describes).
    pub fn data_apply_key(self) -> Vec<u8> {
        match self {
            Space::Node => DATA_APPLY_STATE_KEY.to_vec(),
            Space::Region(id) => {
                let mut k = region_prefix(id);
                k.push(REGION_APPLY_SUFFIX);
                k
            }
        }
    }

    /// Key of this group's revisions in `data` (specs/018-versions).
    pub fn revisions_key(self) -> Vec<u8> {
        match self {
            Space::Node => NODE_REVISIONS_KEY.to_vec(),
            Space::Region(id) => {
                let mut k = region_prefix(id);
                k.push(REGION_REVISIONS_SUFFIX);
                k
            }
        }
    }

    /// Key of the dedup record of one client request applied by this group.
    pub fn dedup_key(self, client_id: u64, seq: u64) -> Vec<u8> {
        match self {
            Space::Node => dedup_key(client_id, seq).to_vec(),
            Space::Region(id) => {
                let mut k = region_prefix(id);
                k.extend_from_slice(&dedup_key(client_id, seq));
                k
            }
        }
    }

    /// Bounds `[lower, upper)` of this group's own records in `data` (a region's apply record,
    /// meta and dedup records); `None` for a static node, whose records are the whole family.
    pub fn own_records(self) -> Option<(Vec<u8>, Vec<u8>)> {
        match self {
            Space::Node => None,
            Space::Region(id) => Some((region_prefix(id), region_prefix_end(id))),
        }
    }

    /// The region id, if this is a region.
    pub fn region_id(self) -> Option<u64> {
        match self {
            Space::Node => None,
            Space::Region(id) => Some(id),
        }
    }
}

/// `r` + region id: the start of a region's own records (in `data` and `raft_state`).
pub fn region_prefix(id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(24);
    k.push(REGION_PREFIX);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// Exclusive end of a region's own records.
pub fn region_prefix_end(id: u64) -> Vec<u8> {
    match id.checked_add(1) {
        Some(next) => region_prefix(next),
        None => vec![REGION_PREFIX + 1],
    }
}

/// Key of a region's meta record in `data`.
pub fn region_meta_key(id: u64) -> Vec<u8> {
    let mut k = region_prefix(id);
    k.push(REGION_META_SUFFIX);
    k
}

/// Key of a region's merge state in `data` (see [`REGION_MERGE_SUFFIX`]).
pub fn region_merge_key(id: u64) -> Vec<u8> {
    let mut k = region_prefix(id);
    k.push(REGION_MERGE_SUFFIX);
    k
}

/// Key of region `region`'s record of member `id` in `data` (see [`REGION_MEMBER_SUFFIX`]).
pub fn region_member_key(region: u64, id: u64) -> Vec<u8> {
    let mut k = region_prefix(region);
    k.push(REGION_MEMBER_SUFFIX);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// The stored bounds `[lower, upper)` of user keys in `[start, end)` (empty `end`: no bound).
pub fn data_range(start: &[u8], end: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let upper = if end.is_empty() {
        data_end()
    } else {
        data_key(end)
    };
    (data_key(start), upper)
}

/// The first key after every key that starts with `prefix` ([`DATA_CF_END`] when no key is:
/// the prefix is all `0xff`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    DATA_CF_END.to_vec()
}

/// The stored bounds `[lower, upper)` of the one user key `key`.
pub fn data_key_range(key: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let lower = data_key(key);
    let mut upper = lower.clone();
    upper.push(0);
    (lower, upper)
}

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

/// The key of member `id`'s record.
pub fn member_key(id: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = MEMBER_PREFIX;
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
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
    fn region_keys_stay_inside_their_region_and_never_meet_a_static_node_s() {
        let (a, b) = (Space::Region(7), Space::Region(8));
        let (lo, hi) = a.log_bounds();
        for idx in [0, 1, 5, u64::MAX] {
            let k = a.log_key(idx);
            assert!(lo <= k && k < hi, "log key {idx} outside region 7's bounds");
            assert_eq!(a.log_index(&k), Some(idx));
            assert_eq!(
                b.log_index(&k),
                None,
                "region 8 must not read region 7's log"
            );
        }
        assert!(a.log_key(u64::MAX) < b.log_key(0));
        let (own_lo, own_hi) = a.own_records().unwrap();
        for k in [a.data_apply_key(), a.dedup_key(1, 2), region_meta_key(7)] {
            assert!(own_lo <= k && k < own_hi);
            assert!(user_key(&k).is_none());
        }
        assert!(region_meta_key(8) >= own_hi);
        assert_eq!(Space::Node.log_key(3), raft_log_key(3).to_vec());
        assert_eq!(Space::Node.state_key(HARD_STATE_KEY), HARD_STATE_KEY);
        assert_eq!(Space::Node.dedup_key(1, 2), dedup_key(1, 2).to_vec());
        assert_eq!(region_prefix_end(u64::MAX), vec![REGION_PREFIX + 1]);
    }

    #[test]
    fn pairs_round_trip() {
        assert_eq!(decode_pair(&encode_pair(3, 4)), Some((3, 4)));
    }
}
