//! `tern::client`: an async Rust client for Tern's native protocol (docs/native-protocol.md),
//! usable from any tokio application.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tern::client::Error> {
//! use tern::client::{Client, ProducerConfig, Record, StartAt};
//! let client = Client::connect("127.0.0.1:9094").await?;
//! client.create_topic("events", 3, -1, &[]).await?;
//! let producer = client.producer(ProducerConfig::default()).await?;
//! let delivered = producer.send("events", Some(0), Record::value("hello")).await?;
//! let mut consumer = client.consumer(Default::default());
//! consumer.assign("events", 0, StartAt::Offset(delivered.offset));
//! let records = consumer.poll().await?;
//! # Ok(()) }
//! ```
//!
//! - `Client`: connections (one per broker, shared by every request), the cluster's metadata
//!   (partition leaders, refreshed when a broker answers NotLeaderOrFollower), and the
//!   control requests: topics, offsets, group offsets.
//! - `Producer`: batches records per partition by size and linger, keeps several requests in
//!   flight per broker, routes each batch to its partition's leader, and is idempotent: a
//!   producer id and per-partition sequence numbers let it retry after any failure without
//!   writing a record twice.
//! - `Consumer`: reads assigned partitions from their leaders with long polls (one in flight
//!   per leader, the next sent as soon as the last returns, while the application works on
//!   what came), and commits its positions to a group.

mod connection;
mod consumer;
mod producer;
mod records;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_protocol::native::msg;

pub use connection::{Connection, Greeting, Response};
pub use consumer::{Consumer, ConsumerConfig, StartAt};
pub use producer::{Delivery, DeliveryListener, Producer, ProducerConfig, ProducerStats};
pub use records::{decode, BatchWriter, Consumed, Record, RecordRef};
/// A producer's `compression` (Kafka's codecs, with their levels).
pub use tern_protocol::records::Codec;

/// What can go wrong.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("connection lost: {0}")]
    Disconnected(String),
    #[error("timed out: {0}")]
    Timeout(String),
    /// The broker refused: a Kafka error code (see `msg::Error`) and its message.
    #[error("broker error {code} ({name}): {message}", name = error_name(*code))]
    Broker { code: i16, message: String },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{0}")]
    Usage(String),
}

impl Error {
    /// The broker's error code, if the broker refused.
    pub fn code(&self) -> Option<i16> {
        match self {
            Error::Broker { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether trying again (after refreshing metadata) may succeed.
    pub fn retriable(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Disconnected(_) | Error::Timeout(_) => true,
            Error::Broker { code, .. } => retriable_code(*code),
            Error::Protocol(_) | Error::Usage(_) => false,
        }
    }
}

/// The Kafka error codes a client retries.
pub fn retriable_code(code: i16) -> bool {
    matches!(
        msg::Error(code),
        msg::Error::UnknownTopicOrPartition
            | msg::Error::LeaderNotAvailable
            | msg::Error::NotLeaderOrFollower
            | msg::Error::RequestTimedOut
            | msg::Error::NetworkException
            | msg::Error::CoordinatorLoadInProgress
            | msg::Error::CoordinatorNotAvailable
            | msg::Error::NotCoordinator
            | msg::Error::NotEnoughReplicas
            | msg::Error::NotEnoughReplicasAfterAppend
            | msg::Error::KafkaStorageError
            | msg::Error::FencedLeaderEpoch
            | msg::Error::UnknownLeaderEpoch
    )
}

fn error_name(code: i16) -> &'static str {
    msg::Error(code).variant_name().unwrap_or("unknown")
}

/// `Err` for a per-partition or per-topic error code.
pub(crate) fn check(error: msg::Error, message: Option<&str>) -> Result<(), Error> {
    if error == msg::Error::None {
        return Ok(());
    }
    Err(Error::Broker {
        code: error.0,
        message: message.unwrap_or_default().to_owned(),
    })
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port` of one or more brokers' native listeners, comma-separated.
    pub bootstrap: String,
    pub client_id: String,
    /// How long any one request may wait for its answer (long polls add their wait).
    pub request_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            bootstrap: "127.0.0.1:9094".into(),
            client_id: "tern-client".into(),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// A partition as the metadata describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionInfo {
    pub leader: i32,
    pub leader_epoch: i32,
}

/// Where a partition's offset query points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    Earliest,
    Latest,
    /// The first offset whose timestamp is at least this (ms since the epoch).
    Timestamp(i64),
}

#[derive(Default)]
struct Cluster {
    brokers: HashMap<i32, String>,
    topics: HashMap<String, Vec<PartitionInfo>>,
}

struct Inner {
    config: ClientConfig,
    connections: tokio::sync::Mutex<HashMap<String, Arc<Connection>>>,
    cluster: Mutex<Cluster>,
}

/// A handle on a Tern cluster; cheap to clone, shared by producers and consumers.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("bootstrap", &self.inner.config.bootstrap)
            .finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Client {
    /// Connects to `bootstrap` (the native listener, e.g. 127.0.0.1:9094) with defaults.
    pub async fn connect(bootstrap: &str) -> Result<Client, Error> {
        Client::with_config(ClientConfig {
            bootstrap: bootstrap.to_owned(),
            ..ClientConfig::default()
        })
        .await
    }

    pub async fn with_config(config: ClientConfig) -> Result<Client, Error> {
        let client = Client {
            inner: Arc::new(Inner {
                config,
                connections: Default::default(),
                cluster: Default::default(),
            }),
        };
        client.refresh_metadata(Some(&[])).await?;
        Ok(client)
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The connection to `addr`, opened (and greeted) if there is none alive.
    pub async fn connection(&self, addr: &str) -> Result<Arc<Connection>, Error> {
        let mut connections = self.inner.connections.lock().await;
        if let Some(connection) = connections.get(addr) {
            if !connection.is_closed() {
                return Ok(connection.clone());
            }
        }
        let config = &self.inner.config;
        let connection =
            Arc::new(Connection::open(addr, &config.client_id, config.request_timeout).await?);
        connections.insert(addr.to_owned(), connection.clone());
        Ok(connection)
    }

    /// Drops every connection at once, as a network failure would: requests in flight lose
    /// their answers and are retried (the producer's idempotence makes that safe).
    pub async fn drop_connections(&self) {
        for connection in self.inner.connections.lock().await.values() {
            connection.abort();
        }
    }

    /// A connection to any broker: a known one, else a bootstrap address.
    async fn any_connection(&self) -> Result<Arc<Connection>, Error> {
        let known: Vec<String> = lock(&self.inner.cluster)
            .brokers
            .values()
            .cloned()
            .collect();
        let bootstrap = self.inner.config.bootstrap.clone();
        let mut last = Error::Usage("no bootstrap address".into());
        for addr in known
            .iter()
            .map(String::as_str)
            .chain(bootstrap.split(',').map(str::trim))
            .filter(|a| !a.is_empty())
        {
            match self.connection(addr).await {
                Ok(connection) => return Ok(connection),
                Err(error) => last = error,
            }
        }
        Err(last)
    }

    /// The connection to broker `id`, by the address the metadata gives.
    pub async fn broker(&self, id: i32) -> Result<Arc<Connection>, Error> {
        let addr = lock(&self.inner.cluster).brokers.get(&id).cloned();
        match addr {
            Some(addr) => self.connection(&addr).await,
            None => Err(Error::Broker {
                code: msg::Error::LeaderNotAvailable.0,
                message: format!("broker {id} is not in the metadata"),
            }),
        }
    }

    /// Asks for the brokers and the named topics (`None`: every topic) and remembers them.
    pub async fn refresh_metadata(
        &self,
        topics: Option<&[&str]>,
    ) -> Result<HashMap<String, Vec<PartitionInfo>>, Error> {
        let connection = self.any_connection().await?;
        let names: Option<Vec<String>> = topics.map(|t| t.iter().map(|s| s.to_string()).collect());
        let response = connection
            .call(msg::Request::Metadata, Vec::new(), move |b| {
                let topics = names.as_ref().map(|names| {
                    let names: Vec<_> = names.iter().map(|n| b.create_string(n)).collect();
                    b.create_vector(&names)
                });
                msg::Metadata::create(b, &msg::MetadataArgs { topics }).as_union_value()
            })
            .await?;
        let frame = response.message()?;
        let body = frame
            .body_as_metadata_response()
            .ok_or_else(|| Error::Protocol("Metadata answered with another type".into()))?;
        let mut found = HashMap::new();
        let mut cluster = lock(&self.inner.cluster);
        for broker in body.brokers().iter().flatten() {
            cluster.brokers.insert(
                broker.id(),
                format!("{}:{}", broker.host().unwrap_or_default(), broker.port()),
            );
        }
        for topic in body.topics().iter().flatten() {
            let Some(name) = topic.name() else { continue };
            if topic.error() != msg::Error::None {
                cluster.topics.remove(name);
                continue;
            }
            let mut partitions: Vec<(i32, PartitionInfo)> = topic
                .partitions()
                .iter()
                .flatten()
                .map(|p| {
                    (
                        p.partition(),
                        PartitionInfo {
                            leader: p.leader(),
                            leader_epoch: p.leader_epoch(),
                        },
                    )
                })
                .collect();
            partitions.sort_by_key(|(index, _)| *index);
            let partitions: Vec<PartitionInfo> = partitions.into_iter().map(|(_, p)| p).collect();
            cluster.topics.insert(name.to_owned(), partitions.clone());
            found.insert(name.to_owned(), partitions);
        }
        Ok(found)
    }

    /// The partitions of `topic` as last seen (asking the cluster if it was never seen).
    pub async fn partitions(&self, topic: &str) -> Result<Vec<PartitionInfo>, Error> {
        if let Some(known) = lock(&self.inner.cluster).topics.get(topic).cloned() {
            return Ok(known);
        }
        self.refresh_metadata(Some(&[topic]))
            .await?
            .remove(topic)
            .ok_or_else(|| Error::Broker {
                code: msg::Error::UnknownTopicOrPartition.0,
                message: format!("topic {topic} does not exist"),
            })
    }

    /// The leader of a partition as last seen.
    pub async fn leader(&self, topic: &str, partition: i32) -> Result<PartitionInfo, Error> {
        let partitions = self.partitions(topic).await?;
        partitions
            .get(usize::try_from(partition).unwrap_or(usize::MAX))
            .copied()
            .ok_or_else(|| Error::Broker {
                code: msg::Error::UnknownTopicOrPartition.0,
                message: format!("{topic} has no partition {partition}"),
            })
    }

    /// Forgets what is known of `topic`'s partitions (after NotLeaderOrFollower, say).
    pub fn invalidate(&self, topic: &str) {
        lock(&self.inner.cluster).topics.remove(topic);
    }

    /// Creates a topic (`partitions`/`replication_factor` -1: the broker's defaults).
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: &[(&str, &str)],
    ) -> Result<(), Error> {
        let connection = self.any_connection().await?;
        let name_owned = name.to_owned();
        let configs: Vec<(String, String)> = configs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let response = connection
            .call(msg::Request::CreateTopics, Vec::new(), move |b| {
                let entries: Vec<_> = configs
                    .iter()
                    .map(|(k, v)| {
                        let (name, value) = (b.create_string(k), b.create_string(v));
                        msg::Config::create(
                            b,
                            &msg::ConfigArgs {
                                name: Some(name),
                                value: Some(value),
                            },
                        )
                    })
                    .collect();
                let configs = b.create_vector(&entries);
                let name = b.create_string(&name_owned);
                let topic = msg::NewTopic::create(
                    b,
                    &msg::NewTopicArgs {
                        name: Some(name),
                        partitions,
                        replication_factor,
                        configs: Some(configs),
                    },
                );
                let topics = b.create_vector(&[topic]);
                msg::CreateTopics::create(
                    b,
                    &msg::CreateTopicsArgs {
                        topics: Some(topics),
                        timeout_ms: 30_000,
                        validate_only: false,
                    },
                )
                .as_union_value()
            })
            .await?;
        let frame = response.message()?;
        let body = frame
            .body_as_create_topics_response()
            .ok_or_else(|| Error::Protocol("CreateTopics answered with another type".into()))?;
        for result in body.topics().iter().flatten() {
            check(result.error(), result.message())?;
        }
        self.invalidate(name);
        Ok(())
    }

    pub async fn delete_topic(&self, name: &str) -> Result<(), Error> {
        let connection = self.any_connection().await?;
        let name_owned = name.to_owned();
        let response = connection
            .call(msg::Request::DeleteTopics, Vec::new(), move |b| {
                let name = b.create_string(&name_owned);
                let names = b.create_vector(&[name]);
                msg::DeleteTopics::create(
                    b,
                    &msg::DeleteTopicsArgs {
                        names: Some(names),
                        timeout_ms: 30_000,
                    },
                )
                .as_union_value()
            })
            .await?;
        let frame = response.message()?;
        let body = frame
            .body_as_delete_topics_response()
            .ok_or_else(|| Error::Protocol("DeleteTopics answered with another type".into()))?;
        for result in body.topics().iter().flatten() {
            check(result.error(), result.message())?;
        }
        self.invalidate(name);
        Ok(())
    }

    /// A topic's configuration: (key, value, set by the topic itself).
    pub async fn describe_topic(&self, name: &str) -> Result<Vec<(String, String, bool)>, Error> {
        let connection = self.any_connection().await?;
        let name_owned = name.to_owned();
        let response = connection
            .call(msg::Request::DescribeTopics, Vec::new(), move |b| {
                let name = b.create_string(&name_owned);
                let names = b.create_vector(&[name]);
                msg::DescribeTopics::create(b, &msg::DescribeTopicsArgs { names: Some(names) })
                    .as_union_value()
            })
            .await?;
        let frame = response.message()?;
        let body = frame
            .body_as_describe_topics_response()
            .ok_or_else(|| Error::Protocol("DescribeTopics answered with another type".into()))?;
        let topic = body
            .topics()
            .and_then(|t| t.iter().next())
            .ok_or_else(|| Error::Protocol("DescribeTopics answered no topic".into()))?;
        check(topic.error(), topic.message())?;
        Ok(topic
            .configs()
            .iter()
            .flatten()
            .map(|c| {
                (
                    c.name().unwrap_or_default().to_owned(),
                    c.value().unwrap_or_default().to_owned(),
                    c.explicit(),
                )
            })
            .collect())
    }

    /// A partition's offset: earliest, latest, or the first at or after a time (-1 when no
    /// record is that late).
    pub async fn list_offset(
        &self,
        topic: &str,
        partition: i32,
        spec: OffsetSpec,
    ) -> Result<i64, Error> {
        let timestamp = match spec {
            OffsetSpec::Earliest => -2,
            OffsetSpec::Latest => -1,
            OffsetSpec::Timestamp(t) => t,
        };
        let mut attempt = 0;
        loop {
            let leader = self.leader(topic, partition).await?;
            let connection = self.broker(leader.leader).await?;
            let topic_owned = topic.to_owned();
            let response = connection
                .call(msg::Request::ListOffsets, Vec::new(), move |b| {
                    let topic = b.create_string(&topic_owned);
                    let query = msg::OffsetQuery::create(
                        b,
                        &msg::OffsetQueryArgs {
                            topic: Some(topic),
                            partition,
                            timestamp,
                        },
                    );
                    let partitions = b.create_vector(&[query]);
                    msg::ListOffsets::create(
                        b,
                        &msg::ListOffsetsArgs {
                            isolation: msg::Isolation::ReadUncommitted,
                            partitions: Some(partitions),
                        },
                    )
                    .as_union_value()
                })
                .await?;
            let frame = response.message()?;
            let body = frame
                .body_as_list_offsets_response()
                .ok_or_else(|| Error::Protocol("ListOffsets answered with another type".into()))?;
            let answer = body
                .partitions()
                .and_then(|p| p.iter().next())
                .ok_or_else(|| Error::Protocol("ListOffsets answered no partition".into()))?;
            match check(answer.error(), None) {
                Ok(()) => return Ok(answer.offset()),
                Err(error) if error.retriable() && attempt < 5 => {
                    attempt += 1;
                    self.invalidate(topic);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The broker coordinating `group`'s offsets.
    pub async fn coordinator(&self, group: &str) -> Result<Arc<Connection>, Error> {
        let connection = self.any_connection().await?;
        let group_owned = group.to_owned();
        let response = connection
            .call(msg::Request::FindCoordinator, Vec::new(), move |b| {
                let group = b.create_string(&group_owned);
                msg::FindCoordinator::create(b, &msg::FindCoordinatorArgs { group: Some(group) })
                    .as_union_value()
            })
            .await?;
        let frame = response.message()?;
        let body = frame
            .body_as_find_coordinator_response()
            .ok_or_else(|| Error::Protocol("FindCoordinator answered with another type".into()))?;
        check(body.error(), body.message())?;
        let coordinator = body
            .coordinator()
            .ok_or_else(|| Error::Protocol("FindCoordinator named no broker".into()))?;
        let addr = format!(
            "{}:{}",
            coordinator.host().unwrap_or_default(),
            coordinator.port()
        );
        self.connection(&addr).await
    }

    /// Stores `offsets` (topic, partition, next offset to read) under `group`.
    pub async fn commit_offsets(
        &self,
        group: &str,
        offsets: &[(String, i32, i64)],
    ) -> Result<(), Error> {
        let mut attempt = 0;
        loop {
            match self.try_commit(group, offsets).await {
                Err(error) if error.retriable() && attempt < 5 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
                other => return other,
            }
        }
    }

    async fn try_commit(&self, group: &str, offsets: &[(String, i32, i64)]) -> Result<(), Error> {
        let connection = self.coordinator(group).await?;
        let group_owned = group.to_owned();
        let entries = offsets.to_vec();
        let response = connection
            .call(msg::Request::CommitOffsets, Vec::new(), move |b| {
                let entries: Vec<_> = entries
                    .iter()
                    .map(|(topic, partition, offset)| {
                        let topic = b.create_shared_string(topic);
                        msg::CommittedOffset::create(
                            b,
                            &msg::CommittedOffsetArgs {
                                topic: Some(topic),
                                partition: *partition,
                                offset: *offset,
                                metadata: None,
                            },
                        )
                    })
                    .collect();
                let offsets = b.create_vector(&entries);
                let group = b.create_string(&group_owned);
                msg::CommitOffsets::create(
                    b,
                    &msg::CommitOffsetsArgs {
                        group: Some(group),
                        offsets: Some(offsets),
                    },
                )
                .as_union_value()
            })
            .await?;
        let frame = response.message()?;
        let body = frame
            .body_as_commit_offsets_response()
            .ok_or_else(|| Error::Protocol("CommitOffsets answered with another type".into()))?;
        for partition in body.partitions().iter().flatten() {
            check(partition.error(), None)?;
        }
        Ok(())
    }

    /// The offsets `group` committed for the partitions (`None`: never committed).
    pub async fn committed_offsets(
        &self,
        group: &str,
        partitions: &[(String, i32)],
    ) -> Result<Vec<Option<i64>>, Error> {
        let connection = self.coordinator(group).await?;
        let group_owned = group.to_owned();
        let wanted = partitions.to_vec();
        let response = connection
            .call(msg::Request::FetchOffsets, Vec::new(), move |b| {
                let entries: Vec<_> = wanted
                    .iter()
                    .map(|(topic, partition)| {
                        let topic = b.create_shared_string(topic);
                        msg::GroupPartition::create(
                            b,
                            &msg::GroupPartitionArgs {
                                topic: Some(topic),
                                partition: *partition,
                            },
                        )
                    })
                    .collect();
                let partitions = b.create_vector(&entries);
                let group = b.create_string(&group_owned);
                msg::FetchOffsets::create(
                    b,
                    &msg::FetchOffsetsArgs {
                        group: Some(group),
                        partitions: Some(partitions),
                    },
                )
                .as_union_value()
            })
            .await?;
        let frame = response.message()?;
        let body = frame
            .body_as_fetch_offsets_response()
            .ok_or_else(|| Error::Protocol("FetchOffsets answered with another type".into()))?;
        check(body.error(), None)?;
        let mut found: HashMap<(String, i32), i64> = HashMap::new();
        for offset in body.offsets().iter().flatten() {
            check(offset.error(), None)?;
            found.insert(
                (
                    offset.topic().unwrap_or_default().to_owned(),
                    offset.partition(),
                ),
                offset.offset(),
            );
        }
        Ok(partitions
            .iter()
            .map(|key| found.get(key).copied().filter(|offset| *offset >= 0))
            .collect())
    }

    /// A new producer id and epoch (idempotent producing). Retriable failures (the
    /// controller busy or being elected, say) are tried again for up to `request_timeout`.
    pub async fn init_producer_id(&self) -> Result<(i64, i16), Error> {
        let deadline = tokio::time::Instant::now() + self.config().request_timeout;
        loop {
            match self.init_producer_id_once().await {
                Err(error) if error.retriable() && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                result => return result,
            }
        }
    }

    async fn init_producer_id_once(&self) -> Result<(i64, i16), Error> {
        let connection = self.any_connection().await?;
        let response = connection
            .call(msg::Request::InitProducerId, Vec::new(), |b| {
                msg::InitProducerId::create(b, &msg::InitProducerIdArgs {}).as_union_value()
            })
            .await?;
        let frame = response.message()?;
        let body = frame
            .body_as_init_producer_id_response()
            .ok_or_else(|| Error::Protocol("InitProducerId answered with another type".into()))?;
        check(body.error(), None)?;
        Ok((body.producer_id(), body.producer_epoch()))
    }

    /// An idempotent producer.
    pub async fn producer(&self, config: ProducerConfig) -> Result<Producer, Error> {
        Producer::start(self.clone(), config, None).await
    }

    /// A producer whose records sent with `Producer::send_tagged` are reported to `listener`.
    pub async fn producer_with_listener(
        &self,
        config: ProducerConfig,
        listener: Arc<dyn DeliveryListener>,
    ) -> Result<Producer, Error> {
        Producer::start(self.clone(), config, Some(listener)).await
    }

    pub fn consumer(&self, config: ConsumerConfig) -> Consumer {
        Consumer::new(self.clone(), config)
    }
}
