//! Several `tern serve` processes forming one cluster on loopback: each broker is a voter of
//! the metadata quorum with `--cores 1`, its Kafka listener and its internal (quorum) listener
//! on free ports, and short broker sessions so that failover tests stay quick.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::{free_port, Broker};

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
            let args = cluster.args(id, &[]);
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

    /// `GET /cluster` from broker `id`'s admin endpoint.
    pub fn status(&self, id: usize) -> Option<serde_json::Value> {
        let body = http_get(self.brokers[id].admin_addr, "/cluster")?;
        serde_json::from_str(&body).ok()
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

fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
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
