//! Fetch: read from each partition's owner shard, wait for `min_bytes` up to `max_wait_ms`
//! (long poll), and answer with record bytes referenced from the log, never copied.
//!
//! Fetch sessions (KIP-227): Tern currently declines to create sessions (it answers with
//! session id 0, which the protocol allows), so clients send full fetch requests. A client
//! that names a session Tern never issued gets FETCH_SESSION_ID_NOT_FOUND and starts over.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{join_all, select, select_all, Either};
use kafka_protocol::messages::FetchRequest;
use tern_protocol::error_code;
use tern_protocol::fetch::{FetchResponseWriter, PartitionHeader};
use tern_protocol::types::Offset;

use super::Ctx;
use crate::connection::Outcome;
use crate::limits;
use crate::shard::{Shard, TopicPartition};

#[derive(Debug, Clone)]
struct Want {
    slot: usize,
    tp: TopicPartition,
    offset: i64,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Got {
    error_code: i16,
    high_watermark: i64,
    log_start_offset: i64,
    chunks: Vec<Bytes>,
    len: usize,
}

impl Got {
    fn error(error_code: i16) -> Got {
        Got { error_code, high_watermark: -1, log_start_offset: -1, ..Got::default() }
    }
}

pub async fn handle(ctx: &Ctx<'_>, request: FetchRequest) -> Outcome {
    let shard = ctx.shard;
    if request.session_id != 0 {
        let writer = FetchResponseWriter::new(ctx.version, ctx.correlation_id, error_code::FETCH_SESSION_ID_NOT_FOUND, 0, 0);
        return Outcome::Respond(writer.finish());
    }
    let mut wants = Vec::new();
    let mut layout: Vec<(String, Vec<i32>)> = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let name = topic.topic.0.to_string();
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for partition in &topic.partitions {
            wants.push(Want {
                slot: wants.len(),
                tp: TopicPartition::new(name.clone(), partition.partition),
                offset: partition.fetch_offset,
                max_bytes: partition.partition_max_bytes.max(0) as usize,
            });
            partitions.push(partition.partition);
        }
        layout.push((name, partitions));
    }
    let wait = Duration::from_millis((request.max_wait_ms.max(0) as u64).min(limits::FETCH_WAIT_MS_MAX));
    let deadline = Instant::now() + wait;
    let min_bytes = request.min_bytes.max(0) as usize;
    let max_bytes = if request.max_bytes <= 0 { usize::MAX } else { request.max_bytes as usize };

    let mut got = read_all(shard, &wants).await;
    loop {
        let total: usize = got.iter().map(|g| g.len).sum();
        let any_error = got.iter().any(|g| g.error_code != error_code::NONE);
        if total >= min_bytes.max(1) || any_error || Instant::now() >= deadline || shard.shutting_down.get() {
            break;
        }
        wait_for_data(shard, &wants, &got, deadline).await;
        got = read_all(shard, &wants).await;
    }

    // Assemble in request order, honouring the response-wide max_bytes (the first
    // non-empty partition is always included whole, as KIP-74 requires).
    let mut writer = FetchResponseWriter::new(ctx.version, ctx.correlation_id, error_code::NONE, 0, layout.len());
    let mut got = got.into_iter();
    let mut budget_bytes = max_bytes;
    let mut any_records = false;
    for (name, partitions) in &layout {
        writer.begin_topic(name, partitions.len());
        for &index in partitions {
            let result = got.next().unwrap_or_default();
            let header = PartitionHeader {
                partition_index: index,
                error_code: result.error_code,
                high_watermark: result.high_watermark,
                last_stable_offset: result.high_watermark,
                log_start_offset: result.log_start_offset,
            };
            let fits = result.len <= budget_bytes || !any_records;
            if result.len > 0 && fits {
                budget_bytes = budget_bytes.saturating_sub(result.len);
                any_records = true;
                writer.partition(&header, &result.chunks);
            } else {
                writer.partition(&header, &[]);
            }
        }
        writer.end_topic();
    }
    let referenced = writer.records_bytes() as u64;
    shard.stats.fetch_bytes_referenced.set(shard.stats.fetch_bytes_referenced.get() + referenced);
    Outcome::Respond(writer.finish())
}

/// Reads every wanted partition on its owner shard, one message per shard.
async fn read_all(shard: &Rc<Shard>, wants: &[Want]) -> Vec<Got> {
    let mut results: Vec<Option<Got>> = (0..wants.len()).map(|_| None).collect();
    let mut by_shard: BTreeMap<usize, Vec<Want>> = BTreeMap::new();
    for want in wants {
        match shard.owner_of(&want.tp.topic, want.tp.partition) {
            Some(owner) => by_shard.entry(owner).or_default().push(want.clone()),
            None => results[want.slot] = Some(Got::error(error_code::UNKNOWN_TOPIC_OR_PARTITION)),
        }
    }
    let calls = by_shard.into_iter().map(|(owner, items)| {
        let slots: Vec<usize> = items.iter().map(|want| want.slot).collect();
        let call = shard.invoke_on(owner, move |shard| read_on_owner(shard, items));
        async move { (slots, call.await) }
    });
    for (slots, outcome) in join_all(calls).await {
        match outcome {
            Ok(reads) => reads.into_iter().for_each(|(slot, got)| results[slot] = Some(got)),
            Err(_) => slots.into_iter().for_each(|slot| results[slot] = Some(Got::error(error_code::NOT_LEADER_OR_FOLLOWER))),
        }
    }
    results.into_iter().map(|got| got.unwrap_or_else(|| Got::error(error_code::UNKNOWN_SERVER_ERROR))).collect()
}

async fn read_on_owner(shard: Rc<Shard>, wants: Vec<Want>) -> Vec<(usize, Got)> {
    let mut out = Vec::with_capacity(wants.len());
    for want in wants {
        let Some(partition) = shard.partition(&want.tp) else {
            out.push((want.slot, Got::error(error_code::NOT_LEADER_OR_FOLLOWER)));
            continue;
        };
        let log = &partition.log;
        let high_watermark = log.high_watermark();
        let got = match log.read(Offset(want.offset), want.max_bytes, high_watermark).await {
            Ok(slice) => Got {
                error_code: error_code::NONE,
                high_watermark: high_watermark.0,
                log_start_offset: log.log_start_offset().0,
                len: slice.len,
                chunks: slice.chunks,
            },
            Err(error) => Got {
                error_code: error.kafka_error_code(),
                high_watermark: high_watermark.0,
                log_start_offset: log.log_start_offset().0,
                ..Got::default()
            },
        };
        out.push((want.slot, got));
    }
    out
}

/// Parks until any wanted partition may have new data, or the deadline passes.
async fn wait_for_data(shard: &Rc<Shard>, wants: &[Want], got: &[Got], deadline: Instant) {
    let mut by_shard: BTreeMap<usize, Vec<(TopicPartition, i64)>> = BTreeMap::new();
    for (want, got) in wants.iter().zip(got) {
        if let Some(owner) = shard.owner_of(&want.tp.topic, want.tp.partition) {
            // Wait for the high watermark to pass the end of what we already hold.
            let seen = want.offset.max(got.high_watermark);
            by_shard.entry(owner).or_default().push((want.tp.clone(), seen));
        }
    }
    if by_shard.is_empty() {
        glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
        return;
    }
    let waits: Vec<_> = by_shard
        .into_iter()
        .map(|(owner, items)| Box::pin(shard.invoke_on(owner, move |shard| wait_on_owner(shard, items, deadline))))
        .collect();
    let timer = Box::pin(glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())));
    let _ = select(select_all(waits), timer).await;
}

async fn wait_on_owner(shard: Rc<Shard>, items: Vec<(TopicPartition, i64)>, deadline: Instant) {
    let mut receivers = Vec::with_capacity(items.len());
    for (tp, seen) in &items {
        let Some(partition) = shard.partition(tp) else { return };
        if partition.log.high_watermark().0 > *seen {
            return;
        }
        receivers.push(partition.wait_for_append());
    }
    let timer = Box::pin(glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())));
    match select(select_all(receivers), timer).await {
        Either::Left(_) | Either::Right(_) => {}
    }
}
