//! Request framing: the 4-byte size prefix and the request header.
//!
//! ```text
//! frame    := size:i32 (big-endian, bytes that follow) body
//! header   := api_key:i16 api_version:i16 correlation_id:i32 client_id:nullable_string(i16)
//!             [tagged_fields]          -- header v2, when the api version is flexible
//! ```
//! The client id stays a classic (non-compact) string even in header v2, for compatibility
//! with pre-flexible brokers. Nothing here allocates beyond the frame.

use crate::api::{self, ApiSpec};
use crate::limits;
use crate::wire::{Reader, WireError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeader<'a> {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
    pub client_id: Option<&'a str>,
}

/// A parsed header plus where the body starts inside the frame.
#[derive(Debug)]
pub struct ParsedHeader<'a> {
    pub header: RequestHeader<'a>,
    pub spec: &'static ApiSpec,
    pub body_start: usize,
}

/// Why a frame cannot be served at all. `Unsupported*` still has a correlation id the broker
/// can answer (ApiVersions answers with UNSUPPORTED_VERSION; others close the connection).
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("frame too short for a request header: {0}")]
    Malformed(#[from] WireError),
    #[error("unknown api key {api_key} (correlation id {correlation_id})")]
    UnknownApiKey { api_key: i16, correlation_id: i32 },
    #[error("unsupported version {api_version} of {name} (correlation id {correlation_id})")]
    UnsupportedVersion {
        api_key: i16,
        name: &'static str,
        api_version: i16,
        correlation_id: i32,
    },
}

/// Checks a frame's declared size before its body is read, against the configured maximum
/// (itself never above `limits::FRAME_BYTES_MAX`).
pub fn check_frame_size(size: i32, max_bytes: usize) -> Result<usize, FrameSizeError> {
    let max = max_bytes.min(limits::FRAME_BYTES_MAX);
    if size < limits::REQUEST_HEADER_BYTES_MIN as i32 {
        return Err(FrameSizeError::TooSmall { size });
    }
    let size = size as usize;
    if size > max {
        return Err(FrameSizeError::TooLarge { size, max });
    }
    Ok(size)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameSizeError {
    #[error("frame of {size} bytes is smaller than any request header")]
    TooSmall { size: i32 },
    #[error("frame of {size} bytes exceeds the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
}

pub fn parse_header(frame: &[u8]) -> Result<ParsedHeader<'_>, HeaderError> {
    let mut reader = Reader::new(frame);
    let api_key = reader.i16()?;
    let api_version = reader.i16()?;
    let correlation_id = reader.i32()?;
    let Some(spec) = api::lookup(api_key) else {
        return Err(HeaderError::UnknownApiKey {
            api_key,
            correlation_id,
        });
    };
    if !spec.supports(api_version) {
        return Err(HeaderError::UnsupportedVersion {
            api_key,
            name: spec.name,
            api_version,
            correlation_id,
        });
    }
    let client_id = reader.nullable_string(false)?;
    if spec.is_flexible(api_version) {
        reader.skip_tagged_fields()?;
    }
    Ok(ParsedHeader {
        header: RequestHeader {
            api_key,
            api_version,
            correlation_id,
            client_id,
        },
        spec,
        body_start: reader.position(),
    })
}

/// Peeks the api key of a frame (its first field) before the header is parsed.
pub fn peek_api_key(frame: &[u8]) -> Option<i16> {
    Reader::new(frame).i16().ok()
}

/// Peeks the correlation id of a frame whose header may be otherwise unusable.
pub fn peek_correlation_id(frame: &[u8]) -> Option<i32> {
    let mut reader = Reader::new(frame);
    reader.take(4).ok()?;
    reader.i32().ok()
}

/// Response header version: flexible responses carry a tagged-field section, except
/// ApiVersions, whose response header is always v0 so that a client can read it before it
/// knows which versions the broker speaks.
pub fn response_header_is_flexible(api_key: i16, api_version: i16) -> bool {
    if api_key == api::API_VERSIONS {
        return false;
    }
    api::lookup(api_key).is_some_and(|spec| spec.is_flexible(api_version))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(api_key: i16, api_version: i16) -> Vec<u8> {
        let mut frame = Vec::new();
        frame.extend_from_slice(&api_key.to_be_bytes());
        frame.extend_from_slice(&api_version.to_be_bytes());
        frame.extend_from_slice(&7i32.to_be_bytes());
        frame.extend_from_slice(&3i16.to_be_bytes());
        frame.extend_from_slice(b"cli");
        frame
    }

    #[test]
    fn classic_header_parses() {
        let frame = header(api::METADATA, 1);
        let parsed = parse_header(&frame).unwrap();
        assert_eq!(parsed.header.client_id, Some("cli"));
        assert_eq!(parsed.body_start, frame.len());
    }

    #[test]
    fn flexible_header_skips_tags() {
        let mut frame = header(api::METADATA, 12);
        frame.push(0);
        assert_eq!(parse_header(&frame).unwrap().body_start, frame.len());
    }

    #[test]
    fn unknown_key_and_version_are_typed() {
        assert!(matches!(
            parse_header(&header(999, 0)),
            Err(HeaderError::UnknownApiKey {
                correlation_id: 7,
                ..
            })
        ));
        assert!(matches!(
            parse_header(&header(api::METADATA, 99)),
            Err(HeaderError::UnsupportedVersion { .. })
        ));
    }

    #[test]
    fn frame_size_bounds() {
        let max = limits::FRAME_BYTES_MAX;
        assert!(check_frame_size(-1, max).is_err());
        assert!(check_frame_size(i32::MAX, max).is_err());
        assert_eq!(check_frame_size(100, max), Ok(100));
        assert_eq!(
            check_frame_size(2048, 1024),
            Err(FrameSizeError::TooLarge {
                size: 2048,
                max: 1024
            })
        );
    }
}
