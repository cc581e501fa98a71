//! The native protocol end to end: a tokio program using `tern::client`, records crossing
//! between the native client and librdkafka byte for byte, idempotent retries across dropped
//! connections, and bad native frames, all against a real broker process.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flatbuffers::FlatBufferBuilder;
use rdkafka::Offset;
use tern::client::{
    Client, Consumed, Consumer, ConsumerConfig, OffsetSpec, ProducerConfig, Record, StartAt,
};
use tern_protocol::native::{self as proto, msg};
use tern_tests::kafka::{self, Rec};
use tern_tests::Broker;

const WITHIN: Duration = Duration::from_secs(60);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn native(broker: &Broker) -> String {
    broker.native_addr.to_string()
}

/// Polls until `count` records came (panics past `WITHIN`), then briefly for extras.
async fn read_exactly(consumer: &mut Consumer, count: usize) -> Vec<Consumed> {
    let deadline = Instant::now() + WITHIN;
    let mut out = Vec::new();
    while out.len() < count {
        assert!(Instant::now() < deadline, "read {} of {count}", out.len());
        out.extend(consumer.poll().await.expect("poll"));
    }
    let grace = Instant::now() + Duration::from_millis(300);
    while Instant::now() < grace {
        let extra = consumer.poll().await.expect("poll");
        assert!(
            extra.is_empty(),
            "more records than the {count} expected: {extra:?}"
        );
    }
    out
}

fn record(i: usize) -> Record {
    Record::value(format!("value-{i}-{}", "x".repeat(i % 97)))
        .with_key(format!("key-{}", i % 13))
        .with_header("seq", i.to_string())
        .with_header("bin", vec![0u8, 255, (i % 251) as u8])
}

#[test]
fn a_tokio_program_produces_consumes_and_administers_through_the_native_client() {
    let broker = Broker::start(2);
    runtime().block_on(async {
        let client = Client::connect(&native(&broker)).await.expect("connect");
        client
            .create_topic("native-demo", 3, -1, &[("retention.ms", "3600000")])
            .await
            .expect("create topic");
        let configs = client
            .describe_topic("native-demo")
            .await
            .expect("describe");
        assert!(
            configs
                .iter()
                .any(|(k, v, explicit)| k == "retention.ms" && v == "3600000" && *explicit),
            "{configs:?}"
        );
        let again = client.create_topic("native-demo", 3, -1, &[]).await;
        assert_eq!(
            again.err().and_then(|e| e.code()),
            Some(msg::Error::TopicAlreadyExists.0)
        );

        // Pipelined: every send is queued before any is awaited.
        let producer = client
            .producer(ProducerConfig::default())
            .await
            .expect("producer");
        let count = 3_000;
        let sends: Vec<_> = (0..count)
            .map(|i| producer.send("native-demo", None, record(i)))
            .collect();
        let mut by_partition: BTreeMap<i32, Vec<(i64, usize)>> = BTreeMap::new();
        for (i, send) in sends.into_iter().enumerate() {
            let delivered = send.await.expect("delivered");
            by_partition
                .entry(delivered.partition)
                .or_default()
                .push((delivered.offset, i));
        }
        assert_eq!(by_partition.len(), 3, "keys spread over every partition");
        for (partition, delivered) in &by_partition {
            // Offsets per partition are 0..n, in send order.
            let offsets: Vec<i64> = delivered.iter().map(|(o, _)| *o).collect();
            let expected: Vec<i64> = (0..delivered.len() as i64).collect();
            assert_eq!(offsets, expected, "partition {partition}");
            let latest = client
                .list_offset("native-demo", *partition, OffsetSpec::Latest)
                .await
                .expect("latest");
            assert_eq!(latest, delivered.len() as i64);
        }

        let mut consumer = client.consumer(ConsumerConfig {
            group: Some("native-group".into()),
            ..ConsumerConfig::default()
        });
        for partition in 0..3 {
            consumer.assign("native-demo", partition, StartAt::Earliest);
        }
        let consumed = read_exactly(&mut consumer, count).await;
        for record_read in &consumed {
            let sent = by_partition[&record_read.partition][record_read.offset as usize].1;
            let want = record(sent);
            assert_eq!(record_read.key, want.key);
            assert_eq!(record_read.value, want.value);
            assert_eq!(record_read.headers, want.headers);
        }

        // Positions committed to the group come back, and a new consumer resumes there.
        consumer.commit().await.expect("commit");
        let keys: Vec<(String, i32)> = (0..3).map(|p| ("native-demo".to_owned(), p)).collect();
        let committed = client
            .committed_offsets("native-group", &keys)
            .await
            .expect("committed");
        let expected: Vec<Option<i64>> = (0..3)
            .map(|p| Some(by_partition[&p].len() as i64))
            .collect();
        assert_eq!(committed, expected);
        producer
            .send("native-demo", Some(1), Record::value("after-commit"))
            .await
            .expect("one more");
        let mut resumed = client.consumer(ConsumerConfig {
            group: Some("native-group".into()),
            ..ConsumerConfig::default()
        });
        for partition in 0..3 {
            resumed.assign("native-demo", partition, StartAt::Committed);
        }
        let rest = read_exactly(&mut resumed, 1).await;
        assert_eq!(rest[0].value.as_deref(), Some(&b"after-commit"[..]));

        client.delete_topic("native-demo").await.expect("delete");
        let gone = client
            .refresh_metadata(Some(&["native-demo"]))
            .await
            .expect("metadata");
        assert!(!gone.contains_key("native-demo"));
    });
}

#[test]
fn records_produced_natively_are_read_byte_exact_by_rdkafka_and_the_reverse() {
    let broker = Broker::start(1);
    kafka::create_topic(&broker, "interop", 2, &[]);
    let rt = runtime();

    // Native -> librdkafka.
    let count = 500;
    let timestamps: Vec<i64> = rt.block_on(async {
        let client = Client::connect(&native(&broker)).await.expect("connect");
        let producer = client
            .producer(ProducerConfig::default())
            .await
            .expect("producer");
        let sends: Vec<_> = (0..count)
            .map(|i| {
                let mut r = record(i);
                r.timestamp = Some(1_700_000_000_000 + i as i64);
                producer.send("interop", Some((i % 2) as i32), r)
            })
            .collect();
        for send in sends {
            send.await.expect("delivered");
        }
        (0..count).map(|i| 1_700_000_000_000 + i as i64).collect()
    });
    let read = kafka::consume(&broker, "interop", &[0, 1], count);
    for partition in 0..2 {
        let got: Vec<&kafka::Consumed> = read.iter().filter(|c| c.partition == partition).collect();
        let sent: Vec<usize> = (0..count).filter(|i| (i % 2) as i32 == partition).collect();
        assert_eq!(got.len(), sent.len());
        for (consumed, i) in got.iter().zip(sent) {
            let want = record(i);
            let rec = &consumed.record;
            assert_eq!(rec.key.as_deref(), want.key.as_deref());
            assert_eq!(rec.value.as_deref(), want.value.as_deref());
            let headers: Vec<(String, Option<Vec<u8>>)> = want
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.as_ref().map(|v| v.to_vec())))
                .collect();
            assert_eq!(rec.headers, headers);
            assert_eq!(rec.timestamp_ms, Some(timestamps[i]));
        }
    }

    // librdkafka (lz4-compressed batches) -> native.
    let producer = kafka::producer_with(&broker, &[("compression.type", "lz4")]);
    let recs: Vec<Rec> = (0..count)
        .map(|i| Rec {
            key: Some(format!("rk-{i}").into_bytes()),
            value: (i % 50 != 0).then(|| vec![(i % 256) as u8; i % 700]),
            headers: vec![
                ("h".into(), Some(i.to_string().into_bytes())),
                ("null".into(), None),
            ],
            timestamp_ms: Some(1_600_000_000_000 + i as i64),
        })
        .collect();
    kafka::produce(&producer, "interop", Some(0), &recs);
    rt.block_on(async {
        let client = Client::connect(&native(&broker)).await.expect("connect");
        let mut consumer = client.consumer(ConsumerConfig::default());
        let start = (count / 2) as i64; // native records already there on partition 0
        consumer.assign("interop", 0, StartAt::Offset(start));
        let got = read_exactly(&mut consumer, count).await;
        for (consumed, want) in got.iter().zip(&recs) {
            assert_eq!(consumed.key.as_deref(), want.key.as_deref());
            assert_eq!(consumed.value.as_deref(), want.value.as_deref());
            let headers: Vec<(String, Option<Vec<u8>>)> = consumed
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.as_ref().map(|v| v.to_vec())))
                .collect();
            assert_eq!(headers, want.headers);
            assert_eq!(Some(consumed.timestamp), want.timestamp_ms);
        }
    });
    // rdkafka's own read of what it wrote agrees with the offsets the native side saw.
    let consumer = kafka::consumer(&broker);
    kafka::assign(
        &consumer,
        "interop",
        &[0],
        Offset::Offset((count / 2) as i64),
    );
    let again = kafka::read_exactly(&consumer, count, WITHIN);
    assert_eq!(again.first().map(|c| c.offset), Some((count / 2) as i64));
}

#[test]
fn an_idempotent_retry_after_dropped_connections_writes_nothing_twice() {
    let broker = Broker::start(1);
    kafka::create_topic(&broker, "retried", 1, &[]);
    let count = 20_000usize;
    runtime().block_on(async {
        let client = Client::connect(&native(&broker)).await.expect("connect");
        let producer = client
            .producer(ProducerConfig {
                batch_bytes: 4 * 1024,
                ..ProducerConfig::default()
            })
            .await
            .expect("producer");
        // Connections are cut again and again while batches are in flight: some were
        // written and lost their answers, some never arrived.
        let cutter = {
            let client = client.clone();
            tokio::spawn(async move {
                for _ in 0..60 {
                    tokio::time::sleep(Duration::from_millis(7)).await;
                    client.drop_connections().await;
                }
            })
        };
        let mut sends = Vec::with_capacity(count);
        for i in 0..count {
            sends.push(producer.send("retried", Some(0), Record::value(format!("{i:06}"))));
            if i % 500 == 0 {
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        let mut offsets = Vec::with_capacity(count);
        for send in sends {
            offsets.push(send.await.expect("delivered despite the cuts").offset);
        }
        cutter.await.expect("cutter");
        let retries = producer
            .stats
            .retries
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            retries > 0,
            "the cuts caused no retry: the test proved nothing"
        );
        eprintln!("{retries} batch retries across the dropped connections");

        // Exactly `count` records, each once, in send order.
        let latest = client
            .list_offset("retried", 0, OffsetSpec::Latest)
            .await
            .expect("latest");
        assert_eq!(latest, count as i64, "records written twice (or lost)");
        let fresh = Client::connect(&native(&broker)).await.expect("connect");
        let mut consumer = fresh.consumer(ConsumerConfig::default());
        consumer.assign("retried", 0, StartAt::Earliest);
        let read = read_exactly(&mut consumer, count).await;
        for (i, consumed) in read.iter().enumerate() {
            assert_eq!(consumed.offset, i as i64);
            assert_eq!(
                consumed.value.as_deref(),
                Some(format!("{i:06}").as_bytes())
            );
        }
        // Every acknowledged offset is where its record is (-1: a recognised duplicate).
        for (i, offset) in offsets.iter().enumerate() {
            assert!(
                *offset == i as i64 || *offset == -1,
                "record {i} acked at {offset}"
            );
        }
    });
}

// ---- raw frames ------------------------------------------------------------------------------

fn frame(
    id: u64,
    kind: msg::Request,
    payload: &[u8],
    body: impl FnOnce(
        &mut FlatBufferBuilder<'static>,
    ) -> flatbuffers::WIPOffset<flatbuffers::UnionWIPOffset>,
) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let body = body(&mut b);
    let root = msg::RequestFrame::create(
        &mut b,
        &msg::RequestFrameArgs {
            id,
            body_type: kind,
            body: Some(body),
        },
    );
    b.finish(root, None);
    let message = b.finished_data();
    let mut out = proto::frame_head(message.len(), payload.len())
        .unwrap()
        .to_vec();
    out.extend_from_slice(message);
    out.extend_from_slice(payload);
    out
}

fn hello(version_min: u16, version_max: u16) -> Vec<u8> {
    frame(0, msg::Request::Hello, &[], |b| {
        msg::Hello::create(
            b,
            &msg::HelloArgs {
                version_min,
                version_max,
                client_id: None,
            },
        )
        .as_union_value()
    })
}

fn metadata(id: u64) -> Vec<u8> {
    frame(id, msg::Request::Metadata, &[], |b| {
        msg::Metadata::create(b, &msg::MetadataArgs { topics: None }).as_union_value()
    })
}

/// Reads one response frame, or `None` if the broker closed the connection first.
fn read_response(stream: &mut TcpStream) -> Option<Vec<u8>> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).ok()?;
    let mut frame = vec![0u8; u32::from_be_bytes(size) as usize];
    stream.read_exact(&mut frame).ok()?;
    Some(frame)
}

/// (request id, error, body type) of a response frame.
fn summary(frame: &[u8]) -> (u64, msg::Error, msg::Response) {
    let parts = proto::split(frame).expect("split");
    let response = proto::response(&frame[parts.message.0..parts.message.1]).expect("verify");
    (response.id(), response.error(), response.body_type())
}

fn closed(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut byte = [0u8; 1];
    matches!(stream.read(&mut byte), Ok(0) | Err(_))
}

fn connect(broker: &Broker) -> TcpStream {
    let stream = TcpStream::connect(broker.native_addr).expect("connect");
    stream.set_nodelay(true).unwrap();
    stream
}

#[test]
fn bad_native_frames_get_a_typed_error_or_a_closed_connection_and_stall_no_one() {
    let broker = Broker::start(1);
    kafka::create_topic(&broker, "steady", 1, &[]);
    let rt = runtime();
    // A healthy native client keeps producing while the bad input arrives.
    let client = rt
        .block_on(Client::connect(&native(&broker)))
        .expect("connect");
    let producer = rt
        .block_on(client.producer(ProducerConfig::default()))
        .expect("producer");
    let mut healthy = 0i64;
    let mut produce_one = || {
        let delivered = rt
            .block_on(producer.send("steady", Some(0), Record::value("ok")))
            .expect("a healthy client is served");
        assert_eq!(delivered.offset, healthy);
        healthy += 1;
    };

    // Garbage: not a frame the verifier accepts.
    let mut s = connect(&broker);
    s.write_all(&[0, 0, 0, 12, 0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8])
        .unwrap();
    assert!(closed(&mut s), "garbage closes the connection");
    produce_one();

    // A request before Hello: HelloRequired, then closed.
    let mut s = connect(&broker);
    s.write_all(&metadata(5)).unwrap();
    let answer = read_response(&mut s).expect("an answer before the close");
    assert_eq!(
        summary(&answer),
        (5, msg::Error::HelloRequired, msg::Response::NONE)
    );
    assert!(closed(&mut s));

    // A version range the broker does not speak: UnsupportedVersion, then closed.
    let mut s = connect(&broker);
    s.write_all(&hello(7, 9)).unwrap();
    let answer = read_response(&mut s).expect("an answer before the close");
    assert_eq!(summary(&answer).1, msg::Error::UnsupportedVersion);
    assert!(closed(&mut s));
    produce_one();

    // After a Hello: an unknown request type is answered, and the connection stays.
    let mut s = connect(&broker);
    s.write_all(&hello(1, 1)).unwrap();
    let answer = read_response(&mut s).expect("hello answered");
    assert_eq!(summary(&answer).2, msg::Response::HelloResponse);
    s.write_all(&frame(9, msg::Request(200), &[], |b| {
        msg::InitProducerId::create(b, &msg::InitProducerIdArgs {}).as_union_value()
    }))
    .unwrap();
    let answer = read_response(&mut s).expect("unknown request answered");
    assert_eq!(
        summary(&answer),
        (9, msg::Error::UnsupportedRequest, msg::Response::NONE)
    );
    s.write_all(&metadata(10)).unwrap();
    let answer = read_response(&mut s).expect("still served");
    assert_eq!(
        summary(&answer),
        (10, msg::Error::None, msg::Response::MetadataResponse)
    );

    // A Produce whose partitions claim more payload than the frame carries: closed.
    let produce = frame(11, msg::Request::Produce, &[1, 2, 3], |b| {
        let topic = b.create_string("steady");
        let p = msg::ProducePartition::create(
            b,
            &msg::ProducePartitionArgs {
                topic: Some(topic),
                partition: 0,
                records_bytes: 1_000_000,
            },
        );
        let partitions = b.create_vector(&[p]);
        msg::Produce::create(
            b,
            &msg::ProduceArgs {
                acks: -1,
                timeout_ms: 1000,
                partitions: Some(partitions),
            },
        )
        .as_union_value()
    });
    s.write_all(&produce).unwrap();
    assert!(closed(&mut s), "a payload mismatch closes the connection");
    produce_one();

    // A Produce with a corrupt batch: a typed per-partition error, the connection stays.
    let mut s = connect(&broker);
    s.write_all(&hello(1, 1)).unwrap();
    read_response(&mut s).expect("hello answered");
    let mut batch =
        tern_protocol::batch::build_simple_batch(tern_protocol::types::TimestampMs(1), 3, 10)
            .to_vec();
    let last = batch.len() - 1;
    batch[last] ^= 0xff; // breaks the CRC
    let produce = frame(12, msg::Request::Produce, &batch, |b| {
        let topic = b.create_string("steady");
        let p = msg::ProducePartition::create(
            b,
            &msg::ProducePartitionArgs {
                topic: Some(topic),
                partition: 0,
                records_bytes: batch.len() as u32,
            },
        );
        let partitions = b.create_vector(&[p]);
        msg::Produce::create(
            b,
            &msg::ProduceArgs {
                acks: -1,
                timeout_ms: 1000,
                partitions: Some(partitions),
            },
        )
        .as_union_value()
    });
    s.write_all(&produce).unwrap();
    let answer = read_response(&mut s).expect("produce answered");
    let parts = proto::split(&answer).unwrap();
    let response = proto::response(&answer[parts.message.0..parts.message.1]).unwrap();
    let result = response
        .body_as_produce_response()
        .and_then(|r| r.partitions())
        .map(|p| p.get(0).error())
        .expect("a partition result");
    assert_eq!(result, msg::Error::CorruptMessage);

    // A frame declaring 200 MiB: refused at its size field.
    let mut s = connect(&broker);
    s.write_all(&hello(1, 1)).unwrap();
    read_response(&mut s).expect("hello answered");
    s.write_all(&(200u32 << 20).to_be_bytes()).unwrap();
    assert!(closed(&mut s), "an oversized frame closes the connection");
    produce_one();

    // The healthy client's records are all there, once each.
    assert_eq!(kafka::watermarks(&broker, "steady", 0).1, healthy);
    drop(producer);
    let _ = Bytes::new();
}

#[test]
fn the_native_producer_and_consumer_follow_a_new_leader_after_a_kill() {
    use tern_tests::cluster::{wait_for_layout, Cluster};
    let mut cluster = Cluster::start(3);
    let all = [0usize, 1, 2];
    cluster.wait_for_controller(&all, Duration::from_secs(20));
    kafka::try_create_topic(
        &cluster.brokers[0],
        "moving",
        1,
        3,
        &[("min.insync.replicas", "2")],
    )
    .expect("create the topic");
    let layout = wait_for_layout(&cluster, &all, "moving", WITHIN, |layout| {
        layout[&0].2.len() == 3
    });
    let leader = layout[&0].0 as usize;
    let bootstrap = cluster
        .brokers
        .iter()
        .map(|b| b.native_addr.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let rt = runtime();
    let client = rt
        .block_on(Client::with_config(tern::client::ClientConfig {
            bootstrap,
            ..Default::default()
        }))
        .expect("connect");
    let producer = rt
        .block_on(client.producer(ProducerConfig::default()))
        .expect("producer");
    let send_range = |range: std::ops::Range<usize>| {
        rt.block_on(async {
            let sends: Vec<_> = range
                .map(|i| producer.send("moving", Some(0), Record::value(format!("{i:05}"))))
                .collect();
            let mut offsets = Vec::new();
            for send in sends {
                offsets.push(send.await.expect("acknowledged").offset);
            }
            offsets
        })
    };
    let before = send_range(0..500);
    // The leader dies; the client learns the new one from the metadata (its requests to the
    // old one fail) and carries on.
    cluster.brokers[leader].kill9();
    let after = send_range(500..1000);
    let live: Vec<usize> = all.iter().copied().filter(|b| *b != leader).collect();
    let moved = wait_for_layout(&cluster, &live, "moving", WITHIN, |layout| {
        layout[&0].0 >= 0 && layout[&0].0 as usize != leader
    });
    assert_ne!(moved[&0].0 as usize, leader);
    let acked: Vec<i64> = before.into_iter().chain(after).collect();
    rt.block_on(async {
        let mut consumer = client.consumer(ConsumerConfig::default());
        consumer.assign("moving", 0, StartAt::Earliest);
        let read = read_exactly(&mut consumer, 1000).await;
        for (i, consumed) in read.iter().enumerate() {
            assert_eq!(consumed.offset, i as i64, "each record once, in order");
            assert_eq!(
                consumed.value.as_deref(),
                Some(format!("{i:05}").as_bytes())
            );
            assert!(
                acked[i] == i as i64 || acked[i] == -1,
                "record {i} acked at {}",
                acked[i]
            );
        }
    });
}

#[test]
fn a_batch_refused_for_good_leaves_its_partition_writable_and_writes_nothing_twice() {
    let broker = Broker::start(1);
    kafka::create_topic(&broker, "refusals", 1, &[("max.message.bytes", "3000")]);
    let value = |i: usize| format!("{i:04}-{}", "y".repeat(100));
    runtime().block_on(async {
        let client = Client::connect(&native(&broker)).await.expect("connect");
        let producer = client
            .producer(ProducerConfig {
                batch_bytes: 1500,
                ..ProducerConfig::default()
            })
            .await
            .expect("producer");
        // Pipelined, so batches numbered after the refused one are in flight behind it: one
        // record too large for the topic, in a batch of its own, amid small ones.
        let too_large = 100;
        let sends: Vec<_> = (0..200)
            .map(|i| {
                let record = if i == too_large {
                    Record::value(vec![b'x'; 5000])
                } else {
                    Record::value(value(i))
                };
                producer.send("refusals", Some(0), record)
            })
            .collect();
        let mut offsets = Vec::new();
        for (i, send) in sends.into_iter().enumerate() {
            let result = send.await;
            if i == too_large {
                let code = result.err().and_then(|e| e.code());
                assert_eq!(code, Some(msg::Error::MessageTooLarge.0));
            } else {
                offsets.push(result.expect("a small record is written").offset);
            }
        }
        assert_eq!(offsets, (0..199).collect::<Vec<i64>>());
        // Refused alone, with nothing behind it; the next record is written.
        let refused = producer
            .send("refusals", Some(0), Record::value(vec![b'x'; 5000]))
            .await;
        assert!(refused.is_err(), "{refused:?}");
        let last = producer
            .send("refusals", Some(0), Record::value(value(200)))
            .await
            .expect("written after a refusal");
        assert_eq!(last.offset, 199);

        let mut consumer = client.consumer(ConsumerConfig::default());
        consumer.assign("refusals", 0, StartAt::Earliest);
        let read = read_exactly(&mut consumer, 200).await;
        let want: Vec<String> = (0..=200).filter(|i| *i != too_large).map(value).collect();
        let got: Vec<String> = read
            .iter()
            .map(|c| String::from_utf8_lossy(c.value.as_deref().unwrap_or_default()).into())
            .collect();
        assert_eq!(got, want);
    });
}

#[test]
fn flush_waits_for_the_records_sent_before_it_while_others_keep_sending() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let broker = Broker::start(1);
    kafka::create_topic(&broker, "flushed", 2, &[]);
    runtime().block_on(async {
        let client = Client::connect(&native(&broker)).await.expect("connect");
        // A long linger: without the flush, these records would wait for it.
        let producer = Arc::new(
            client
                .producer(ProducerConfig {
                    linger: Duration::from_secs(20),
                    ..ProducerConfig::default()
                })
                .await
                .expect("producer"),
        );
        // Another task sends without pause to the other partition, until told to stop (or
        // for a minute at most), so the producer is never idle while the flush waits.
        let stop = Arc::new(AtomicBool::new(false));
        let sending = Arc::new(AtomicBool::new(true));
        let other = {
            let (producer, stop, sending) = (producer.clone(), stop.clone(), sending.clone());
            tokio::spawn(async move {
                let until = Instant::now() + WITHIN;
                while !stop.load(Ordering::SeqCst) && Instant::now() < until {
                    producer.send_with(
                        "flushed",
                        Some(1),
                        Record::value("other").borrowed(),
                        |_| {},
                    );
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                sending.store(false, Ordering::SeqCst);
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let acked = Arc::new(AtomicUsize::new(0));
        for i in 0..50 {
            let acked = acked.clone();
            let record = Record::value(format!("{i}"));
            producer.send_with("flushed", Some(0), record.borrowed(), move |result| {
                if result.is_ok() {
                    acked.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        producer.flush().await;
        let still_sending = sending.load(Ordering::SeqCst);
        assert_eq!(acked.load(Ordering::SeqCst), 50, "flush returned early");
        assert!(
            still_sending,
            "flush waited for the other task to stop sending"
        );
        stop.store(true, Ordering::SeqCst);
        other.await.expect("the other sender");
    });
}

#[test]
fn every_delivery_callback_is_called_once_even_when_the_runtime_stops_first() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use tern::client::{Delivery, DeliveryListener, Error};

    /// Counts the reports per tag, and the failed ones.
    struct Tally(Mutex<Vec<u32>>, AtomicUsize);
    impl DeliveryListener for Tally {
        fn delivered(&self, tag: u64, result: Result<Delivery, Error>) {
            self.0.lock().expect("tally")[tag as usize] += 1;
            if result.is_err() {
                self.1.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    let broker = Broker::start(1);
    kafka::create_topic(&broker, "orphans", 1, &[]);
    let rt = runtime();
    let called = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(Tally(Mutex::new(vec![0; 1000]), AtomicUsize::new(0)));
    let lingering = ProducerConfig {
        linger: Duration::from_secs(20),
        ..ProducerConfig::default()
    };
    let producers = rt.block_on(async {
        let client = Client::connect(&native(&broker)).await.expect("connect");
        let producer = client.producer(lingering.clone()).await.expect("producer");
        let tagged = client
            .producer_with_listener(lingering, tally.clone())
            .await
            .expect("producer");
        for i in 0..1000 {
            let called = called.clone();
            let record = Record::value(format!("{i}"));
            producer.send_with("orphans", Some(0), record.borrowed(), move |_| {
                called.fetch_add(1, Ordering::SeqCst);
            });
            tagged
                .send_tagged("orphans", Some(0), record.borrowed(), i)
                .expect("a listener is registered");
        }
        (producer, tagged)
    });
    // The producers' tasks end with the runtime, their records still lingering.
    rt.shutdown_timeout(Duration::from_secs(5));
    drop(producers);
    assert_eq!(called.load(Ordering::SeqCst), 1000);
    let reports = tally.0.lock().expect("tally").clone();
    assert!(
        reports.iter().all(|n| *n == 1),
        "each tag once: {reports:?}"
    );
    assert_eq!(tally.1.load(Ordering::SeqCst), 1000, "all as failures");
}

#[test]
fn the_native_producer_uses_partitions_added_to_a_topic() {
    use rdkafka::admin::NewPartitions;
    let broker = Broker::start(1);
    kafka::create_topic(&broker, "growing", 1, &[]);
    runtime().block_on(async {
        let client = Client::connect(&native(&broker)).await.expect("connect");
        let named = client
            .producer(ProducerConfig::default())
            .await
            .expect("producer");
        // Its own client, so the count the first producer learns again is not shared.
        let aging_client = Client::connect(&native(&broker)).await.expect("connect");
        let aging = aging_client
            .producer(ProducerConfig {
                metadata_max_age: Duration::from_millis(100),
                ..ProducerConfig::default()
            })
            .await
            .expect("producer");
        for producer in [&named, &aging] {
            let first = producer
                .send("growing", Some(0), Record::value("first"))
                .await
                .expect("first");
            assert_eq!(first.partition, 0);
        }
        let grow = NewPartitions::new("growing", 3);
        let created = kafka::admin(&broker)
            .create_partitions([&grow], &kafka::admin_options())
            .await
            .expect("create partitions");
        assert!(created.iter().all(|r| r.is_ok()), "{created:?}");
        // A record to a partition beyond the count learned asks again at once.
        let third = named
            .send("growing", Some(2), Record::value("third"))
            .await
            .expect("a record to a new partition");
        assert_eq!((third.partition, third.offset), (2, 0));
        let beyond = named
            .send("growing", Some(5), Record::value("nowhere"))
            .await;
        assert_eq!(
            beyond.err().and_then(|e| e.code()),
            Some(msg::Error::UnknownTopicOrPartition.0)
        );
        // The other producer never named a new partition: its keyed records spread over all
        // three only because its count, older than metadata_max_age, is asked again.
        tokio::time::sleep(Duration::from_millis(300)).await;
        aging
            .send("growing", Some(0), Record::value("wake"))
            .await
            .expect("wake");
        let sends: Vec<_> = (0..60)
            .map(|i| {
                aging.send(
                    "growing",
                    None,
                    Record::value("k").with_key(format!("key-{i}")),
                )
            })
            .collect();
        let mut partitions = std::collections::BTreeSet::new();
        for send in sends {
            partitions.insert(send.await.expect("keyed").partition);
        }
        assert_eq!(partitions.into_iter().collect::<Vec<_>>(), vec![0, 1, 2]);
    });
}

#[test]
fn a_lingered_batch_waiting_for_its_partitions_in_flight_limit_goes_when_the_answer_comes() {
    let broker = Broker::start(1);
    kafka::create_topic(&broker, "one-at-a-time", 1, &[]);
    runtime().block_on(async {
        let client = Client::connect(&native(&broker)).await.expect("connect");
        // One batch in flight at a time, a short linger: the second record's batch lingers
        // out while the first is in flight (an fdatasync takes longer than the linger), and
        // nothing else is sent to wake the producer when the first is answered.
        let producer = client
            .producer(ProducerConfig {
                max_in_flight: 1,
                linger: Duration::from_micros(600),
                ..ProducerConfig::default()
            })
            .await
            .expect("producer");
        for round in 0..50i64 {
            let first = producer.send("one-at-a-time", Some(0), Record::value("a"));
            tokio::time::sleep(Duration::from_micros(800)).await;
            let second = producer.send("one-at-a-time", Some(0), Record::value("b"));
            let (first, second) =
                tokio::time::timeout(WITHIN, async { (first.await, second.await) })
                    .await
                    .expect("both delivered, without another send to wake the producer");
            assert_eq!(first.expect("first").offset, 2 * round);
            assert_eq!(second.expect("second").offset, 2 * round + 1);
        }
    });
}

#[test]
fn each_tagged_record_reaches_the_producers_listener_once_with_its_tag() {
    use std::sync::{Arc, Mutex};
    use tern::client::{Delivery, DeliveryListener, Error, RecordRef};

    #[derive(Default)]
    struct Heard(Mutex<Vec<(u64, Result<Delivery, Error>)>>);
    impl DeliveryListener for Heard {
        fn delivered(&self, tag: u64, result: Result<Delivery, Error>) {
            self.0.lock().expect("heard").push((tag, result));
        }
    }

    let broker = Broker::start(1);
    kafka::create_topic(&broker, "tagged", 2, &[]);
    let value = |tag: u64| format!("tagged-{tag}");
    runtime().block_on(async {
        let client = Client::connect(&native(&broker)).await.expect("connect");
        let plain = client
            .producer(ProducerConfig::default())
            .await
            .expect("producer");
        let refused = plain.send_tagged("tagged", Some(0), RecordRef::value(b"x"), 1);
        assert!(
            matches!(refused, Err(Error::Usage(_))),
            "a producer without a listener refuses tagged records: {refused:?}"
        );

        let heard = Arc::new(Heard::default());
        let producer = client
            .producer_with_listener(ProducerConfig::default(), heard.clone())
            .await
            .expect("producer");
        for tag in 0..500u64 {
            let value = value(tag);
            let partition = (tag % 2) as i32;
            producer
                .send_tagged(
                    "tagged",
                    Some(partition),
                    RecordRef::value(value.as_bytes()),
                    tag,
                )
                .expect("a listener is registered");
        }
        // A partition the topic lacks: reported to the listener too, as a failure.
        producer
            .send_tagged("tagged", Some(7), RecordRef::value(b"nowhere"), 500)
            .expect("a listener is registered");
        producer.flush().await;
        let deadline = Instant::now() + WITHIN;
        while heard.0.lock().expect("heard").len() < 501 {
            assert!(Instant::now() < deadline, "not every record was reported");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Room for a second report of any record to show.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut heard = std::mem::take(&mut *heard.0.lock().expect("heard"));
        heard.sort_by_key(|(tag, _)| *tag);
        let tags: Vec<u64> = heard.iter().map(|(tag, _)| *tag).collect();
        assert_eq!(tags, (0..=500).collect::<Vec<u64>>(), "each tag once");
        let (nowhere, written) = heard.split_last().expect("501 reports");
        assert!(nowhere.1.is_err(), "partition 7: {:?}", nowhere.1);
        for (tag, result) in written {
            let delivery = result.as_ref().expect("written");
            assert_eq!(delivery.partition, (tag % 2) as i32);
            assert_eq!(delivery.offset, (tag / 2) as i64, "tag {tag} in send order");
        }

        let mut consumer = client.consumer(ConsumerConfig::default());
        consumer.assign("tagged", 1, StartAt::Earliest);
        let read = read_exactly(&mut consumer, 250).await;
        let got: Vec<String> = read
            .iter()
            .map(|c| String::from_utf8_lossy(c.value.as_deref().unwrap_or_default()).into())
            .collect();
        let want: Vec<String> = (0..500).filter(|t| t % 2 == 1).map(value).collect();
        assert_eq!(got, want);
    });
}

#[test]
fn natively_compressed_batches_are_stored_compressed_and_read_byte_exact_by_rdkafka() {
    use tern::client::Codec;
    use tern_protocol::batch::BatchHeader;
    let broker = Broker::start(1);
    let count = 300;
    let rt = runtime();
    for (name, codec) in [
        ("gzip", Codec::Gzip { level: -1 }),
        ("snappy", Codec::Snappy),
        ("lz4", Codec::Lz4),
        ("zstd", Codec::Zstd { level: 3 }),
    ] {
        let topic = format!("codec-{name}");
        kafka::create_topic(&broker, &topic, 1, &[]);
        let offsets: Vec<i64> = rt.block_on(async {
            let client = Client::connect(&native(&broker)).await.expect("connect");
            let producer = client
                .producer(ProducerConfig {
                    compression: codec,
                    batch_bytes: 16 * 1024,
                    ..ProducerConfig::default()
                })
                .await
                .expect("producer");
            let sends: Vec<_> = (0..count)
                .map(|i| producer.send(&topic, Some(0), record(i)))
                .collect();
            let mut offsets = Vec::new();
            for send in sends {
                offsets.push(send.await.expect("delivered").offset);
            }
            offsets
        });
        assert_eq!(offsets, (0..count as i64).collect::<Vec<_>>(), "{name}");

        // The first batch on disk carries the codec (the topic keeps the producer's).
        let segment = broker
            .data_dir()
            .join("data")
            .join(format!("{topic}-0"))
            .join("00000000000000000000.log");
        let stored = std::fs::read(&segment).expect("segment");
        let header = BatchHeader::parse_unchecked(&stored).expect("a batch first");
        assert_eq!(header.compression_codec(), codec.id(), "{name}");

        let read = kafka::consume(&broker, &topic, &[0], count);
        assert_eq!(read.len(), count, "{name}");
        for (i, consumed) in read.iter().enumerate() {
            let want = record(i);
            assert_eq!(consumed.offset, i as i64, "{name}");
            assert_eq!(
                consumed.record.key.as_deref(),
                want.key.as_deref(),
                "{name}"
            );
            assert_eq!(
                consumed.record.value.as_deref(),
                want.value.as_deref(),
                "{name}"
            );
            let headers: Vec<(String, Option<Vec<u8>>)> = want
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.as_ref().map(|v| v.to_vec())))
                .collect();
            assert_eq!(consumed.record.headers, headers, "{name}");
        }
    }
}
