//! The native-protocol driver, through `tern::client`: Tern only.
//!
//! Owns: one tokio runtime (a single worker thread, where the client's producer tasks, their
//! connections and the delivery listeners run), topic creation through the native client, a
//! producer whose delivery listener reports acks (each record tagged with its scheduled
//! instant and length, so nothing is allocated per record), and a consumer of assigned
//! partitions.
//! Must never: block in `try_send` (past `PRODUCER_QUEUE_MESSAGES_MAX` outstanding messages it
//! reports a full queue), or time anything: the scheduled instant rides in the record's tag and
//! `AckSink` reads the clock when the listener hears of it.
//! Fits: implements `driver::Driver` for `runner`, like `kafka`. The native client does not
//! join groups: a consumer that would subscribe as a group member is given every partition of
//! its topic instead.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern::client::{
    Client, ClientConfig, Codec, Consumer, ConsumerConfig, Delivery, DeliveryListener,
    ProducerConfig, RecordRef, StartAt,
};

use super::{AckSink, ConsumerSpec, Driver, DriverError, Outgoing, ProducerSpec, TopicSpec};
use crate::limits;
use crate::open_loop::SendOutcome;

pub struct NativeDriver {
    runtime: tokio::runtime::Runtime,
    client: Client,
}

impl NativeDriver {
    pub fn new(bootstrap: &str) -> Result<NativeDriver, DriverError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tern-native-client")
            .enable_all()
            .build()
            .map_err(|e| DriverError::Client(format!("cannot start the client runtime: {e}")))?;
        let client = runtime
            .block_on(Client::with_config(ClientConfig {
                bootstrap: bootstrap.to_owned(),
                client_id: "tern-bench".into(),
                ..ClientConfig::default()
            }))
            .map_err(|e| DriverError::Client(format!("native connect to {bootstrap}: {e}")))?;
        Ok(NativeDriver { runtime, client })
    }
}

struct NativeProducer {
    producer: tern::client::Producer,
    /// One reference per message in flight, shared by its delivery callback.
    deliveries: Arc<Deliveries>,
    handle: tokio::runtime::Handle,
}

struct Deliveries {
    sink: AckSink,
    outstanding: AtomicUsize,
}

/// A record's tag: its scheduled instant in the low `TAG_NS_BITS` bits (2.4 hours of run) and
/// its length above them (up to 2 MiB); records that do not fit go with a callback instead.
const TAG_NS_BITS: u32 = 43;
const TAG_LEN_MAX: u64 = (1 << (64 - TAG_NS_BITS)) - 1;

fn tag_of(scheduled_ns: u64, len_bytes: u64) -> Option<u64> {
    (scheduled_ns >> TAG_NS_BITS == 0 && len_bytes <= TAG_LEN_MAX)
        .then_some(len_bytes << TAG_NS_BITS | scheduled_ns)
}

impl Deliveries {
    fn report(
        &self,
        scheduled_ns: u64,
        len_bytes: u64,
        result: Result<Delivery, tern::client::Error>,
    ) {
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
        match result {
            Ok(_) => self.sink.acked(scheduled_ns, len_bytes),
            Err(_) => self.sink.failed(scheduled_ns),
        }
    }
}

impl DeliveryListener for Deliveries {
    fn delivered(&self, tag: u64, result: Result<Delivery, tern::client::Error>) {
        let scheduled_ns = tag & ((1 << TAG_NS_BITS) - 1);
        self.report(scheduled_ns, tag >> TAG_NS_BITS, result);
    }
}

impl super::Producer for NativeProducer {
    fn try_send(&mut self, msg: &Outgoing<'_>) -> SendOutcome {
        if self.deliveries.outstanding.load(Ordering::Relaxed)
            >= limits::PRODUCER_QUEUE_MESSAGES_MAX as usize
        {
            return SendOutcome::QueueFull;
        }
        let mut record = RecordRef::value(msg.payload);
        if let Some(key) = msg.key {
            record = record.with_key(key);
        }
        let len_bytes = msg.payload.len() as u64;
        let scheduled_ns = msg.scheduled_ns;
        self.deliveries.outstanding.fetch_add(1, Ordering::Relaxed);
        // The payload is copied into its batch here, on the sending thread.
        let tagged = tag_of(scheduled_ns, len_bytes).is_some_and(|tag| {
            self.producer
                .send_tagged(msg.topic, None, record, tag)
                .is_ok()
        });
        if !tagged {
            let deliveries = self.deliveries.clone();
            self.producer
                .send_with(msg.topic, None, record, move |result| {
                    deliveries.report(scheduled_ns, len_bytes, result)
                });
        }
        SendOutcome::Sent { len_bytes }
    }

    fn flush(&mut self, timeout: Duration) -> Result<(), DriverError> {
        let flushed = self
            .handle
            .block_on(async { tokio::time::timeout(timeout, self.producer.flush()).await });
        flushed.map_err(|_| DriverError::Timeout {
            what: format!(
                "{} in-flight messages to be acknowledged",
                self.deliveries.outstanding.load(Ordering::Relaxed)
            ),
            timeout_ms: timeout.as_millis() as u64,
        })
    }
}

struct NativeConsumer {
    consumer: Consumer,
    handle: tokio::runtime::Handle,
    buffered: VecDeque<bytes::Bytes>,
    assigned: u64,
}

impl super::Consumer for NativeConsumer {
    fn poll(
        &mut self,
        timeout: Duration,
        on_payload: &mut dyn FnMut(&[u8]),
    ) -> Result<bool, DriverError> {
        if self.buffered.is_empty() {
            let consumer = &mut self.consumer;
            let polled = self
                .handle
                .block_on(async { tokio::time::timeout(timeout, consumer.poll()).await });
            match polled {
                Err(_) => return Ok(false),
                Ok(Err(error)) => return Err(DriverError::Client(error.to_string())),
                Ok(Ok(records)) => self
                    .buffered
                    .extend(records.into_iter().map(|r| r.value.unwrap_or_default())),
            }
        }
        match self.buffered.pop_front() {
            Some(payload) => {
                on_payload(&payload);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn assigned_partitions(&self) -> u64 {
        self.assigned
    }
}

impl Driver for NativeDriver {
    fn name(&self) -> &'static str {
        "native"
    }

    fn ensure_topics(&self, topics: &[TopicSpec], timeout: Duration) -> Result<(), DriverError> {
        self.runtime.block_on(async {
            for t in topics {
                match self
                    .client
                    .create_topic(&t.name, t.partitions as i32, t.replication_factor, &[])
                    .await
                {
                    Ok(()) => {}
                    // TopicAlreadyExists, or RequestTimedOut: the broker may still be creating it
                    // (many partitions on a slow disk); the wait for its leaders below decides.
                    Err(error) if matches!(error.code(), Some(36 | 7)) => {}
                    Err(error) => {
                        return Err(DriverError::CreateTopic {
                            topic: t.name.clone(),
                            reason: error.to_string(),
                        })
                    }
                }
            }
            // Producing before every partition has a leader only adds retries to the first
            // measurements, so wait (bounded) until metadata shows all of them led.
            let deadline = Instant::now() + timeout;
            for t in topics {
                loop {
                    let found = self
                        .client
                        .refresh_metadata(Some(&[t.name.as_str()]))
                        .await
                        .ok()
                        .and_then(|mut m| m.remove(&t.name));
                    if found.is_some_and(|partitions| {
                        partitions.len() == t.partitions as usize
                            && partitions.iter().all(|p| p.leader >= 0)
                    }) {
                        break;
                    }
                    if Instant::now() >= deadline {
                        return Err(DriverError::Timeout {
                            what: format!(
                                "leaders for all {} partitions of {}",
                                t.partitions, t.name
                            ),
                            timeout_ms: timeout.as_millis() as u64,
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            Ok(())
        })
    }

    fn producer(
        &self,
        spec: &ProducerSpec,
        acks: AckSink,
    ) -> Result<Box<dyn super::Producer>, DriverError> {
        let w = &spec.workload;
        let compression = match w.compression.as_str() {
            "none" => Codec::None,
            "gzip" => Codec::Gzip { level: -1 },
            "snappy" => Codec::Snappy,
            "lz4" => Codec::Lz4,
            "zstd" => Codec::Zstd { level: 3 },
            other => {
                return Err(DriverError::Config(format!(
                    "the native client compresses with none, gzip, snappy, lz4 or zstd, not \
                     {other}"
                )))
            }
        };
        if let Some(key) = w.producer_config.keys().next() {
            return Err(DriverError::Config(format!(
                "producer setting {key} is a librdkafka one; the native driver takes none"
            )));
        }
        let acks_level: i16 = match w.acks.as_str() {
            "all" | "-1" => -1,
            "1" => 1,
            other => {
                return Err(DriverError::Config(format!(
                    "the native client acknowledges with acks 1 or all, not {other}"
                )))
            }
        };
        let config = ProducerConfig {
            linger: Duration::from_millis(w.linger_ms),
            batch_bytes: w.batch_size_bytes as usize,
            acks: acks_level,
            delivery_timeout: Duration::from_millis(limits::MESSAGE_TIMEOUT_MS),
            compression,
            ..ProducerConfig::default()
        };
        let deliveries = Arc::new(Deliveries {
            sink: acks,
            outstanding: AtomicUsize::new(0),
        });
        let producer = self
            .runtime
            .block_on(
                self.client
                    .producer_with_listener(config, deliveries.clone()),
            )
            .map_err(|e| DriverError::Client(format!("native producer: {e}")))?;
        Ok(Box::new(NativeProducer {
            producer,
            deliveries,
            handle: self.runtime.handle().clone(),
        }))
    }

    fn consumer(&self, spec: &ConsumerSpec) -> Result<Box<dyn super::Consumer>, DriverError> {
        let partitions: Vec<i32> = match &spec.partitions {
            Some(partitions) => partitions.iter().map(|p| *p as i32).collect(),
            None => {
                let count = self
                    .runtime
                    .block_on(self.client.partitions(&spec.topic))
                    .map_err(|e| DriverError::Client(format!("metadata: {e}")))?
                    .len();
                (0..count as i32).collect()
            }
        };
        let mut consumer = self.client.consumer(ConsumerConfig {
            max_wait: Duration::from_millis(100),
            ..ConsumerConfig::default()
        });
        for partition in &partitions {
            consumer.assign(&spec.topic, *partition, StartAt::Earliest);
        }
        Ok(Box::new(NativeConsumer {
            consumer,
            handle: self.runtime.handle().clone(),
            buffered: VecDeque::new(),
            assigned: partitions.len() as u64,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_carries_the_scheduled_instant_and_length_or_is_not_made() {
        let ns = (1 << TAG_NS_BITS) - 1;
        let tag = tag_of(ns, TAG_LEN_MAX).expect("fits");
        assert_eq!(tag & ((1 << TAG_NS_BITS) - 1), ns);
        assert_eq!(tag >> TAG_NS_BITS, TAG_LEN_MAX);
        assert_eq!(tag_of(1 << TAG_NS_BITS, 1), None, "a run past 2.4 hours");
        assert_eq!(tag_of(1, TAG_LEN_MAX + 1), None, "a record over 2 MiB");
        assert_eq!(tag_of(5, 1024), Some(1024 << TAG_NS_BITS | 5));
    }
}
