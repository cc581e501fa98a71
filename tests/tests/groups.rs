//! Consumer groups end to end: a real `tern serve` process, rdkafka consumers in groups, and
//! a raw-wire client for the error cases. Build the broker first (`cargo build -p tern`).

mod groups_support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use groups_support::*;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

fn partitions_of(consumer: &BaseConsumer) -> BTreeSet<i32> {
    consumer
        .assignment()
        .map(|list| list.elements().iter().map(|e| e.partition()).collect())
        .unwrap_or_default()
}

/// Polls every consumer until `done` holds (or panics after `timeout`), collecting payloads
/// per consumer and committing synchronously after each message.
fn poll_until(
    consumers: &[&BaseConsumer],
    seen: &mut Vec<Vec<String>>,
    timeout: Duration,
    done: impl Fn(&[&BaseConsumer], &[Vec<String>]) -> bool,
) {
    let deadline = Instant::now() + timeout;
    seen.resize(consumers.len(), Vec::new());
    while !done(consumers, seen) {
        assert!(
            Instant::now() < deadline,
            "condition not reached in {timeout:?}"
        );
        for (index, consumer) in consumers.iter().enumerate() {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(20)) {
                let payload =
                    String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned();
                seen[index].push(payload);
                consumer
                    .commit_message(&message, CommitMode::Sync)
                    .expect("commit");
            }
        }
    }
}

#[test]
fn two_consumers_split_six_partitions_then_survivor_takes_over_without_duplicates() {
    let broker = Broker::start(1, &["--default-partitions", "6"]);
    produce(&broker, "split", 6, 600);
    let a = consumer(&broker, "g-split");
    let b = consumer(&broker, "g-split");
    a.subscribe(&["split"]).unwrap();
    b.subscribe(&["split"]).unwrap();
    let mut seen = Vec::new();
    poll_until(&[&a, &b], &mut seen, Duration::from_secs(60), |c, seen| {
        let (pa, pb) = (partitions_of(c[0]), partitions_of(c[1]));
        pa.len() + pb.len() == 6
            && pa.is_disjoint(&pb)
            && !pa.is_empty()
            && !pb.is_empty()
            && seen.iter().map(Vec::len).sum::<usize>() >= 100
    });
    let (pa, pb) = (partitions_of(&a), partitions_of(&b));
    assert!(pa.is_disjoint(&pb), "overlap: {pa:?} {pb:?}");
    assert_eq!(pa.union(&pb).count(), 6, "gap: {pa:?} {pb:?}");
    // b leaves (LeaveGroup on close); a must take every partition and finish the topic.
    b.unsubscribe();
    drop(b);
    let mut rest = vec![seen[0].clone()];
    let before_b = seen[1].clone();
    poll_until(&[&a], &mut rest, Duration::from_secs(60), |c, seen| {
        partitions_of(c[0]).len() == 6 && seen[0].len() + before_b.len() >= 600
    });
    let mut all: Vec<String> = rest[0].iter().chain(&before_b).cloned().collect();
    all.sort();
    let unique: BTreeSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), 600, "gap in consumption");
    // Every record was committed right after it was seen, so no uncommitted tail exists.
    assert_eq!(all.len(), 600, "duplicates after takeover");
}

#[test]
fn expired_member_is_removed_after_its_session_timeout() {
    let broker = Broker::start(1, &["--default-partitions", "6"]);
    produce(&broker, "expire", 6, 60);
    let a = consumer(&broker, "g-expire");
    a.subscribe(&["expire"]).unwrap();
    // A member in another process, so SIGKILL stops it without a LeaveGroup.
    let mut child = Command::new(env!("CARGO_BIN_EXE_group-member"))
        .args([&broker.bootstrap(), "g-expire", "expire"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    poll_until(&[&a], &mut seen, Duration::from_secs(60), |c, _| {
        partitions_of(c[0]).len() == 3
    });
    // SIGKILL: no LeaveGroup, no more heartbeats.
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = Instant::now();
    poll_until(&[&a], &mut seen, Duration::from_secs(30), |c, _| {
        partitions_of(c[0]).len() == 6
    });
    let elapsed = killed.elapsed();
    println!("dead member expired and partitions moved after {elapsed:?} (session timeout 6 s)");
    assert!(
        elapsed >= Duration::from_secs(4),
        "expired before its session timeout: {elapsed:?}"
    );
    assert!(broker.log().contains("member session expired"));
}

#[test]
fn committed_offsets_survive_a_broker_restart() {
    let mut broker = Broker::start(1, &["--default-partitions", "3"]);
    produce(&broker, "durable", 3, 90);
    let mut committed: BTreeMap<i32, i64> = BTreeMap::new();
    {
        let c = consumer(&broker, "g-durable");
        c.subscribe(&["durable"]).unwrap();
        let mut seen = Vec::new();
        poll_until(&[&c], &mut seen, Duration::from_secs(60), |_, seen| {
            seen[0].len() >= 40
        });
        let positions = c.committed(Duration::from_secs(10)).unwrap();
        for element in positions.elements() {
            if let Offset::Offset(offset) = element.offset() {
                committed.insert(element.partition(), offset);
            }
        }
        // rust-rdkafka's BaseConsumer can stall in drop after `committed()` here; the same
        // sequence through librdkafka's Python binding closes in about 1 ms against Tern
        // (LeaveGroup answered), so the stall is on the client side. The offsets are already
        // durable: let it close in the background.
        std::thread::spawn(move || drop(c));
    }
    assert!(committed.values().sum::<i64>() >= 40, "{committed:?}");
    broker.restart();
    let c = consumer(&broker, "g-durable");
    let mut wanted = TopicPartitionList::new();
    for partition in 0..3 {
        wanted.add_partition("durable", partition);
    }
    let after = c
        .committed_offsets(wanted, Duration::from_secs(30))
        .unwrap();
    if std::env::var("GROUPS_DEBUG").is_ok() {
        eprintln!("{}", broker.log());
    }
    for element in after.elements() {
        let expected = committed
            .get(&element.partition())
            .copied()
            .map(Offset::Offset)
            .unwrap_or(Offset::Invalid);
        assert_eq!(
            element.offset(),
            expected,
            "partition {}",
            element.partition()
        );
    }
    // Resume: the first record per partition is exactly at the committed offset. Partitions
    // consumed to their end before the restart have nothing more to give.
    let unfinished = (0..3)
        .filter(|&partition| {
            let (_, high) = c
                .fetch_watermarks("durable", partition, Duration::from_secs(10))
                .unwrap();
            committed.get(&partition).copied().unwrap_or(0) < high
        })
        .count();
    c.subscribe(&["durable"]).unwrap();
    let mut first: BTreeMap<i32, i64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while first.len() < unfinished && Instant::now() < deadline {
        if let Some(Ok(message)) = c.poll(Duration::from_millis(50)) {
            first.entry(message.partition()).or_insert(message.offset());
        }
    }
    assert_eq!(
        first.len(),
        unfinished,
        "every unfinished partition resumes"
    );
    for (partition, offset) in first {
        assert_eq!(
            offset,
            committed.get(&partition).copied().unwrap_or(0),
            "partition {partition}"
        );
    }
}

struct CountingContext(Arc<AtomicUsize>);
impl ClientContext for CountingContext {}
impl ConsumerContext for CountingContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if matches!(rebalance, Rebalance::Revoke(_)) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[test]
fn static_member_rejoining_within_its_session_timeout_causes_no_rebalance() {
    let broker = Broker::start(1, &["--default-partitions", "4"]);
    produce(&broker, "static", 4, 40);
    let revocations = Arc::new(AtomicUsize::new(0));
    let mut static_config = consumer_config(&broker, "g-static");
    static_config
        .set("group.instance.id", "instance-a")
        .set("session.timeout.ms", "20000");
    let b: BaseConsumer<CountingContext> = consumer_config(&broker, "g-static")
        .set("session.timeout.ms", "20000")
        .create_with_context(CountingContext(revocations.clone()))
        .unwrap();
    let a: BaseConsumer = static_config.create().unwrap();
    a.subscribe(&["static"]).unwrap();
    b.subscribe(&["static"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let b_parts =
        |b: &BaseConsumer<CountingContext>| b.assignment().map(|l| l.count()).unwrap_or(0);
    while !(partitions_of(&a).len() == 2 && b_parts(&b) == 2) {
        assert!(Instant::now() < deadline, "group never split");
        a.poll(Duration::from_millis(20));
        b.poll(Duration::from_millis(20));
    }
    let a_before = partitions_of(&a);
    let rebalances_before = broker.rebalance_times_ms("g-static").len();
    let revoked_before = revocations.load(Ordering::SeqCst);
    // A static member does not send LeaveGroup on close; its replacement comes back in time.
    drop(a);
    let a2: BaseConsumer = static_config.create().unwrap();
    a2.subscribe(&["static"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while partitions_of(&a2).is_empty() {
        assert!(
            Instant::now() < deadline,
            "static member never got its assignment back"
        );
        a2.poll(Duration::from_millis(20));
        b.poll(Duration::from_millis(20));
    }
    for _ in 0..50 {
        a2.poll(Duration::from_millis(20));
        b.poll(Duration::from_millis(20));
    }
    assert_eq!(
        partitions_of(&a2),
        a_before,
        "the static member's assignment changed"
    );
    assert_eq!(
        revocations.load(Ordering::SeqCst),
        revoked_before,
        "the other member saw a rebalance"
    );
    assert_eq!(
        broker.rebalance_times_ms("g-static").len(),
        rebalances_before,
        "the broker ran a rebalance"
    );
}

#[test]
fn auto_offset_reset_earliest_and_latest_without_commits() {
    let broker = Broker::start(1, &["--default-partitions", "1"]);
    produce(&broker, "reset", 1, 10);
    let earliest = consumer(&broker, "g-earliest");
    earliest.subscribe(&["reset"]).unwrap();
    let mut latest_config = consumer_config(&broker, "g-latest");
    latest_config.set("auto.offset.reset", "latest");
    let latest: BaseConsumer = latest_config.create().unwrap();
    latest.subscribe(&["reset"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut first_earliest = None;
    while first_earliest.is_none() || partitions_of(&latest).is_empty() {
        assert!(Instant::now() < deadline);
        if let Some(Ok(m)) = earliest.poll(Duration::from_millis(20)) {
            first_earliest.get_or_insert(m.offset());
        }
        assert!(
            latest
                .poll(Duration::from_millis(20))
                .and_then(Result::ok)
                .is_none(),
            "latest saw old records"
        );
    }
    assert_eq!(first_earliest, Some(0));
    // Let the latest consumer settle its position at the end, then produce more.
    for _ in 0..25 {
        assert!(
            latest
                .poll(Duration::from_millis(20))
                .and_then(Result::ok)
                .is_none(),
            "latest saw old records"
        );
    }
    produce(&broker, "reset", 1, 5);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "latest consumer saw nothing new");
        if let Some(Ok(m)) = latest.poll(Duration::from_millis(50)) {
            assert!(
                m.offset() >= 10,
                "latest consumer read offset {}",
                m.offset()
            );
            break;
        }
    }
}

#[test]
fn many_groups_on_two_shards_at_once() {
    let broker = Broker::start(2, &["--default-partitions", "2"]);
    produce(&broker, "many", 2, 20);
    let handles: Vec<_> = (0..12)
        .map(|i| {
            let config = consumer_config(&broker, &format!("many-group-{i}"));
            std::thread::spawn(move || {
                let c: BaseConsumer = config.create().unwrap();
                c.subscribe(&["many"]).unwrap();
                let mut count = 0;
                let deadline = Instant::now() + Duration::from_secs(90);
                while count < 20 {
                    assert!(Instant::now() < deadline, "group {i} consumed only {count}");
                    if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
                        count += 1;
                        c.commit_message(&m, CommitMode::Sync).unwrap();
                    }
                }
                c.unsubscribe();
                drop(c);
                count
            })
        })
        .collect();
    for handle in handles {
        assert_eq!(handle.join().unwrap(), 20);
    }
    let log = broker.log();
    assert!(
        log.contains("loaded shard=0") && log.contains("loaded shard=1"),
        "both shards own group partitions"
    );
}

/// Raw-wire helpers for the error-code test (classic versions: JoinGroup v0, SyncGroup v0,
/// OffsetCommit v2).
fn raw_join(raw: &mut Raw, group: &str, metadata: &[u8]) -> (i16, i32, String) {
    let mut body = Vec::new();
    put_str(&mut body, group);
    body.extend_from_slice(&10_000i32.to_be_bytes());
    put_str(&mut body, "");
    put_str(&mut body, "consumer");
    body.extend_from_slice(&1i32.to_be_bytes());
    put_str(&mut body, "range");
    put_bytes(&mut body, metadata);
    let response = raw.call(11, 0, &body);
    let mut c = Cursor(&response);
    let error = c.i16();
    let generation = c.i32();
    let _protocol = c.string();
    let _leader = c.string();
    (error, generation, c.string())
}

fn raw_sync(raw: &mut Raw, group: &str, generation: i32, member: &str) -> i16 {
    let mut body = Vec::new();
    put_str(&mut body, group);
    body.extend_from_slice(&generation.to_be_bytes());
    put_str(&mut body, member);
    body.extend_from_slice(&1i32.to_be_bytes());
    put_str(&mut body, member);
    put_bytes(&mut body, b"assignment");
    Cursor(&raw.call(14, 0, &body)).i16()
}

fn raw_commit(
    raw: &mut Raw,
    group: &str,
    generation: i32,
    member: &str,
    topic: &str,
    metadata: &str,
) -> i16 {
    let mut body = Vec::new();
    put_str(&mut body, group);
    body.extend_from_slice(&generation.to_be_bytes());
    put_str(&mut body, member);
    body.extend_from_slice(&(-1i64).to_be_bytes());
    body.extend_from_slice(&1i32.to_be_bytes());
    put_str(&mut body, topic);
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&0i32.to_be_bytes());
    body.extend_from_slice(&7i64.to_be_bytes());
    put_str(&mut body, metadata);
    let response = raw.call(8, 2, &body);
    let mut c = Cursor(&response);
    assert_eq!(c.i32(), 1);
    let _topic = c.string();
    assert_eq!(c.i32(), 1);
    let _partition = c.i32();
    c.i16()
}

#[test]
fn bad_commits_and_joins_get_java_error_codes_and_disturb_nothing() {
    const NONE: i16 = 0;
    const OFFSET_METADATA_TOO_LARGE: i16 = 12;
    const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    const ILLEGAL_GENERATION: i16 = 22;
    const UNKNOWN_MEMBER_ID: i16 = 25;
    const REBALANCE_IN_PROGRESS: i16 = 27;
    const INVALID_REQUEST: i16 = 42;
    let broker = Broker::start(2, &["--default-partitions", "1"]);
    produce(&broker, "bad", 1, 1);
    let mut raw = Raw::connect(&broker);
    let (error, generation, member) = raw_join(
        &mut raw,
        "g-bad",
        b"\x00\x01\x00\x00\x00\x01\x00\x03bad\x00\x00\x00\x00",
    );
    assert_eq!((error, generation), (NONE, 1));
    // Joined but not synced: the generation is not complete yet.
    assert_eq!(
        raw_commit(&mut raw, "g-bad", generation, &member, "bad", ""),
        REBALANCE_IN_PROGRESS
    );
    assert_eq!(raw_sync(&mut raw, "g-bad", generation, &member), NONE);
    let big = "m".repeat(5000);
    let cases: Vec<(&str, &str, i32, &str, &str, i16)> = vec![
        (
            "stale generation",
            "g-bad",
            generation - 1,
            member.as_str(),
            "",
            ILLEGAL_GENERATION,
        ),
        (
            "unknown member",
            "g-bad",
            generation,
            "nobody",
            "",
            UNKNOWN_MEMBER_ID,
        ),
        (
            "non-existent group",
            "g-nowhere",
            3,
            "nobody",
            "",
            ILLEGAL_GENERATION,
        ),
        (
            "oversized metadata",
            "g-bad",
            generation,
            member.as_str(),
            &big,
            OFFSET_METADATA_TOO_LARGE,
        ),
        (
            "unknown topic",
            "g-bad",
            generation,
            member.as_str(),
            "",
            UNKNOWN_TOPIC_OR_PARTITION,
        ),
        (
            "valid commit",
            "g-bad",
            generation,
            member.as_str(),
            "",
            NONE,
        ),
        ("standalone commit", "g-simple", -1, "", "", NONE),
    ];
    for (name, group, generation, member, metadata, expected) in cases {
        let topic = if name == "unknown topic" {
            "no-such-topic"
        } else {
            "bad"
        };
        assert_eq!(
            raw_commit(&mut raw, group, generation, member, topic, metadata),
            expected,
            "{name}"
        );
    }
    // Oversized subscription metadata in JoinGroup.
    let (error, _, _) = raw_join(&mut raw, "g-bad-join", &vec![0u8; 20_000]);
    assert_eq!(error, INVALID_REQUEST);
    // Nothing else was disturbed: the group still answers and a real consumer sees the commit.
    let c = consumer(&broker, "g-bad");
    let mut wanted = TopicPartitionList::new();
    wanted.add_partition("bad", 0);
    let committed = c
        .committed_offsets(wanted, Duration::from_secs(10))
        .unwrap();
    assert_eq!(committed.elements()[0].offset(), Offset::Offset(7));
}

#[test]
fn rebalance_of_two_members_over_twelve_partitions_is_measured() {
    let broker = Broker::start(1, &["--default-partitions", "12"]);
    produce(&broker, "measure", 12, 1200);
    let a = consumer(&broker, "g-measure");
    a.subscribe(&["measure"]).unwrap();
    let mut seen = Vec::new();
    poll_until(&[&a], &mut seen, Duration::from_secs(60), |c, _| {
        partitions_of(c[0]).len() == 12
    });
    let b = consumer(&broker, "g-measure");
    let joined = Instant::now();
    b.subscribe(&["measure"]).unwrap();
    let mut seen = Vec::new();
    poll_until(&[&a, &b], &mut seen, Duration::from_secs(60), |c, seen| {
        partitions_of(c[0]).len() == 6 && partitions_of(c[1]).len() == 6 && !seen[1].is_empty()
    });
    let client_ms = joined.elapsed().as_millis();
    let broker_ms = broker.rebalance_times_ms("g-measure");
    println!(
        "REBALANCE 2 members / 12 partitions: broker-side (join of 2nd member -> Stable) = {:?} ms; client-side (subscribe -> both consuming) = {client_ms} ms",
        broker_ms.last()
    );
    assert!(broker_ms.len() >= 2);
}
