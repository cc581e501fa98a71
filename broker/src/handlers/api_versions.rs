//! ApiVersions: advertises exactly the table in `tern_protocol::api`.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::ApiVersionsResponse;
use tern_protocol::api;
use tern_protocol::error_code;
use tern_protocol::request::encode_response;

use super::Ctx;
use crate::outcome::{Malformed, Outcome};

fn body(error: i16) -> ApiVersionsResponse {
    let mut response = ApiVersionsResponse::default();
    response.error_code = error;
    response.api_keys = api::all()
        .map(|spec| {
            let mut version = ApiVersion::default();
            version.api_key = spec.key;
            version.min_version = spec.version_min;
            version.max_version = spec.version_max;
            version
        })
        .collect();
    response
}

pub fn handle(ctx: &Ctx<'_>) -> Outcome {
    ctx.respond(&body(error_code::NONE))
}

/// A client asked for a newer ApiVersions than we speak: answer in v0 (which every client
/// can read) with UNSUPPORTED_VERSION and our ranges, so it retries with a version we know.
pub fn unsupported(correlation_id: i32) -> Outcome {
    match encode_response(
        api::API_VERSIONS,
        0,
        correlation_id,
        &body(error_code::UNSUPPORTED_VERSION),
    ) {
        Ok(frame) => Outcome::frame(frame),
        Err(error) => Outcome::Close(
            Malformed::Response,
            format!("cannot encode ApiVersions: {error}"),
        ),
    }
}
