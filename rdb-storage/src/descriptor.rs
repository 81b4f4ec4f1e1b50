//! [`SnapshotDescriptor`]: what a raft `Snapshot.data` carries (which file holds a snapshot and
//! how to check it). Below the engine, which records a pending install's descriptor; the
//! snapshot code ([`crate::snapshot`]) re-exports it.

use std::path::{Path, PathBuf};

use crate::{Error, Index, Result, Term};

/// First bytes of an encoded descriptor.
const DESC_MAGIC: &[u8; 8] = b"RDBSDESC";
/// Version of the descriptor and file format.
const DESC_VERSION: u32 = 1;

/// What a raft `Snapshot.data` carries: which file holds the snapshot and how to check it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotDescriptor {
    /// Applied index the snapshot captured.
    pub index: Index,
    /// Term of that entry.
    pub term: Term,
    /// Length of the snapshot file in bytes.
    pub file_len: u64,
    /// CRC-32 (crc32fast) of the whole file.
    pub checksum: u32,
}

impl SnapshotDescriptor {
    /// Length of the encoded form.
    pub const ENCODED_LEN: usize = 8 + 4 + 8 + 8 + 8 + 4;

    /// The encoded form: magic, version, index, term, file length, checksum (big endian).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::ENCODED_LEN);
        v.extend_from_slice(DESC_MAGIC);
        v.extend_from_slice(&DESC_VERSION.to_be_bytes());
        v.extend_from_slice(&self.index.to_be_bytes());
        v.extend_from_slice(&self.term.to_be_bytes());
        v.extend_from_slice(&self.file_len.to_be_bytes());
        v.extend_from_slice(&self.checksum.to_be_bytes());
        v
    }

    /// Decodes a descriptor, refusing anything else (`Error::BadSnapshot`).
    pub fn decode(b: &[u8]) -> Result<SnapshotDescriptor> {
        let bad = |m: &str| Error::BadSnapshot(m.to_string());
        if b.len() != Self::ENCODED_LEN {
            return Err(bad("descriptor has the wrong length"));
        }
        if &b[..8] != DESC_MAGIC {
            return Err(bad("descriptor magic missing"));
        }
        let u64_at = |i: usize| {
            b[i..i + 8]
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| bad("short descriptor"))
        };
        let version = b[8..12]
            .try_into()
            .map(u32::from_be_bytes)
            .map_err(|_| bad("short descriptor"))?;
        if version != DESC_VERSION {
            return Err(bad(&format!("descriptor version {version} is unknown")));
        }
        let checksum = b[36..40]
            .try_into()
            .map(u32::from_be_bytes)
            .map_err(|_| bad("short descriptor"))?;
        Ok(SnapshotDescriptor {
            index: u64_at(12)?,
            term: u64_at(20)?,
            file_len: u64_at(28)?,
            checksum,
        })
    }

    /// Name of the file holding this snapshot inside the snapshot folder.
    pub fn file_name(&self) -> String {
        format!(
            "snap-{:020}-{}-{:08x}.snap",
            self.index, self.term, self.checksum
        )
    }

    /// Path of the file holding this snapshot inside `snap_dir`.
    pub fn path_in(&self, snap_dir: &Path) -> PathBuf {
        snap_dir.join(self.file_name())
    }
}
