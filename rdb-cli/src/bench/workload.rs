//! What a benchmark asks: the workloads, their mixes of request kinds.

use super::*;

/// Read share of `--workload mixed` when `--read-ratio` is not given.
pub(super) const DEFAULT_READ_RATIO: f64 = 0.5;

/// Which requests the benchmark issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Only puts.
    Put,
    /// Only gets.
    Get,
    /// Gets with probability `--read-ratio` (default 0.5), puts otherwise.
    Mixed,
    /// Timestamps from PD's oracle (needs `--pd`): each task asks for one at a time; one
    /// `PdClient` per connection batches the tasks' requests.
    Tso,
    /// YCSB A, update heavy: 50% reads, 50% updates (zipfian keys; preloads).
    #[value(name = "ycsb-a")]
    YcsbA,
    /// YCSB B, read mostly: 95% reads, 5% updates (zipfian keys; preloads).
    #[value(name = "ycsb-b")]
    YcsbB,
    /// YCSB C, read only (zipfian keys; preloads).
    #[value(name = "ycsb-c")]
    YcsbC,
    /// YCSB E, short ranges: 95% scans of 1..=--scan-max keys, 5% inserts of new keys
    /// (zipfian scan starts; preloads).
    #[value(name = "ycsb-e")]
    YcsbE,
    /// Only scans of 1..=--scan-max keys (uniform starts; preloads).
    Scan,
}

impl Workload {
    /// The name used on the command line and in the JSON summary.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::Mixed => "mixed",
            Workload::Tso => "tso",
            Workload::YcsbA => "ycsb-a",
            Workload::YcsbB => "ycsb-b",
            Workload::YcsbC => "ycsb-c",
            Workload::YcsbE => "ycsb-e",
            Workload::Scan => "scan",
        }
    }

    /// The kinds of request and their shares; `read_ratio` is used by `mixed` only.
    pub(super) fn mix(self, read_ratio: f64) -> Mix {
        let split = |first, share, second| Mix::Split {
            first,
            share,
            second,
        };
        match self {
            Workload::Put => Mix::Only(OpKind::Update),
            Workload::Get | Workload::YcsbC => Mix::Only(OpKind::Read),
            Workload::Mixed => split(OpKind::Read, read_ratio, OpKind::Update),
            Workload::Tso => Mix::Only(OpKind::Tso),
            Workload::YcsbA => split(OpKind::Read, 0.5, OpKind::Update),
            Workload::YcsbB => split(OpKind::Read, 0.95, OpKind::Update),
            Workload::YcsbE => split(OpKind::Scan, 0.95, OpKind::Insert),
            Workload::Scan => Mix::Only(OpKind::Scan),
        }
    }

    /// Whether the workload is a preset with its own fixed mix that needs data: the YCSB
    /// workloads and `scan`. These preload unless told not to.
    pub(super) fn is_preset(self) -> bool {
        matches!(
            self,
            Workload::YcsbA | Workload::YcsbB | Workload::YcsbC | Workload::YcsbE | Workload::Scan
        )
    }

    /// Key distribution when `--distribution` is not given: zipfian for the YCSB workloads
    /// (as in YCSB), uniform for the others; None for tso, which has no keys.
    pub(super) fn default_distribution(self) -> Option<Distribution> {
        match self {
            Workload::Tso => None,
            Workload::YcsbA | Workload::YcsbB | Workload::YcsbC | Workload::YcsbE => {
                Some(Distribution::Zipfian)
            }
            Workload::Put | Workload::Get | Workload::Mixed | Workload::Scan => {
                Some(Distribution::Uniform)
            }
        }
    }

    /// Whether the workload issues scans.
    pub(super) fn scans(self) -> bool {
        matches!(self, Workload::YcsbE | Workload::Scan)
    }
}

/// A kind of request, as counted in the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OpKind {
    /// A get (a batch get with `--batch`).
    Read,
    /// A put (a batch put with `--batch`) to a key of the key space.
    Update,
    /// A put to a new key after the key space (ycsb-e).
    Insert,
    /// A scan of 1..=`--scan-max` keys.
    Scan,
    /// A timestamp from PD.
    Tso,
}

impl OpKind {
    /// The name used in the summary.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Update => "update",
            OpKind::Insert => "insert",
            OpKind::Scan => "scan",
            OpKind::Tso => "tso",
        }
    }
}

/// How a workload divides its requests between kinds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Mix {
    /// Every request is of this kind.
    Only(OpKind),
    /// `first` with probability `share`, `second` otherwise.
    Split {
        first: OpKind,
        share: f64,
        second: OpKind,
    },
}

impl Mix {
    /// The kinds the mix issues, in the order the summary lists them.
    pub(super) fn kinds(self) -> Vec<OpKind> {
        match self {
            Mix::Only(k) => vec![k],
            Mix::Split { first, second, .. } => vec![first, second],
        }
    }

    /// The kind of the next request. `share` is validated to lie in [0, 1].
    pub(super) fn pick(self, rng: &mut impl Rng) -> OpKind {
        match self {
            Mix::Only(k) => k,
            Mix::Split {
                first,
                share,
                second,
            } => {
                if rng.gen_bool(share) {
                    first
                } else {
                    second
                }
            }
        }
    }

    /// The mix in words, e.g. "95% reads, 5% updates".
    pub(super) fn describe(self) -> String {
        match self {
            Mix::Only(k) => format!("{}s only", k.name()),
            Mix::Split {
                first,
                share,
                second,
            } => format!(
                "{}% {}s, {}% {}s",
                round(share * 100.0, 1),
                first.name(),
                round((1.0 - share) * 100.0, 1),
                second.name()
            ),
        }
    }
}
