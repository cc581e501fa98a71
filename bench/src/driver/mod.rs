//! The seam between the harness and a client protocol: the `Driver` trait and its errors.
//!
//! Owns: what a protocol must offer to be benchmarked (create topics, a non-blocking producer
//! that reports acks to an `AckSink`, a polling consumer) and the choice of driver by name.
//! Must never: pace, time or record anything itself beyond calling `AckSink` when an ack or a
//! failure arrives; timing and rate control stay in the protocol-free core so every driver is
//! measured the same way.
//! Fits: `runner` drives any `Driver`. `kafka` speaks the Kafka protocol through rdkafka and so
//! works against any Kafka-compatible broker; `native` speaks Tern's native protocol through
//! `tern::client` (DESIGN.md §6), against Tern only.

pub mod kafka;
pub mod native;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::open_loop::SendOutcome;
use crate::recorder::Recorder;
use crate::schedule::Clock;
use crate::workload::Workload;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverKind {
    Kafka,
    Native,
}

impl std::str::FromStr for DriverKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kafka" => Ok(DriverKind::Kafka),
            "native" => Ok(DriverKind::Native),
            other => Err(format!(
                "unknown driver {other:?}: expected kafka or native"
            )),
        }
    }
}

impl DriverKind {
    pub fn name(self) -> &'static str {
        match self {
            DriverKind::Kafka => "kafka",
            DriverKind::Native => "native",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("the client rejected its configuration: {0}")]
    Config(String),
    #[error("creating topic {topic} failed: {reason}")]
    CreateTopic { topic: String, reason: String },
    #[error("timed out after {timeout_ms} ms waiting for {what}")]
    Timeout { what: String, timeout_ms: u64 },
    #[error("client error: {0}")]
    Client(String),
}

/// Opens the driver of `kind` against `bootstrap` (`host:port`: the Kafka listener for the
/// Kafka driver, the native one for the native driver).
/// `client_config` is extra client settings (librdkafka's names for the Kafka driver:
/// `security.protocol`, `ssl.ca.location`, `sasl.mechanism`, ...) applied to every client; the
/// native driver takes none.
pub fn open(
    kind: DriverKind,
    bootstrap: &str,
    client_config: &[(String, String)],
) -> Result<Box<dyn Driver>, DriverError> {
    match kind {
        DriverKind::Kafka => Ok(Box::new(kafka::KafkaDriver::new(bootstrap, client_config))),
        DriverKind::Native => {
            if let Some((key, _)) = client_config.first() {
                return Err(DriverError::Config(format!(
                    "client setting {key} is a librdkafka one; the native driver takes none"
                )));
            }
            Ok(Box::new(native::NativeDriver::new(bootstrap)?))
        }
    }
}

#[derive(Clone, Debug)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: u32,
    pub replication_factor: i16,
}

#[derive(Clone, Debug)]
pub struct ProducerSpec {
    pub index: u32,
    pub workload: Workload,
}

#[derive(Clone, Debug)]
pub struct ConsumerSpec {
    pub index: u32,
    pub group_id: String,
    pub topic: String,
    /// `Some(partitions)`: read exactly these partitions from the beginning, without joining a
    /// group. `None`: subscribe to `topic` as a member of `group_id`.
    pub partitions: Option<Vec<u32>>,
    pub workload: Workload,
}

/// One message to send. `scheduled_ns` travels with the message through the client so the
/// ack can be timed from the schedule.
#[derive(Clone, Copy, Debug)]
pub struct Outgoing<'a> {
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    pub scheduled_ns: u64,
}

/// Where a driver reports acknowledgements, from whichever thread learns of them.
#[derive(Clone)]
pub struct AckSink {
    recorder: Arc<Mutex<Recorder>>,
    clock: Clock,
}

impl AckSink {
    pub fn new(recorder: Arc<Mutex<Recorder>>, clock: Clock) -> AckSink {
        AckSink { recorder, clock }
    }

    /// The broker acknowledged the message scheduled at `scheduled_ns`.
    pub fn acked(&self, scheduled_ns: u64, len_bytes: u64) {
        let now_ns = self.clock.now_ns();
        self.recorder
            .lock()
            .expect("recorder lock poisoned")
            .record_ack(scheduled_ns, now_ns, len_bytes);
    }

    /// The client gave up on the message scheduled at `scheduled_ns`.
    pub fn failed(&self, scheduled_ns: u64) {
        let now_ns = self.clock.now_ns();
        self.recorder
            .lock()
            .expect("recorder lock poisoned")
            .record_delivery_error(scheduled_ns, now_ns);
    }
}

pub trait Driver: Send + Sync {
    fn name(&self) -> &'static str;
    /// Creates the topics that do not exist yet and waits until their partitions have leaders.
    fn ensure_topics(&self, topics: &[TopicSpec], timeout: Duration) -> Result<(), DriverError>;
    fn producer(
        &self,
        spec: &ProducerSpec,
        acks: AckSink,
    ) -> Result<Box<dyn Producer>, DriverError>;
    fn consumer(&self, spec: &ConsumerSpec) -> Result<Box<dyn Consumer>, DriverError>;
}

pub trait Producer: Send {
    /// Hands one message to the client without blocking. A full client queue is
    /// `SendOutcome::QueueFull`: the caller counts it and keeps its schedule.
    fn try_send(&mut self, msg: &Outgoing<'_>) -> SendOutcome;
    /// Waits up to `timeout` for every message handed over to be acknowledged or failed.
    fn flush(&mut self, timeout: Duration) -> Result<(), DriverError>;
}

pub trait Consumer: Send {
    /// Waits up to `timeout` for the next record and passes its payload to `on_payload`.
    /// Returns whether a record was delivered.
    fn poll(
        &mut self,
        timeout: Duration,
        on_payload: &mut dyn FnMut(&[u8]),
    ) -> Result<bool, DriverError>;
    /// Partitions currently assigned to this consumer.
    fn assigned_partitions(&self) -> u64;
}
