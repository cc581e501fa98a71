//! Partition replication across three real broker processes on loopback: a topic with
//! replication factor 3 and `min.insync.replicas=2`, an idempotent rdkafka producer at
//! acks=all, and the partition's leader killed with SIGKILL round after round (then
//! restarted, and awaited back in the ISR). Every acknowledged record must be read back
//! exactly once, at the offset it was acknowledged with, in order. With two of the three
//! brokers down, acks=all is refused with NOT_ENOUGH_REPLICAS and nothing acknowledged is
//! lost. Prints the failover times it measures (kill -9 to the first acknowledged produce on
//! the new leader).
//!
//! A second test kills the group coordinator (the leader of the group's `__consumer_offsets`
//! partition, which has three replicas): the committed offset survives and a consumer of the
//! same group resumes from it through the new coordinator.
//!
//! `TERN_REPLICATION_ROUNDS` runs more rounds (a soak outside CI).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use tern_tests::cluster::{wait_for_layout, Cluster};
use tern_tests::kafka::{self, Rec};

const TOPIC: &str = "ledger";
const ROUNDS: usize = 10;
const PER_BATCH: usize = 100;
/// `replica.lag.time.max.ms` for the test cluster (Kafka's default is 30 s).
const LAG_MS: u64 = 2_000;

/// Sends `count` numbered records to partition 0; every one must be acknowledged. Returns
/// them as (offset, value).
fn send(producer: &FutureProducer, next: &mut usize, count: usize) -> Vec<(i64, Vec<u8>)> {
    let records: Vec<Rec> = (0..count)
        .map(|i| Rec::value(format!("record-{:07}", *next + i)))
        .collect();
    *next += count;
    kafka::try_produce(producer, TOPIC, Some(0), &records)
        .into_iter()
        .zip(records)
        .map(|(outcome, record)| match outcome {
            Ok((_, offset)) => (offset, record.value.expect("value")),
            Err(error) => panic!(
                "{} was not acknowledged: {error}",
                String::from_utf8_lossy(record.value.as_deref().unwrap_or_default())
            ),
        })
        .collect()
}

/// The live broker leading partition 0, once the live brokers agree on one.
fn leader(cluster: &Cluster, live: &[usize]) -> usize {
    let layout = wait_for_layout(cluster, live, TOPIC, Duration::from_secs(60), |layout| {
        live.contains(&(layout[&0].0.max(0) as usize)) && layout[&0].0 >= 0
    });
    layout[&0].0 as usize
}

/// Reads the whole partition and checks every acknowledged record is there exactly once,
/// at its acknowledged offset, with records in the order they were sent.
fn check_everything_acknowledged_is_there(cluster: &Cluster, via: usize, acked: &[(i64, Vec<u8>)]) {
    let (low, high) = kafka::watermarks(&cluster.brokers[via], TOPIC, 0);
    assert_eq!(low, 0);
    let consumer = kafka::consumer_with(
        &cluster.brokers[via],
        &[("bootstrap.servers", cluster.bootstrap().as_str())],
    );
    kafka::assign(&consumer, TOPIC, &[0], Offset::Beginning);
    let read = kafka::read_exactly(&consumer, high as usize, Duration::from_secs(60));
    let by_offset: BTreeMap<i64, Vec<u8>> = read
        .iter()
        .map(|c| (c.offset, c.record.value.clone().expect("value")))
        .collect();
    assert_eq!(
        by_offset.keys().copied().collect::<Vec<_>>(),
        (0..high).collect::<Vec<_>>(),
        "offsets 0..{high} each read once"
    );
    for (offset, value) in acked {
        assert_eq!(
            by_offset.get(offset),
            Some(value),
            "acknowledged record at offset {offset} lost or changed"
        );
    }
    let mut seen = HashSet::new();
    let mut previous = String::new();
    for value in by_offset.values() {
        let value = String::from_utf8_lossy(value).into_owned();
        assert!(seen.insert(value.clone()), "{value} read twice");
        assert!(value > previous, "{value} after {previous}: out of order");
        previous = value;
    }
}

#[test]
fn acknowledged_records_survive_repeated_leader_kills() {
    let lag = LAG_MS.to_string();
    let mut cluster = Cluster::start_with(3, &["--replica-lag-time-max-ms", &lag]);
    let all = [0usize, 1, 2];
    cluster.wait_for_controller(&all, Duration::from_secs(20));
    kafka::try_create_topic(
        &cluster.brokers[0],
        TOPIC,
        1,
        3,
        &[("min.insync.replicas", "2")],
    )
    .expect("create the topic");
    wait_for_layout(&cluster, &all, TOPIC, Duration::from_secs(20), |layout| {
        layout[&0].2.len() == 3
    });
    let bootstrap = cluster.bootstrap();
    let producer = kafka::producer_with(
        &cluster.brokers[0],
        &[
            ("bootstrap.servers", bootstrap.as_str()),
            ("enable.idempotence", "true"),
            ("message.timeout.ms", "120000"),
            ("linger.ms", "2"),
        ],
    );
    let rounds = std::env::var("TERN_REPLICATION_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(ROUNDS);
    let mut next = 0usize;
    let mut acked = Vec::new();
    let mut failovers = Vec::new();
    for round in 0..rounds {
        acked.extend(send(&producer, &mut next, PER_BATCH));
        let leader = leader(&cluster, &all);
        let killed_at = Instant::now();
        cluster.brokers[leader].kill9();
        // The first record acknowledged after the kill, necessarily by the new leader.
        acked.extend(send(&producer, &mut next, 1));
        failovers.push(killed_at.elapsed());
        if round == 0 {
            // The new leader reports its partitions (this one, and __consumer_offsets ones)
            // under-replicated until the killed broker is back in the ISR.
            let live: Vec<usize> = all.iter().copied().filter(|b| *b != leader).collect();
            let new_leader = self::leader(&cluster, &live);
            let deadline = Instant::now() + Duration::from_secs(30);
            while !cluster
                .metric_sum(new_leader, "tern_under_replicated_partitions")
                .is_some_and(|n| n >= 1.0)
            {
                assert!(
                    Instant::now() < deadline,
                    "under-replicated partitions on broker {new_leader}: {:?}",
                    cluster.metric_sum(new_leader, "tern_under_replicated_partitions")
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        acked.extend(send(&producer, &mut next, PER_BATCH));
        cluster.brokers[leader].restart();
        let rejoined = Instant::now();
        wait_for_layout(&cluster, &all, TOPIC, Duration::from_secs(60), |layout| {
            layout[&0].2.len() == 3
        });
        println!(
            "round {round}: killed leader {leader}; failover {} ms; back in the ISR {} ms after restart",
            failovers[round].as_millis(),
            rejoined.elapsed().as_millis()
        );
    }
    assert_eq!(acked.len(), next);
    let deadline = Instant::now() + Duration::from_secs(30);
    while all
        .iter()
        .any(|b| cluster.metric_sum(*b, "tern_under_replicated_partitions") != Some(0.0))
    {
        assert!(
            Instant::now() < deadline,
            "partitions still under-replicated with every broker back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let expansions: f64 = all
        .iter()
        .filter_map(|b| cluster.metric_sum(*b, "tern_isr_expands_total"))
        .sum();
    assert!(
        expansions >= 1.0,
        "restarted followers rejoin through their leaders' ISR expansions"
    );
    check_everything_acknowledged_is_there(&cluster, leader(&cluster, &all), &acked);

    // Two of three brokers down: the leader, alone in sync, refuses acks=all.
    let survivor = leader(&cluster, &all);
    let down: Vec<usize> = all.iter().copied().filter(|b| *b != survivor).collect();
    for broker in &down {
        cluster.brokers[*broker].kill9();
    }
    std::thread::sleep(Duration::from_millis(LAG_MS + 1_000));
    let strict = kafka::producer_with(
        &cluster.brokers[survivor],
        &[
            ("retries", "0"),
            ("message.timeout.ms", "20000"),
            ("enable.idempotence", "false"),
        ],
    );
    let outcome = kafka::try_produce(&strict, TOPIC, Some(0), &[Rec::value("refused")]);
    assert!(
        matches!(
            outcome[0],
            Err(KafkaError::MessageProduction(
                RDKafkaErrorCode::NotEnoughReplicas
            ))
        ),
        "acks=all with one broker of three: {outcome:?}"
    );
    drop(strict);
    for broker in &down {
        cluster.brokers[*broker].restart();
    }
    wait_for_layout(&cluster, &all, TOPIC, Duration::from_secs(60), |layout| {
        layout[&0].2.len() == 3
    });
    acked.extend(send(&producer, &mut next, PER_BATCH));
    check_everything_acknowledged_is_there(&cluster, leader(&cluster, &all), &acked);

    let mut millis: Vec<u128> = failovers.iter().map(Duration::as_millis).collect();
    millis.sort_unstable();
    println!(
        "figure: leader kill -9 -> first acknowledged produce on the new leader over {} rounds: min {} ms, median {} ms, max {} ms ({} records acknowledged, all read back)",
        millis.len(),
        millis[0],
        millis[millis.len() / 2],
        millis[millis.len() - 1],
        acked.len()
    );
}

/// The `__consumer_offsets` partition of a group, as Kafka computes it (Java's
/// `String.hashCode`, made non-negative, modulo the partition count).
fn offsets_partition(group: &str, partitions: i32) -> i32 {
    let hash = group.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    });
    (hash & 0x7fff_ffff) % partitions
}

/// A consumer in `group` (which commits only when told to).
fn group_consumer(
    cluster: &Cluster,
    bootstrap: &str,
    group: &str,
) -> rdkafka::consumer::BaseConsumer {
    kafka::consumer_with(
        &cluster.brokers[0],
        &[("bootstrap.servers", bootstrap), ("group.id", group)],
    )
}

#[test]
fn committed_offsets_survive_the_coordinators_death() {
    let mut cluster = Cluster::start(3);
    let all = [0usize, 1, 2];
    cluster.wait_for_controller(&all, Duration::from_secs(20));
    // Both the offsets topic and a topic created without a replication factor get three
    // replicas on three brokers.
    let offsets = wait_for_layout(
        &cluster,
        &all,
        "__consumer_offsets",
        Duration::from_secs(30),
        |layout| layout.values().all(|p| p.1.len() == 3 && p.2.len() == 3),
    );
    kafka::try_create_topic(&cluster.brokers[1], "work", 1, -1, &[]).expect("create work");
    let work = wait_for_layout(&cluster, &all, "work", Duration::from_secs(20), |layout| {
        layout[&0].2.len() == 3
    });
    assert_eq!(work[&0].1.len(), 3, "the default replication factor is 3");
    let bootstrap = cluster.bootstrap();
    let producer = kafka::producer_with(
        &cluster.brokers[0],
        &[("bootstrap.servers", bootstrap.as_str())],
    );
    let sent: Vec<Rec> = (0..100)
        .map(|i| Rec::value(format!("job-{i:03}")))
        .collect();
    kafka::produce(&producer, "work", Some(0), &sent);

    const GROUP: &str = "payroll";
    let mut committed = TopicPartitionList::new();
    committed
        .add_partition_offset("work", 0, Offset::Offset(40))
        .expect("offset");
    let first = group_consumer(&cluster, &bootstrap, GROUP);
    first
        .commit(&committed, CommitMode::Sync)
        .expect("commit offset 40");
    drop(first);

    let partition = offsets_partition(GROUP, offsets.len() as i32);
    let coordinator = offsets[&partition].0 as usize;
    cluster.brokers[coordinator].kill9();
    let killed_at = Instant::now();
    let live: Vec<usize> = all.iter().copied().filter(|b| *b != coordinator).collect();
    let moved = wait_for_layout(
        &cluster,
        &live,
        "__consumer_offsets",
        Duration::from_secs(30),
        |layout| layout[&partition].0 >= 0 && layout[&partition].0 != coordinator as i32,
    );
    println!(
        "coordinator {coordinator} killed; __consumer_offsets-{partition} led by {} after {} ms",
        moved[&partition].0,
        killed_at.elapsed().as_millis()
    );

    // `tern topic elect-leaders` (ElectLeaders): work-0 is led by its preferred replica unless
    // that is the broker just killed.
    let work_now = wait_for_layout(&cluster, &live, "work", Duration::from_secs(30), |layout| {
        layout[&0].0 >= 0 && layout[&0].0 != coordinator as i32
    });
    let preferred = work[&0].1[0];
    let output = std::process::Command::new(tern_tests::tern_binary())
        .args(["topic", "elect-leaders", "work", "--bootstrap"])
        .arg(cluster.brokers[live[0]].bootstrap())
        .output()
        .expect("run tern topic elect-leaders");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}");
    let expected = if preferred == coordinator as i32 {
        "work-0: preferred replica not live and in sync"
    } else {
        assert_eq!(work_now[&0].0, preferred);
        "work-0: already led by its preferred replica"
    };
    assert!(printed.contains(expected), "{printed}");

    // A consumer of the same group resumes from the committed offset and reads on from it
    // (bootstrapped from the live brokers: librdkafka reports a dead bootstrap broker as a
    // consumer error).
    let live_bootstrap = live
        .iter()
        .map(|b| cluster.brokers[*b].bootstrap())
        .collect::<Vec<_>>()
        .join(",");
    let second = group_consumer(&cluster, &live_bootstrap, GROUP);
    let mut asked = TopicPartitionList::new();
    asked.add_partition("work", 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let resumed = loop {
        match second.committed_offsets(asked.clone(), Duration::from_secs(5)) {
            Ok(list) => match list.find_partition("work", 0).map(|p| p.offset()) {
                Some(Offset::Offset(offset)) => break offset,
                other => panic!("no committed offset after the coordinator died: {other:?}"),
            },
            Err(error) => {
                assert!(
                    Instant::now() < deadline,
                    "OffsetFetch kept failing: {error}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    assert_eq!(resumed, 40);
    kafka::assign(&second, "work", &[0], Offset::Offset(resumed));
    let read = kafka::read_exactly(&second, 60, Duration::from_secs(30));
    assert_eq!(read[0].record.value.as_deref(), Some(&b"job-040"[..]));
    assert_eq!(read[59].record.value.as_deref(), Some(&b"job-099"[..]));
    // And the new coordinator takes commits.
    let mut later = TopicPartitionList::new();
    later
        .add_partition_offset("work", 0, Offset::Offset(100))
        .expect("offset");
    second
        .commit(&later, CommitMode::Sync)
        .expect("commit through the new coordinator");
    let list = second
        .committed_offsets(asked, Duration::from_secs(10))
        .expect("committed offsets");
    assert_eq!(
        list.find_partition("work", 0).map(|p| p.offset()),
        Some(Offset::Offset(100))
    );
}

/// A follower that was down while its leader's log start moved past its end (DeleteRecords
/// here; retention does the same) starts its log over at the leader's start and rejoins the
/// ISR, instead of asking forever for offsets the leader no longer has.
#[test]
fn a_follower_behind_its_leaders_log_start_starts_over_there() {
    // Three voters, so that the quorum outlives the follower; the topic lives on two.
    let mut cluster = Cluster::start(3);
    let all = [0usize, 1, 2];
    cluster.wait_for_controller(&all, Duration::from_secs(20));
    kafka::try_create_topic(&cluster.brokers[0], "trimmed", 1, 2, &[]).expect("create");
    let layout = wait_for_layout(&cluster, &all, "trimmed", Duration::from_secs(20), |l| {
        l[&0].2.len() == 2
    });
    let leader = layout[&0].0 as usize;
    let follower = *layout[&0]
        .1
        .iter()
        .find(|b| **b != leader as i32)
        .expect("a second replica") as usize;
    let others: Vec<usize> = all.iter().copied().filter(|b| *b != follower).collect();
    let producer = kafka::producer_with(
        &cluster.brokers[leader],
        &[
            ("acks", "1"),
            (
                "bootstrap.servers",
                cluster.brokers[leader].bootstrap().as_str(),
            ),
        ],
    );
    let first: Vec<Rec> = (0..50).map(|i| Rec::value(format!("old-{i:03}"))).collect();
    kafka::produce(&producer, "trimmed", Some(0), &first);
    cluster.brokers[follower].kill9();
    wait_for_layout(&cluster, &others, "trimmed", Duration::from_secs(30), |l| {
        l[&0].2 == vec![leader as i32]
    });
    let second: Vec<Rec> = (0..50).map(|i| Rec::value(format!("new-{i:03}"))).collect();
    kafka::produce(&producer, "trimmed", Some(0), &second);
    let admin = kafka::admin(&cluster.brokers[leader]);
    let mut before = TopicPartitionList::new();
    before
        .add_partition_offset("trimmed", 0, Offset::Offset(80))
        .expect("offset");
    kafka::wait(admin.delete_records(&before, &kafka::admin_options())).expect("DeleteRecords");
    cluster.brokers[follower].restart();
    let back = wait_for_layout(&cluster, &all, "trimmed", Duration::from_secs(60), |l| {
        l[&0].2.len() == 2
    });
    assert_eq!(back[&0].2.len(), 2, "the follower rejoined the ISR");
    // Its log now starts where the leader's does, with the same records.
    let (low, high) = kafka::watermarks(&cluster.brokers[leader], "trimmed", 0);
    assert_eq!((low, high), (80, 100));
    let log = cluster.brokers[follower].log();
    assert!(
        log.contains("replica restarted at its leader's log start"),
        "the follower says what it did"
    );
    // The leader's start moves again (DeleteRecords up to 90); the follower's follows.
    let mut before = TopicPartitionList::new();
    before
        .add_partition_offset("trimmed", 0, Offset::Offset(90))
        .expect("offset");
    kafka::wait(admin.delete_records(&before, &kafka::admin_options())).expect("DeleteRecords");
    kafka::produce(&producer, "trimmed", Some(0), &[Rec::value("new-050")]);
    std::thread::sleep(Duration::from_secs(2));
    // The follower can lead with exactly the leader's records: kill the leader.
    cluster.brokers[leader].kill9();
    let survivors: Vec<usize> = all.iter().copied().filter(|b| *b != leader).collect();
    wait_for_layout(
        &cluster,
        &survivors,
        "trimmed",
        Duration::from_secs(30),
        |l| l[&0].0 == follower as i32,
    );
    let consumer = kafka::consumer_with(
        &cluster.brokers[follower],
        &[(
            "bootstrap.servers",
            cluster.brokers[follower].bootstrap().as_str(),
        )],
    );
    let (low, high) = kafka::watermarks(&cluster.brokers[follower], "trimmed", 0);
    assert_eq!(
        (low, high),
        (90, 101),
        "deleted records stay deleted after the failover"
    );
    kafka::assign(&consumer, "trimmed", &[0], Offset::Offset(90));
    let read = kafka::read_exactly(&consumer, 11, Duration::from_secs(30));
    let values: Vec<String> = read
        .iter()
        .map(|c| String::from_utf8_lossy(c.record.value.as_deref().unwrap()).into_owned())
        .collect();
    let expected: Vec<String> = (40..51).map(|i| format!("new-{i:03}")).collect();
    assert_eq!(values, expected);
}
