//! Request dispatch: one function per Kafka API, each taking the shard and the request and
//! returning the response frame.
//!
//! Architecture invariant: handlers never parse wire bytes themselves; they receive values
//! decoded by `tern-protocol` (bounded) and build responses with its encoders. A handler
//! never panics on client data: every client mistake becomes a Kafka error code or a
//! closed connection.
//!
//! `Ctx` carries the connection's security: a handler asks `Ctx::allowed` before it acts
//! (true at once with the authorizer off) and charges byte-rate quotas with
//! `Ctx::charge_quota`; `handle` refuses everything but SASL before authentication and times
//! requests while some client has a request quota.

pub(crate) mod admin;
mod api_versions;
mod consumer_groups;
pub(crate) mod fetch;
pub(crate) mod find_coordinator;
pub(crate) mod groups;
mod txn;
pub use groups::offsets_topic_command;
pub(crate) mod metadata;
pub(crate) mod offsets;
pub(crate) mod produce;
pub(crate) mod producer_id;
mod security;

use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};
use tern_protocol::api;
use tern_protocol::frame::{self, HeaderError, ParsedHeader};
use tern_protocol::request::{decode_body, encode_response};

use crate::outcome::{Malformed, Outcome};
use crate::security::{acl, quota, ConnectionSecurity};
use crate::shard::Shard;

/// Everything a handler needs to know about the request it serves.
pub struct Ctx<'a> {
    pub shard: &'a Rc<Shard>,
    pub api_key: i16,
    pub version: i16,
    pub correlation_id: i32,
    /// The request header's client id (empty when null), bounded by `GROUP_ID_BYTES_MAX`.
    pub client_id: String,
    /// The client's address, as the connection saw it.
    pub peer: Option<std::net::SocketAddr>,
    /// The connection's listener, principal and SASL state.
    pub security: &'a ConnectionSecurity,
}

impl<'a> Ctx<'a> {
    /// A native request's context (`crate::native`): the same principal, ACLs and quotas as a
    /// Kafka request; `for_api` names the Kafka request a native one is served as.
    pub fn native(
        shard: &'a Rc<Shard>,
        security: &'a ConnectionSecurity,
        peer: Option<std::net::SocketAddr>,
        client_id: String,
    ) -> Ctx<'a> {
        Ctx {
            shard,
            api_key: -1,
            version: 0,
            correlation_id: 0,
            client_id,
            peer,
            security,
        }
    }

    /// This context as a request of `api_key` at `version` would have it.
    pub fn for_api(&self, api_key: i16, version: i16) -> Ctx<'a> {
        Ctx {
            shard: self.shard,
            api_key,
            version,
            correlation_id: self.correlation_id,
            client_id: self.client_id.clone(),
            peer: self.peer,
            security: self.security,
        }
    }

    /// Where the client connects from, for DescribeGroups, written as the Java broker does
    /// (`/` then the address).
    pub fn client_host(&self) -> String {
        match self.peer {
            Some(peer) => format!("/{}", peer.ip()),
            None => "/unknown".to_owned(),
        }
    }

    /// Whether the connection's principal may do `operation` on the resource (always, with
    /// the authorizer off). Denials are logged at debug level, named as Kafka names them.
    pub fn allowed(&self, operation: i8, resource_type: i8, name: &str) -> bool {
        if !self.shard.config.authorization {
            return true;
        }
        let image = self.shard.image();
        let principal = self.security.principal();
        let host = self.host();
        let allowed = acl::authorize(
            &image.acls,
            self.policy(),
            &principal,
            &host,
            operation,
            resource_type,
            name,
        );
        if !allowed {
            tracing::debug!(
                %principal,
                %host,
                operation = acl::operation_name(operation),
                resource = acl::resource_name(resource_type),
                name,
                "denied"
            );
        }
        allowed
    }

    /// Whether the principal may do `operation` on some resource of the type.
    pub fn allowed_somewhere(&self, operation: i8, resource_type: i8) -> bool {
        if !self.shard.config.authorization {
            return true;
        }
        acl::authorize_any(
            &self.shard.image().acls,
            self.policy(),
            &self.security.principal(),
            &self.host(),
            operation,
            resource_type,
        )
    }

    /// Counts `bytes` against the client's `key` quota (producer or consumer byte rate) and
    /// returns the throttle time it earned (0 without a quota). The connection is held for
    /// that long; the client is told it in the response.
    pub fn charge_quota(&self, key: &str, bytes: usize) -> i32 {
        self.charge_quota_amount(key, bytes as f64)
    }

    /// `charge_quota` for any measure (bytes, or percent-seconds of thread time).
    pub fn charge_quota_amount(&self, key: &str, amount: f64) -> i32 {
        if !self.shard.quota_presence.get().any {
            return 0;
        }
        let image = self.shard.image();
        let user = self.security.quota_user();
        let Some((sensor, quota)) =
            quota::resolve(&image.client_quotas, &user, &self.client_id, key)
        else {
            return 0;
        };
        // Each shard enforces its share of the broker's quota.
        let share = quota / self.shard.count as f64;
        let now = crate::clock::monotonic_ms();
        let throttle = self
            .shard
            .quotas
            .borrow_mut()
            .record(sensor, share, now, amount);
        if throttle > 0 {
            self.security.throttle_until(now + throttle);
            self.shard.connection_probe.throttled.inc();
        }
        i32::try_from(throttle).unwrap_or(i32::MAX)
    }

    /// The authorizer's settings.
    fn policy(&self) -> acl::Policy<'_> {
        let config = &self.shard.config;
        acl::Policy {
            super_users: &config.super_users,
            allow_if_no_acl: config.allow_everyone_if_no_acl_found,
        }
    }

    /// The client's address as ACL hosts name it.
    fn host(&self) -> String {
        // An IPv4 client of a `[::]` listener appears as ::ffff:a.b.c.d; ACLs name a.b.c.d.
        self.peer
            .map(|peer| peer.ip().to_canonical().to_string())
            .unwrap_or_default()
    }

    /// `allowed` on the cluster resource.
    pub fn allowed_on_cluster(&self, operation: i8) -> bool {
        self.allowed(operation, acl::resource::CLUSTER, acl::CLUSTER_NAME)
    }

    /// Frames a response body built with the `kafka-protocol` types.
    pub fn respond<T: Encodable>(&self, body: &T) -> Outcome {
        match encode_response(self.api_key, self.version, self.correlation_id, body) {
            Ok(frame) => Outcome::frame(frame),
            // Encoding fails only for values we built ourselves (e.g. a string over 32 KiB):
            // a bug, but not one worth taking the broker down for.
            Err(error) => Outcome::Close(
                Malformed::Response,
                format!("cannot encode response: {error}"),
            ),
        }
    }
}

pub fn str_bytes(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

/// Serves one request frame (size prefix already removed). `_held` is the request's share of
/// the connection's and the shard's byte budgets, released when the response is built.
pub async fn handle<Held>(
    shard: Rc<Shard>,
    request: BytesMut,
    peer: Option<std::net::SocketAddr>,
    security: Rc<ConnectionSecurity>,
    _held: Held,
) -> Outcome {
    let parsed = match frame::parse_header(&request) {
        Ok(parsed) => parsed,
        Err(HeaderError::UnsupportedVersion {
            api_key,
            api_version,
            correlation_id,
            name,
        }) if api_key == api::API_VERSIONS => {
            tracing::debug!(
                api_version,
                name,
                "ApiVersions with a newer version; answering v0 with UNSUPPORTED_VERSION"
            );
            return api_versions::unsupported(correlation_id);
        }
        Err(error) => {
            return Outcome::Close(Malformed::Header, error.to_string());
        }
    };
    let ParsedHeader {
        header,
        spec,
        body_start,
    } = parsed;
    let (api_key, api_version, correlation_id) =
        (header.api_key, header.api_version, header.correlation_id);
    let client_id: String = header
        .client_id
        .unwrap_or_default()
        .chars()
        .take(crate::limits::GROUP_ID_BYTES_MAX)
        .collect();
    let ctx = Ctx {
        shard: &shard,
        api_key,
        version: api_version,
        correlation_id,
        client_id,
        peer,
        security: &security,
    };
    // On a SASL listener nothing but ApiVersions and the exchange itself is served before
    // the client authenticates; Kafka closes the connection too.
    if security.needs_authentication()
        && !matches!(
            api_key,
            api::API_VERSIONS | api::SASL_HANDSHAKE | api::SASL_AUTHENTICATE
        )
    {
        return Outcome::Close(
            Malformed::Unauthenticated,
            format!("{} before SASL authentication", spec.name),
        );
    }
    // Request quotas (request_percentage) count the time the request's handler spends on
    // this shard; requests are metered only while some client has such a quota.
    if !shard.quota_presence.get().requests {
        return dispatch(&ctx, request, spec, body_start).await;
    }
    let (outcome, busy) = Metered::new(dispatch(&ctx, request, spec, body_start)).await;
    // Percent of one thread's second: the unit request_percentage quotas are set in.
    ctx.charge_quota_amount(quota::REQUEST_PERCENTAGE, busy.as_secs_f64() * 100.0);
    outcome
}

/// Poll time of a future on this thread: what a request costs the shard.
struct Metered<F> {
    inner: std::pin::Pin<Box<F>>,
    busy: std::time::Duration,
}

impl<F: std::future::Future> Metered<F> {
    fn new(inner: F) -> Metered<F> {
        Metered {
            inner: Box::pin(inner),
            busy: std::time::Duration::ZERO,
        }
    }
}

impl<F: std::future::Future> std::future::Future for Metered<F> {
    type Output = (F::Output, std::time::Duration);

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let started = std::time::Instant::now();
        let polled = self.inner.as_mut().poll(cx);
        self.busy += started.elapsed();
        polled.map(|output| (output, self.busy))
    }
}

/// Serves a request whose header parsed, by its API.
async fn dispatch(
    ctx: &Ctx<'_>,
    request: BytesMut,
    spec: &'static tern_protocol::api::ApiSpec,
    body_start: usize,
) -> Outcome {
    let (api_key, api_version) = (ctx.api_key, ctx.version);
    if api_key == api::PRODUCE {
        let mut request = request;
        let body = request.split_off(body_start);
        return produce::handle(ctx, body).await;
    }
    let body: Bytes = request.freeze().slice(body_start..);
    macro_rules! decode {
        ($ty:ty) => {
            match decode_body::<$ty>(spec, api_version, body) {
                Ok(request) => request,
                Err(error) => {
                    return Outcome::Close(
                        Malformed::Body,
                        format!("malformed {} v{}: {error}", spec.name, api_version),
                    );
                }
            }
        };
    }
    match api_key {
        api::API_VERSIONS => {
            let _request = decode!(ApiVersionsRequest);
            api_versions::handle(ctx)
        }
        api::METADATA => ctx.respond(&metadata::handle(ctx, decode!(MetadataRequest)).await),
        api::FETCH => fetch::handle(ctx, decode!(FetchRequest)).await,
        api::LIST_OFFSETS => {
            ctx.respond(&offsets::list_offsets(ctx, decode!(ListOffsetsRequest)).await)
        }
        api::DELETE_RECORDS => offsets::delete_records(ctx, decode!(DeleteRecordsRequest)).await,
        api::OFFSET_FOR_LEADER_EPOCH => {
            offsets::offset_for_leader_epoch(ctx, decode!(OffsetForLeaderEpochRequest)).await
        }
        api::CREATE_TOPICS => {
            ctx.respond(&admin::create_topics(ctx, decode!(CreateTopicsRequest)).await)
        }
        api::DELETE_TOPICS => {
            ctx.respond(&admin::delete_topics(ctx, decode!(DeleteTopicsRequest)).await)
        }
        api::CREATE_PARTITIONS => {
            admin::create_partitions(ctx, decode!(CreatePartitionsRequest)).await
        }
        api::DESCRIBE_CONFIGS => ctx.respond(&admin::describe_configs(
            ctx,
            decode!(DescribeConfigsRequest),
        )),
        api::ALTER_CONFIGS => admin::alter_configs(ctx, decode!(AlterConfigsRequest)).await,
        api::INCREMENTAL_ALTER_CONFIGS => {
            admin::incremental_alter_configs(ctx, decode!(IncrementalAlterConfigsRequest)).await
        }
        api::DESCRIBE_CLUSTER => admin::describe_cluster(ctx, decode!(DescribeClusterRequest)),
        api::ELECT_LEADERS => admin::elect_leaders(ctx, decode!(ElectLeadersRequest)).await,
        api::INIT_PRODUCER_ID => {
            ctx.respond(&producer_id::init_producer_id(ctx, decode!(InitProducerIdRequest)).await)
        }
        api::FIND_COORDINATOR => {
            ctx.respond(&find_coordinator::handle(ctx, decode!(FindCoordinatorRequest)).await)
        }
        api::JOIN_GROUP => groups::join_group(ctx, decode!(JoinGroupRequest)).await,
        api::SYNC_GROUP => groups::sync_group(ctx, decode!(SyncGroupRequest)).await,
        api::HEARTBEAT => groups::heartbeat(ctx, decode!(HeartbeatRequest)).await,
        api::LEAVE_GROUP => groups::leave_group(ctx, decode!(LeaveGroupRequest)).await,
        api::OFFSET_COMMIT => {
            ctx.respond(&groups::offset_commit(ctx, decode!(OffsetCommitRequest)).await)
        }
        api::OFFSET_FETCH => {
            ctx.respond(&groups::offset_fetch(ctx, decode!(OffsetFetchRequest)).await)
        }
        api::DESCRIBE_GROUPS => groups::describe_groups(ctx, decode!(DescribeGroupsRequest)).await,
        api::LIST_GROUPS => groups::list_groups(ctx, decode!(ListGroupsRequest)).await,
        api::DELETE_GROUPS => groups::delete_groups(ctx, decode!(DeleteGroupsRequest)).await,
        api::OFFSET_DELETE => groups::offset_delete(ctx, decode!(OffsetDeleteRequest)).await,
        api::ADD_PARTITIONS_TO_TXN => {
            txn::add_partitions_to_txn(ctx, decode!(AddPartitionsToTxnRequest)).await
        }
        api::ADD_OFFSETS_TO_TXN => {
            txn::add_offsets_to_txn(ctx, decode!(AddOffsetsToTxnRequest)).await
        }
        api::END_TXN => txn::end_txn(ctx, decode!(EndTxnRequest)).await,
        api::WRITE_TXN_MARKERS => {
            txn::write_txn_markers(ctx, decode!(WriteTxnMarkersRequest)).await
        }
        api::TXN_OFFSET_COMMIT => {
            txn::txn_offset_commit(ctx, decode!(TxnOffsetCommitRequest)).await
        }
        api::DESCRIBE_TRANSACTIONS => {
            txn::describe_transactions(ctx, decode!(DescribeTransactionsRequest)).await
        }
        api::LIST_TRANSACTIONS => {
            txn::list_transactions(ctx, decode!(ListTransactionsRequest)).await
        }
        api::CONSUMER_GROUP_HEARTBEAT => {
            consumer_groups::heartbeat(ctx, decode!(ConsumerGroupHeartbeatRequest)).await
        }
        api::CONSUMER_GROUP_DESCRIBE => {
            consumer_groups::describe(ctx, decode!(ConsumerGroupDescribeRequest)).await
        }
        api::SASL_HANDSHAKE => security::sasl_handshake(ctx, decode!(SaslHandshakeRequest)),
        api::SASL_AUTHENTICATE => {
            security::sasl_authenticate(ctx, decode!(SaslAuthenticateRequest))
        }
        api::DESCRIBE_USER_SCRAM_CREDENTIALS => security::describe_user_scram_credentials(
            ctx,
            decode!(DescribeUserScramCredentialsRequest),
        ),
        api::ALTER_USER_SCRAM_CREDENTIALS => {
            security::alter_user_scram_credentials(ctx, decode!(AlterUserScramCredentialsRequest))
                .await
        }
        api::CREATE_ACLS => security::create_acls(ctx, decode!(CreateAclsRequest)).await,
        api::DESCRIBE_ACLS => security::describe_acls(ctx, decode!(DescribeAclsRequest)),
        api::DELETE_ACLS => security::delete_acls(ctx, decode!(DeleteAclsRequest)).await,
        api::DESCRIBE_CLIENT_QUOTAS => {
            security::describe_client_quotas(ctx, decode!(DescribeClientQuotasRequest))
        }
        api::ALTER_CLIENT_QUOTAS => {
            security::alter_client_quotas(ctx, decode!(AlterClientQuotasRequest)).await
        }
        other => Outcome::Close(
            Malformed::Header,
            format!("api key {other} is advertised but has no handler"),
        ),
    }
}
