//! The shard glue of the group coordinator: owns this shard's `Groups`, turns their effects
//! into I/O (appends to `__consumer_offsets`, then the delayed JoinGroup/SyncGroup answers),
//! drives their deadlines with a periodic tick, and rebuilds them from the log.
//!
//! Architecture invariant: a group lives on exactly one shard, the owner of the
//! `__consumer_offsets` partition its id hashes to; every group call runs there (the
//! handlers reach it with `Shard::invoke_on`). State is in `RefCell`s that are never borrowed
//! across an `.await`. An answer that depends on a write is delivered only after the write is
//! durable, so a committed offset acknowledged to a client survives a restart.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use tern_protocol::error_code::{self, ErrorCode};
use tern_protocol::types::{Offset, TimestampMs};

use tern_replication::metadata::MetadataImage;

use super::codec::{self, Loaded, OFFSETS_TOPIC};
use super::consumer::{Catalog, HeartbeatInput, HeartbeatOutput, Refusal, TopicId};
use super::registry::RouteError;
use super::state::{
    Effects, Group, Groups, JoinInput, JoinResult, OffsetToCommit, Persist, Reply, SyncInput,
    SyncResult,
};
use crate::limits;
use crate::partition::TopicPartition;
use crate::shard::Shard;

/// The coordinator's own writes wait for every in-sync replica, as Kafka's do.
const ACKS_ALL: i16 = -1;

/// The `__consumer_offsets` partition of `group_id` and the shard of this broker that owns
/// it. A group whose partition this broker does not lead is not coordinated here.
pub fn route(shard: &Shard, group_id: &str) -> Result<(i32, usize), RouteError> {
    let image = shard.image();
    let topic = image
        .topic(OFFSETS_TOPIC)
        .ok_or(RouteError::NoOffsetsTopic)?;
    let partition = codec::partition_for_group(group_id, topic.partitions.len() as i32);
    let leads = topic
        .partitions
        .get(partition as usize)
        .is_some_and(|p| p.leader == shard.node_id());
    if !leads {
        return Err(RouteError::NotOwner);
    }
    let owner = shard
        .owner_of(OFFSETS_TOPIC, partition)
        .ok_or(RouteError::NotOwner)?;
    Ok((partition, owner))
}

/// On the owner shard: makes sure the group's partition is loaded. The first caller loads it;
/// callers arriving meanwhile get COORDINATOR_LOAD_IN_PROGRESS and retry, as with Kafka.
pub async fn ready(shard: &Rc<Shard>, group_id: &str) -> Result<(), RouteError> {
    let (partition, owner) = route(shard, group_id)?;
    if owner != shard.id {
        return Err(RouteError::NotOwner);
    }
    if shard.groups.loaded.borrow().contains(&partition) {
        return Ok(());
    }
    if shard.groups.loading.borrow().contains(&partition) {
        return Err(RouteError::Loading);
    }
    load_partition(shard, partition).await;
    Ok(())
}

/// Replays one `__consumer_offsets` partition from its start into this shard's groups.
async fn load_partition(shard: &Rc<Shard>, partition: i32) {
    if !shard.groups.loading.borrow_mut().insert(partition) {
        return;
    }
    let started = std::time::Instant::now();
    let tp = TopicPartition::new(OFFSETS_TOPIC, partition);
    let mut records = 0u64;
    if let Some(log) = shard.partition(&tp) {
        // Everything the log holds: on a new leader, records its predecessor acknowledged may
        // sit above its high watermark until the followers report (Kafka loads to the log end
        // too).
        let mut next = log.log.log_start_offset();
        let end = log.log.acknowledged_end_offset();
        while next < end {
            let slice = match log.log.read(next, limits::GROUP_LOAD_READ_BYTES, end).await {
                Ok(slice) => slice,
                Err(error) => {
                    tracing::error!(partition, %error, "cannot read __consumer_offsets; groups on it start empty");
                    break;
                }
            };
            if slice.next_offset <= next {
                break;
            }
            let now = shard.now_ms();
            let delay = shard
                .groups
                .groups
                .borrow()
                .config
                .initial_rebalance_delay_ms;
            for chunk in &slice.chunks {
                let mut groups = shard.groups.groups.borrow_mut();
                let walked = codec::for_each_record(chunk, |walked| {
                    let (producer, key, value) = match walked {
                        codec::Walked::Marker {
                            producer_id,
                            commit,
                        } => {
                            groups.complete_txn(producer_id, commit, |_| true, now);
                            return;
                        }
                        codec::Walked::Record {
                            producer,
                            key,
                            value,
                        } => (producer, key, value),
                    };
                    records += 1;
                    if let Some(producer_id) = producer {
                        // An offset committed inside a transaction: staged until its marker.
                        match codec::decode_record(key, value) {
                            Ok(Loaded::Offset {
                                group,
                                topic,
                                partition,
                                value: Some(offset),
                            }) => {
                                groups.stage_txn_offsets(
                                    producer_id,
                                    &group,
                                    vec![OffsetToCommit {
                                        topic,
                                        partition,
                                        offset,
                                    }],
                                );
                            }
                            Ok(_) => {}
                            Err(error) => {
                                tracing::warn!(partition, %error, "skipping undecodable __consumer_offsets record")
                            }
                        }
                        return;
                    }
                    match codec::decode_record(key, value) {
                        Ok(Loaded::Offset {
                            group,
                            topic,
                            partition,
                            value,
                        }) => groups.load_offset(&group, topic, partition, value, now),
                        Ok(Loaded::Group { group, value }) => {
                            let restored = value.map(|record| {
                                Group::restore(
                                    group.clone(),
                                    record.generation,
                                    record.protocol_type,
                                    record.protocol,
                                    record.leader,
                                    record.state_since_ms,
                                    record.members,
                                    now,
                                    delay,
                                )
                            });
                            groups.load_group(&group, restored);
                        }
                        Ok(Loaded::Consumer(record)) => groups.consumer.replay(record),
                        Err(error) => {
                            tracing::warn!(partition, %error, "skipping undecodable __consumer_offsets record")
                        }
                    }
                });
                if let Err(error) = walked {
                    tracing::warn!(partition, %error, "stopping replay of a damaged __consumer_offsets chunk");
                }
            }
            next = slice.next_offset;
        }
    }
    shard.groups.groups.borrow_mut().finish_load(shard.now_ms());
    shard.groups.loading.borrow_mut().remove(&partition);
    shard.groups.loaded.borrow_mut().insert(partition);
    tracing::info!(
        shard = shard.id,
        partition,
        records,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "group partition loaded"
    );
}

/// Starts this shard's coordinator: loads every `__consumer_offsets` partition it owns and
/// leads, then ticks deadlines until the shard shuts down. (Partitions whose leadership comes
/// later are loaded by the first request for one of their groups.)
pub fn start(shard: Rc<Shard>) -> glommio::Task<()> {
    glommio::spawn_local(async move {
        let owned: Vec<i32> = shard
            .image()
            .topic(OFFSETS_TOPIC)
            .map(|t| {
                t.partitions
                    .iter()
                    .filter(|p| shard.owner_of(OFFSETS_TOPIC, p.index) == Some(shard.id))
                    .filter(|p| p.leader == shard.node_id())
                    .map(|p| p.index)
                    .collect()
            })
            .unwrap_or_default();
        for partition in owned {
            load_partition(&shard, partition).await;
        }
        let mut last_expiry_ms = shard.now_ms();
        loop {
            glommio::timer::sleep(Duration::from_millis(limits::GROUP_TICK_INTERVAL_MS)).await;
            if shard.shutting_down.get() {
                break;
            }
            let now = shard.now_ms();
            let mut out = Effects::default();
            shard.groups.groups.borrow_mut().tick(now, &mut out);
            if now - last_expiry_ms >= limits::OFFSET_EXPIRY_CHECK_INTERVAL_MS {
                last_expiry_ms = now;
                shard
                    .groups
                    .groups
                    .borrow_mut()
                    .expire_offsets(now, &mut out);
            }
            if !out.persist.is_empty() || !out.replies.is_empty() {
                let shard = shard.clone();
                glommio::spawn_local(async move {
                    let _ = apply(&shard, out).await;
                })
                .detach();
            }
        }
    })
}

/// Performs `effects`: appends what must be persisted, then answers the waiting requests.
/// Returns the error of an append that failed (logged; the waiting requests are answered
/// regardless, as their answers were decided before the write).
async fn apply(shard: &Rc<Shard>, effects: Effects) -> Result<(), ErrorCode> {
    let now = shard.now_ms();
    // Build every record now (a snapshot of the state these effects describe), grouped by
    // partition, before the first await lets other requests change the groups.
    let mut by_partition: BTreeMap<i32, Vec<(Bytes, Option<Bytes>)>> = BTreeMap::new();
    {
        let groups = shard.groups.groups.borrow();
        for persist in &effects.persist {
            let (group_id, records): (&str, Vec<(Bytes, Option<Bytes>)>) = match persist {
                Persist::Group(id) => match groups.get(id) {
                    Some(group) => (
                        id,
                        vec![(codec::group_key(id), Some(codec::group_value(group)))],
                    ),
                    None => (id, vec![(codec::group_key(id), None)]),
                },
                Persist::GroupTombstone(id) => (id, vec![(codec::group_key(id), None)]),
                Persist::OffsetTombstones(id, offsets) => (
                    id,
                    offsets
                        .iter()
                        .map(|(topic, partition)| (codec::offset_key(id, topic, *partition), None))
                        .collect(),
                ),
                Persist::Consumer(record) => (record.group(), vec![codec::consumer_record(record)]),
            };
            if let Ok((partition, _)) = route(shard, group_id) {
                by_partition.entry(partition).or_default().extend(records);
            }
        }
    }
    let mut persisted = Ok(());
    for (partition, records) in by_partition {
        if let Err(code) = append(shard, partition, records, now).await {
            tracing::error!(partition, code, "cannot persist group metadata");
            persisted = Err(code);
        }
    }
    for (group, elapsed_ms) in &effects.rebalances_completed {
        tracing::info!(%group, rebalance_ms = elapsed_ms, "group rebalance completed");
    }
    let mut waiters = shard.groups.waiters.borrow_mut();
    for (token, reply) in effects.replies {
        if let Some(waiter) = waiters.remove(&token) {
            let _ = waiter.send(reply);
        }
    }
    persisted
}

async fn append(
    shard: &Rc<Shard>,
    partition: i32,
    records: Vec<(Bytes, Option<Bytes>)>,
    now: i64,
) -> Result<Offset, ErrorCode> {
    if records.is_empty() {
        return Ok(Offset::NONE);
    }
    let tp = TopicPartition::new(OFFSETS_TOPIC, partition);
    let log = shard.partition(&tp).ok_or(error_code::NOT_COORDINATOR)?;
    let batch = codec::build_batch(records, now);
    let appended = log
        .append(
            batch,
            ACKS_ALL,
            TimestampMs(now),
            std::time::Instant::now() + crate::limits::OFFSETS_COMMIT_TIMEOUT,
        )
        .await
        .map_err(|failure| {
            tracing::error!(partition, code = failure.code, message = ?failure.message, "append to __consumer_offsets failed");
            failure.code
        })?;
    Ok(appended.base_offset)
}

pub async fn join(shard: &Rc<Shard>, group_id: &str, input: JoinInput) -> JoinResult {
    let member_id = input.member_id.clone();
    let (token, rx) = shard.groups.waiter();
    let mut out = Effects::default();
    shard
        .groups
        .groups
        .borrow_mut()
        .join(group_id, input, token, shard.now_ms(), &mut out);
    let _ = apply(shard, out).await;
    match rx.await {
        Ok(Reply::Join(result)) => result,
        _ => JoinResult {
            error: error_code::UNKNOWN_SERVER_ERROR,
            generation: -1,
            member_id,
            ..JoinResult::default()
        },
    }
}

pub async fn sync(shard: &Rc<Shard>, group_id: &str, input: SyncInput) -> SyncResult {
    let (token, rx) = shard.groups.waiter();
    let mut out = Effects::default();
    shard
        .groups
        .groups
        .borrow_mut()
        .sync(group_id, input, token, shard.now_ms(), &mut out);
    let _ = apply(shard, out).await;
    match rx.await {
        Ok(Reply::Sync(result)) => result,
        _ => SyncResult {
            error: error_code::UNKNOWN_SERVER_ERROR,
            ..SyncResult::default()
        },
    }
}

pub fn heartbeat(
    shard: &Rc<Shard>,
    group_id: &str,
    member_id: &str,
    instance_id: Option<&str>,
    generation: i32,
) -> ErrorCode {
    shard.groups.groups.borrow_mut().heartbeat(
        group_id,
        member_id,
        instance_id,
        generation,
        shard.now_ms(),
    )
}

pub async fn leave(
    shard: &Rc<Shard>,
    group_id: &str,
    members: Vec<(String, Option<String>)>,
) -> Vec<ErrorCode> {
    let mut out = Effects::default();
    let errors =
        shard
            .groups
            .groups
            .borrow_mut()
            .leave(group_id, &members, shard.now_ms(), &mut out);
    let _ = apply(shard, out).await;
    errors
}

/// Validates, persists and applies an OffsetCommit. Per-partition errors decided by the
/// caller (unknown topic, metadata too large) are left out of `offsets`.
pub async fn commit(
    shard: &Rc<Shard>,
    group_id: &str,
    member_id: &str,
    instance_id: Option<&str>,
    generation: i32,
    version: i16,
    offsets: Vec<OffsetToCommit>,
) -> Result<Vec<ErrorCode>, ErrorCode> {
    let now = shard.now_ms();
    let committed: Vec<(TopicId, i32)> = {
        let image = shard.image();
        offsets
            .iter()
            .filter_map(|o| Some((image.topic(&o.topic)?.id, o.partition)))
            .collect()
    };
    shard.groups.groups.borrow_mut().validate_commit(
        group_id,
        member_id,
        instance_id,
        generation,
        version,
        &committed,
        now,
    )?;
    if offsets.is_empty() {
        return Ok(Vec::new());
    }
    let (partition, _) = route(shard, group_id).map_err(RouteError::code)?;
    let records = offsets
        .iter()
        .map(|o| {
            (
                codec::offset_key(group_id, &o.topic, o.partition),
                Some(codec::offset_value(&o.offset)),
            )
        })
        .collect();
    append(shard, partition, records, now).await?;
    Ok(shard
        .groups
        .groups
        .borrow_mut()
        .apply_commit(group_id, offsets, now))
}

pub async fn delete_groups(shard: &Rc<Shard>, group_ids: Vec<String>) -> Vec<ErrorCode> {
    let mut out = Effects::default();
    let errors = group_ids
        .iter()
        .map(|id| shard.groups.groups.borrow_mut().delete(id, &mut out))
        .collect();
    let _ = apply(shard, out).await;
    errors
}

pub async fn delete_offsets(
    shard: &Rc<Shard>,
    group_id: &str,
    partitions: Vec<(String, i32)>,
) -> Result<Vec<ErrorCode>, ErrorCode> {
    let mut out = Effects::default();
    let result = shard
        .groups
        .groups
        .borrow_mut()
        .delete_offsets(group_id, &partitions, &mut out);
    let _ = apply(shard, out).await;
    result
}

pub fn groups_of(shard: &Rc<Shard>) -> std::cell::Ref<'_, Groups> {
    shard.groups.groups.borrow()
}

/// The metadata image as the consumer group state machine sees it.
pub struct ImageCatalog<'a>(pub &'a MetadataImage);

impl Catalog for ImageCatalog<'_> {
    fn lookup(&self, name: &str) -> Option<(TopicId, i32)> {
        self.0
            .topic(name)
            .map(|t| (t.id, t.partitions.len() as i32))
    }

    fn name_of(&self, id: &TopicId) -> Option<String> {
        self.0
            .topics
            .values()
            .find(|t| t.id == *id)
            .map(|t| t.name.clone())
    }

    fn for_each_public(&self, visit: &mut dyn FnMut(&str, TopicId, i32)) {
        for topic in self.0.topics.values().filter(|t| !t.internal) {
            visit(&topic.name, topic.id, topic.partitions.len() as i32);
        }
    }
}

/// One ConsumerGroupHeartbeat on the group's coordinator shard: decided by the state
/// machine, persisted, then answered (an answer never runs ahead of its records).
pub async fn consumer_heartbeat(
    shard: &Rc<Shard>,
    group_id: &str,
    input: HeartbeatInput,
) -> Result<HeartbeatOutput, Refusal> {
    let now = shard.now_ms();
    let image = shard.image();
    let mut records = Vec::new();
    let decided = {
        let mut groups = shard.groups.groups.borrow_mut();
        if groups.classic_in_use(group_id) {
            return Err(Refusal {
                code: error_code::GROUP_ID_NOT_FOUND,
                message: format!("Group {group_id} is not a consumer group."),
            });
        }
        groups
            .consumer
            .heartbeat(group_id, input, now, &ImageCatalog(&image), &mut records)
    };
    let effects = Effects {
        persist: records.into_iter().map(Persist::Consumer).collect(),
        ..Effects::default()
    };
    apply(shard, effects).await.map_err(|code| Refusal {
        code: if code == error_code::NOT_LEADER_OR_FOLLOWER {
            error_code::NOT_COORDINATOR
        } else {
            code
        },
        message: "the group's state could not be written to __consumer_offsets".to_owned(),
    })?;
    decided
}

/// On the owner shard of `__consumer_offsets` partition `partition`: a transaction marker for
/// `producer_id` was written there; the offsets that producer staged for groups of that
/// partition are committed or dropped.
pub fn complete_txn(shard: &Rc<Shard>, partition: i32, producer_id: i64, commit: bool) {
    let count = shard
        .image()
        .topic(OFFSETS_TOPIC)
        .map(|t| t.partitions.len() as i32)
        .unwrap_or(0);
    if count <= 0 {
        return;
    }
    let now = shard.now_ms();
    shard.groups.groups.borrow_mut().complete_txn(
        producer_id,
        commit,
        |group| codec::partition_for_group(group, count) == partition,
        now,
    );
}

/// TxnOffsetCommit on the group's coordinator shard: the offsets go to `__consumer_offsets`
/// as a transactional batch of `producer_id` (so the transaction's marker decides them) and
/// are staged until that marker.
pub async fn txn_commit(
    shard: &Rc<Shard>,
    group_id: &str,
    producer_id: i64,
    producer_epoch: i16,
    offsets: Vec<OffsetToCommit>,
) -> Result<(), ErrorCode> {
    if offsets.is_empty() {
        return Ok(());
    }
    let now = shard.now_ms();
    let (partition, _) = route(shard, group_id).map_err(RouteError::code)?;
    let tp = TopicPartition::new(OFFSETS_TOPIC, partition);
    let log = shard.partition(&tp).ok_or(error_code::NOT_COORDINATOR)?;
    let records = offsets
        .iter()
        .map(|o| {
            (
                codec::offset_key(group_id, &o.topic, o.partition),
                Some(codec::offset_value(&o.offset)),
            )
        })
        .collect();
    let batch = codec::build_batch_for(records, now, Some((producer_id, producer_epoch)));
    log.append_for_transaction(
        batch,
        TimestampMs(now),
        std::time::Instant::now() + crate::limits::OFFSETS_COMMIT_TIMEOUT,
    )
    .await
    .map_err(|failure| failure.code)?;
    shard
        .groups
        .groups
        .borrow_mut()
        .stage_txn_offsets(producer_id, group_id, offsets);
    Ok(())
}
