//! The operator subcommands: topics, produce, consume, groups. Each builds Kafka requests
//! with `client::Client` against `--bootstrap` and prints plain text.

use std::collections::BTreeMap;
use std::io::BufRead;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use crate::kafka_client::{check, Client, Result};

fn s(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// CreateTopics; -1 for the partitions or the replication factor leaves it to the cluster.
pub fn topic_create(
    client: &mut Client,
    name: &str,
    (partitions, replication_factor): (i32, i16),
    configs: &[(String, String)],
) -> Result<()> {
    let mut topic = create_topics_request::CreatableTopic::default();
    topic.name = TopicName(s(name));
    topic.num_partitions = partitions;
    topic.replication_factor = replication_factor;
    topic.configs = configs
        .iter()
        .map(|(k, v)| {
            let mut c = create_topics_request::CreatableTopicConfig::default();
            c.name = s(k);
            c.value = Some(s(v));
            c
        })
        .collect();
    let mut request = CreateTopicsRequest::default();
    request.topics = vec![topic];
    request.timeout_ms = 30_000;
    let response = client.send(&request, 7)?;
    for result in &response.topics {
        check(
            result.error_code,
            &format!(
                "create topic {name}: {}",
                result.error_message.as_deref().unwrap_or("")
            ),
        )?;
        println!(
            "created topic {name} with {} partition(s) of {} replica(s)",
            result.num_partitions, result.replication_factor
        );
    }
    Ok(())
}

/// Changes the cluster-wide topic defaults (IncrementalAlterConfigs on the broker resource
/// with an empty name, as `kafka-configs --entity-default` does), then prints them
/// (DescribeConfigs).
pub fn topic_defaults(
    client: &mut Client,
    set: &[(String, String)],
    delete: &[String],
) -> Result<()> {
    const BROKER: i8 = 4;
    if !set.is_empty() || !delete.is_empty() {
        let mut resource = incremental_alter_configs_request::AlterConfigsResource::default();
        resource.resource_type = BROKER;
        resource.resource_name = s("");
        let mut configs = Vec::new();
        for (key, value) in set {
            let mut config = incremental_alter_configs_request::AlterableConfig::default();
            config.name = s(key);
            config.config_operation = 0;
            config.value = Some(s(value));
            configs.push(config);
        }
        for key in delete {
            let mut config = incremental_alter_configs_request::AlterableConfig::default();
            config.name = s(key);
            config.config_operation = 1;
            configs.push(config);
        }
        resource.configs = configs;
        let mut request = IncrementalAlterConfigsRequest::default();
        request.resources = vec![resource];
        let response = client.send(&request, 1)?;
        for result in &response.responses {
            check(
                result.error_code,
                &format!(
                    "set cluster topic defaults: {}",
                    result.error_message.as_deref().unwrap_or("")
                ),
            )?;
        }
    }
    let mut resource = describe_configs_request::DescribeConfigsResource::default();
    resource.resource_type = BROKER;
    resource.resource_name = s("");
    // Every key (an empty list would ask for none).
    resource.configuration_keys = None;
    let mut request = DescribeConfigsRequest::default();
    request.resources = vec![resource];
    let response = client.send(&request, 4)?;
    for result in &response.results {
        check(result.error_code, "describe cluster topic defaults")?;
        for entry in result.configs.iter().filter(|e| e.config_source == 3) {
            println!("{}={}", entry.name, entry.value.as_deref().unwrap_or(""));
        }
    }
    Ok(())
}

/// ElectLeaders (preferred) for every partition, a topic's, or one partition; prints each
/// partition's outcome.
pub fn elect_leaders(
    client: &mut Client,
    topic: Option<&str>,
    partition: Option<i32>,
) -> Result<()> {
    let mut request = ElectLeadersRequest::default();
    request.election_type = 0;
    request.timeout_ms = 30_000;
    if let Some(topic) = topic {
        let partitions = match partition {
            Some(partition) => vec![partition],
            None => {
                let metadata = metadata(client, Some(vec![topic]))?;
                let found = metadata
                    .topics
                    .iter()
                    .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
                    .ok_or_else(|| format!("no topic {topic}"))?;
                check(found.error_code, &format!("topic {topic}"))?;
                found.partitions.iter().map(|p| p.partition_index).collect()
            }
        };
        let mut named = elect_leaders_request::TopicPartitions::default();
        named.topic = TopicName(s(topic));
        named.partitions = partitions;
        request.topic_partitions = Some(vec![named]);
    }
    let response = client.send(&request, 2)?;
    check(response.error_code, "elect leaders")?;
    let mut moved = 0;
    for result in &response.replica_election_results {
        for partition in &result.partition_result {
            let outcome = match partition.error_code {
                0 => {
                    moved += 1;
                    "leader is the preferred replica again".to_owned()
                }
                84 => "already led by its preferred replica".to_owned(),
                80 => "preferred replica not live and in sync".to_owned(),
                code => format!(
                    "error {code}: {}",
                    partition.error_message.as_deref().unwrap_or("")
                ),
            };
            println!("{}-{}: {outcome}", result.topic.0, partition.partition_id);
        }
    }
    println!("{moved} partition(s) moved to their preferred leader");
    Ok(())
}

pub fn topic_delete(client: &mut Client, name: &str) -> Result<()> {
    let mut request = DeleteTopicsRequest::default();
    let mut state = delete_topics_request::DeleteTopicState::default();
    state.name = Some(TopicName(s(name)));
    request.topics = vec![state];
    request.timeout_ms = 30_000;
    let response = client.send(&request, 6)?;
    for result in &response.responses {
        check(result.error_code, &format!("delete topic {name}"))?;
    }
    println!("deleted topic {name}");
    Ok(())
}

fn metadata(client: &mut Client, topics: Option<Vec<&str>>) -> Result<MetadataResponse> {
    let mut request = MetadataRequest::default();
    request.topics = topics.map(|names| {
        names
            .into_iter()
            .map(|n| {
                let mut t = metadata_request::MetadataRequestTopic::default();
                t.name = Some(TopicName(s(n)));
                t
            })
            .collect()
    });
    request.allow_auto_topic_creation = false;
    client.send(&request, 12)
}

pub fn topic_list(client: &mut Client) -> Result<()> {
    let response = metadata(client, None)?;
    for topic in &response.topics {
        let name = topic
            .name
            .as_ref()
            .map(|n| n.0.to_string())
            .unwrap_or_default();
        println!(
            "{name}\t{} partition(s){}",
            topic.partitions.len(),
            if topic.is_internal { "\tinternal" } else { "" }
        );
    }
    Ok(())
}

fn partition_count(client: &mut Client, topic: &str) -> Result<i32> {
    let response = metadata(client, Some(vec![topic]))?;
    let meta = response.topics.first().ok_or("empty metadata response")?;
    check(meta.error_code, &format!("topic {topic}"))?;
    Ok(meta.partitions.len() as i32)
}

/// (earliest, latest) offsets of every partition.
fn offsets(client: &mut Client, topic: &str, partitions: i32) -> Result<Vec<(i64, i64)>> {
    let mut out = Vec::new();
    for timestamp in [-2i64, -1] {
        let mut request = ListOffsetsRequest::default();
        request.replica_id = BrokerId(-1);
        let mut t = list_offsets_request::ListOffsetsTopic::default();
        t.name = TopicName(s(topic));
        t.partitions = (0..partitions)
            .map(|p| {
                let mut part = list_offsets_request::ListOffsetsPartition::default();
                part.partition_index = p;
                part.timestamp = timestamp;
                part
            })
            .collect();
        request.topics = vec![t];
        let response = client.send(&request, 7)?;
        let answers: Vec<i64> = response
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.offset))
            .collect();
        out.push(answers);
    }
    Ok(out[0].iter().copied().zip(out[1].iter().copied()).collect())
}

pub fn topic_describe(client: &mut Client, topic: &str) -> Result<()> {
    let partitions = partition_count(client, topic)?;
    println!("topic {topic}: {partitions} partition(s)");
    for (index, (earliest, latest)) in offsets(client, topic, partitions)?.into_iter().enumerate() {
        println!(
            "  partition {index}\tearliest {earliest}\tlatest {latest}\trecords {}",
            latest - earliest
        );
    }
    let mut request = DescribeConfigsRequest::default();
    let mut resource = describe_configs_request::DescribeConfigsResource::default();
    resource.resource_type = 2;
    resource.resource_name = s(topic);
    // Null asks for every config; an empty list would ask for none.
    resource.configuration_keys = None;
    request.resources = vec![resource];
    let response = client.send(&request, 4)?;
    for result in &response.results {
        check(result.error_code, "describe configs")?;
        for config in &result.configs {
            let source = if config.config_source == 1 {
                "set"
            } else {
                "default"
            };
            println!(
                "  {} = {} ({source})",
                config.name,
                config.value.as_deref().unwrap_or("")
            );
        }
    }
    Ok(())
}

/// Produces each stdin line as one record (value = the line; key from `key`).
pub fn produce(client: &mut Client, topic: &str, partition: i32, key: Option<&str>) -> Result<()> {
    let stdin = std::io::stdin();
    let mut count = 0u64;
    let mut last_offset = -1;
    for line in stdin.lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        let record = Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: -1,
            timestamp: now_ms(),
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: Some(Bytes::from(line.into_bytes())),
            headers: Default::default(),
        };
        let mut records = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut records,
            [&record],
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .map_err(|e| e.to_string())?;
        let mut request = ProduceRequest::default();
        request.acks = -1;
        request.timeout_ms = 30_000;
        let mut data = produce_request::TopicProduceData::default();
        data.name = TopicName(s(topic));
        let mut part = produce_request::PartitionProduceData::default();
        part.index = partition;
        part.records = Some(records.freeze());
        data.partition_data = vec![part];
        request.topic_data = vec![data];
        let response = client.send(&request, 9)?;
        for t in &response.responses {
            for p in &t.partition_responses {
                check(p.error_code, &format!("produce to {topic}-{partition}"))?;
                last_offset = p.base_offset;
            }
        }
        count += 1;
    }
    eprintln!("produced {count} record(s) to {topic}-{partition}; last offset {last_offset}");
    Ok(())
}

/// Prints records from `partition`, from `start` (or the beginning), up to `count` records
/// or until no more arrive for `idle_ms`.
pub fn consume(
    client: &mut Client,
    topic: &str,
    partition: i32,
    from_beginning: bool,
    count: Option<u64>,
    idle_ms: i32,
) -> Result<()> {
    let partitions = partition_count(client, topic)?;
    let (earliest, latest) = offsets(client, topic, partitions)?
        .get(partition as usize)
        .copied()
        .ok_or_else(|| format!("topic {topic} has no partition {partition}"))?;
    let mut offset = if from_beginning { earliest } else { latest };
    let mut printed = 0u64;
    loop {
        let mut request = FetchRequest::default();
        request.replica_id = BrokerId(-1);
        request.max_wait_ms = idle_ms;
        request.min_bytes = 1;
        request.max_bytes = 16 * 1024 * 1024;
        request.session_epoch = -1;
        let mut t = fetch_request::FetchTopic::default();
        t.topic = TopicName(s(topic));
        let mut p = fetch_request::FetchPartition::default();
        p.partition = partition;
        p.fetch_offset = offset;
        p.partition_max_bytes = 4 * 1024 * 1024;
        t.partitions = vec![p];
        request.topics = vec![t];
        let response = client.send(&request, 12)?;
        check(response.error_code, "fetch")?;
        let mut got_any = false;
        for t in &response.responses {
            for p in &t.partitions {
                check(p.error_code, &format!("fetch {topic}-{partition}"))?;
                let Some(mut records) = p.records.clone() else {
                    continue;
                };
                while !records.is_empty() {
                    let set =
                        RecordBatchDecoder::decode(&mut records).map_err(|e| e.to_string())?;
                    for record in set.records {
                        if record.offset < offset {
                            continue;
                        }
                        got_any = true;
                        offset = record.offset + 1;
                        let value = record
                            .value
                            .as_deref()
                            .map(String::from_utf8_lossy)
                            .unwrap_or_default();
                        println!("{value}");
                        printed += 1;
                        if count.is_some_and(|c| printed >= c) {
                            return Ok(());
                        }
                    }
                }
            }
        }
        if !got_any {
            eprintln!("no more records after offset {offset} (stopped after {idle_ms} ms idle)");
            return Ok(());
        }
    }
}

pub fn group_list(client: &mut Client) -> Result<()> {
    let response = client.send(&ListGroupsRequest::default(), 4)?;
    check(response.error_code, "list groups")?;
    for group in &response.groups {
        println!(
            "{}\t{}\t{}",
            group.group_id.0, group.group_state, group.protocol_type
        );
    }
    Ok(())
}

/// Prints a KIP-848 group (epochs, members' epochs and assignments); false when `group` is
/// not one (a classic group, or none at all).
fn consumer_group_describe(client: &mut Client, group: &str) -> Result<bool> {
    let mut request = ConsumerGroupDescribeRequest::default();
    request.group_ids = vec![GroupId(s(group))];
    let response = client.send(&request, 1)?;
    let Some(described) = response.groups.first() else {
        return Ok(false);
    };
    if described.error_code == 69 {
        return Ok(false);
    }
    check(
        described.error_code,
        &format!("describe consumer group {group}"),
    )?;
    let partitions = |a: &consumer_group_describe_response::Assignment| -> String {
        let list: Vec<String> = a
            .topic_partitions
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(move |p| format!("{}-{p}", t.topic_name.0))
            })
            .collect();
        if list.is_empty() {
            "-".to_owned()
        } else {
            list.join(",")
        }
    };
    println!(
        "group {group}: consumer protocol (KIP-848), state {}, group epoch {}, assignment epoch {}, assignor {}",
        described.group_state, described.group_epoch, described.assignment_epoch, described.assignor_name
    );
    for member in &described.members {
        let subscription: Vec<&str> = member
            .subscribed_topic_names
            .iter()
            .map(|t| t.0.as_str())
            .chain(member.subscribed_topic_regex.as_deref())
            .collect();
        println!(
            "  member {}\tepoch {}\tclient {}\thost {}{}\tsubscribed {}",
            member.member_id,
            member.member_epoch,
            member.client_id,
            member.client_host,
            member
                .instance_id
                .as_ref()
                .map(|i| format!("\tinstance {i}"))
                .unwrap_or_default(),
            subscription.join(",")
        );
        println!(
            "    assigned {}\ttarget {}",
            partitions(&member.assignment),
            partitions(&member.target_assignment)
        );
    }
    Ok(true)
}

/// Members of `group` (a classic or a KIP-848 group), then its committed offsets with lag
/// per partition.
pub fn group_describe(client: &mut Client, group: &str) -> Result<()> {
    if !consumer_group_describe(client, group)? {
        let mut request = DescribeGroupsRequest::default();
        request.groups = vec![GroupId(s(group))];
        let response = client.send(&request, 5)?;
        for described in &response.groups {
            check(described.error_code, &format!("describe group {group}"))?;
            println!(
                "group {group}: state {}, protocol {} / {}",
                described.group_state, described.protocol_type, described.protocol_data
            );
            for member in &described.members {
                println!(
                    "  member {}\tclient {}\thost {}",
                    member.member_id, member.client_id, member.client_host
                );
            }
        }
    }
    let committed = committed_offsets(client, group)?;
    let mut latest_by_topic: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for (topic, partition, committed) in committed {
        if !latest_by_topic.contains_key(&topic) {
            let count = partition_count(client, &topic)?;
            latest_by_topic.insert(topic.clone(), offsets(client, &topic, count)?);
        }
        let latest = latest_by_topic[&topic]
            .get(partition as usize)
            .map(|o| o.1)
            .unwrap_or(-1);
        let lag = if committed >= 0 && latest >= 0 {
            latest - committed
        } else {
            -1
        };
        println!("  {topic}-{partition}\tcommitted {committed}\tlatest {latest}\tlag {lag}");
    }
    Ok(())
}

fn committed_offsets(client: &mut Client, group: &str) -> Result<Vec<(String, i32, i64)>> {
    let mut request = OffsetFetchRequest::default();
    let mut g = offset_fetch_request::OffsetFetchRequestGroup::default();
    g.group_id = GroupId(s(group));
    g.topics = None;
    request.groups = vec![g];
    let response = client.send(&request, 8)?;
    let mut out = Vec::new();
    for g in &response.groups {
        check(g.error_code, &format!("offsets of group {group}"))?;
        for t in &g.topics {
            for p in &t.partitions {
                out.push((t.name.0.to_string(), p.partition_index, p.committed_offset));
            }
        }
    }
    Ok(out)
}

pub fn group_delete(client: &mut Client, group: &str) -> Result<()> {
    let mut request = DeleteGroupsRequest::default();
    request.groups_names = vec![GroupId(s(group))];
    let response = client.send(&request, 2)?;
    for result in &response.results {
        check(result.error_code, &format!("delete group {group}"))?;
    }
    println!("deleted group {group}");
    Ok(())
}

pub enum ResetTo {
    Earliest,
    Latest,
    Offset(i64),
}

/// Commits new offsets for every partition of `topic` for an inactive group.
pub fn group_reset_offsets(
    client: &mut Client,
    group: &str,
    topic: &str,
    to: ResetTo,
) -> Result<()> {
    let count = partition_count(client, topic)?;
    let bounds = offsets(client, topic, count)?;
    let mut request = OffsetCommitRequest::default();
    request.group_id = GroupId(s(group));
    request.generation_id_or_member_epoch = -1;
    request.member_id = s("");
    let mut t = offset_commit_request::OffsetCommitRequestTopic::default();
    t.name = TopicName(s(topic));
    t.partitions = bounds
        .iter()
        .enumerate()
        .map(|(index, (earliest, latest))| {
            let mut p = offset_commit_request::OffsetCommitRequestPartition::default();
            p.partition_index = index as i32;
            p.committed_offset = match to {
                ResetTo::Earliest => *earliest,
                ResetTo::Latest => *latest,
                ResetTo::Offset(o) => o.clamp(*earliest, *latest),
            };
            p
        })
        .collect();
    request.topics = vec![t];
    let response = client.send(&request, 8)?;
    for t in &response.topics {
        for p in &t.partitions {
            check(
                p.error_code,
                &format!("reset {group} on {topic}-{}", p.partition_index),
            )?;
        }
    }
    println!("reset group {group} on {topic} ({count} partition(s))");
    Ok(())
}

/// `tern cluster status`: reads the broker's `GET /cluster` and prints it as tables.
pub fn cluster_status(admin: &str) -> Result<()> {
    use std::io::{Read, Write};
    let io = |e: std::io::Error| format!("admin endpoint {admin}: {e}");
    let mut stream = std::net::TcpStream::connect(admin).map_err(io)?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .map_err(io)?;
    write!(
        stream,
        "GET /cluster HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(io)?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .ok_or("the admin endpoint sent no body")?;
    let status: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("bad /cluster answer: {e}"))?;
    println!(
        "cluster id:  {}",
        status["cluster_id"].as_str().unwrap_or("?")
    );
    println!("controller:  {}", status["controller"]);
    println!("metadata epoch: {}", status["metadata_epoch"]);
    let quorum = &status["quorum"];
    if !quorum.is_null() {
        println!(
            "quorum: leader {}  term {}  commit {}  applied here {}",
            quorum["leader"], quorum["term"], quorum["commit"], quorum["applied"]
        );
        println!("{:>6}  {:>10}  {:>6}", "VOTER", "MATCHED", "LAG");
        for voter in quorum["voters"].as_array().into_iter().flatten() {
            let matched = voter["matched"].as_u64();
            let lag = matched.map(|m| quorum["last_index"].as_u64().unwrap_or(0).saturating_sub(m));
            let show = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
            println!(
                "{:>6}  {:>10}  {:>6}",
                voter["id"],
                show(matched),
                show(lag)
            );
        }
    }
    println!("{:>6}  {:<24}  FENCED", "BROKER", "ADDRESS");
    for broker in status["brokers"].as_array().into_iter().flatten() {
        let address = format!(
            "{}:{}",
            broker["host"].as_str().unwrap_or("?"),
            broker["port"]
        );
        println!("{:>6}  {:<24}  {}", broker["id"], address, broker["fenced"]);
    }
    Ok(())
}

/// Every broker's address, from Metadata.
fn broker_addresses(client: &mut Client) -> Result<Vec<String>> {
    let response = client.send(&MetadataRequest::default(), 12)?;
    Ok(response
        .brokers
        .iter()
        .map(|b| format!("{}:{}", b.host, b.port))
        .collect())
}

/// `tern txn list`: ListTransactions on every broker (each lists the ids it coordinates).
pub fn txn_list(client: &mut Client) -> Result<()> {
    let mut rows = Vec::new();
    for address in broker_addresses(client)? {
        let mut broker = Client::connect(&address)?;
        let response = broker.send(&ListTransactionsRequest::default(), 0)?;
        check(
            response.error_code,
            &format!("list transactions on {address}"),
        )?;
        for state in &response.transaction_states {
            rows.push((
                state.transactional_id.0.to_string(),
                state.producer_id.0,
                state.transaction_state.to_string(),
            ));
        }
    }
    rows.sort();
    for (id, producer_id, state) in rows {
        println!("{id}\tproducer {producer_id}\t{state}");
    }
    Ok(())
}

/// `tern txn describe ID`: DescribeTransactions on the id's coordinator.
pub fn txn_describe(client: &mut Client, transactional_id: &str) -> Result<()> {
    let mut find = FindCoordinatorRequest::default();
    find.key_type = 1;
    find.coordinator_keys = vec![s(transactional_id)];
    let found = client.send(&find, 4)?;
    let coordinator = found
        .coordinators
        .first()
        .ok_or("no coordinator in the answer")?;
    check(coordinator.error_code, "find the transaction coordinator")?;
    let mut broker = Client::connect(&format!("{}:{}", coordinator.host, coordinator.port))?;
    let mut request = DescribeTransactionsRequest::default();
    request.transactional_ids = vec![TransactionalId(s(transactional_id))];
    let response = broker.send(&request, 0)?;
    for state in &response.transaction_states {
        check(
            state.error_code,
            &format!("describe transaction {transactional_id}"),
        )?;
        println!(
            "transactional id {transactional_id}: state {}, producer {} epoch {}, timeout {} ms, started {}",
            state.transaction_state,
            state.producer_id.0,
            state.producer_epoch,
            state.transaction_timeout_ms,
            state.transaction_start_time_ms
        );
        for topic in &state.topics {
            for partition in &topic.partitions {
                println!("  {}-{partition}", topic.topic.0);
            }
        }
    }
    Ok(())
}

/// The SCRAM mechanisms named in a comma-separated list.
fn scram_mechanisms(list: &str) -> Result<Vec<tern_broker::security::sasl::Mechanism>> {
    use tern_broker::security::sasl::Mechanism;
    list.split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(|m| match Mechanism::parse(m) {
            Some(mechanism) if mechanism != Mechanism::Plain => Ok(mechanism),
            _ => Err(format!(
                "{m} is not a SCRAM mechanism (SCRAM-SHA-256, SCRAM-SHA-512)"
            )),
        })
        .collect()
}

fn check_user_results(
    results: &[alter_user_scram_credentials_response::AlterUserScramCredentialsResult],
) -> Result<()> {
    for result in results {
        if result.error_code != 0 {
            let message = result
                .error_message
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_default();
            check(result.error_code, &format!("user {}", result.user.as_str()))
                .map_err(|e| format!("{e}: {message}"))?;
        }
    }
    Ok(())
}

/// `tern user create NAME --password P`: AlterUserScramCredentials upsertions, salted here.
pub fn user_create(
    client: &mut Client,
    name: &str,
    password: &str,
    mechanisms: &str,
    iterations: i32,
) -> Result<()> {
    use alter_user_scram_credentials_request::ScramCredentialUpsertion;
    use tern_broker::security::sasl;
    if password.is_empty() {
        return Err("the password is empty".into());
    }
    let iterations_u32 =
        u32::try_from(iterations).map_err(|_| format!("bad iteration count {iterations}"))?;
    let mut upsertions = Vec::new();
    for mechanism in scram_mechanisms(mechanisms)? {
        let salt = sasl::new_salt()?;
        let salted = sasl::salted_password(mechanism, password.as_bytes(), &salt, iterations_u32);
        upsertions.push(
            ScramCredentialUpsertion::default()
                .with_name(s(name))
                .with_mechanism(mechanism.scram_id())
                .with_iterations(iterations)
                .with_salt(Bytes::from(salt))
                .with_salted_password(Bytes::from(salted)),
        );
    }
    let request = AlterUserScramCredentialsRequest::default().with_upsertions(upsertions);
    let response = client.send(&request, 0)?;
    check_user_results(&response.results)?;
    println!("user {name}: credentials set ({mechanisms})");
    Ok(())
}

/// `tern user delete NAME [--mechanism M]`.
pub fn user_delete(client: &mut Client, name: &str, mechanism: Option<&str>) -> Result<()> {
    use alter_user_scram_credentials_request::ScramCredentialDeletion;
    let mechanisms = match mechanism {
        Some(list) => scram_mechanisms(list)?,
        None => {
            // Every mechanism the user has.
            let request = DescribeUserScramCredentialsRequest::default().with_users(Some(vec![
                describe_user_scram_credentials_request::UserName::default().with_name(s(name)),
            ]));
            let response = client.send(&request, 0)?;
            let result = response
                .results
                .first()
                .ok_or_else(|| format!("no answer about user {name}"))?;
            check(result.error_code, &format!("user {name}"))?;
            result
                .credential_infos
                .iter()
                .filter_map(|info| {
                    tern_broker::security::sasl::Mechanism::from_scram_id(info.mechanism)
                })
                .collect()
        }
    };
    let deletions = mechanisms
        .iter()
        .map(|m| {
            ScramCredentialDeletion::default()
                .with_name(s(name))
                .with_mechanism(m.scram_id())
        })
        .collect();
    let request = AlterUserScramCredentialsRequest::default().with_deletions(deletions);
    let response = client.send(&request, 0)?;
    check_user_results(&response.results)?;
    println!("user {name}: credentials deleted");
    Ok(())
}

/// `tern user list`: every user, its mechanisms and iteration counts.
pub fn user_list(client: &mut Client) -> Result<()> {
    let response = client.send(&DescribeUserScramCredentialsRequest::default(), 0)?;
    check(response.error_code, "describe users")?;
    for result in &response.results {
        let mechanisms: Vec<String> = result
            .credential_infos
            .iter()
            .map(|info| {
                let name = tern_broker::security::sasl::Mechanism::from_scram_id(info.mechanism)
                    .map(|m| m.name().to_owned())
                    .unwrap_or_else(|| format!("mechanism {}", info.mechanism));
                format!("{name} ({} iterations)", info.iterations)
            })
            .collect();
        println!("{}\t{}", result.user.as_str(), mechanisms.join(", "));
    }
    Ok(())
}

pub enum AclVerb {
    Add,
    List,
    Remove,
}

/// What `tern acl` was told: a resource (type 1 = any), principal, host, operations.
pub struct AclSelection {
    pub resource_type: i8,
    pub name: Option<String>,
    pub prefixed: bool,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operations: Option<String>,
    pub deny: bool,
}

/// `tern acl add|list|remove`: CreateAcls, DescribeAcls, DeleteAcls.
pub fn acl(client: &mut Client, verb: AclVerb, selection: AclSelection) -> Result<()> {
    use tern_broker::security::acl::{self as model, operation, pattern, permission};
    let operations: Vec<i8> = match &selection.operations {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(|o| model::parse_operation(o).ok_or_else(|| format!("unknown operation '{o}'")))
            .collect::<Result<_>>()?,
        None => Vec::new(),
    };
    let pattern_type = if selection.prefixed {
        pattern::PREFIXED
    } else {
        pattern::LITERAL
    };
    // Listing and removing: a named resource's own pattern, else any.
    let pattern_filter = if selection.name.is_some() {
        pattern_type
    } else {
        pattern::ANY
    };
    let permission_type = if selection.deny {
        permission::DENY
    } else {
        permission::ALLOW
    };
    match verb {
        AclVerb::Add => {
            let name = selection
                .name
                .ok_or("say which resource: --topic, --group, --transactional-id or --cluster")?;
            let principal = selection.principal.ok_or("say --principal User:NAME")?;
            if operations.is_empty() {
                return Err("say --operation".into());
            }
            let creations = operations
                .iter()
                .map(|op| {
                    create_acls_request::AclCreation::default()
                        .with_resource_type(selection.resource_type)
                        .with_resource_name(s(&name))
                        .with_resource_pattern_type(pattern_type)
                        .with_principal(s(&principal))
                        .with_host(s(selection.host.as_deref().unwrap_or("*")))
                        .with_operation(*op)
                        .with_permission_type(permission_type)
                })
                .collect();
            let response =
                client.send(&CreateAclsRequest::default().with_creations(creations), 3)?;
            for result in &response.results {
                let message = result
                    .error_message
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default();
                check(result.error_code, "add ACL").map_err(|e| format!("{e}: {message}"))?;
            }
            println!("added {} ACL(s)", operations.len());
            Ok(())
        }
        AclVerb::List => {
            let mut request = DescribeAclsRequest::default()
                .with_resource_type_filter(selection.resource_type)
                .with_resource_name_filter(selection.name.as_deref().map(s))
                .with_pattern_type_filter(pattern_filter)
                .with_principal_filter(selection.principal.as_deref().map(s))
                .with_host_filter(selection.host.as_deref().map(s))
                .with_operation(operation::ANY)
                .with_permission_type(permission::ANY);
            if let [op] = operations.as_slice() {
                request = request.with_operation(*op);
            }
            let response = client.send(&request, 3)?;
            check(response.error_code, "list ACLs")?;
            for res in &response.resources {
                let kind = model::resource_name(res.resource_type);
                let pattern = if res.pattern_type == pattern::PREFIXED {
                    "prefixed"
                } else {
                    "literal"
                };
                for entry in &res.acls {
                    let verdict = if entry.permission_type == permission::DENY {
                        "DENY"
                    } else {
                        "ALLOW"
                    };
                    println!(
                        "{kind}:{}\t{pattern}\t{}\t{}\t{verdict}\t{}",
                        res.resource_name.as_str(),
                        entry.principal.as_str(),
                        model::operation_name(entry.operation),
                        entry.host.as_str()
                    );
                }
            }
            Ok(())
        }
        AclVerb::Remove => {
            let ops: Vec<i8> = if operations.is_empty() {
                vec![operation::ANY]
            } else {
                operations
            };
            let filters = ops
                .iter()
                .map(|op| {
                    delete_acls_request::DeleteAclsFilter::default()
                        .with_resource_type_filter(selection.resource_type)
                        .with_resource_name_filter(selection.name.as_deref().map(s))
                        .with_pattern_type_filter(pattern_filter)
                        .with_principal_filter(selection.principal.as_deref().map(s))
                        .with_host_filter(selection.host.as_deref().map(s))
                        .with_operation(*op)
                        .with_permission_type(if selection.deny {
                            permission::DENY
                        } else {
                            permission::ANY
                        })
                })
                .collect();
            let response = client.send(&DeleteAclsRequest::default().with_filters(filters), 3)?;
            let mut removed = 0;
            for result in &response.filter_results {
                check(result.error_code, "remove ACLs")?;
                removed += result.matching_acls.len();
            }
            println!("removed {removed} ACL(s)");
            Ok(())
        }
    }
}

/// `tern quota set|remove`: AlterClientQuotas for one entity (`None` values remove).
pub fn quota_alter(
    client: &mut Client,
    entity: Vec<(String, Option<String>)>,
    ops: Vec<(String, Option<f64>)>,
) -> Result<()> {
    if entity.is_empty() {
        return Err(
            "say whose quota: --user, --default-user, --client-id, --default-client-id".into(),
        );
    }
    if ops.is_empty() {
        return Err("say which rate: --producer-byte-rate or --consumer-byte-rate".into());
    }
    let entry = alter_client_quotas_request::EntryData::default()
        .with_entity(
            entity
                .iter()
                .map(|(kind, name)| {
                    alter_client_quotas_request::EntityData::default()
                        .with_entity_type(s(kind))
                        .with_entity_name(name.as_deref().map(s))
                })
                .collect(),
        )
        .with_ops(
            ops.iter()
                .map(|(key, value)| {
                    alter_client_quotas_request::OpData::default()
                        .with_key(s(key))
                        .with_value(value.unwrap_or(0.0))
                        .with_remove(value.is_none())
                })
                .collect(),
        );
    let response = client.send(
        &AlterClientQuotasRequest::default().with_entries(vec![entry]),
        1,
    )?;
    for result in &response.entries {
        let message = result
            .error_message
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default();
        check(result.error_code, "alter quota").map_err(|e| format!("{e}: {message}"))?;
    }
    println!("quota updated");
    Ok(())
}

/// `tern quota list`: every entity with its quotas.
pub fn quota_list(client: &mut Client) -> Result<()> {
    let response = client.send(&DescribeClientQuotasRequest::default(), 1)?;
    check(response.error_code, "describe quotas")?;
    for entry in response.entries.iter().flatten() {
        let entity: Vec<String> = entry
            .entity
            .iter()
            .map(|part| {
                format!(
                    "{}={}",
                    part.entity_type.as_str(),
                    part.entity_name
                        .as_ref()
                        .map_or("<default>", |n| n.as_str())
                )
            })
            .collect();
        let values: Vec<String> = entry
            .values
            .iter()
            .map(|v| format!("{}={}", v.key.as_str(), v.value))
            .collect();
        println!("{}\t{}", entity.join(","), values.join(", "));
    }
    Ok(())
}
