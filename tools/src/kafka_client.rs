//! A small blocking Kafka client for the command line: one TCP connection, one request at a
//! time, message types from `kafka-protocol`. It is for operators typing commands, not for
//! throughput (the benchmark harness and applications use real client libraries).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

/// Largest response the CLI accepts.
const RESPONSE_BYTES_MAX: usize = 256 * 1024 * 1024;

pub struct Client {
    stream: TcpStream,
    correlation_id: i32,
}

pub type Result<T> = std::result::Result<T, String>;

impl Client {
    pub fn connect(bootstrap: &str) -> Result<Client> {
        let stream = TcpStream::connect(bootstrap)
            .map_err(|e| format!("cannot connect to {bootstrap}: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Client {
            stream,
            correlation_id: 0,
        })
    }

    /// Sends `request` at `version` and returns the decoded response.
    pub fn send<R: Request>(&mut self, request: &R, version: i16) -> Result<R::Response> {
        self.correlation_id += 1;
        let mut header = RequestHeader::default();
        header.request_api_key = R::KEY;
        header.request_api_version = version;
        header.correlation_id = self.correlation_id;
        header.client_id = Some(StrBytes::from_static_str("tern-cli"));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, R::header_version(version))
            .map_err(|e| e.to_string())?;
        request
            .encode(&mut body, version)
            .map_err(|e| e.to_string())?;
        let mut frame = BytesMut::with_capacity(body.len() + 4);
        frame.put_i32(body.len() as i32);
        frame.extend_from_slice(&body);
        self.stream
            .write_all(&frame)
            .map_err(|e| format!("send failed: {e}"))?;

        let mut size = [0u8; 4];
        self.stream
            .read_exact(&mut size)
            .map_err(|e| format!("broker closed the connection: {e}"))?;
        let size = i32::from_be_bytes(size);
        if size < 4 || size as usize > RESPONSE_BYTES_MAX {
            return Err(format!("bad response size {size}"));
        }
        let mut response = vec![0u8; size as usize];
        self.stream
            .read_exact(&mut response)
            .map_err(|e| format!("short response: {e}"))?;
        let mut response = Bytes::from(response);
        let header = ResponseHeader::decode(&mut response, R::Response::header_version(version))
            .map_err(|e| e.to_string())?;
        if header.correlation_id != self.correlation_id {
            return Err(format!(
                "response for {} arrived for request {}",
                header.correlation_id, self.correlation_id
            ));
        }
        let decoded = R::Response::decode(&mut response, version).map_err(|e| e.to_string())?;
        if response.has_remaining() {
            return Err(format!(
                "{} unread bytes after the response",
                response.remaining()
            ));
        }
        Ok(decoded)
    }
}

/// Turns a Kafka error code into a readable line.
pub fn check(error_code: i16, what: &str) -> Result<()> {
    if error_code == 0 {
        return Ok(());
    }
    let name = kafka_protocol::error::ResponseError::try_from_code(error_code)
        .map(|e| format!("{e:?}"))
        .unwrap_or_else(|| "unknown error".to_owned());
    Err(format!("{what}: error {error_code} ({name})"))
}
