//! Hand-built Kafka frames over a plain blocking `TcpStream`, for feeding the broker input
//! no real client would send, and for observing what it does with the connection.
//!
//! Frames are written byte by byte as the protocol draws them (big-endian):
//!
//! ```text
//! frame          = size:i32 payload[size]
//! header v1      = api_key:i16 api_version:i16 correlation_id:i32 client_id:nullable_string(i16 len)
//! ApiVersions v0 = error_code:i16 [api_key:i16 min:i16 max:i16](i32 count)   (response body)
//! ```

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// What the broker did with a connection after some input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// It closed the connection (EOF or reset) without answering.
    Closed,
    /// It sent these bytes (the connection may still be open).
    Answered(Vec<u8>),
    /// Nothing happened within the wait: the connection is open and silent.
    Open,
}

pub struct RawConnection {
    stream: TcpStream,
}

impl RawConnection {
    pub fn connect(addr: SocketAddr) -> RawConnection {
        let stream =
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("raw connect");
        stream.set_nodelay(true).expect("nodelay");
        RawConnection { stream }
    }

    /// `connect`, or None when the connection is refused or times out.
    pub fn try_connect(addr: SocketAddr) -> Option<RawConnection> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
        stream.set_nodelay(true).ok()?;
        Some(RawConnection { stream })
    }

    /// Writes bytes; a broker that already closed may make this fail, which callers that
    /// send deliberately bad input tolerate by checking the fate instead.
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Half-closes: the broker sees EOF on its read side.
    pub fn finish_sending(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Waits up to `within` for the broker to answer or close.
    pub fn fate(&mut self, within: Duration) -> Fate {
        let deadline = Instant::now() + within;
        let mut received = Vec::new();
        let mut chunk = [0u8; 64 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return if received.is_empty() {
                    Fate::Open
                } else {
                    Fate::Answered(received)
                };
            }
            self.stream
                .set_read_timeout(Some(left.min(Duration::from_millis(200))))
                .expect("read timeout");
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return if received.is_empty() {
                        Fate::Closed
                    } else {
                        Fate::Answered(received)
                    }
                }
                Ok(read) => {
                    received.extend_from_slice(&chunk[..read]);
                    // One complete frame is an answer; stop there.
                    if let Some(frame) = complete_frame(&received) {
                        return Fate::Answered(frame);
                    }
                }
                Err(error)
                    if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(error)
                    if matches!(
                        error.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
                    ) =>
                {
                    return if received.is_empty() {
                        Fate::Closed
                    } else {
                        Fate::Answered(received)
                    };
                }
                Err(error) => panic!("raw read: {error}"),
            }
        }
    }
}

/// The first whole frame in `bytes`, size prefix included, if it has arrived.
fn complete_frame(bytes: &[u8]) -> Option<Vec<u8>> {
    let size = i32::from_be_bytes(bytes.get(..4)?.try_into().ok()?);
    let total = 4 + usize::try_from(size).ok()?;
    (bytes.len() >= total).then(|| bytes[..total].to_vec())
}

/// Request header v1 (non-flexible): api key, version, correlation id, client id.
pub fn header_v1(api_key: i16, api_version: i16, correlation_id: i32, client_id: &str) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&api_key.to_be_bytes());
    out.extend_from_slice(&api_version.to_be_bytes());
    out.extend_from_slice(&correlation_id.to_be_bytes());
    out.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
    out.extend_from_slice(client_id.as_bytes());
    out
}

/// Prefixes `payload` with its size.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&(payload.len() as i32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A whole request frame with a v1 header.
pub fn request(api_key: i16, api_version: i16, correlation_id: i32, body: &[u8]) -> Vec<u8> {
    let mut payload = header_v1(api_key, api_version, correlation_id, "tern-e2e-raw");
    payload.extend_from_slice(body);
    frame(&payload)
}

/// An ApiVersions v0 response, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiVersionsV0 {
    pub correlation_id: i32,
    pub error_code: i16,
    /// (api key, min version, max version)
    pub apis: Vec<(i16, i16, i16)>,
}

/// Decodes a whole ApiVersions v0 response frame; `None` if the bytes do not fit that shape.
pub fn parse_api_versions_v0(frame: &[u8]) -> Option<ApiVersionsV0> {
    let i16_at = |at: usize| {
        frame
            .get(at..at + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
    };
    let i32_at = |at: usize| {
        frame
            .get(at..at + 4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let size = usize::try_from(i32_at(0)?).ok()?;
    if frame.len() != 4 + size {
        return None;
    }
    let correlation_id = i32_at(4)?;
    let error_code = i16_at(8)?;
    let count = usize::try_from(i32_at(10)?).ok()?;
    let mut apis = Vec::new();
    let mut at = 14;
    for _ in 0..count {
        apis.push((i16_at(at)?, i16_at(at + 2)?, i16_at(at + 4)?));
        at += 6;
    }
    (at == frame.len()).then_some(ApiVersionsV0 {
        correlation_id,
        error_code,
        apis,
    })
}

/// A Produce v3 request body for one partition (no transactional id; acks=-1, 5 s timeout):
///
/// ```text
/// transactional_id:i16(-1) acks:i16 timeout_ms:i32
/// [topic:string [partition:i32 records:bytes(i32 len)](i32 count)](i32 count)
/// ```
pub fn produce_v3_body(topic: &str, partition: i32, records: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out.extend_from_slice(&5000i32.to_be_bytes());
    out.extend_from_slice(&1i32.to_be_bytes());
    out.extend_from_slice(&(topic.len() as i16).to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(&1i32.to_be_bytes());
    out.extend_from_slice(&partition.to_be_bytes());
    out.extend_from_slice(&(records.len() as i32).to_be_bytes());
    out.extend_from_slice(records);
    out
}

/// The one partition's answer in a Produce v3 response frame for a single-partition request:
/// `(error_code, base_offset)`; `None` if the bytes do not fit that shape.
///
/// ```text
/// size:i32 correlation_id:i32 [topic:string [partition:i32 error_code:i16 base_offset:i64
///   log_append_time:i64](i32 count)](i32 count) throttle_time_ms:i32
/// ```
pub fn parse_produce_v3(frame: &[u8]) -> Option<(i16, i64)> {
    let at = |from: usize, len: usize| frame.get(from..from + len);
    let topic_len = usize::try_from(i16::from_be_bytes(at(12, 2)?.try_into().ok()?)).ok()?;
    let partition_at = 14 + topic_len + 4;
    let error_code = i16::from_be_bytes(at(partition_at + 4, 2)?.try_into().ok()?);
    let base_offset = i64::from_be_bytes(at(partition_at + 6, 8)?.try_into().ok()?);
    (frame.len() == partition_at + 4 + 2 + 8 + 8 + 4).then_some((error_code, base_offset))
}

/// A Fetch v4 body for one partition (read_uncommitted):
///
/// ```text
/// replica_id:i32(-1) max_wait_ms:i32 min_bytes:i32(1) max_bytes:i32 isolation_level:i8(0)
/// [topic:string [partition:i32 fetch_offset:i64 partition_max_bytes:i32](i32 count)](i32 count)
/// ```
pub fn fetch_v4_body(topic: &str, partition: i32, offset: i64, max_wait_ms: i32) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(-1i32).to_be_bytes());
    out.extend_from_slice(&max_wait_ms.to_be_bytes());
    out.extend_from_slice(&1i32.to_be_bytes());
    out.extend_from_slice(&(1i32 << 20).to_be_bytes());
    out.push(0);
    out.extend_from_slice(&1i32.to_be_bytes());
    out.extend_from_slice(&(topic.len() as i16).to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(&1i32.to_be_bytes());
    out.extend_from_slice(&partition.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&(1i32 << 20).to_be_bytes());
    out
}

/// Sends one request frame on a fresh connection and reads exactly one response frame back
/// (size prefix removed), within `within`.
pub fn round_trip(addr: SocketAddr, request: &[u8], within: Duration) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&addr, within)?;
    stream.set_read_timeout(Some(within))?;
    stream.write_all(request)?;
    let mut size = [0u8; 4];
    stream.read_exact(&mut size)?;
    let mut frame = vec![0u8; i32::from_be_bytes(size).max(0) as usize];
    stream.read_exact(&mut frame)?;
    Ok(frame)
}
