//! Several `tern serve` processes forming one cluster on loopback: each broker is a voter of
//! the metadata quorum with `--cores 1`, its Kafka listener and its internal (quorum) listener
//! on free ports, and short broker sessions so that failover tests stay quick.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;

use crate::{free_port, kafka, Broker};

/// Kafka's `broker.session.timeout.ms` for test clusters (Kafka's default is 9 s).
pub const SESSION_TIMEOUT_MS: u64 = 3_000;
const HEARTBEAT_INTERVAL_MS: u64 = 500;

pub struct Cluster {
    pub brokers: Vec<Broker>,
    voters: String,
}

impl Cluster {
    /// Starts `size` brokers (node ids 0..size) and waits until every one serves.
    pub fn start(size: usize) -> Cluster {
        Cluster::start_with(size, &[])
    }

    /// `start`, every broker with `extra` arguments too.
    pub fn start_with(size: usize, extra: &[&str]) -> Cluster {
        let addr = |port: u16| -> SocketAddr { format!("127.0.0.1:{port}").parse().expect("addr") };
        let kafka: Vec<SocketAddr> = (0..size).map(|_| addr(free_port())).collect();
        let internal: Vec<SocketAddr> = (0..size).map(|_| addr(free_port())).collect();
        let voters = internal
            .iter()
            .enumerate()
            .map(|(id, addr)| format!("{id}@{addr}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            brokers: Vec::new(),
            voters,
        };
        for (id, addr) in kafka.into_iter().enumerate() {
            let args = cluster.args(id, extra);
            cluster.brokers.push(Broker::launch_with(1, addr, args));
        }
        for broker in &mut cluster.brokers {
            broker.wait_until_serving();
        }
        cluster
    }

    /// The arguments broker `id` runs with, plus `extra`.
    pub fn args(&self, id: usize, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--node-id".into(),
            id.to_string(),
            "--voters".into(),
            self.voters.clone(),
            "--broker-session-timeout-ms".into(),
            SESSION_TIMEOUT_MS.to_string(),
            "--broker-heartbeat-interval-ms".into(),
            HEARTBEAT_INTERVAL_MS.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// Every broker's Kafka address, as a bootstrap list.
    pub fn bootstrap(&self) -> String {
        self.brokers
            .iter()
            .map(Broker::bootstrap)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `GET /cluster` from broker `id`'s admin endpoint.
    pub fn status(&self, id: usize) -> Option<serde_json::Value> {
        let body = http_get(self.brokers[id].admin_addr, "/cluster")?;
        serde_json::from_str(&body).ok()
    }

    /// Broker `id`'s Prometheus metrics, as text.
    pub fn metrics(&self, id: usize) -> Option<String> {
        http_get(self.brokers[id].admin_addr, "/metrics")
    }

    /// The sum over broker `id`'s shards of metric `name` (full name, `tern_` prefix included).
    pub fn metric_sum(&self, id: usize, name: &str) -> Option<f64> {
        let text = self.metrics(id)?;
        let values: Vec<f64> = text
            .lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    /// The quorum leader broker `id` knows of.
    pub fn controller_seen_by(&self, id: usize) -> Option<usize> {
        let status = self.status(id)?;
        status["quorum"]["leader"].as_u64().map(|l| l as usize)
    }

    /// Waits until some live broker names a leader every other live broker agrees on.
    pub fn wait_for_controller(&self, live: &[usize], within: Duration) -> usize {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let seen: Vec<Option<usize>> =
                live.iter().map(|id| self.controller_seen_by(*id)).collect();
            if let Some(Some(first)) = seen.first() {
                if live.contains(first) && seen.iter().all(|s| *s == Some(*first)) {
                    return *first;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no agreed controller among {live:?} within {within:?}");
    }
}

/// A plain HTTP GET of `path` on `addr` (the admin port): the body, or None.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
}

/// Partition -> (leader, replicas, isr) as one broker answers Metadata for a topic.
pub type Layout = BTreeMap<i32, (i32, Vec<i32>, Vec<i32>)>;

/// The brokers listed and the topic's layout, as `broker` answers Metadata for `topic`.
pub fn layout(broker: &Broker, topic: &str) -> Option<(Vec<i32>, Layout)> {
    let consumer = kafka::consumer(broker);
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .ok()?;
    let brokers: Vec<i32> = metadata.brokers().iter().map(|b| b.id()).collect();
    let topic = metadata.topics().iter().find(|t| t.name() == topic)?;
    if topic.error().is_some() || topic.partitions().is_empty() {
        return None;
    }
    let partitions = topic
        .partitions()
        .iter()
        .map(|p| {
            (
                p.id(),
                (p.leader(), p.replicas().to_vec(), p.isr().to_vec()),
            )
        })
        .collect();
    Some((brokers, partitions))
}

/// Waits until every broker in `live` answers the same layout for `topic`.
pub fn agreed_layout(
    cluster: &Cluster,
    live: &[usize],
    topic: &str,
    within: Duration,
) -> (Vec<i32>, Layout) {
    let deadline = Instant::now() + within;
    let mut last = Vec::new();
    while Instant::now() < deadline {
        last = live
            .iter()
            .map(|id| layout(&cluster.brokers[*id], topic))
            .collect::<Vec<_>>();
        if let Some(Some(first)) = last.first() {
            if last.iter().all(|other| other.as_ref() == Some(first)) {
                return first.clone();
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("brokers {live:?} did not agree on {topic} within {within:?}: {last:?}");
}

/// Waits until the live brokers agree on `topic` and `ready` holds for its layout.
pub fn wait_for_layout(
    cluster: &Cluster,
    live: &[usize],
    topic: &str,
    within: Duration,
    ready: impl Fn(&Layout) -> bool,
) -> Layout {
    let deadline = Instant::now() + within;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let (_, layout) =
            agreed_layout(cluster, live, topic, remaining.max(Duration::from_secs(1)));
        if ready(&layout) {
            return layout;
        }
        assert!(
            Instant::now() < deadline,
            "{topic} did not reach the awaited layout within {within:?}: {layout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
