//! The consumer: assigned partitions read from their leaders, one long poll in flight per
//! leader. When a poll returns, the next one for that leader goes out at once, before the
//! records reach the application, so the broker is already waiting (or reading) while the
//! application works. Positions are the next offset to read; `commit` stores them under the
//! group.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tern_protocol::native::msg;

use super::records::{decode, Consumed};
use super::{retriable_code, Client, Error, OffsetSpec, Response};

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// The group `commit` stores positions under, and `StartAt::Committed` reads.
    pub group: Option<String>,
    /// How long the broker holds a poll for `min_bytes` to arrive.
    pub max_wait: Duration,
    pub min_bytes: i32,
    pub max_bytes: i32,
    pub partition_max_bytes: i32,
    /// Read only committed transactions' records.
    pub read_committed: bool,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            group: None,
            max_wait: Duration::from_millis(500),
            min_bytes: 1,
            max_bytes: 50 * 1024 * 1024,
            partition_max_bytes: 1024 * 1024,
            read_committed: false,
        }
    }
}

/// Where reading a partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Earliest,
    Latest,
    Offset(i64),
    /// The group's committed offset, or the earliest when there is none.
    Committed,
}

type Key = (String, i32);

struct Assigned {
    start: StartAt,
    /// The next offset to read; `None` until resolved.
    position: Option<i64>,
}

/// A poll in flight: its leader, what it asked (partition and offset), and its answer.
type Poll = Pin<Box<dyn Future<Output = (i32, Vec<(Key, i64)>, Result<Response, Error>)> + Send>>;

pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    assigned: BTreeMap<Key, Assigned>,
    polling: FuturesUnordered<Poll>,
    /// Leaders with a poll in flight.
    busy: HashSet<i32>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("assigned", &self.assigned.len())
            .finish()
    }
}

impl Consumer {
    pub(super) fn new(client: Client, config: ConsumerConfig) -> Consumer {
        Consumer {
            client,
            config,
            assigned: BTreeMap::new(),
            polling: FuturesUnordered::new(),
            busy: HashSet::new(),
        }
    }

    /// Reads `partition` of `topic` from `start` (again from `start` if already assigned).
    pub fn assign(&mut self, topic: &str, partition: i32, start: StartAt) {
        let position = match start {
            StartAt::Offset(offset) => Some(offset),
            _ => None,
        };
        self.assigned
            .insert((topic.to_owned(), partition), Assigned { start, position });
    }

    pub fn unassign(&mut self, topic: &str, partition: i32) {
        self.assigned.remove(&(topic.to_owned(), partition));
    }

    /// The next offset `poll` will return for the partition.
    pub fn position(&self, topic: &str, partition: i32) -> Option<i64> {
        self.assigned
            .get(&(topic.to_owned(), partition))
            .and_then(|a| a.position)
    }

    /// Waits for records from any assigned partition and returns them (empty when none
    /// came within the poll's wait).
    pub async fn poll(&mut self) -> Result<Vec<Consumed>, Error> {
        self.resolve().await?;
        self.start_polls().await;
        if self.polling.is_empty() {
            // No leader reachable now: wait a moment rather than spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            return Ok(Vec::new());
        }
        let Some((leader, asked, result)) = self.polling.next().await else {
            return Ok(Vec::new());
        };
        self.busy.remove(&leader);
        let records = self.absorb(asked, result);
        // The next poll for this leader goes out before the application sees these.
        self.start_polls().await;
        records
    }

    /// Stores every assigned partition's position under the group.
    pub async fn commit(&self) -> Result<(), Error> {
        let group = self
            .config
            .group
            .as_deref()
            .ok_or_else(|| Error::Usage("commit needs a consumer group".into()))?;
        let offsets: Vec<(String, i32, i64)> = self
            .assigned
            .iter()
            .filter_map(|((topic, partition), a)| Some((topic.clone(), *partition, a.position?)))
            .collect();
        if offsets.is_empty() {
            return Ok(());
        }
        self.client.commit_offsets(group, &offsets).await
    }

    /// Turns each unresolved start into an offset.
    async fn resolve(&mut self) -> Result<(), Error> {
        let pending: Vec<(Key, StartAt)> = self
            .assigned
            .iter()
            .filter(|(_, a)| a.position.is_none())
            .map(|(key, a)| (key.clone(), a.start))
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        let committed: HashMap<Key, i64> = match &self.config.group {
            Some(group) if pending.iter().any(|(_, s)| *s == StartAt::Committed) => {
                let keys: Vec<Key> = pending.iter().map(|(k, _)| k.clone()).collect();
                let offsets = self.client.committed_offsets(group, &keys).await?;
                keys.into_iter()
                    .zip(offsets)
                    .filter_map(|(key, offset)| Some((key, offset?)))
                    .collect()
            }
            _ => HashMap::new(),
        };
        for (key, start) in pending {
            let offset = match (start, committed.get(&key)) {
                (StartAt::Committed, Some(offset)) => *offset,
                (StartAt::Latest, _) => {
                    self.client
                        .list_offset(&key.0, key.1, OffsetSpec::Latest)
                        .await?
                }
                (StartAt::Offset(offset), _) => offset,
                (StartAt::Earliest | StartAt::Committed, _) => {
                    self.client
                        .list_offset(&key.0, key.1, OffsetSpec::Earliest)
                        .await?
                }
            };
            if let Some(assigned) = self.assigned.get_mut(&key) {
                assigned.position = Some(offset);
            }
        }
        Ok(())
    }

    /// Sends a poll to every leader of assigned partitions that has none in flight.
    async fn start_polls(&mut self) {
        let mut by_leader: BTreeMap<i32, Vec<(Key, i64, i32)>> = BTreeMap::new();
        for (key, assigned) in &self.assigned {
            let Some(position) = assigned.position else {
                continue;
            };
            let Ok(info) = self.client.leader(&key.0, key.1).await else {
                continue;
            };
            if info.leader < 0 || self.busy.contains(&info.leader) {
                continue;
            }
            by_leader.entry(info.leader).or_default().push((
                key.clone(),
                position,
                info.leader_epoch,
            ));
        }
        for (leader, partitions) in by_leader {
            let Ok(connection) = self.client.broker(leader).await else {
                continue;
            };
            let config = self.config.clone();
            let shape = partitions.clone();
            let queued = connection.send(msg::Request::Fetch, Vec::new(), move |b| {
                let entries: Vec<_> = shape
                    .iter()
                    .map(|((topic, partition), offset, epoch)| {
                        let topic = b.create_shared_string(topic);
                        msg::FetchPartition::create(
                            b,
                            &msg::FetchPartitionArgs {
                                topic: Some(topic),
                                partition: *partition,
                                offset: *offset,
                                max_bytes: config.partition_max_bytes,
                                leader_epoch: *epoch,
                            },
                        )
                    })
                    .collect();
                let partitions = b.create_vector(&entries);
                msg::Fetch::create(
                    b,
                    &msg::FetchArgs {
                        max_wait_ms: config.max_wait.as_millis() as i32,
                        min_bytes: config.min_bytes,
                        max_bytes: config.max_bytes,
                        isolation: if config.read_committed {
                            msg::Isolation::ReadCommitted
                        } else {
                            msg::Isolation::ReadUncommitted
                        },
                        partitions: Some(partitions),
                    },
                )
                .as_union_value()
            });
            let Ok(answer) = queued else {
                continue;
            };
            let asked: Vec<(Key, i64)> = partitions
                .into_iter()
                .map(|(key, offset, _)| (key, offset))
                .collect();
            let wait = self.config.max_wait + self.client.config().request_timeout;
            self.busy.insert(leader);
            self.polling.push(Box::pin(async move {
                let result = match tokio::time::timeout(wait, answer).await {
                    Ok(Ok(result)) => result,
                    Ok(Err(_)) => Err(Error::Disconnected(format!("broker {leader}"))),
                    Err(_) => Err(Error::Timeout(format!(
                        "no Fetch answer from broker {leader}"
                    ))),
                };
                (leader, asked, result)
            }));
        }
    }

    /// Takes a poll's answer: records past each position, positions moved on.
    fn absorb(
        &mut self,
        asked: Vec<(Key, i64)>,
        result: Result<Response, Error>,
    ) -> Result<Vec<Consumed>, Error> {
        let response = match result {
            Ok(response) => response,
            Err(error) if error.retriable() => {
                for ((topic, _), _) in &asked {
                    self.client.invalidate(topic);
                }
                return Ok(Vec::new());
            }
            Err(error) => return Err(error),
        };
        let frame = response.message()?;
        let body = frame
            .body_as_fetch_response()
            .ok_or_else(|| Error::Protocol("Fetch answered with another type".into()))?;
        let partitions = body
            .partitions()
            .ok_or_else(|| Error::Protocol("Fetch answered no partitions".into()))?;
        if partitions.len() != asked.len() {
            return Err(Error::Protocol(format!(
                "Fetch answered {} partitions for {}",
                partitions.len(),
                asked.len()
            )));
        }
        let payload = response.payload();
        let mut at = 0usize;
        let mut out = Vec::new();
        for ((key, fetched_at), answer) in asked.into_iter().zip(partitions.iter()) {
            let length = answer.records_bytes() as usize;
            let end = at
                .checked_add(length)
                .filter(|end| *end <= payload.len())
                .ok_or_else(|| Error::Protocol("Fetch records run past the frame".into()))?;
            let records = payload.slice(at..end);
            at = end;
            let Some(assigned) = self.assigned.get_mut(&key) else {
                continue;
            };
            // Seeked (or reassigned) since this poll was sent: its answer is stale.
            if assigned.position != Some(fetched_at) {
                continue;
            }
            let error = answer.error();
            if error == msg::Error::OffsetOutOfRange {
                // Start again where the assignment said (the earliest for an offset).
                assigned.position = None;
                if matches!(assigned.start, StartAt::Offset(_)) {
                    assigned.start = StartAt::Earliest;
                }
                continue;
            }
            if error != msg::Error::None {
                if retriable_code(error.0) {
                    self.client.invalidate(&key.0);
                    continue;
                }
                return Err(Error::Broker {
                    code: error.0,
                    message: format!("fetch {}-{}", key.0, key.1),
                });
            }
            let aborted: Vec<(i64, i64)> = answer
                .aborted()
                .iter()
                .flatten()
                .map(|a| (a.producer_id(), a.first_offset()))
                .collect();
            let decoded =
                decode(&key.0, key.1, &records, fetched_at, &aborted).map_err(Error::Protocol)?;
            if let Some(next) = decoded.next_offset {
                assigned.position = Some(next.max(fetched_at));
            }
            out.extend(decoded.records);
        }
        Ok(out)
    }
}
