//! A counter incremented by concurrent tasks with compare-and-swap; no increment is lost.
//!
//! ```sh
//! RDB_ENDPOINTS=127.0.0.1:2379,127.0.0.1:2479,127.0.0.1:2579 cargo run -p rdb-client --example cas_counter
//! ```

use rdb_client::{Client, Error};

async fn increment(client: &Client, key: &str) -> Result<u64, Error> {
    loop {
        let current = client.get(key).await?;
        let n: u64 = current
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
            .unwrap_or(0);
        if client
            .cas(key, current, (n + 1).to_string())
            .await?
            .succeeded
        {
            return Ok(n + 1);
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let endpoints = std::env::var("RDB_ENDPOINTS").unwrap_or_else(|_| "127.0.0.1:2379".into());
    let client = Client::new(endpoints.split(','))?;
    let key = format!("counter-{}", std::process::id());
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (client, key) = (client.clone(), key.clone());
            tokio::spawn(async move {
                for _ in 0..10 {
                    increment(&client, &key).await?;
                }
                Ok::<_, Error>(())
            })
        })
        .collect();
    for t in tasks {
        if let Ok(r) = t.await {
            r?;
        }
    }
    let v = client.get(key.as_str()).await?.unwrap_or_default();
    println!("{key} = {} (expected 80)", String::from_utf8_lossy(&v));
    Ok(())
}
