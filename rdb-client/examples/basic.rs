//! Put, get, scan and delete against a running cluster.
//!
//! ```sh
//! bash scripts/run-local-cluster.sh &     # or any cluster
//! RDB_ENDPOINTS=127.0.0.1:2379,127.0.0.1:2479,127.0.0.1:2579 cargo run -p rdb-client --example basic
//! ```

use rdb_client::{Client, Error, ReadConsistency, ScanRange};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let endpoints = std::env::var("RDB_ENDPOINTS").unwrap_or_else(|_| "127.0.0.1:2379".into());
    let client = Client::new(endpoints.split(','))?;

    client.put("example/a", "1").await?;
    client.put("example/b", "2").await?;
    println!(
        "a = {:?}",
        client.get("example/a").await?.map(String::from_utf8)
    );

    let page = client
        .scan(
            ScanRange {
                prefix: b"example/".to_vec(),
                limit: 10,
                ..Default::default()
            },
            ReadConsistency::Linearizable,
        )
        .await?;
    for (k, v) in &page.kvs {
        println!(
            "{} = {}",
            String::from_utf8_lossy(k),
            String::from_utf8_lossy(v)
        );
    }

    let existed = client.delete("example/a").await?;
    println!("deleted example/a (existed: {existed})");
    match client.put("", "empty keys are refused").await {
        Err(Error::InvalidArgument(why)) => println!("refused as expected: {why}"),
        other => println!("unexpected: {other:?}"),
    }
    Ok(())
}
