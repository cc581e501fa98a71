//! A consumer-group member in its own process, for tests that must kill a member without it
//! leaving its group (SIGKILL): `group-member BOOTSTRAP GROUP TOPIC` joins and polls until
//! killed, or for at most two minutes so it can never outlive a crashed test.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

/// Longest the member runs if nobody kills it.
const LIFETIME: Duration = Duration::from_secs(120);

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: group-member BOOTSTRAP GROUP TOPIC";
    let (Some(bootstrap), Some(group), Some(topic)) = (args.next(), args.next(), args.next())
    else {
        return Err(usage.into());
    };
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "200")
        .create()
        .map_err(|e| format!("cannot create the consumer: {e}"))?;
    consumer
        .subscribe(&[&topic])
        .map_err(|e| format!("cannot subscribe to {topic}: {e}"))?;
    let deadline = Instant::now() + LIFETIME;
    while Instant::now() < deadline {
        let _ = consumer.poll(Duration::from_millis(100));
    }
    Ok(())
}
