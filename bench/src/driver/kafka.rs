//! The Kafka-protocol driver, through rdkafka (librdkafka): works against any Kafka-compatible
//! broker, Tern included.
//!
//! Owns: rdkafka client configuration from a workload, topic creation through `AdminClient`,
//! a `ThreadedProducer` whose delivery callback reports acks, and a `BaseConsumer`.
//! Must never: block in `try_send` (a full local queue is reported, not waited on), or time
//! anything: the scheduled instant travels as the delivery opaque and `AckSink` reads the
//! clock when the callback runs.
//! Fits: implements `driver::Driver` for `runner`.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, FromClientConfigAndContext};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::{ClientContext, Offset};

use super::{AckSink, ConsumerSpec, Driver, DriverError, Outgoing, ProducerSpec, TopicSpec};
use crate::limits;
use crate::open_loop::SendOutcome;

// The scheduled instant rides in the delivery opaque as a `usize`, which must hold a u64.
const _: () = assert!(std::mem::size_of::<usize>() == std::mem::size_of::<u64>());

pub struct KafkaDriver {
    bootstrap: String,
    /// Extra librdkafka settings for every client (security, say).
    extra: Vec<(String, String)>,
}

impl KafkaDriver {
    pub fn new(bootstrap: &str, extra: &[(String, String)]) -> KafkaDriver {
        KafkaDriver {
            bootstrap: bootstrap.to_string(),
            extra: extra.to_vec(),
        }
    }

    fn base_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        for (key, value) in &self.extra {
            c.set(key, value);
        }
        c
    }
}

fn config_error(e: KafkaError) -> DriverError {
    DriverError::Config(e.to_string())
}

/// Calls `AckSink` from librdkafka's delivery callback, which `ThreadedProducer` runs on its
/// own polling thread.
struct AckContext {
    sink: AckSink,
}

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, scheduled_ns: usize) {
        match result {
            Ok(message) => self
                .sink
                .acked(scheduled_ns as u64, message.payload_len() as u64),
            Err(_) => self.sink.failed(scheduled_ns as u64),
        }
    }
}

struct KafkaProducer {
    producer: ThreadedProducer<AckContext>,
}

impl super::Producer for KafkaProducer {
    fn try_send(&mut self, msg: &Outgoing<'_>) -> SendOutcome {
        let mut record =
            BaseRecord::with_opaque_to(msg.topic, msg.scheduled_ns as usize).payload(msg.payload);
        if let Some(key) = msg.key {
            record = record.key(key);
        }
        match self.producer.send(record) {
            Ok(()) => SendOutcome::Sent {
                len_bytes: msg.payload.len() as u64,
            },
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                SendOutcome::QueueFull
            }
            Err(_) => SendOutcome::Failed,
        }
    }

    fn flush(&mut self, timeout: Duration) -> Result<(), DriverError> {
        self.producer
            .flush(timeout)
            .map_err(|_| DriverError::Timeout {
                what: format!(
                    "{} in-flight messages to be acknowledged",
                    self.producer.in_flight_count()
                ),
                timeout_ms: timeout.as_millis() as u64,
            })
    }
}

struct KafkaConsumer {
    consumer: BaseConsumer,
}

impl super::Consumer for KafkaConsumer {
    fn poll(
        &mut self,
        timeout: Duration,
        on_payload: &mut dyn FnMut(&[u8]),
    ) -> Result<bool, DriverError> {
        match self.consumer.poll(timeout) {
            None => Ok(false),
            Some(Ok(message)) => {
                on_payload(message.payload().unwrap_or(&[]));
                Ok(true)
            }
            Some(Err(e)) => Err(DriverError::Client(e.to_string())),
        }
    }

    fn assigned_partitions(&self) -> u64 {
        self.consumer
            .assignment()
            .map(|a| a.count() as u64)
            .unwrap_or(0)
    }
}

impl Driver for KafkaDriver {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn ensure_topics(&self, topics: &[TopicSpec], timeout: Duration) -> Result<(), DriverError> {
        let admin: AdminClient<DefaultClientContext> =
            self.base_config().create().map_err(config_error)?;
        let new_topics: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| {
                NewTopic::new(
                    &t.name,
                    t.partitions as i32,
                    TopicReplication::Fixed(i32::from(t.replication_factor)),
                )
            })
            .collect();
        let options = AdminOptions::new()
            .operation_timeout(Some(timeout))
            .request_timeout(Some(timeout));
        // The admin futures are completed by rdkafka's own thread; any executor can wait on them.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| {
                DriverError::Client(format!("cannot start a runtime for the admin client: {e}"))
            })?;
        let results = runtime
            .block_on(async {
                tokio::time::timeout(timeout, admin.create_topics(&new_topics, &options)).await
            })
            .map_err(|_| DriverError::Timeout {
                what: "CreateTopics".into(),
                timeout_ms: timeout.as_millis() as u64,
            })?
            .map_err(|e| DriverError::Client(format!("CreateTopics: {e}")))?;
        for result in results {
            match result {
                // Timed out: the broker may still be creating it (many partitions on a slow
                // disk); the wait for its leaders below decides.
                Ok(_)
                | Err((_, RDKafkaErrorCode::TopicAlreadyExists))
                | Err((_, RDKafkaErrorCode::RequestTimedOut)) => {}
                Err((topic, code)) => {
                    return Err(DriverError::CreateTopic {
                        topic,
                        reason: code.to_string(),
                    })
                }
            }
        }
        // Producing before every partition has a leader only adds retries to the first
        // measurements, so wait (bounded) until metadata shows all of them led.
        let deadline = Instant::now() + timeout;
        for t in topics {
            loop {
                let ready = admin
                    .inner()
                    .fetch_metadata(Some(&t.name), Duration::from_secs(5))
                    .ok()
                    .and_then(|m| {
                        m.topics().first().map(|topic| {
                            topic.error().is_none()
                                && topic.partitions().len() == t.partitions as usize
                                && topic
                                    .partitions()
                                    .iter()
                                    .all(|p| p.error().is_none() && p.leader() >= 0)
                        })
                    })
                    .unwrap_or(false);
                if ready {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(DriverError::Timeout {
                        what: format!("leaders for all {} partitions of {}", t.partitions, t.name),
                        timeout_ms: timeout.as_millis() as u64,
                    });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    fn producer(
        &self,
        spec: &ProducerSpec,
        acks: AckSink,
    ) -> Result<Box<dyn super::Producer>, DriverError> {
        let w = &spec.workload;
        let mut c = self.base_config();
        c.set("client.id", format!("tern-bench-p{}", spec.index))
            .set(
                "acks",
                if w.acks == "-1" {
                    "all"
                } else {
                    w.acks.as_str()
                },
            )
            .set("compression.type", w.compression.as_str())
            .set("linger.ms", w.linger_ms.to_string())
            .set("batch.size", w.batch_size_bytes.to_string())
            .set(
                "queue.buffering.max.messages",
                limits::PRODUCER_QUEUE_MESSAGES_MAX.to_string(),
            )
            // Bounded, so a dead broker turns into delivery errors within the drain timeout.
            .set("message.timeout.ms", limits::MESSAGE_TIMEOUT_MS.to_string());
        for (k, v) in &w.producer_config {
            c.set(k, v);
        }
        let producer = ThreadedProducer::from_config_and_context(&c, AckContext { sink: acks })
            .map_err(config_error)?;
        Ok(Box::new(KafkaProducer { producer }))
    }

    fn consumer(&self, spec: &ConsumerSpec) -> Result<Box<dyn super::Consumer>, DriverError> {
        let mut c = self.base_config();
        c.set("client.id", format!("tern-bench-c{}", spec.index))
            // Topics are fresh per run, so "earliest" loses nothing that was produced before
            // the group finished joining, and reads nothing from earlier runs.
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // librdkafka needs a group id even for `assign`; with direct assignment it never
            // joins the group, and without commits it never needs the coordinator.
            .set("group.id", &spec.group_id)
            .set(
                "enable.auto.commit",
                if spec.partitions.is_none() {
                    "true"
                } else {
                    "false"
                },
            );
        for (k, v) in &spec.workload.consumer_config {
            c.set(k, v);
        }
        let consumer: BaseConsumer = c.create().map_err(config_error)?;
        match &spec.partitions {
            None => consumer
                .subscribe(&[spec.topic.as_str()])
                .map_err(|e| DriverError::Client(format!("subscribe: {e}")))?,
            Some(partitions) => {
                let mut list = TopicPartitionList::new();
                for p in partitions {
                    list.add_partition_offset(&spec.topic, *p as i32, Offset::Beginning)
                        .map_err(|e| DriverError::Client(format!("assign: {e}")))?;
                }
                consumer
                    .assign(&list)
                    .map_err(|e| DriverError::Client(format!("assign: {e}")))?;
            }
        }
        Ok(Box::new(KafkaConsumer { consumer }))
    }
}
