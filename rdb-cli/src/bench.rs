//! `rdb-cli bench`: load generator (filled in by the benchmark work).

use rdb_client::Options;

use crate::output::Printer;

/// Bench options.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {}

/// Runs a benchmark.
pub async fn run(
    _endpoints: &[String],
    _opts: Options,
    _args: BenchArgs,
    _p: &Printer,
) -> Result<(), String> {
    Err("not implemented yet".into())
}
