//! Native Produce and Fetch: the Kafka path's appends and reads, framed natively.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use flatbuffers::FlatBufferBuilder;
use tern_protocol::error_code;
use tern_protocol::native::{self as proto, msg};
use tern_protocol::types::Offset;

use super::{code, Reply};
use crate::handlers::fetch::{read_or_wait, trim, Want};
use crate::handlers::produce::{append_all, Appended, ToAppend};
use crate::handlers::Ctx;
use crate::limits;
use crate::outcome::{Malformed, Outcome};
use crate::partition::{ReadRequest, TopicPartition};
use crate::security::{acl, quota, ConnectionSecurity};

/// A Produce request read out of its message: what to append where, and the payload's
/// ranges, checked to cover it exactly.
pub struct ProducePlan {
    acks: i16,
    timeout_ms: i32,
    partitions: Vec<(String, i32, std::ops::Range<usize>)>,
}

impl ProducePlan {
    pub fn of(produce: &msg::Produce<'_>, payload: usize) -> Result<ProducePlan, String> {
        let entries = produce.partitions();
        proto::check_count(entries.len()).map_err(|e| e.to_string())?;
        let ranges = proto::payload_ranges(entries.iter().map(|p| p.records_bytes()), payload)
            .map_err(|e| e.to_string())?;
        let partitions = entries
            .iter()
            .zip(ranges)
            .map(|(p, range)| (p.topic().to_owned(), p.partition(), range))
            .collect();
        Ok(ProducePlan {
            acks: produce.acks(),
            timeout_ms: produce.timeout_ms(),
            partitions,
        })
    }
}

pub async fn produce(
    ctx: &Ctx<'_>,
    security: &Rc<ConnectionSecurity>,
    id: u64,
    plan: ProducePlan,
    payload: BytesMut,
) -> Outcome {
    let request_bytes = payload.len();
    let ProducePlan {
        acks,
        timeout_ms,
        partitions,
    } = plan;
    let mut payload = payload;
    let mut consumed = 0usize;
    let mut items = Vec::with_capacity(partitions.len());
    let mut names = Vec::with_capacity(partitions.len());
    for (topic, partition, range) in partitions {
        // Split off the payload in order (same allocation, no copy).
        let _ = payload.split_to(range.start - consumed);
        consumed = range.end;
        let records = payload.split_to(range.len());
        names.push((topic.clone(), partition));
        items.push(ToAppend {
            topic,
            partition,
            records: Some(records),
        });
    }
    // The appends run on their own task: once begun they finish even if the client goes
    // away, so that a retry finds the producer's sequence where the append left it.
    let shard = ctx.shard.clone();
    let security = security.clone();
    let (peer, client_id) = (ctx.peer, ctx.client_id.clone());
    let appending = glommio::spawn_local(async move {
        let ctx = Ctx::native(&shard, &security, peer, client_id);
        append_all(&ctx, acks, timeout_ms, None, items).await
    })
    .detach();
    let Some(results) = appending.await else {
        return Outcome::Close(
            Malformed::Response,
            "the appends' task was cancelled".into(),
        );
    };
    let throttle_ms = ctx.charge_quota(quota::PRODUCER_BYTE_RATE, request_bytes);
    if acks == 0 {
        // Nothing goes back: a failure closes the connection, as Kafka does, so the client
        // notices.
        return match results.iter().find(|r| r.error_code != error_code::NONE) {
            Some(failed) => Outcome::Close(
                Malformed::AcksZeroProduceFailed,
                format!(
                    "acks=0 native Produce failed with error {}",
                    failed.error_code
                ),
            ),
            None => Outcome::NoResponse,
        };
    }
    let mut reply = Reply::new(FlatBufferBuilder::with_capacity(64 + 64 * names.len()), id);
    let answers: Vec<_> = names
        .iter()
        .zip(&results)
        .map(|((topic, partition), result)| produce_answer(&mut reply, topic, *partition, result))
        .collect();
    let partitions = reply.builder.create_vector(&answers);
    let body = msg::ProduceResponse::create(
        &mut reply.builder,
        &msg::ProduceResponseArgs {
            partitions: Some(partitions),
            throttle_ms,
        },
    );
    reply.finish(
        msg::Response::ProduceResponse,
        body.as_union_value(),
        Vec::new(),
    )
}

fn produce_answer<'b>(
    reply: &mut Reply<'b>,
    topic: &str,
    partition: i32,
    result: &Appended,
) -> flatbuffers::WIPOffset<msg::ProducePartitionResult<'b>> {
    let builder = &mut reply.builder;
    let topic = builder.create_shared_string(topic);
    let message = result
        .message
        .as_deref()
        .or_else(|| result.record_errors.first().map(|(_, m)| m.as_str()))
        .map(|m| builder.create_string(m));
    msg::ProducePartitionResult::create(
        builder,
        &msg::ProducePartitionResultArgs {
            topic: Some(topic),
            partition,
            error: code(result.error_code),
            message,
            base_offset: result.base_offset,
            log_append_time_ms: result.log_append_time_ms,
            log_start_offset: result.log_start_offset,
        },
    )
}

pub async fn fetch(ctx: &Ctx<'_>, id: u64, fetch: &msg::Fetch<'_>) -> Result<Outcome, String> {
    let shard = ctx.shard;
    let entries = fetch.partitions();
    proto::check_count(entries.len()).map_err(|e| e.to_string())?;
    let max_bytes = if fetch.max_bytes() <= 0 {
        usize::MAX
    } else {
        fetch.max_bytes() as usize
    };
    let read_committed = fetch.isolation() == msg::Isolation::ReadCommitted;
    let mut readable: HashMap<&str, bool> = HashMap::new();
    let wants: Vec<Want> = entries
        .iter()
        .enumerate()
        .map(|(slot, p)| {
            let topic = p.topic();
            let allowed = *readable
                .entry(topic)
                .or_insert_with(|| ctx.allowed(acl::operation::READ, acl::resource::TOPIC, topic));
            Want {
                slot,
                denied: (!allowed).then_some(error_code::TOPIC_AUTHORIZATION_FAILED),
                tp: TopicPartition::new(topic.to_owned(), p.partition()),
                request: ReadRequest {
                    offset: Offset(p.offset()),
                    max_bytes: (p.max_bytes().max(0) as usize).min(max_bytes),
                    current_leader_epoch: p.leader_epoch(),
                    replica: None,
                    read_committed,
                },
            }
        })
        .collect();
    let wait =
        Duration::from_millis((fetch.max_wait_ms().max(0) as u64).min(limits::FETCH_WAIT_MS_MAX));
    let deadline = Instant::now() + wait;
    let min_bytes = fetch.min_bytes().max(0) as usize;
    let (mut results, refused) = read_or_wait(shard, &wants, min_bytes, deadline).await;

    // Whole batches in request order while they fit max_bytes (the first may exceed it).
    let mut budget = max_bytes;
    let mut any = false;
    let mut record_bytes = 0usize;
    for result in &mut results {
        let kept = trim(result, budget, !any);
        if kept > 0 {
            budget = budget.saturating_sub(kept);
            any = true;
            record_bytes += kept;
        }
    }
    let mut throttle_ms = ctx.charge_quota(quota::CONSUMER_BYTE_RATE, record_bytes);
    if refused {
        // The shard's cap on parked fetches was reached: the client backs off for its wait.
        throttle_ms = throttle_ms.max(wait.as_millis() as i32);
    }
    let mut reply = Reply::new(FlatBufferBuilder::with_capacity(64 + 96 * wants.len()), id);
    let mut payload = Vec::with_capacity(results.len());
    let mut answers = Vec::with_capacity(results.len());
    for (want, result) in wants.iter().zip(results) {
        let builder = &mut reply.builder;
        let topic = builder.create_shared_string(&want.tp.topic);
        let aborted: Vec<msg::AbortedTransaction> = result
            .aborted
            .iter()
            .map(|(producer_id, first_offset)| {
                msg::AbortedTransaction::new(*producer_id, *first_offset)
            })
            .collect();
        let aborted = (!aborted.is_empty()).then(|| builder.create_vector(&aborted));
        answers.push(msg::FetchPartitionResult::create(
            builder,
            &msg::FetchPartitionResultArgs {
                topic: Some(topic),
                partition: want.tp.partition,
                error: code(result.error_code),
                high_watermark: result.high_watermark,
                last_stable_offset: result.last_stable_offset,
                log_start_offset: result.log_start_offset,
                records_bytes: u32::try_from(result.len).unwrap_or(u32::MAX),
                aborted,
            },
        ));
        payload.extend(result.chunks);
    }
    let partitions = reply.builder.create_vector(&answers);
    let body = msg::FetchResponse::create(
        &mut reply.builder,
        &msg::FetchResponseArgs {
            partitions: Some(partitions),
            throttle_ms,
        },
    );
    shard
        .fetch_probe
        .record_bytes_referenced
        .add(record_bytes as u64);
    Ok(reply.finish(msg::Response::FetchResponse, body.as_union_value(), payload))
}
