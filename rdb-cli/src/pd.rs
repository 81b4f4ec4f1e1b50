//! The commands that talk to PD, the placement driver (`tso`, `store`, `region`, `member`,
//! `operator`).
//! They need PD's endpoints (`--pd A,B,C`), not the KV nodes'.

use clap::Subcommand;
use rdb_client::{Options, PdClient};

use crate::codec::Codec;
use crate::output::Printer;
use crate::{exit, fail, invalid};

/// `rdb-cli store ...`
#[derive(Debug, Subcommand, PartialEq, Eq)]
pub enum StoreCmd {
    /// Every store PD knows, with its state.
    List {
        /// Leave out tombstoned stores.
        #[arg(long)]
        exclude_tombstones: bool,
    },
    /// Mark a store Tombstone: removed for good, it can never come back.
    Tombstone {
        /// The store's id.
        id: u64,
    },
    /// Remove a store: PD moves its regions' peers to other stores, then tombstones it
    /// (`store list` shows it offline, then tombstone). Refused when fewer stores than the
    /// replication factor would be left.
    Remove {
        /// The store's id.
        id: u64,
        /// Cancel a removal still under way (the store stays, with what it holds).
        #[arg(long)]
        cancel: bool,
    },
}

/// `rdb-cli region ...`
#[derive(Debug, Subcommand, PartialEq, Eq)]
pub enum RegionCmd {
    /// Regions overlapping [--start, --end), in key order.
    List {
        /// Inclusive start key.
        #[arg(long, default_value = "")]
        start: String,
        /// Exclusive end key (empty: no bound).
        #[arg(long, default_value = "")]
        end: String,
        /// At most this many regions (0: all of them).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// The region whose range holds KEY (exit 3 if none does).
    Get {
        /// The key.
        key: String,
    },
    /// Merges region SOURCE into the adjacent region TARGET (both with their peers on the
    /// same stores); returns once SOURCE prepared, and the stores finish the merge.
    Merge {
        /// The region that goes.
        source: u64,
        /// The region that takes over its range.
        target: u64,
    },
}

/// `rdb-cli operator ...`
#[derive(Debug, Subcommand, PartialEq, Eq)]
pub enum OperatorCmd {
    /// PD's scheduling operators: those that ended lately (finished, timed out, cancelled),
    /// then those that run, each with its steps.
    List,
}

/// One PD command.
#[derive(Debug, PartialEq, Eq)]
pub enum PdCmd {
    /// `tso`
    Tso,
    /// `store ...`
    Store(StoreCmd),
    /// `region ...`
    Region(RegionCmd),
    /// `member ...` without --region: PD's own members.
    Member(crate::members::MemberCmd),
    /// `operator ...`
    Operator(OperatorCmd),
}

impl PdCmd {
    /// The command as typed, for the error when `--pd` is missing.
    fn name(&self) -> &'static str {
        match self {
            PdCmd::Tso => "tso",
            PdCmd::Store(_) => "store",
            PdCmd::Region(_) => "region",
            PdCmd::Member(_) => "member",
            PdCmd::Operator(_) => "operator",
        }
    }
}

/// The PD endpoints of `--pd`, or the one-line reason why there are none.
pub fn endpoints(pd: Option<&str>, cmd: &PdCmd) -> Result<Vec<String>, String> {
    let list: Vec<String> = pd
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if list.is_empty() {
        return Err(format!(
            "`{}` talks to PD: give its endpoints with --pd HOST:PORT[,HOST:PORT...] (or RDB_PD)",
            cmd.name()
        ));
    }
    Ok(list)
}

/// Runs one PD command; returns the exit code.
pub async fn run(cmd: PdCmd, pd: Option<&str>, opts: Options, p: &Printer, codec: Codec) -> u8 {
    let endpoints = match endpoints(pd, &cmd) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("rdb-cli: {e}");
            return exit::INVALID;
        }
    };
    let client = match PdClient::with_options(&endpoints, opts) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let arg = |s: &str| codec.decode(s).map_err(|e| invalid(&e));
    match cmd {
        PdCmd::Tso => match client.timestamp().await {
            Ok(ts) => p.timestamp(ts),
            Err(e) => fail(&e),
        },
        PdCmd::Store(StoreCmd::List { exclude_tombstones }) => {
            match client.get_all_stores(exclude_tombstones).await {
                Ok(stores) => p.stores(&stores),
                Err(e) => fail(&e),
            }
        }
        PdCmd::Store(StoreCmd::Tombstone { id }) => match client.set_store_tombstone(id).await {
            Ok(()) => p.store_tombstoned(id),
            Err(e) => fail(&e),
        },
        PdCmd::Store(StoreCmd::Remove { id, cancel }) => {
            match client.remove_store(id, cancel).await {
                Ok(()) => p.store_removing(id, cancel),
                Err(e) => fail(&e),
            }
        }
        PdCmd::Region(RegionCmd::List { start, end, limit }) => {
            let (start, end) = match (arg(&start), arg(&end)) {
                (Ok(s), Ok(e)) => (s, e),
                (Err(code), _) | (_, Err(code)) => return code,
            };
            if !end.is_empty() && start >= end {
                return invalid(
                    "region list --start must come before --end (an empty --end: no bound)",
                );
            }
            match client.scan_regions(start, end, limit).await {
                Ok(regions) => p.regions(&regions, &store_states(&client).await),
                Err(e) => fail(&e),
            }
        }
        PdCmd::Region(RegionCmd::Get { key }) => {
            let key = match arg(&key) {
                Ok(k) => k,
                Err(code) => return code,
            };
            match client.get_region(key.clone()).await {
                Ok(Some(r)) => p.region(&key, &r, &store_states(&client).await),
                Ok(None) => {
                    p.no_region(&key);
                    exit::NOT_FOUND
                }
                Err(e) => fail(&e),
            }
        }
        // Run by main through the stores (a Client with PD); reached only without --pd, which
        // `endpoints` refused above.
        PdCmd::Region(RegionCmd::Merge { .. }) => invalid("region merge needs --pd"),
        PdCmd::Operator(OperatorCmd::List) => match client.operators().await {
            Ok(ops) => p.operators(&ops),
            Err(e) => fail(&e),
        },
        PdCmd::Member(cmd) => crate::members::run_pd(&client, cmd, p).await,
    }
}

/// The stores PD reports down or tombstoned, to mark their peers in region listings; none if
/// PD does not answer (the listing is still worth printing).
async fn store_states(client: &PdClient) -> crate::output::StoreStates {
    match client.get_all_stores(false).await {
        Ok(stores) => stores
            .into_iter()
            .filter(|s| s.state != rdb_client::pd::StoreState::Up)
            .map(|s| (s.id, s.state.name()))
            .collect(),
        Err(_) => Default::default(),
    }
}

/// `ms` since the Unix epoch as RFC 3339 UTC with milliseconds (`2026-11-26T14:22:52.123Z`).
pub fn rfc3339_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_utc(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339_utc(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn missing_pd_endpoints_name_the_option() {
        for pd in [None, Some(""), Some(" , ")] {
            let e = endpoints(pd, &PdCmd::Tso).unwrap_err();
            assert!(e.contains("--pd") && e.contains("tso"), "{e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
        assert_eq!(
            endpoints(
                Some("a:1, b:2,"),
                &PdCmd::Member(crate::members::MemberCmd::List)
            )
            .unwrap(),
            ["a:1", "b:2"]
        );
    }
}
