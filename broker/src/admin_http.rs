//! The admin HTTP endpoint on shard 0: `GET /metrics` (Prometheus text format, one sample per
//! shard with a `shard` label, gathered from every shard over `invoke_on`), `GET /doctor` (the
//! host report of `tern doctor`, as JSON, without its disk measurement), `GET /healthz`, and
//! `GET /cluster` (the metadata quorum and the brokers, as JSON).
//!
//! Deliberately tiny: it reads one request line, answers, and closes. Anything else gets 404;
//! a request larger than 8 KiB or slower than 5 s is dropped.

use std::fmt::Write as _;
use std::rc::Rc;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpListener;

use crate::limits;
use crate::metrics::ShardSample;
use crate::scatter::broadcast;
use crate::shard::Shard;

pub async fn serve(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        let Ok(mut stream) = listener.accept().await else {
            glommio::timer::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let shard = shard.clone();
        glommio::spawn_local(async move {
            let mut request = Vec::with_capacity(512);
            let mut chunk = [0u8; 1024];
            let read = glommio::timer::timeout(limits::ADMIN_HTTP_REQUEST_TIMEOUT, async {
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < limits::ADMIN_HTTP_REQUEST_BYTES_MAX {
                    let n = stream.read(&mut chunk).await?;
                    if n == 0 {
                        break;
                    }
                    request.extend_from_slice(&chunk[..n]);
                }
                Ok(())
            })
            .await;
            if read.is_err() {
                return;
            }
            let line = request.split(|b| *b == b'\n').next().unwrap_or_default();
            let line = String::from_utf8_lossy(line);
            let path = line.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = match path {
                "/metrics" => ("200 OK", render(&gather(&shard).await)),
                "/healthz" => ("200 OK", "ok\n".to_owned()),
                "/cluster" => ("200 OK", cluster_status(&shard)),
                "/doctor" => ("200 OK", doctor_report(&shard)),
                _ => ("404 Not Found", "not found\n".to_owned()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.close().await;
        })
        .detach();
    }
}

/// `GET /doctor`: `tern doctor`'s report for this broker's data directory and shards, as JSON,
/// without the disk measurement (it would compete with the broker for the disk).
fn doctor_report(shard: &Shard) -> String {
    let report = crate::doctor::examine(&crate::doctor::Options {
        data_dir: shard.config.data_dir.clone(),
        cores: shard.count,
        cpuset: shard.config.cpuset.clone(),
        measure_disk: false,
    });
    serde_json::to_string_pretty(&report)
        .unwrap_or_else(|error| format!("{{\"error\": \"{error}\"}}"))
}

/// `GET /cluster`: the metadata quorum as this broker sees it and the registered brokers, as
/// JSON (what `tern cluster status` prints).
fn cluster_status(shard: &Shard) -> String {
    let image = shard.image();
    let brokers: Vec<serde_json::Value> = image
        .brokers
        .values()
        .map(
            |b| serde_json::json!({"id": b.id, "host": b.host, "port": b.port, "fenced": b.fenced}),
        )
        .collect();
    let quorum = crate::quorum::local().map(|quorum| {
        let status = quorum.status();
        let voters: Vec<serde_json::Value> = status
            .voters
            .iter()
            .map(|(id, matched)| serde_json::json!({"id": id, "matched": matched}))
            .collect();
        serde_json::json!({
            "node": status.node,
            "leader": status.leader,
            "term": status.term,
            "commit": status.commit,
            "applied": status.applied,
            "last_index": status.last_index,
            "voters": voters,
        })
    });
    let body = serde_json::json!({
        "cluster_id": image.cluster_id,
        "metadata_epoch": image.epoch,
        "controller": shard.controller_id(),
        "quorum": quorum,
        "brokers": brokers,
    });
    format!("{body:#}\n")
}

pub async fn gather(shard: &Rc<Shard>) -> Vec<ShardSample> {
    broadcast(shard, |shard| async move { shard.sample() })
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Prometheus text format: each metric's help and type once, then one line per shard (and
/// label value).
fn render(samples: &[ShardSample]) -> String {
    let mut out = String::new();
    let Some(first) = samples.first() else {
        return out;
    };
    for (index, metric) in first.metrics.iter().enumerate() {
        let first_of_name = index == 0 || first.metrics[index - 1].name != metric.name;
        if first_of_name {
            let _ = writeln!(out, "# HELP tern_{} {}", metric.name, metric.help);
            let _ = writeln!(out, "# TYPE tern_{} {}", metric.name, metric.kind.name());
        }
        for sample in samples {
            let Some(value) = sample.metrics.get(index).filter(|m| m.name == metric.name) else {
                continue;
            };
            let label = match value.label {
                Some((key, label)) => format!(",{key}=\"{label}\""),
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "tern_{}{{shard=\"{}\"{label}}} {}",
                metric.name, sample.shard, value.value
            );
        }
    }
    out
}
