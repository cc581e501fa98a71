//! Bounded decoding of control-plane requests and framing of their responses.
//!
//! `decode_body` is the only way a request body reaches `kafka_protocol`'s decoders: it
//! first checks the frame against `limits::CONTROL_FRAME_BYTES_MAX` and walks the body with
//! the api's layout table (`schema::validate`), so the crate's eager `Vec::with_capacity`
//! can only ever reserve what the bytes really contain.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::api::ApiSpec;
use crate::frame::response_header_is_flexible;
use crate::limits;
use crate::schema;
use crate::wire::WireError;

/// Validates and decodes a control-plane request body.
pub fn decode_body<T: Decodable>(
    spec: &ApiSpec,
    version: i16,
    body: Bytes,
) -> Result<T, WireError> {
    if body.len() > limits::CONTROL_FRAME_BYTES_MAX {
        return Err(WireError::Invalid {
            reason: format!(
                "{} body of {} bytes exceeds the control-plane limit",
                spec.name,
                body.len()
            ),
        });
    }
    let Some(table) = spec.schema else {
        return Err(WireError::Invalid {
            reason: format!("{} has no layout table", spec.name),
        });
    };
    schema::validate(table, version, &body)?;
    let mut body = body;
    T::decode(&mut body, version).map_err(|error| WireError::Invalid {
        reason: error.to_string(),
    })
}

/// Encodes a complete response frame: size prefix, response header, body.
pub fn encode_response<T: Encodable>(
    api_key: i16,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Result<Bytes, WireError> {
    let mut out = BytesMut::with_capacity(64);
    out.put_i32(0);
    out.put_i32(correlation_id);
    if response_header_is_flexible(api_key, version) {
        out.put_u8(0);
    }
    body.encode(&mut out, version)
        .map_err(|error| WireError::Invalid {
            reason: error.to_string(),
        })?;
    let size = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&size.to_be_bytes());
    Ok(out.freeze())
}
