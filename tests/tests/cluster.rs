//! Three brokers on loopback (real processes, `--cores 1`, one metadata quorum): metadata agreed
//! by every broker, clients bootstrapped from any of them, the controller killed with SIGKILL
//! and replaced, the killed broker restarted and caught up, and a broker claiming another
//! cluster id refused. Prints the failover and propagation figures it measures.

use std::time::{Duration, Instant};

use rdkafka::Offset;
use tern_tests::cluster::{agreed_layout, Cluster, SESSION_TIMEOUT_MS};
use tern_tests::kafka::{self, Rec};
use tern_tests::Broker;

/// CreateTopics with short client timeouts (a request to a dead broker fails fast).
fn try_create_quickly(
    broker: &Broker,
    name: &str,
    partitions: i32,
    replication: i32,
) -> Result<(), String> {
    use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replication));
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(5)))
        .request_timeout(Some(Duration::from_secs(5)));
    let results = kafka::wait(kafka::admin(broker).create_topics([&topic], &options))
        .map_err(|error| error.to_string())?;
    match results.into_iter().next() {
        Some(Ok(_)) => Ok(()),
        Some(Err((_, code))) => Err(format!("{code:?}")),
        None => Err("no result".into()),
    }
}

fn records(prefix: &str, count: usize) -> Vec<Rec> {
    (0..count)
        .map(|i| {
            let mut rec = Rec::value(format!("{prefix}-{i:04}-{}", "v".repeat(i % 50)));
            rec.key = Some(format!("key-{i}").into_bytes());
            rec
        })
        .collect()
}

#[test]
fn three_brokers_share_metadata_fail_over_the_controller_and_refuse_a_stranger() {
    let mut cluster = Cluster::start(3);
    let all = [0, 1, 2];
    let controller = cluster.wait_for_controller(&all, Duration::from_secs(20));
    let status = cluster.status(0).expect("cluster status");
    let cluster_id = status["cluster_id"]
        .as_str()
        .expect("cluster id")
        .to_owned();
    assert!(!cluster_id.is_empty());
    for id in all {
        let seen = cluster.status(id).expect("status");
        assert_eq!(seen["cluster_id"], cluster_id.as_str());
        assert_eq!(seen["brokers"].as_array().map(Vec::len), Some(3), "{seen}");
    }

    // A topic created through broker 2 (whichever broker leads the quorum).
    let created = Instant::now();
    kafka::try_create_topic(&cluster.brokers[2], "orders", 6, 3, &[])
        .expect("create orders through broker 2");
    let (brokers, orders) = agreed_layout(&cluster, &all, "orders", Duration::from_secs(10));
    let visible_everywhere = created.elapsed();
    assert_eq!(brokers.len(), 3, "every broker listed: {brokers:?}");
    assert_eq!(orders.len(), 6);
    for (partition, (leader, replicas, isr)) in &orders {
        assert_eq!(replicas.len(), 3, "partition {partition}: {replicas:?}");
        assert_eq!(isr.len(), 3, "partition {partition}: {isr:?}");
        assert!(replicas.contains(leader), "partition {partition}");
    }
    let leaders: std::collections::BTreeSet<i32> = orders.values().map(|p| p.0).collect();
    assert_eq!(
        leaders.len(),
        3,
        "leadership spread over the brokers: {orders:?}"
    );
    // Replication factor above the broker count is Kafka's INVALID_REPLICATION_FACTOR.
    assert_eq!(
        kafka::try_create_topic(&cluster.brokers[0], "too-wide", 1, 4, &[]),
        Err(rdkafka::types::RDKafkaErrorCode::InvalidReplicationFactor)
    );

    // rdkafka bootstrapped from any broker produces to each partition's leader and reads
    // back exactly what it wrote (one replica per partition: replication has its own test).
    kafka::try_create_topic(&cluster.brokers[1], "events", 6, 1, &[]).expect("create events");
    let (_, events) = agreed_layout(&cluster, &all, "events", Duration::from_secs(10));
    let leaders: std::collections::BTreeSet<i32> = events.values().map(|p| p.0).collect();
    assert_eq!(
        leaders.len(),
        3,
        "events spread over the brokers: {events:?}"
    );
    let sent = records("before", 300);
    let producer = kafka::producer(&cluster.brokers[1]);
    let acks = kafka::produce(&producer, "events", None, &sent);
    assert_eq!(acks.len(), sent.len());
    let consumer = kafka::consumer(&cluster.brokers[0]);
    kafka::assign(&consumer, "events", &[0, 1, 2, 3, 4, 5], Offset::Beginning);
    let read = kafka::read_exactly(&consumer, sent.len(), Duration::from_secs(30));
    let mut read_values: Vec<Vec<u8>> = read
        .iter()
        .map(|c| c.record.value.clone().expect("value"))
        .collect();
    let mut sent_values: Vec<Vec<u8>> = sent.iter().map(|r| r.value.clone().expect("v")).collect();
    read_values.sort();
    sent_values.sort();
    assert_eq!(read_values, sent_values);
    drop(consumer);
    drop(producer);

    // SIGKILL the controller: a new one is elected, the killed broker is fenced after its
    // session, its partitions move to other ISR members with new epochs, and CreateTopics
    // works again.
    let killed_at = Instant::now();
    cluster.brokers[controller].kill9();
    let survivors: Vec<usize> = all.iter().copied().filter(|id| *id != controller).collect();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let target = &cluster.brokers[survivors[attempts % 2]];
        match try_create_quickly(target, "after-failover", 2, 2) {
            Ok(()) => break,
            Err(code) => {
                assert!(
                    killed_at.elapsed() < Duration::from_secs(60),
                    "CreateTopics still failing a minute after the controller died: {code:?}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let failover = killed_at.elapsed();
    let new_controller = cluster.wait_for_controller(&survivors, Duration::from_secs(20));
    assert_ne!(new_controller, controller);
    // After the session timeout the dead broker is fenced: no longer listed, leading nothing.
    let deadline = Instant::now() + Duration::from_millis(SESSION_TIMEOUT_MS * 5);
    let moved = loop {
        let (brokers, layout) =
            agreed_layout(&cluster, &survivors, "orders", Duration::from_secs(10));
        if !brokers.contains(&(controller as i32))
            && layout.values().all(|p| p.0 != controller as i32)
        {
            break layout;
        }
        assert!(
            Instant::now() < deadline,
            "broker {controller} never fenced: {layout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for (partition, (leader, _, isr)) in &moved {
        let before = &orders[partition];
        assert!(
            before.2.contains(leader),
            "partition {partition}: new leader from the ISR"
        );
        assert!(
            !isr.contains(&(controller as i32)),
            "partition {partition}: {isr:?}"
        );
    }
    let (_, after) = agreed_layout(
        &cluster,
        &survivors,
        "after-failover",
        Duration::from_secs(10),
    );
    assert_eq!(after.len(), 2);

    // The killed broker restarts, catches up (it sees what was created while it was down)
    // and is unfenced.
    cluster.brokers[controller].restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (brokers, _) = agreed_layout(&cluster, &all, "after-failover", Duration::from_secs(20));
        if brokers.len() == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted broker is not listed again: {brokers:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A broker that claims another cluster id is refused and does not start.
    let stranger = survivors[0];
    cluster.brokers[stranger].stop();
    let args = cluster.args(stranger, &["--cluster-id", "not-this-cluster"]);
    cluster.brokers[stranger].set_extra_args(args);
    cluster.brokers[stranger].relaunch();
    let status = cluster.brokers[stranger].wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| !s.success()),
        "a broker with another cluster id must exit with an error: {status:?}"
    );
    let log = cluster.brokers[stranger].log();
    assert!(
        log.contains("cluster id"),
        "the refusal names the cluster id:\n{log}"
    );

    println!(
        "figure: controller kill -9 -> next successful CreateTopics: {} ms ({} attempts); CreateTopics -> visible on all 3 brokers: {} ms",
        failover.as_millis(),
        attempts,
        visible_everywhere.as_millis()
    );
}
