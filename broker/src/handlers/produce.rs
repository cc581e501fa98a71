//! Produce: split the request by owner shard (one message per shard), append on the owners,
//! reassemble the answers in request order.
//!
//! The request body arrives as one `BytesMut`; each partition's record set is split off it
//! (same allocation, no copy) and handed to its owner, where `Partition::append` decides
//! (leadership, min.insync, idempotence) and the log validates, patches offsets and the
//! leader epoch in place and keeps the bytes as its tail cache.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ProduceResponse, TopicName};
use tern_protocol::error_code;
use tern_protocol::produce;
use tern_protocol::types::TimestampMs;

use super::{str_bytes, Ctx};
use crate::outcome::{Malformed, Outcome};
use crate::partition::{AppendFailure, TopicPartition};
use crate::scatter::scatter;
use crate::security::{acl, quota};
use crate::shard::Shard;

/// One partition's outcome, sent back from its owner shard.
#[derive(Debug, Clone)]
pub struct Appended {
    pub error_code: i16,
    pub base_offset: i64,
    pub log_append_time_ms: i64,
    pub log_start_offset: i64,
    pub message: Option<String>,
    pub record_errors: Vec<(i32, String)>,
}

impl Appended {
    fn error(error_code: i16, message: Option<String>) -> Appended {
        Appended {
            error_code,
            base_offset: -1,
            log_append_time_ms: -1,
            log_start_offset: -1,
            message,
            record_errors: Vec::new(),
        }
    }
}

pub async fn handle(ctx: &Ctx<'_>, body: BytesMut) -> Outcome {
    let request_bytes = body.len();
    let request = match produce::parse(&body, ctx.version) {
        Ok(request) => request,
        Err(error) => {
            return Outcome::Close(
                Malformed::Body,
                format!("malformed Produce v{}: {error}", ctx.version),
            )
        }
    };
    let acks = request.acks;
    // Split the record sets off the body (same allocation, no copy), in request order.
    let mut body = body;
    let mut consumed = 0usize;
    let mut items = Vec::with_capacity(request.partition_count());
    for topic in &request.topics {
        for partition in &topic.partitions {
            let records = partition.records.clone().map(|range| {
                body.advance(range.start - consumed);
                consumed = range.end;
                body.split_to(range.len())
            });
            items.push(ToAppend {
                topic: topic.name.clone(),
                partition: partition.index,
                records,
            });
        }
    }
    let results = append_all(
        ctx,
        acks,
        request.timeout_ms,
        request.transactional_id.as_deref(),
        items,
    )
    .await;
    // The request's bytes count against the producer byte rate quota, acks=0 or not.
    let throttle_ms = ctx.charge_quota(quota::PRODUCER_BYTE_RATE, request_bytes);
    if acks == 0 {
        // No response goes back, so a failure would go unnoticed: Kafka closes the connection,
        // and the client reconnects and refreshes its metadata.
        let failed = results
            .iter()
            .find(|result| result.error_code != error_code::NONE);
        return match failed {
            Some(result) => Outcome::Close(
                Malformed::AcksZeroProduceFailed,
                format!(
                    "acks=0 Produce failed with error {}{}",
                    result.error_code,
                    result
                        .message
                        .as_deref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                ),
            ),
            None => Outcome::NoResponse,
        };
    }

    let mut response = ProduceResponse::default();
    response.throttle_time_ms = throttle_ms;
    let mut results = results.into_iter();
    response.responses = request
        .topics
        .iter()
        .map(|topic| {
            let mut out = TopicProduceResponse::default();
            out.name = TopicName(str_bytes(&topic.name));
            out.partition_responses = topic
                .partitions
                .iter()
                .map(|partition| {
                    let result = results
                        .next()
                        .unwrap_or_else(|| Appended::error(error_code::UNKNOWN_SERVER_ERROR, None));
                    let mut p = PartitionProduceResponse::default();
                    p.index = partition.index;
                    p.error_code = result.error_code;
                    p.base_offset = result.base_offset;
                    p.log_append_time_ms = result.log_append_time_ms;
                    p.log_start_offset = result.log_start_offset;
                    p.error_message = result.message.as_deref().map(str_bytes);
                    p.record_errors = result
                        .record_errors
                        .iter()
                        .map(|(index, message)| {
                            let mut e = BatchIndexAndErrorMessage::default();
                            e.batch_index = *index;
                            e.batch_index_error_message = Some(str_bytes(message));
                            e
                        })
                        .collect();
                    p
                })
                .collect();
            out
        })
        .collect();
    ctx.respond(&response)
}

/// One partition's records to append.
pub struct ToAppend {
    pub topic: String,
    pub partition: i32,
    /// `None`: the request carried a null record set.
    pub records: Option<BytesMut>,
}

/// Appends each partition's records on its owner shard (one message per owner) and returns
/// the outcomes in `items`' order: the part of Produce both protocols share. Checks the
/// principal's WRITE on each topic (and on the transactional id), refuses internal topics,
/// and waits for acks=all at most `timeout_ms`.
pub async fn append_all(
    ctx: &Ctx<'_>,
    acks: i16,
    timeout_ms: i32,
    transactional_id: Option<&str>,
    items: Vec<ToAppend>,
) -> Vec<Appended> {
    let shard = ctx.shard;
    if !matches!(acks, -1..=1) {
        return items
            .iter()
            .map(|_| Appended::error(error_code::INVALID_REQUIRED_ACKS, None))
            .collect();
    }
    // A transactional produce also needs WRITE on its transactional id, as in Kafka.
    let txn_allowed = transactional_id
        .is_none_or(|id| ctx.allowed(acl::operation::WRITE, acl::resource::TRANSACTIONAL_ID, id));
    let mut results: Vec<Option<Appended>> = vec![None; items.len()];
    let mut routed: Vec<(usize, (TopicPartition, BytesMut))> = Vec::new();
    let mut routed_slots: Vec<usize> = Vec::new();
    let image = shard.image();
    // Decided once per run of partitions of one topic.
    let mut writable: Option<(String, bool)> = None;
    for (slot, item) in items.into_iter().enumerate() {
        let topic_writable = match &writable {
            Some((topic, allowed)) if *topic == item.topic => *allowed,
            _ => {
                let allowed = ctx.allowed(acl::operation::WRITE, acl::resource::TOPIC, &item.topic);
                writable = Some((item.topic.clone(), allowed));
                allowed
            }
        };
        let refusal = if !txn_allowed {
            Some(Appended::error(
                error_code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                None,
            ))
        } else if !topic_writable {
            Some(Appended::error(
                error_code::TOPIC_AUTHORIZATION_FAILED,
                None,
            ))
        } else if item.records.is_none() {
            Some(Appended::error(
                error_code::INVALID_RECORD,
                Some("null record set".into()),
            ))
        } else if image.topic(&item.topic).is_some_and(|meta| meta.internal) {
            // Kafka refuses client writes to internal topics: their records belong to the
            // coordinators that own them.
            Some(Appended::error(
                error_code::INVALID_TOPIC_EXCEPTION,
                Some(format!("cannot produce to internal topic {}", item.topic)),
            ))
        } else {
            None
        };
        if refusal.is_some() {
            results[slot] = refusal;
            continue;
        }
        let (Some(owner), Some(records)) =
            (shard.owner_of(&item.topic, item.partition), item.records)
        else {
            results[slot] = Some(Appended::error(
                error_code::UNKNOWN_TOPIC_OR_PARTITION,
                None,
            ));
            continue;
        };
        routed_slots.push(slot);
        routed.push((
            owner,
            (TopicPartition::new(item.topic, item.partition), records),
        ));
    }
    drop(image);

    // acks=all waits for the ISR at most the request's timeout (Kafka's `timeout_ms`).
    let timeout = Duration::from_millis(
        (timeout_ms.max(0) as u64).min(crate::limits::PRODUCE_TIMEOUT_MS_MAX),
    );
    let deadline = Instant::now() + timeout;
    let answers = scatter(shard, routed, move |shard, items| {
        append_on_owner(shard, items, acks, deadline)
    })
    .await;
    for (slot, answer) in routed_slots.into_iter().zip(answers) {
        results[slot] = Some(answer.unwrap_or_else(|error| {
            Appended::error(error_code::NOT_LEADER_OR_FOLLOWER, Some(error.to_string()))
        }));
    }
    results
        .into_iter()
        .map(|result| {
            result.unwrap_or_else(|| Appended::error(error_code::UNKNOWN_SERVER_ERROR, None))
        })
        .collect()
}

async fn append_on_owner(
    shard: Rc<Shard>,
    items: Vec<(TopicPartition, BytesMut)>,
    acks: i16,
    deadline: Instant,
) -> Vec<Appended> {
    let now = TimestampMs(shard.now_ms());
    let appends = items.into_iter().map(|(tp, records)| {
        let partition = shard.partition(&tp);
        async move {
            let Some(partition) = partition else {
                return Appended::error(error_code::NOT_LEADER_OR_FOLLOWER, None);
            };
            match partition.append(records, acks, now, deadline).await {
                Ok(appended) => Appended {
                    error_code: error_code::NONE,
                    base_offset: appended.base_offset.0,
                    log_append_time_ms: appended.log_append_time.0,
                    log_start_offset: appended.log_start_offset.0,
                    message: None,
                    record_errors: Vec::new(),
                },
                Err(AppendFailure {
                    code,
                    message,
                    record_errors,
                }) => Appended {
                    record_errors,
                    ..Appended::error(code, message)
                },
            }
        }
    });
    futures::future::join_all(appends).await
}
