//! Fetch: read from each partition's owner shard, wait for `min_bytes` up to `max_wait_ms`
//! (long poll), and answer with record bytes referenced from the log, never copied.
//!
//! One hop per owner shard, however long the fetch waits: each owner runs
//! `partition::read_or_wait` (read, park, read again on wake) and answers once. When one owner
//! answers with enough data (or an error), the others are cancelled and answer at once with
//! what they hold, and their parked registrations are released. When the client goes away, the
//! dropped request cancels its owners the same way. With `min_bytes` above one spread over
//! several owners, each owner waits for `min_bytes` on its own partitions, so such a fetch may
//! wait until its deadline where Kafka would answer when the sum reached `min_bytes`.
//!
//! Fetch sessions (KIP-227) are kept per connection shard (`fetch_session.rs`): a full fetch
//! with epoch 0 opens one, incremental fetches name only changed partitions, and responses
//! carry only partitions with news.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures::future::{join_all, select_all};
use kafka_protocol::messages::FetchRequest;
use tern_protocol::error_code;
use tern_protocol::fetch::{prefix, whole_batches_within, FetchResponseWriter, PartitionHeader};
use tern_protocol::types::Offset;
use tern_storage::ReadMode;

use super::Ctx;
use crate::fetch_session::{Plan, SessionPartition};
use crate::limits;
use crate::outcome::Outcome;
use crate::partition::{self, ReadRequest, ReadResult, ReplicaFetch, TopicPartition, WaitEnd};
use crate::security::{acl, quota};
use crate::shard::Shard;

/// One partition a fetch reads, at its place (`slot`) in the response.
#[derive(Debug, Clone)]
pub struct Want {
    pub slot: usize,
    pub tp: TopicPartition,
    pub request: ReadRequest,
    /// The principal may not read it (TOPIC_AUTHORIZATION_FAILED; CLUSTER_AUTHORIZATION_FAILED
    /// for a follower without CLUSTER_ACTION).
    pub denied: Option<i16>,
}

pub async fn handle(ctx: &Ctx<'_>, request: FetchRequest) -> Outcome {
    let shard = ctx.shard;
    let requested: Vec<SessionPartition> = request
        .topics
        .iter()
        .flat_map(|topic| {
            topic.partitions.iter().map(move |p| SessionPartition {
                topic: topic.topic.0.to_string(),
                partition: p.partition,
                fetch_offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes.max(0) as usize,
                high_watermark: -1,
                log_start_offset: -1,
            })
        })
        .collect();
    let forgotten: Vec<(String, i32)> = request
        .forgotten_topics_data
        .iter()
        .flat_map(|topic| {
            topic
                .partitions
                .iter()
                .map(move |p| (topic.topic.0.to_string(), *p))
        })
        .collect();
    // A follower's fetch names its broker id; consumers send -1.
    let replica = (request.replica_id.0 >= 0).then(|| ReplicaFetch {
        id: request.replica_id.0,
        now_ms: shard.now_ms(),
    });
    // Sessions exist from Fetch v7; older clients always fetch in full, and so do followers
    // here (their fetcher names every partition it follows in each request).
    let plan = if ctx.version >= 7 && replica.is_none() {
        shard.fetch_sessions.borrow_mut().plan(
            request.session_id,
            request.session_epoch,
            &requested,
            &forgotten,
        )
    } else {
        Plan::Full { session_id: 0 }
    };
    let (session_id, partitions, incremental) = match plan {
        Plan::Full { session_id } => (session_id, requested, false),
        Plan::Incremental {
            session_id,
            partitions,
        } => (session_id, partitions, true),
        Plan::Error(code) => {
            let writer = FetchResponseWriter::new(ctx.version, ctx.correlation_id, code, 0, 0);
            return Outcome::Respond(writer.finish());
        }
    };
    let epochs: HashMap<(&str, i32), i32> = request
        .topics
        .iter()
        .flat_map(|topic| {
            topic.partitions.iter().map(move |p| {
                (
                    (topic.topic.0.as_str(), p.partition),
                    p.current_leader_epoch,
                )
            })
        })
        .collect();
    let max_bytes = if request.max_bytes <= 0 {
        usize::MAX
    } else {
        request.max_bytes as usize
    };
    // Consumers need READ on each topic; followers CLUSTER_ACTION on the cluster.
    let follower_denied =
        replica.is_some() && !ctx.allowed_on_cluster(acl::operation::CLUSTER_ACTION);
    // The topics a consumer may not read, looked up once each (nothing is built with the
    // authorizer off).
    let mut unreadable: HashMap<&str, bool> = HashMap::new();
    if shard.config.authorization && replica.is_none() {
        for p in &partitions {
            unreadable.entry(p.topic.as_str()).or_insert_with(|| {
                !ctx.allowed(acl::operation::READ, acl::resource::TOPIC, &p.topic)
            });
        }
    }
    let wants: Vec<Want> = partitions
        .iter()
        .enumerate()
        .map(|(slot, p)| Want {
            slot,
            denied: if follower_denied {
                Some(error_code::CLUSTER_AUTHORIZATION_FAILED)
            } else if unreadable.get(p.topic.as_str()) == Some(&true) {
                Some(error_code::TOPIC_AUTHORIZATION_FAILED)
            } else {
                None
            },
            tp: TopicPartition::new(p.topic.clone(), p.partition),
            request: ReadRequest {
                offset: Offset(p.fetch_offset),
                // No partition can contribute more than the whole response may hold.
                max_bytes: p.max_bytes.min(max_bytes),
                current_leader_epoch: epochs
                    .get(&(p.topic.as_str(), p.partition))
                    .copied()
                    .unwrap_or(-1),
                replica,
                read_committed: request.isolation_level == 1 && replica.is_none(),
            },
        })
        .collect();
    let wait =
        Duration::from_millis((request.max_wait_ms.max(0) as u64).min(limits::FETCH_WAIT_MS_MAX));
    let deadline = Instant::now() + wait;
    let min_bytes = request.min_bytes.max(0) as usize;

    let (mut got, refused) = read_or_wait(shard, &wants, min_bytes, deadline).await;

    // Choose what goes in the response: everything for a full fetch; for an incremental one,
    // partitions with records, errors, or a changed high watermark / log start offset. Records
    // are taken in request order, whole batches only, while they fit `max_bytes`; only the
    // response's first batch may exceed it (as Kafka does).
    let mut budget_bytes = max_bytes;
    // What the response carries, for the consumer byte rate quota.
    let mut record_bytes = 0usize;
    let mut any_records = false;
    let mut chosen: Vec<(usize, bool)> = Vec::with_capacity(partitions.len());
    for (slot, (part, result)) in partitions.iter().zip(got.iter_mut()).enumerate() {
        let keep = trim(result, budget_bytes, !any_records);
        let with_records = keep > 0;
        record_bytes += keep;
        if with_records {
            budget_bytes = budget_bytes.saturating_sub(keep);
            any_records = true;
        }
        let news = with_records
            || result.error_code != error_code::NONE
            || result.high_watermark != part.high_watermark
            || result.log_start_offset != part.log_start_offset;
        if !incremental || news {
            chosen.push((slot, with_records));
        }
    }
    // Group the chosen partitions by topic, keeping order (consecutive runs).
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (index, (slot, _)) in chosen.iter().enumerate() {
        match runs.last_mut() {
            Some((start, len)) if partitions[chosen[*start].0].topic == partitions[*slot].topic => {
                *len += 1
            }
            _ => runs.push((index, 1)),
        }
    }
    let mut writer = FetchResponseWriter::new(
        ctx.version,
        ctx.correlation_id,
        error_code::NONE,
        session_id,
        runs.len(),
    );
    // A consumer's record bytes count against its consumer byte rate quota (followers are
    // not clients and have none).
    let quota_throttle_ms = if replica.is_none() {
        ctx.charge_quota(quota::CONSUMER_BYTE_RATE, record_bytes)
    } else {
        0
    };
    if refused {
        // The shard's cap on parked fetches was reached: the client backs off for its wait
        // time, as it does for a quota, instead of the broker holding more waiters.
        writer.set_throttle_time_ms((wait.as_millis() as i32).max(quota_throttle_ms));
    } else if quota_throttle_ms > 0 {
        writer.set_throttle_time_ms(quota_throttle_ms);
    }
    let mut sessions = shard.fetch_sessions.borrow_mut();
    for (start, len) in runs {
        let topic = &partitions[chosen[start].0].topic;
        writer.begin_topic(topic, len);
        for &(slot, with_records) in &chosen[start..start + len] {
            let part = &partitions[slot];
            let result = &got[slot];
            let header = PartitionHeader {
                partition_index: part.partition,
                error_code: result.error_code,
                high_watermark: result.high_watermark,
                last_stable_offset: result.last_stable_offset,
                log_start_offset: result.log_start_offset,
                aborted_transactions: if with_records {
                    result.aborted.clone()
                } else {
                    Vec::new()
                },
            };
            writer.partition(&header, if with_records { &result.chunks } else { &[] });
            if session_id != 0 {
                sessions.told(
                    session_id,
                    &part.topic,
                    part.partition,
                    result.high_watermark,
                    result.log_start_offset,
                );
            }
        }
        writer.end_topic();
    }
    drop(sessions);
    shard
        .fetch_probe
        .record_bytes_referenced
        .add(writer.records_bytes() as u64);
    Outcome::Respond(writer.finish())
}

/// Cuts `result` to the whole batches that fit `budget` (all of its first batch when `first`,
/// as Kafka lets a response's first batch exceed the limit) and returns the bytes kept.
pub fn trim(result: &mut ReadResult, budget: usize, first: bool) -> usize {
    // The log returns whole batches: only a result over the budget needs walking.
    let keep = if result.len <= budget {
        result.len
    } else {
        whole_batches_within(&result.chunks, budget, first)
    };
    if keep < result.len {
        result.chunks = prefix(&result.chunks, keep);
        result.len = keep;
    }
    keep
}

/// Reads every wanted partition on its owner shard, waiting there (one message per owner)
/// until `min_bytes` are available, an error occurs, or the deadline passes. Returns the
/// results by slot and whether an owner refused to park (its cap was reached).
pub async fn read_or_wait(
    shard: &Rc<Shard>,
    wants: &[Want],
    min_bytes: usize,
    deadline: Instant,
) -> (Vec<ReadResult>, bool) {
    let mut results: Vec<Option<ReadResult>> = (0..wants.len()).map(|_| None).collect();
    let mut by_owner: BTreeMap<usize, Vec<Want>> = BTreeMap::new();
    for want in wants {
        if let Some(code) = want.denied {
            results[want.slot] = Some(ReadResult::error(code));
            continue;
        }
        match shard.owner_of(&want.tp.topic, want.tp.partition) {
            Some(owner) => by_owner.entry(owner).or_default().push(want.clone()),
            None => {
                let code = if shard
                    .image()
                    .partition(&want.tp.topic, want.tp.partition)
                    .is_some()
                {
                    error_code::NOT_LEADER_OR_FOLLOWER
                } else {
                    error_code::UNKNOWN_TOPIC_OR_PARTITION
                };
                results[want.slot] = Some(ReadResult::error(code));
            }
        }
    }
    let caller = shard.id;
    let mut cancels = Vec::with_capacity(by_owner.len());
    let mut calls = Vec::with_capacity(by_owner.len());
    for (owner, items) in by_owner {
        let (cancel, cancelled) = oneshot::channel::<()>();
        cancels.push(cancel);
        let slots: Vec<usize> = items.iter().map(|want| want.slot).collect();
        shard.fetch_probe.owner_calls.inc();
        let call = shard.invoke_on(owner, move |shard| async move {
            // Cold data can stay in its DMA buffer only when the response is written on this
            // thread.
            let mode = if caller == shard.id {
                ReadMode::SameThread
            } else {
                ReadMode::CrossThread
            };
            let parts: Vec<_> = items
                .iter()
                .map(|want| (shard.partition(&want.tp), want.request))
                .collect();
            let (results, end) = partition::read_or_wait(
                &parts,
                mode,
                min_bytes,
                deadline,
                cancelled,
                &shard.park_budget,
            )
            .await;
            if end == WaitEnd::Refused {
                shard.fetch_probe.parks_refused.inc();
            }
            (results, end)
        });
        calls.push(Box::pin(async move { (slots, call.await) }));
    }
    let mut refused = false;
    let mut place =
        |slots: Vec<usize>, outcome: Result<(Vec<ReadResult>, WaitEnd), _>| match outcome {
            Ok((got, end)) => {
                refused |= end == WaitEnd::Refused;
                for (slot, result) in slots.into_iter().zip(got) {
                    results[slot] = Some(result);
                }
            }
            Err(_) => slots.into_iter().for_each(|slot| {
                results[slot] = Some(ReadResult::error(error_code::NOT_LEADER_OR_FOLLOWER))
            }),
        };
    if !calls.is_empty() {
        // The first owner to answer decides: the others are cancelled and answer at once.
        let ((slots, outcome), _, rest) = select_all(calls).await;
        place(slots, outcome);
        drop(cancels);
        for (slots, outcome) in join_all(rest).await {
            place(slots, outcome);
        }
    }
    let results = results
        .into_iter()
        .map(|got| got.unwrap_or_else(|| ReadResult::error(error_code::UNKNOWN_SERVER_ERROR)))
        .collect();
    (results, refused)
}
