//! `tern produce` and `tern consume` over the native protocol, through `tern::client` on a
//! small tokio runtime.

use std::time::{Duration, Instant};

use tern::client::{Client, ConsumerConfig, ProducerConfig, Record, StartAt};

type Result<T> = std::result::Result<T, String>;

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the client runtime: {e}"))
}

async fn connect(bootstrap: &str) -> Result<Client> {
    Client::connect(bootstrap).await.map_err(|e| {
        format!(
            "{e} (is {bootstrap} the broker's native listener? --kafka speaks the Kafka protocol)"
        )
    })
}

/// Produces each line of standard input as one record, all in flight at once, then reports
/// the last offset once every record is acknowledged.
pub fn produce(bootstrap: &str, topic: &str, partition: i32, key: Option<&str>) -> Result<()> {
    runtime()?.block_on(async {
        let client = connect(bootstrap).await?;
        let producer = client
            .producer(ProducerConfig::default())
            .await
            .map_err(|e| e.to_string())?;
        let mut deliveries = Vec::new();
        for line in std::io::stdin().lines() {
            let line = line.map_err(|e| e.to_string())?;
            let mut record = Record::value(line.into_bytes());
            if let Some(key) = key {
                record = record.with_key(key.as_bytes().to_vec());
            }
            deliveries.push(producer.send(topic, Some(partition), record));
        }
        let count = deliveries.len();
        let mut last_offset = -1;
        for delivery in deliveries {
            let delivered = delivery
                .await
                .map_err(|e| format!("produce to {topic}-{partition}: {e}"))?;
            last_offset = last_offset.max(delivered.offset);
        }
        eprintln!("produced {count} record(s) to {topic}-{partition}; last offset {last_offset}");
        Ok(())
    })
}

/// Prints the values of `partition` from the beginning or the end, up to `count` records or
/// until nothing arrives for `idle_ms`.
pub fn consume(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    from_beginning: bool,
    count: Option<u64>,
    idle_ms: i32,
) -> Result<()> {
    runtime()?.block_on(async {
        let client = connect(bootstrap).await?;
        // Fail clearly on a topic or partition that is not there.
        client
            .leader(topic, partition)
            .await
            .map_err(|e| e.to_string())?;
        let idle = Duration::from_millis(idle_ms.max(0) as u64);
        let mut consumer = client.consumer(ConsumerConfig {
            max_wait: idle.min(Duration::from_millis(500)),
            ..ConsumerConfig::default()
        });
        let start = if from_beginning {
            StartAt::Earliest
        } else {
            StartAt::Latest
        };
        consumer.assign(topic, partition, start);
        let mut printed = 0u64;
        let mut last = Instant::now();
        loop {
            let records = consumer.poll().await.map_err(|e| e.to_string())?;
            if !records.is_empty() {
                last = Instant::now();
            }
            for record in records {
                let value = record.value.as_deref().map(String::from_utf8_lossy);
                println!("{}", value.unwrap_or_default());
                printed += 1;
                if count.is_some_and(|c| printed >= c) {
                    return Ok(());
                }
            }
            if last.elapsed() >= idle {
                return Ok(());
            }
        }
    })
}
