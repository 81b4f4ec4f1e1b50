//! `endpoint health|status` and `status`: which endpoints to ask, and their statuses printed.

use rdb_client::{Client, Error, Options};

use crate::cli::{Cli, DEFAULT_ENDPOINT};
use crate::output::Printer;
use crate::{exit, fail, invalid, with_pd};

/// Prints every one of `endpoints`' status; exit 4 if any did not answer.
pub(crate) async fn status_of(endpoints: &[String], opts: &Options, p: &Printer) -> u8 {
    match Client::with_options(endpoints, opts.clone()) {
        Ok(c) => status_printed(&c.status_all().await, p),
        Err(e) => fail(&e),
    }
}

/// Prints statuses; exit 4 if any endpoint did not answer.
pub(crate) fn status_printed(
    all: &[(String, Result<rdb_client::NodeStatus, Error>)],
    p: &Printer,
) -> u8 {
    p.status(all);
    if all.iter().all(|(_, r)| r.is_ok()) {
        0
    } else {
        exit::UNAVAILABLE
    }
}

/// The endpoints an `endpoint` command asks: those given (--endpoints; with only --pd, PD's);
/// with `cluster`, every member of the group at --endpoints, or with --pd every store PD knows.
pub(crate) async fn endpoint_targets(
    cli: &Cli,
    cluster: bool,
    client: &Client,
    pd_endpoints: &[String],
    opts: &Options,
) -> Result<Vec<String>, u8> {
    let given: Vec<String> = match (&cli.endpoints, &cli.pd) {
        (Some(e), _) => e.split(',').map(|s| s.trim().to_string()).collect(),
        (None, Some(_)) => pd_endpoints.to_vec(),
        (None, None) => vec![DEFAULT_ENDPOINT.to_string()],
    };
    if !cluster {
        return Ok(given.into_iter().filter(|s| !s.is_empty()).collect());
    }
    if cli.pd.is_some() {
        let pd = with_pd(&cli.pd, pd_endpoints, opts)?;
        let stores = match pd.pd() {
            Some(pd) => pd.get_all_stores(true).await.map_err(|e| fail(&e))?,
            None => return Err(invalid("--cluster with --pd needs PD's addresses")),
        };
        if stores.is_empty() {
            eprintln!("rdb-cli: PD knows no store yet");
            return Err(exit::UNAVAILABLE);
        }
        return Ok(stores.into_iter().map(|s| s.address).collect());
    }
    let list = client.member_list().await.map_err(|e| fail(&e))?;
    Ok(list
        .members
        .into_iter()
        .map(|m| m.client_addr)
        .filter(|a| !a.is_empty())
        .collect())
}
