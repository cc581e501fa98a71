//! Fetch: read from each partition's owner shard, wait for `min_bytes` up to `max_wait_ms`
//! (long poll), and answer with record bytes referenced from the log, never copied.
//!
//! Fetch sessions (KIP-227) are kept per connection shard (`fetch_session.rs`): a full fetch
//! with epoch 0 opens one, incremental fetches name only changed partitions, and responses
//! carry only partitions with news.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{join_all, select, select_all, Either};
use kafka_protocol::messages::FetchRequest;
use tern_protocol::error_code;
use tern_protocol::fetch::{FetchResponseWriter, PartitionHeader};
use tern_protocol::types::Offset;
use tern_storage::ReadMode;

use super::Ctx;
use crate::connection::Outcome;
use crate::fetch_session::{Plan, SessionPartition};
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
        Got {
            error_code,
            high_watermark: -1,
            log_start_offset: -1,
            ..Got::default()
        }
    }
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
    // Sessions exist from Fetch v7; older clients always fetch in full.
    let plan = if ctx.version >= 7 {
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
    let wants: Vec<Want> = partitions
        .iter()
        .enumerate()
        .map(|(slot, p)| Want {
            slot,
            tp: TopicPartition::new(p.topic.clone(), p.partition),
            offset: p.fetch_offset,
            max_bytes: p.max_bytes,
        })
        .collect();
    let wait =
        Duration::from_millis((request.max_wait_ms.max(0) as u64).min(limits::FETCH_WAIT_MS_MAX));
    let deadline = Instant::now() + wait;
    let min_bytes = request.min_bytes.max(0) as usize;
    let max_bytes = if request.max_bytes <= 0 {
        usize::MAX
    } else {
        request.max_bytes as usize
    };

    let mut got = read_all(shard, &wants).await;
    loop {
        let total: usize = got.iter().map(|g| g.len).sum();
        let any_error = got.iter().any(|g| g.error_code != error_code::NONE);
        if total >= min_bytes.max(1)
            || any_error
            || Instant::now() >= deadline
            || shard.shutting_down.get()
        {
            break;
        }
        wait_for_data(shard, &wants, &got, deadline).await;
        got = read_all(shard, &wants).await;
    }

    // Choose what goes in the response: everything for a full fetch; for an incremental one,
    // partitions with records, errors, or a changed high watermark / log start offset.
    let mut budget_bytes = max_bytes;
    let mut any_records = false;
    let mut chosen: Vec<(usize, bool)> = Vec::with_capacity(partitions.len());
    for (slot, (part, result)) in partitions.iter().zip(&got).enumerate() {
        let fits = result.len <= budget_bytes || !any_records;
        let with_records = result.len > 0 && fits;
        if with_records {
            budget_bytes = budget_bytes.saturating_sub(result.len);
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
                last_stable_offset: result.high_watermark,
                log_start_offset: result.log_start_offset,
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
    let referenced = writer.records_bytes() as u64;
    shard
        .stats
        .fetch_bytes_referenced
        .set(shard.stats.fetch_bytes_referenced.get() + referenced);
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
        let caller = shard.id;
        let call = shard.invoke_on(owner, move |shard| read_on_owner(shard, items, caller));
        async move { (slots, call.await) }
    });
    for (slots, outcome) in join_all(calls).await {
        match outcome {
            Ok(reads) => reads
                .into_iter()
                .for_each(|(slot, got)| results[slot] = Some(got)),
            Err(_) => slots.into_iter().for_each(|slot| {
                results[slot] = Some(Got::error(error_code::NOT_LEADER_OR_FOLLOWER))
            }),
        }
    }
    results
        .into_iter()
        .map(|got| got.unwrap_or_else(|| Got::error(error_code::UNKNOWN_SERVER_ERROR)))
        .collect()
}

async fn read_on_owner(shard: Rc<Shard>, wants: Vec<Want>, caller: usize) -> Vec<(usize, Got)> {
    // Cold data can stay in its DMA buffer only when the response is written on this thread.
    let mode = if caller == shard.id {
        ReadMode::SameThread
    } else {
        ReadMode::CrossThread
    };
    let mut out = Vec::with_capacity(wants.len());
    for want in wants {
        let Some(partition) = shard.partition(&want.tp) else {
            out.push((want.slot, Got::error(error_code::NOT_LEADER_OR_FOLLOWER)));
            continue;
        };
        let log = &partition.log;
        let high_watermark = log.high_watermark();
        let got = match log
            .read_with(Offset(want.offset), want.max_bytes, high_watermark, mode)
            .await
        {
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
            by_shard
                .entry(owner)
                .or_default()
                .push((want.tp.clone(), seen));
        }
    }
    if by_shard.is_empty() {
        glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
        return;
    }
    let waits: Vec<_> = by_shard
        .into_iter()
        .map(|(owner, items)| {
            Box::pin(shard.invoke_on(owner, move |shard| wait_on_owner(shard, items, deadline)))
        })
        .collect();
    let timer = Box::pin(glommio::timer::sleep(
        deadline.saturating_duration_since(Instant::now()),
    ));
    let _ = select(select_all(waits), timer).await;
}

async fn wait_on_owner(shard: Rc<Shard>, items: Vec<(TopicPartition, i64)>, deadline: Instant) {
    let mut receivers = Vec::with_capacity(items.len());
    for (tp, seen) in &items {
        let Some(partition) = shard.partition(tp) else {
            return;
        };
        if partition.log.high_watermark().0 > *seen {
            return;
        }
        receivers.push(partition.wait_for_append());
    }
    let timer = Box::pin(glommio::timer::sleep(
        deadline.saturating_duration_since(Instant::now()),
    ));
    match select(select_all(receivers), timer).await {
        Either::Left(_) | Either::Right(_) => {}
    }
}
