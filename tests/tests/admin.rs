//! Topic administration through the rdkafka `AdminClient`: create with configs, describe and
//! alter configs, add partitions, delete, and the Kafka error codes for requests a
//! single-broker cluster must refuse.

use rdkafka::admin::{AlterConfig, ConfigSource, NewPartitions, ResourceSpecifier};
use rdkafka::types::RDKafkaErrorCode;
use tern_tests::kafka::{self, Rec};
use tern_tests::Broker;

/// Each named topic config as DescribeConfigs reports it: (value, whether it is inherited
/// rather than set on the topic).
fn describe_topic(
    broker: &Broker,
    topic: &str,
    names: &[&str],
) -> Vec<(String, Option<String>, bool)> {
    let results = kafka::wait(
        kafka::admin(broker)
            .describe_configs([&ResourceSpecifier::Topic(topic)], &kafka::admin_options()),
    )
    .expect("DescribeConfigs request");
    assert_eq!(results.len(), 1, "one result per resource");
    let resource = results
        .into_iter()
        .next()
        .expect("one result")
        .unwrap_or_else(|code| panic!("describe {topic}: {code:?}"));
    names
        .iter()
        .map(|&name| {
            let entry = resource
                .get(name)
                .unwrap_or_else(|| panic!("{topic}: DescribeConfigs lists no '{name}'"));
            // Set on the topic itself, or inherited (Kafka's default, or a broker's or the
            // cluster's default).
            let own = matches!(entry.source, ConfigSource::DynamicTopic);
            if own {
                assert!(!entry.is_default, "{topic}: '{name}' is its own");
            }
            (name.to_owned(), entry.value.clone(), !own)
        })
        .collect()
}

fn set(name: &str, value: &str) -> (String, Option<String>, bool) {
    (name.to_owned(), Some(value.to_owned()), false)
}

fn default(name: &str, value: &str) -> (String, Option<String>, bool) {
    (name.to_owned(), Some(value.to_owned()), true)
}

#[test]
fn topic_created_with_configs_describes_them_and_alter_configs_replaces_them() {
    let broker = Broker::start(1);
    let topic = "configured";
    kafka::create_topic(
        &broker,
        topic,
        3,
        &[
            ("retention.ms", "3600000"),
            ("max.message.bytes", "2000000"),
        ],
    );
    assert_eq!(
        kafka::partition_count(&broker, topic),
        Some(3),
        "partitions after create"
    );
    let names = ["retention.ms", "max.message.bytes", "segment.bytes"];
    assert_eq!(
        describe_topic(&broker, topic, &names),
        vec![
            set("retention.ms", "3600000"),
            set("max.message.bytes", "2000000"),
            default("segment.bytes", "1073741824")
        ],
        "configs after create"
    );

    // AlterConfigs (the legacy, non-incremental API) replaces the topic's whole set of
    // explicit configs: what it leaves out returns to its default.
    let alter = AlterConfig::new(ResourceSpecifier::Topic(topic))
        .set("retention.ms", "7200000")
        .set("segment.bytes", "10485760");
    let results =
        kafka::wait(kafka::admin(&broker).alter_configs([&alter], &kafka::admin_options()))
            .expect("AlterConfigs request");
    assert!(
        matches!(results.as_slice(), [Ok(_)]),
        "AlterConfigs result: {results:?}"
    );
    assert_eq!(
        describe_topic(&broker, topic, &names),
        vec![
            set("retention.ms", "7200000"),
            default("max.message.bytes", "1048588"),
            set("segment.bytes", "10485760")
        ],
        "configs after AlterConfigs"
    );

    // An unknown key is refused (INVALID_CONFIG) and changes nothing. rdkafka 0.39's
    // `alter_configs` reports every resource as Ok whatever the broker answered (it never
    // reads the per-resource error), so only the unchanged configs can be checked here.
    let bad = AlterConfig::new(ResourceSpecifier::Topic(topic)).set("no.such.config", "1");
    kafka::wait(kafka::admin(&broker).alter_configs([&bad], &kafka::admin_options()))
        .expect("AlterConfigs request");
    assert_eq!(
        describe_topic(&broker, topic, &["retention.ms"]),
        vec![set("retention.ms", "7200000")],
        "unchanged by the refused alter"
    );
}

/// A CreateTopics request a single-broker cluster must refuse, and the code it answers.
struct Refused {
    topic: &'static str,
    partitions: i32,
    replication: i32,
    configs: &'static [(&'static str, &'static str)],
    expected: RDKafkaErrorCode,
}

#[test]
fn create_topics_refuses_what_a_single_broker_cannot_serve_with_kafka_error_codes() {
    let broker = Broker::start(1);
    kafka::create_topic(&broker, "exists-already", 1, &[]);
    let cases = [
        Refused {
            topic: "replication-three",
            partitions: 1,
            replication: 3,
            configs: &[],
            expected: RDKafkaErrorCode::InvalidReplicationFactor,
        },
        Refused {
            topic: "exists-already",
            partitions: 1,
            replication: 1,
            configs: &[],
            expected: RDKafkaErrorCode::TopicAlreadyExists,
        },
        Refused {
            topic: "bad-config",
            partitions: 1,
            replication: 1,
            configs: &[("retention.ms", "soon")],
            expected: RDKafkaErrorCode::InvalidConfig,
        },
        Refused {
            topic: "zero-partitions",
            partitions: 0,
            replication: 1,
            configs: &[],
            expected: RDKafkaErrorCode::InvalidPartitions,
        },
    ];
    for case in &cases {
        let outcome = kafka::try_create_topic(
            &broker,
            case.topic,
            case.partitions,
            case.replication,
            case.configs,
        );
        assert_eq!(outcome, Err(case.expected), "create {}", case.topic);
    }
    for topic in ["replication-three", "bad-config", "zero-partitions"] {
        assert_eq!(
            kafka::partition_count(&broker, topic),
            None,
            "refused topic {topic} must not exist"
        );
    }
}

#[test]
fn create_partitions_adds_partitions_that_take_records() {
    let broker = Broker::start(2);
    let topic = "growing";
    kafka::create_topic(&broker, topic, 2, &[]);
    let grow = NewPartitions::new(topic, 5);
    let results =
        kafka::wait(kafka::admin(&broker).create_partitions([&grow], &kafka::admin_options()))
            .expect("CreatePartitions request");
    assert!(
        matches!(results.as_slice(), [Ok(_)]),
        "CreatePartitions result: {results:?}"
    );
    assert_eq!(
        kafka::partition_count(&broker, topic),
        Some(5),
        "partitions after growing"
    );

    // Shrinking is refused.
    let shrink = NewPartitions::new(topic, 3);
    let results =
        kafka::wait(kafka::admin(&broker).create_partitions([&shrink], &kafka::admin_options()))
            .expect("CreatePartitions request");
    assert!(
        matches!(
            results.as_slice(),
            [Err((_, RDKafkaErrorCode::InvalidPartitions))]
        ),
        "shrinking: {results:?}"
    );
    assert_eq!(
        kafka::partition_count(&broker, topic),
        Some(5),
        "partitions after refused shrink"
    );

    let producer = kafka::producer(&broker);
    for partition in 0..5 {
        let acks = kafka::produce(
            &producer,
            topic,
            Some(partition),
            &[Rec::value(format!("to {partition}"))],
        );
        assert_eq!(
            acks,
            vec![(partition, 0)],
            "first record in partition {partition}"
        );
    }
    let consumed = kafka::consume(&broker, topic, &[0, 1, 2, 3, 4], 5);
    let mut got: Vec<(i32, Vec<u8>)> = consumed
        .into_iter()
        .map(|c| (c.partition, c.record.value.expect("value")))
        .collect();
    got.sort();
    assert_eq!(
        got,
        (0..5)
            .map(|p| (p, format!("to {p}").into_bytes()))
            .collect::<Vec<_>>(),
        "one record per partition"
    );
}

#[test]
fn deleted_topic_disappears_from_metadata() {
    let broker = Broker::start(1);
    let topic = "short-lived";
    kafka::create_topic(&broker, topic, 2, &[]);
    kafka::produce(
        &kafka::producer(&broker),
        topic,
        Some(1),
        &[Rec::value(b"soon gone".to_vec())],
    );
    assert_eq!(
        kafka::partition_count(&broker, topic),
        Some(2),
        "topic before delete"
    );

    let results =
        kafka::wait(kafka::admin(&broker).delete_topics(&[topic], &kafka::admin_options()))
            .expect("DeleteTopics request");
    assert_eq!(results, vec![Ok(topic.to_owned())], "DeleteTopics result");
    assert_eq!(
        kafka::partition_count(&broker, topic),
        None,
        "topic after delete"
    );

    let results =
        kafka::wait(kafka::admin(&broker).delete_topics(&[topic], &kafka::admin_options()))
            .expect("DeleteTopics request");
    assert_eq!(
        results,
        vec![Err((
            topic.to_owned(),
            RDKafkaErrorCode::UnknownTopicOrPartition
        ))],
        "deleting it again"
    );

    // The name can be reused, and the new topic starts empty.
    kafka::create_topic(&broker, topic, 1, &[]);
    assert_eq!(
        kafka::watermarks(&broker, topic, 0),
        (0, 0),
        "recreated topic is empty"
    );
}

#[test]
fn clients_cannot_produce_to_the_internal_offsets_topic() {
    let broker = Broker::start(1);
    let producer = kafka::producer_with(&broker, &[("message.timeout.ms", "5000")]);
    let outcome = kafka::try_produce(
        &producer,
        "__consumer_offsets",
        Some(0),
        &[Rec::value("forged commit")],
    );
    match outcome.as_slice() {
        [Err(error)] => assert_eq!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::InvalidTopic),
            "refused as Kafka refuses writes to internal topics: {error}"
        ),
        other => panic!("a client write to __consumer_offsets must be refused, got {other:?}"),
    }
}

/// Cluster-wide topic defaults set at run time (IncrementalAlterConfigs on the broker
/// resource with an empty name, through `tern topic defaults`) apply to topics without their
/// own setting, by topic or Kafka broker names, and go away when deleted; one broker's own
/// dynamic config is refused with INVALID_REQUEST.
#[test]
fn cluster_topic_defaults_change_at_run_time() {
    let broker = Broker::start(1);
    kafka::create_topic(&broker, "plain", 1, &[]);
    kafka::create_topic(&broker, "own", 1, &[("retention.ms", "5000")]);
    let tern = |args: &[&str]| {
        let output = std::process::Command::new(tern_tests::tern_binary())
            .args(["topic", "defaults", "--bootstrap", &broker.bootstrap()])
            .args(args)
            .output()
            .expect("run tern topic defaults");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, printed, _) = tern(&[
        "--set",
        "log.retention.hours=2",
        "--set",
        "compression.type=zstd",
    ]);
    assert!(ok, "{printed}");
    assert!(printed.contains("log.retention.hours=2"), "{printed}");
    assert_eq!(
        describe_topic(&broker, "plain", &["retention.ms", "compression.type"]),
        vec![
            default("retention.ms", "7200000"),
            default("compression.type", "zstd")
        ]
    );
    let described = kafka::wait(kafka::admin(&broker).describe_configs(
        [&ResourceSpecifier::Topic("plain")],
        &kafka::admin_options(),
    ))
    .expect("DescribeConfigs");
    let plain = described[0].as_ref().expect("plain");
    assert!(
        matches!(
            plain.get("retention.ms").map(|e| &e.source),
            Some(ConfigSource::DynamicDefaultBroker)
        ),
        "an inherited value says where it comes from"
    );
    assert!(matches!(
        plain.get("segment.bytes").map(|e| &e.source),
        Some(ConfigSource::Default)
    ));
    assert_eq!(
        describe_topic(&broker, "own", &["retention.ms"]),
        vec![set("retention.ms", "5000")],
        "a topic's own config beats the cluster default"
    );
    // Applied, not just described: the topic stores zstd now.
    let producer = kafka::producer(&broker);
    kafka::produce(&producer, "plain", Some(0), &[Rec::value("squeezed")]);
    let batches = tern_tests::disk::stored_batches(&broker, "plain", 0);
    assert_eq!(batches.last().map(|b| b.codec), Some(4));
    // Invalid values are refused, and deleting restores the broker's own default.
    let (ok, _, error) = tern(&["--set", "log.retention.hours=soon"]);
    assert!(
        !ok && error.contains("error 40"),
        "refused with INVALID_CONFIG: {error}"
    );
    let (ok, printed, _) = tern(&["--delete", "log.retention.hours"]);
    assert!(ok && !printed.contains("log.retention.hours"), "{printed}");
    assert_eq!(
        describe_topic(&broker, "plain", &["retention.ms"]),
        vec![default("retention.ms", "604800000")]
    );
    // AlterConfigs v1 on broker "0" (a hand-built frame: librdkafka reports per-broker
    // AlterConfigs results as successes whatever the broker answers).
    let text = |value: &str| {
        let mut out = (value.len() as i16).to_be_bytes().to_vec();
        out.extend_from_slice(value.as_bytes());
        out
    };
    let mut body = 1i32.to_be_bytes().to_vec();
    body.push(4); // resource type: broker
    body.extend(text("0"));
    body.extend(1i32.to_be_bytes());
    body.extend(text("log.retention.ms"));
    body.extend(text("1000"));
    body.push(0); // validate_only
    let answer = tern_tests::wire::round_trip(
        broker.addr,
        &tern_tests::wire::request(33, 1, 7, &body),
        std::time::Duration::from_secs(10),
    )
    .expect("AlterConfigs round trip");
    // correlation id, throttle time, one resource whose error code comes first.
    assert_eq!(&answer[0..4], &7i32.to_be_bytes());
    assert_eq!(&answer[8..12], &1i32.to_be_bytes());
    assert_eq!(
        i16::from_be_bytes([answer[12], answer[13]]),
        42,
        "INVALID_REQUEST"
    );
}
