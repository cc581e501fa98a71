//! The native protocol's requests (`tern_protocol::native`, docs/native-protocol.md): the
//! Hello handshake, then each request verified, dispatched by its type, and answered with a
//! frame naming its request id.
//!
//! Produce and Fetch share the Kafka path's core (`handlers::produce::append_all`,
//! `handlers::fetch::read_or_wait`): the same record batches reach the same partitions and
//! come back as the same zero-copy log segments, only framed differently. The control
//! requests build the Kafka request they mean and take the Kafka handler's answer
//! (`control`), so both protocols decide alike, ACLs included.
//!
//! Architecture invariant: nothing here reads a message before `tern_protocol::native` has
//! verified it and bounded its counts; a message that fails verification closes the
//! connection, and a request the broker cannot serve gets a typed error, never a panic.

mod control;
mod data;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};
use tern_protocol::native::{self as proto, msg};

use crate::handlers::Ctx;
use crate::outcome::{Malformed, Outcome};
use crate::security::ConnectionSecurity;
use crate::shard::Shard;

/// What one connection agreed in its Hello.
#[derive(Default)]
pub struct Session {
    greeted: Cell<bool>,
    version: Cell<u16>,
    client_id: RefCell<String>,
}

impl Session {
    pub fn greeted(&self) -> bool {
        self.greeted.get()
    }
}

/// Serves the connection's first frame, which must be a Hello. Returns the answer and, when
/// the connection must close after it, why.
pub fn hello(shard: &Shard, session: &Session, frame: &[u8]) -> (Outcome, Option<String>) {
    let request = match proto::split(frame).and_then(|parts| {
        proto::request(&frame[parts.message.0..parts.message.1]).map(|r| (r, parts))
    }) {
        Ok((request, _)) => request,
        Err(error) => {
            let reason = format!("malformed native Hello: {error}");
            return (
                Outcome::Close(Malformed::Header, reason.clone()),
                Some(reason),
            );
        }
    };
    let id = request.id();
    let Some(hello) = request.body_as_hello() else {
        let reason = "a native request before Hello".to_owned();
        return (
            error_frame(id, msg::Error::HelloRequired, &reason),
            Some(reason),
        );
    };
    let Some(version) = proto::negotiate(hello.version_min(), hello.version_max()) else {
        let reason = format!(
            "client speaks native versions {}..={}, this broker 1..={}",
            hello.version_min(),
            hello.version_max(),
            proto::VERSION
        );
        return (
            error_frame(id, msg::Error::UnsupportedVersion, &reason),
            Some(reason),
        );
    };
    session.version.set(version);
    *session.client_id.borrow_mut() = hello
        .client_id()
        .unwrap_or_default()
        .chars()
        .take(crate::limits::GROUP_ID_BYTES_MAX)
        .collect();
    session.greeted.set(true);
    let image = shard.image();
    let limits = &shard.config.limits;
    let mut builder = FlatBufferBuilder::with_capacity(128);
    let cluster_id = builder.create_string(&image.cluster_id);
    let body = msg::HelloResponse::create(
        &mut builder,
        &msg::HelloResponseArgs {
            version,
            broker_id: shard.node_id(),
            cluster_id: Some(cluster_id),
            max_frame_bytes: u32::try_from(limits.request_bytes_max).unwrap_or(u32::MAX),
            max_in_flight: u32::try_from(limits.in_flight_max).unwrap_or(u32::MAX),
        },
    );
    let reply = Reply::new(builder, id);
    (
        reply.finish(
            msg::Response::HelloResponse,
            body.as_union_value(),
            Vec::new(),
        ),
        None,
    )
}

/// Serves one request frame (size prefix removed). `_held` is its share of the byte budgets,
/// released with the answer.
pub async fn handle<Held>(
    shard: Rc<Shard>,
    frame: BytesMut,
    peer: Option<SocketAddr>,
    security: Rc<ConnectionSecurity>,
    session: Rc<Session>,
    _held: Held,
) -> Outcome {
    let parts = match proto::split(&frame) {
        Ok(parts) => parts,
        Err(error) => return malformed(error),
    };
    let request = match proto::request(&frame[parts.message.0..parts.message.1]) {
        Ok(request) => request,
        Err(error) => return malformed(error),
    };
    let id = request.id();
    let client_id = session.client_id.borrow().clone();
    let ctx = Ctx::native(&shard, &security, peer, client_id);
    let payload = frame.len() - parts.payload_start;
    // Only Produce carries a payload.
    if payload > 0 && request.body_type() != msg::Request::Produce {
        return malformed(format!(
            "{} payload bytes after a message that carries none",
            payload
        ));
    }
    match request.body_type() {
        msg::Request::Produce => {
            let Some(produce) = request.body_as_produce() else {
                return missing_body(id);
            };
            let plan = match data::ProducePlan::of(&produce, payload) {
                Ok(plan) => plan,
                Err(error) => return malformed(error),
            };
            let mut frame = frame;
            let payload = frame.split_off(parts.payload_start);
            data::produce(&ctx, &security, id, plan, payload).await
        }
        msg::Request::Fetch => match request.body_as_fetch() {
            Some(fetch) => match data::fetch(&ctx, id, &fetch).await {
                Ok(outcome) => outcome,
                Err(error) => malformed(error),
            },
            None => missing_body(id),
        },
        msg::Request::Hello => error_frame(
            id,
            msg::Error::InvalidRequest,
            "Hello is only the first frame of a connection",
        ),
        kind => match control::serve(&ctx, id, &request, kind).await {
            Ok(outcome) => outcome,
            Err(error) => malformed(error),
        },
    }
}

fn malformed(error: impl std::fmt::Display) -> Outcome {
    Outcome::Close(
        Malformed::Body,
        format!("malformed native request: {error}"),
    )
}

fn missing_body(id: u64) -> Outcome {
    error_frame(id, msg::Error::InvalidRequest, "the request has no body")
}

/// A whole-request error (unknown request types included: a newer client's request is
/// answered, and the connection stays).
pub fn error_frame(id: u64, error: msg::Error, message: &str) -> Outcome {
    let mut builder = FlatBufferBuilder::with_capacity(64 + message.len());
    let message = builder.create_string(message);
    let root = msg::ResponseFrame::create(
        &mut builder,
        &msg::ResponseFrameArgs {
            id,
            error,
            message: Some(message),
            body_type: msg::Response::NONE,
            body: None,
        },
    );
    builder.finish(root, None);
    framed(builder.finished_data(), Vec::new())
}

/// A response being built: the builder, and the request id it answers.
pub struct Reply<'b> {
    pub builder: FlatBufferBuilder<'b>,
    id: u64,
}

impl<'b> Reply<'b> {
    pub fn new(builder: FlatBufferBuilder<'b>, id: u64) -> Reply<'b> {
        Reply { builder, id }
    }

    /// Frames the response `body` of type `kind`, followed by `payload` (record bytes, sent
    /// from where they are: the log's buffers are never copied).
    pub fn finish(
        mut self,
        kind: msg::Response,
        body: WIPOffset<UnionWIPOffset>,
        payload: Vec<Bytes>,
    ) -> Outcome {
        let root = msg::ResponseFrame::create(
            &mut self.builder,
            &msg::ResponseFrameArgs {
                id: self.id,
                error: msg::Error::None,
                message: None,
                body_type: kind,
                body: Some(body),
            },
        );
        self.builder.finish(root, None);
        framed(self.builder.finished_data(), payload)
    }
}

fn framed(message: &[u8], payload: Vec<Bytes>) -> Outcome {
    let payload_bytes: usize = payload.iter().map(Bytes::len).sum();
    let Some(head) = proto::frame_head(message.len(), payload_bytes) else {
        return Outcome::Close(
            Malformed::Response,
            format!("a native response of {payload_bytes} payload bytes does not fit a frame"),
        );
    };
    let mut first = Vec::with_capacity(head.len() + message.len());
    first.extend_from_slice(&head);
    first.extend_from_slice(message);
    let mut segments = Vec::with_capacity(1 + payload.len());
    segments.push(Bytes::from(first));
    segments.extend(payload);
    Outcome::Respond(segments)
}

/// A Kafka error code as the native protocol carries it (the same number).
pub fn code(kafka: i16) -> msg::Error {
    msg::Error(kafka)
}
