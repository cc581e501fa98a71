//! Transactions end to end: librdkafka's transactional producer against a real broker, read
//! back by read_committed and read_uncommitted consumers; consume-transform-produce with
//! `send_offsets_to_transaction`; fencing; a coordinator killed -9 mid-transaction; a
//! transaction that times out. Build the broker first (`cargo build -p tern`).

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use tern_tests::kafka::*;
use tern_tests::Broker;

/// A small `__transaction_state` and a fast sweep of timed-out transactions.
const FLAGS: &[&str] = &[
    "--transaction-state-log-num-partitions",
    "4",
    "--transaction-cleanup-interval-ms",
    "200",
];

const TIMEOUT: Duration = Duration::from_secs(30);

fn txn_producer(
    broker: &Broker,
    txn_id: &str,
    extra: &[(&str, &str)],
) -> ThreadedProducer<DefaultProducerContext> {
    let mut config = client_config(broker);
    config
        .set("transactional.id", txn_id)
        .set("linger.ms", "5")
        .set("transaction.timeout.ms", "60000");
    for (key, value) in extra {
        config.set(*key, *value);
    }
    let producer: ThreadedProducer<DefaultProducerContext> =
        config.create().expect("transactional producer");
    producer
        .init_transactions(TIMEOUT)
        .expect("init_transactions");
    producer
}

fn send(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    partition: i32,
    value: &str,
) {
    let mut record = BaseRecord::<(), str>::to(topic)
        .payload(value)
        .partition(partition);
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

fn reader(broker: &Broker, topic: &str, partitions: &[i32], committed: bool) -> BaseConsumer {
    let consumer = consumer_with(
        broker,
        &[(
            "isolation.level",
            if committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )],
    );
    assign(&consumer, topic, partitions, Offset::Beginning);
    consumer
}

fn values(records: &[Consumed]) -> Vec<String> {
    records
        .iter()
        .map(|c| {
            String::from_utf8_lossy(c.record.value.as_deref().unwrap_or_default()).into_owned()
        })
        .collect()
}

/// Reads whatever arrives within `quiet` of silence (at most `within` in all).
fn drain(consumer: &BaseConsumer, quiet: Duration, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut last = Instant::now();
    let mut out = Vec::new();
    while Instant::now() < deadline && last.elapsed() < quiet {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(50)) {
            use rdkafka::message::Message;
            out.push(String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned());
            last = Instant::now();
        }
    }
    out
}

#[test]
fn committed_and_aborted_transactions_are_seen_as_each_isolation_level_must() {
    let broker = Broker::start_with(1, FLAGS);
    create_topic(&broker, "txn-vis", 2, &[]);
    let producer = txn_producer(&broker, "vis-1", &[]);
    producer.begin_transaction().unwrap();
    for i in 0..10 {
        send(&producer, "txn-vis", i % 2, &format!("c1-{i}"));
    }
    producer.commit_transaction(TIMEOUT).unwrap();
    producer.begin_transaction().unwrap();
    for i in 0..10 {
        send(&producer, "txn-vis", i % 2, &format!("ab-{i}"));
    }
    // Sent before the abort (an abort drops what the producer has not sent yet).
    producer.flush(TIMEOUT).unwrap();
    producer.abort_transaction(TIMEOUT).unwrap();
    producer.begin_transaction().unwrap();
    for i in 0..6 {
        send(&producer, "txn-vis", i % 2, &format!("c2-{i}"));
    }
    producer.commit_transaction(TIMEOUT).unwrap();

    // read_committed: the committed records, in order per partition, never an aborted one.
    let committed = reader(&broker, "txn-vis", &[0, 1], true);
    let got = values(&read_exactly(&committed, 16, TIMEOUT));
    assert!(got.iter().all(|v| !v.starts_with("ab-")), "{got:?}");
    for partition in 0..2 {
        let mine: Vec<&String> = got
            .iter()
            .filter(|v| v.rsplit('-').next().unwrap().parse::<i32>().unwrap() % 2 == partition)
            .collect();
        let expected: Vec<String> = (0..10)
            .filter(|i| i % 2 == partition)
            .map(|i| format!("c1-{i}"))
            .chain(
                (0..6)
                    .filter(|i| i % 2 == partition)
                    .map(|i| format!("c2-{i}")),
            )
            .collect();
        assert_eq!(mine, expected.iter().collect::<Vec<_>>());
    }
    // read_uncommitted: every data record, aborted ones too (markers are never records).
    let everything = reader(&broker, "txn-vis", &[0, 1], false);
    let all = values(&read_exactly(&everything, 26, TIMEOUT));
    assert_eq!(all.iter().filter(|v| v.starts_with("ab-")).count(), 10);

    // An open transaction: invisible to read_committed, visible to read_uncommitted, until
    // it commits.
    producer.begin_transaction().unwrap();
    for i in 0..4 {
        send(&producer, "txn-vis", i % 2, &format!("open-{i}"));
    }
    producer.flush(TIMEOUT).unwrap();
    let open_uncommitted = drain(&everything, Duration::from_millis(1500), TIMEOUT);
    assert_eq!(open_uncommitted.len(), 4, "{open_uncommitted:?}");
    assert!(drain(&committed, Duration::from_millis(1500), TIMEOUT).is_empty());
    // The operator sees it open, with its partitions.
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(tern_tests::tern_binary())
            .args(args)
            .args(["--bootstrap", &broker.bootstrap()])
            .output()
            .expect("tern");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let described = cli(&["txn", "describe", "vis-1"]);
    assert!(described.contains("state Ongoing"), "{described}");
    assert!(
        described.contains("txn-vis-0") && described.contains("txn-vis-1"),
        "{described}"
    );
    // ListOffsets: "latest" is the last stable offset for read_committed, the high watermark
    // for read_uncommitted.
    let latest = |isolation: i8| list_latest(&broker, "txn-vis", 0, isolation);
    assert!(
        latest(1) < latest(0),
        "LSO {} vs HW {}",
        latest(1),
        latest(0)
    );
    let listed = cli(&["txn", "list"]);
    assert!(
        listed.contains("vis-1\tproducer") && listed.contains("Ongoing"),
        "{listed}"
    );
    producer.commit_transaction(TIMEOUT).unwrap();
    let now_visible = values(&read_exactly(&committed, 4, TIMEOUT));
    assert!(now_visible.iter().all(|v| v.starts_with("open-")));
}

#[test]
fn offsets_sent_to_a_transaction_commit_with_it_and_vanish_with_an_abort() {
    let broker = Broker::start_with(1, FLAGS);
    create_topic(&broker, "txn-in", 1, &[]);
    create_topic(&broker, "txn-out", 1, &[]);
    let plain = producer(&broker);
    let inputs: Vec<Rec> = (0..10).map(|i| Rec::value(format!("in-{i}"))).collect();
    produce(&plain, "txn-in", Some(0), &inputs);
    let group = consumer_with(
        &broker,
        &[
            ("group.id", "txn-group"),
            ("isolation.level", "read_committed"),
        ],
    );
    group.subscribe(&["txn-in"]).unwrap();
    let mut read = 0;
    let deadline = Instant::now() + TIMEOUT;
    while read < 5 {
        assert!(Instant::now() < deadline);
        if let Some(Ok(_)) = group.poll(Duration::from_millis(100)) {
            read += 1;
        }
    }
    let producer = txn_producer(&broker, "ctp-1", &[]);
    let offsets_at = |offset: i64| {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset("txn-in", 0, Offset::Offset(offset))
            .unwrap();
        list
    };
    let metadata = group.group_metadata().unwrap();
    // Aborted: the output and the offsets both vanish.
    producer.begin_transaction().unwrap();
    send(&producer, "txn-out", 0, "out-aborted");
    producer
        .send_offsets_to_transaction(&offsets_at(5), &metadata, TIMEOUT)
        .unwrap();
    producer.abort_transaction(TIMEOUT).unwrap();
    let committed_offset = |c: &BaseConsumer| c.committed(TIMEOUT).unwrap().elements()[0].offset();
    assert_eq!(committed_offset(&group), Offset::Invalid);
    // Committed: both appear together.
    producer.begin_transaction().unwrap();
    send(&producer, "txn-out", 0, "out-committed");
    producer
        .send_offsets_to_transaction(&offsets_at(5), &metadata, TIMEOUT)
        .unwrap();
    producer.commit_transaction(TIMEOUT).unwrap();
    assert_eq!(committed_offset(&group), Offset::Offset(5));
    let out = reader(&broker, "txn-out", &[0], true);
    assert_eq!(values(&read_exactly(&out, 1, TIMEOUT)), ["out-committed"]);
    // The committed offset survives a restart (replayed with its transaction's marker).
    drop(group);
    let mut broker = broker;
    broker.stop();
    broker.restart();
    let again = consumer_with(&broker, &[("group.id", "txn-group")]);
    let mut list = TopicPartitionList::new();
    list.add_partition("txn-in", 0);
    let committed = again.committed_offsets(list, TIMEOUT).unwrap();
    assert_eq!(committed.elements()[0].offset(), Offset::Offset(5));
}

#[test]
fn a_second_producer_with_the_same_id_fences_the_first() {
    let broker = Broker::start_with(1, FLAGS);
    create_topic(&broker, "txn-fence", 1, &[]);
    let first = txn_producer(&broker, "fence-1", &[]);
    first.begin_transaction().unwrap();
    send(&first, "txn-fence", 0, "from-first");
    first.flush(TIMEOUT).unwrap();
    // The second incarnation aborts the first's open transaction and fences it.
    let second = txn_producer(&broker, "fence-1", &[]);
    let error = first.commit_transaction(TIMEOUT).unwrap_err();
    assert!(
        format!("{error:?}").contains("Fenced") || format!("{error:?}").contains("fenced"),
        "{error:?}"
    );
    second.begin_transaction().unwrap();
    send(&second, "txn-fence", 0, "from-second");
    second.commit_transaction(TIMEOUT).unwrap();
    let committed = reader(&broker, "txn-fence", &[0], true);
    assert_eq!(
        values(&read_exactly(&committed, 1, TIMEOUT)),
        ["from-second"]
    );
}

#[test]
fn transactions_complete_or_abort_correctly_across_a_kill_9() {
    let mut broker = Broker::start_with(1, FLAGS);
    create_topic(&broker, "txn-crash", 1, &[]);
    // A committed transaction, then kill -9 right after the commit returns: its markers may
    // not all be written yet; the coordinator finishes them after the restart.
    let producer = txn_producer(&broker, "crash-1", &[]);
    producer.begin_transaction().unwrap();
    for i in 0..5 {
        send(&producer, "txn-crash", 0, &format!("done-{i}"));
    }
    producer.commit_transaction(TIMEOUT).unwrap();
    // And one left open.
    producer.begin_transaction().unwrap();
    for i in 0..5 {
        send(&producer, "txn-crash", 0, &format!("open-{i}"));
    }
    producer.flush(TIMEOUT).unwrap();
    drop(producer);
    broker.kill9();
    broker.restart();
    // A new incarnation of the producer aborts what the old one left open.
    let producer = txn_producer(&broker, "crash-1", &[]);
    producer.begin_transaction().unwrap();
    send(&producer, "txn-crash", 0, "after");
    producer.commit_transaction(TIMEOUT).unwrap();
    let committed = reader(&broker, "txn-crash", &[0], true);
    let got = values(&read_exactly(&committed, 6, TIMEOUT));
    assert_eq!(
        got,
        ["done-0", "done-1", "done-2", "done-3", "done-4", "after"]
    );
}

#[test]
fn a_transaction_open_past_its_timeout_is_aborted() {
    let broker = Broker::start_with(1, FLAGS);
    create_topic(&broker, "txn-timeout", 1, &[]);
    let producer = txn_producer(
        &broker,
        "slow-1",
        &[
            ("transaction.timeout.ms", "1500"),
            ("socket.timeout.ms", "1000"),
        ],
    );
    producer.begin_transaction().unwrap();
    send(&producer, "txn-timeout", 0, "too-slow");
    producer.flush(TIMEOUT).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    // The coordinator aborted it: read_committed readers are not held back, and see nothing.
    let other = txn_producer(&broker, "fast-1", &[]);
    other.begin_transaction().unwrap();
    send(&other, "txn-timeout", 0, "in-time");
    other.commit_transaction(TIMEOUT).unwrap();
    let committed = reader(&broker, "txn-timeout", &[0], true);
    assert_eq!(values(&read_exactly(&committed, 1, TIMEOUT)), ["in-time"]);
    assert!(producer.commit_transaction(TIMEOUT).is_err());
}

/// The same visibility rules through a second client library: kafka-python's transactional
/// producer and its read_committed / read_uncommitted consumers (`tests/clients/`;
/// `.ci/run` installs kafka-python).
#[test]
fn kafka_python_transactions_are_seen_as_each_isolation_level_must() {
    let broker = Broker::start_with(1, FLAGS);
    create_topic(&broker, "txn-python", 1, &[]);
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/kafka_python_txn.py");
    let output = std::process::Command::new("python3")
        .arg(&script)
        .arg(broker.bootstrap())
        .arg("txn-python")
        .output()
        .expect("python3 (kafka-python is installed by .ci/run)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "kafka-python script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = |prefix: &str| -> Vec<String> {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{stdout}"))
            .split(',')
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let committed: Vec<String> = (0..5)
        .map(|i| format!("kp-commit-{i}"))
        .chain(["kp-last".to_owned()])
        .collect();
    assert_eq!(line("committed: "), committed);
    let uncommitted: Vec<String> = (0..5)
        .map(|i| format!("kp-commit-{i}"))
        .chain((0..5).map(|i| format!("kp-abort-{i}")))
        .chain(["kp-last".to_owned()])
        .collect();
    assert_eq!(line("uncommitted: "), uncommitted);
}

/// Three brokers: a transaction over partitions led by different brokers gets its markers
/// on each (WriteTxnMarkers from the coordinator to the other leaders), and replicas follow.
#[test]
fn a_transaction_across_three_brokers_commits_and_aborts_on_every_leader() {
    use tern_tests::cluster::{wait_for_layout, Cluster};
    let cluster = Cluster::start_with(3, FLAGS);
    try_create_topic(&cluster.brokers[0], "txn-spread", 3, 3, &[]).expect("create txn-spread");
    let layout = wait_for_layout(&cluster, &[0, 1, 2], "txn-spread", TIMEOUT, |layout| {
        layout.len() == 3
            && layout
                .values()
                .all(|(leader, _, isr)| *leader >= 0 && isr.len() == 3)
    });
    let leaders: std::collections::BTreeSet<i32> = layout.values().map(|(l, _, _)| *l).collect();
    assert!(
        leaders.len() > 1,
        "partitions should have different leaders: {layout:?}"
    );
    let mut config = rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", cluster.bootstrap())
        .set("broker.address.family", "v4")
        .set("transactional.id", "spread-1")
        .set("linger.ms", "5");
    let producer: ThreadedProducer<DefaultProducerContext> = config.create().unwrap();
    producer.init_transactions(TIMEOUT).unwrap();
    producer.begin_transaction().unwrap();
    for i in 0..30 {
        send(&producer, "txn-spread", i % 3, &format!("c-{i}"));
    }
    producer.commit_transaction(TIMEOUT).unwrap();
    producer.begin_transaction().unwrap();
    for i in 0..30 {
        send(&producer, "txn-spread", i % 3, &format!("a-{i}"));
    }
    producer.flush(TIMEOUT).unwrap();
    producer.abort_transaction(TIMEOUT).unwrap();
    producer.begin_transaction().unwrap();
    for i in 0..3 {
        send(&producer, "txn-spread", i, &format!("z-{i}"));
    }
    producer.commit_transaction(TIMEOUT).unwrap();
    let mut reader_config = rdkafka::ClientConfig::new();
    reader_config
        .set("bootstrap.servers", cluster.bootstrap())
        .set("broker.address.family", "v4")
        .set("group.id", "spread-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "100");
    let committed: BaseConsumer = reader_config.create().unwrap();
    assign(&committed, "txn-spread", &[0, 1, 2], Offset::Beginning);
    let got = values(&read_exactly(&committed, 33, TIMEOUT));
    assert!(got.iter().all(|v| !v.starts_with("a-")), "{got:?}");
    assert_eq!(got.iter().filter(|v| v.starts_with("c-")).count(), 30);
    assert_eq!(got.iter().filter(|v| v.starts_with("z-")).count(), 3);
}

/// ListOffsets v4 "latest" for one partition at an isolation level, over a raw socket.
fn list_latest(broker: &Broker, topic: &str, partition: i32, isolation: i8) -> i64 {
    use bytes::Buf;
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::{
        ListOffsetsRequest, ListOffsetsResponse, RequestHeader, TopicName,
    };
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
    use std::io::{Read, Write};
    let mut p = ListOffsetsPartition::default();
    p.partition_index = partition;
    p.timestamp = -1;
    let mut t = ListOffsetsTopic::default();
    t.name = TopicName(StrBytes::from_string(topic.to_owned()));
    t.partitions = vec![p];
    let mut request = ListOffsetsRequest::default();
    request.replica_id = kafka_protocol::messages::BrokerId(-1);
    request.isolation_level = isolation;
    request.topics = vec![t];
    let mut header = RequestHeader::default();
    header.request_api_key = 2;
    header.request_api_version = 4;
    header.correlation_id = 1;
    let mut body = bytes::BytesMut::new();
    header.encode(&mut body, 1).unwrap();
    request.encode(&mut body, 4).unwrap();
    let mut stream = std::net::TcpStream::connect(broker.bootstrap()).unwrap();
    stream
        .write_all(&(body.len() as i32).to_be_bytes())
        .unwrap();
    stream.write_all(&body).unwrap();
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).unwrap();
    let mut answer = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut answer).unwrap();
    let mut answer = bytes::Bytes::from(answer);
    answer.advance(4);
    let response = ListOffsetsResponse::decode(&mut answer, 4).unwrap();
    let p = &response.topics[0].partitions[0];
    assert_eq!(p.error_code, 0);
    p.offset
}
