//! The admin HTTP endpoint on shard 0: `GET /metrics` (Prometheus text format, one sample per
//! shard with a `shard` label, gathered from every shard over `invoke_on`) and `GET /healthz`.
//!
//! Deliberately tiny: it reads one request line, answers, and closes. Anything else gets 404;
//! a request larger than 8 KiB or slower than 5 s is dropped.

use std::fmt::Write as _;
use std::rc::Rc;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpListener;

use crate::shard::Shard;

const REQUEST_BYTES_MAX: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One shard's counters, gathered for a scrape.
#[derive(Debug, Default, Clone)]
pub struct ShardSample {
    pub shard: usize,
    pub connections_accepted: u64,
    pub open_connections: u64,
    pub requests: u64,
    pub malformed_requests: u64,
    pub fetch_bytes_referenced: u64,
    pub partitions: u64,
    pub log_bytes_zero_copy: u64,
    pub log_bytes_copied: u64,
    pub log_appends: u64,
    pub log_bytes_written: u64,
    pub log_fdatasyncs: u64,
    pub log_tail_cache_bytes: u64,
    pub log_active_index_bytes: u64,
    pub index_cache_bytes: u64,
    pub index_cache_hits: u64,
    pub index_cache_misses: u64,
}

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
            let read = glommio::timer::timeout(REQUEST_TIMEOUT, async {
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < REQUEST_BYTES_MAX {
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

pub async fn gather(shard: &Rc<Shard>) -> Vec<ShardSample> {
    let mut samples = Vec::with_capacity(shard.count);
    for target in 0..shard.count {
        if let Ok(sample) = shard
            .invoke_on(target, |shard| async move { shard.sample() })
            .await
        {
            samples.push(sample);
        }
    }
    samples
}

fn render(samples: &[ShardSample]) -> String {
    let mut out = String::new();
    let metric = |out: &mut String,
                  name: &str,
                  kind: &str,
                  help: &str,
                  value: &dyn Fn(&ShardSample) -> u64| {
        let _ = writeln!(out, "# HELP tern_{name} {help}");
        let _ = writeln!(out, "# TYPE tern_{name} {kind}");
        for sample in samples {
            let _ = writeln!(
                out,
                "tern_{name}{{shard=\"{}\"}} {}",
                sample.shard,
                value(sample)
            );
        }
    };
    metric(
        &mut out,
        "connections_accepted_total",
        "counter",
        "Kafka connections accepted.",
        &|s| s.connections_accepted,
    );
    metric(
        &mut out,
        "connections_open",
        "gauge",
        "Kafka connections open.",
        &|s| s.open_connections,
    );
    metric(
        &mut out,
        "requests_total",
        "counter",
        "Kafka requests read.",
        &|s| s.requests,
    );
    metric(
        &mut out,
        "malformed_requests_total",
        "counter",
        "Requests that closed their connection.",
        &|s| s.malformed_requests,
    );
    metric(
        &mut out,
        "fetch_response_record_bytes_total",
        "counter",
        "Record bytes placed in Fetch responses by reference.",
        &|s| s.fetch_bytes_referenced,
    );
    metric(
        &mut out,
        "partitions",
        "gauge",
        "Partition replicas owned.",
        &|s| s.partitions,
    );
    metric(
        &mut out,
        "log_read_bytes_zero_copy_total",
        "counter",
        "Bytes read from tail caches without copying.",
        &|s| s.log_bytes_zero_copy,
    );
    metric(
        &mut out,
        "log_read_bytes_copied_total",
        "counter",
        "Bytes read from disk (copied once out of the DMA buffer).",
        &|s| s.log_bytes_copied,
    );
    metric(
        &mut out,
        "log_appends_total",
        "counter",
        "Log appends.",
        &|s| s.log_appends,
    );
    metric(
        &mut out,
        "log_written_bytes_total",
        "counter",
        "Bytes written to segment files.",
        &|s| s.log_bytes_written,
    );
    metric(
        &mut out,
        "log_fdatasyncs_total",
        "counter",
        "fdatasync calls (group commit shares one among many appends).",
        &|s| s.log_fdatasyncs,
    );
    metric(
        &mut out,
        "log_tail_cache_bytes",
        "gauge",
        "Bytes held in tail caches.",
        &|s| s.log_tail_cache_bytes,
    );
    metric(
        &mut out,
        "log_active_index_bytes",
        "gauge",
        "Bytes held by the active segments' indexes.",
        &|s| s.log_active_index_bytes,
    );
    metric(
        &mut out,
        "index_cache_bytes",
        "gauge",
        "Bytes of sealed segments' indexes held in the shard index caches.",
        &|s| s.index_cache_bytes,
    );
    metric(
        &mut out,
        "index_cache_hits_total",
        "counter",
        "Sealed-segment index lookups served from memory.",
        &|s| s.index_cache_hits,
    );
    metric(
        &mut out,
        "index_cache_misses_total",
        "counter",
        "Sealed-segment index lookups that read the index files again.",
        &|s| s.index_cache_misses,
    );
    out
}
