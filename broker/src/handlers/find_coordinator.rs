//! FindCoordinator: the broker coordinating a group (key type 0) or a transactional id
//! (key type 1), found in the metadata image as the leader of the key's partition of
//! `__consumer_offsets` or `__transaction_state` (Java's hash of the key).

use kafka_protocol::messages::find_coordinator_response::Coordinator as CoordinatorAnswer;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use tern_protocol::error_code::{self, ErrorCode};

use super::{str_bytes, Ctx};
use crate::group::OFFSETS_TOPIC;
use crate::security::acl;

const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

pub async fn handle(ctx: &Ctx<'_>, request: FindCoordinatorRequest) -> FindCoordinatorResponse {
    if request.key_type == KEY_TYPE_TRANSACTION {
        // The first transactional client creates `__transaction_state`, as with Kafka.
        super::txn::ensure_topic(ctx.shard).await;
    }
    let image = ctx.shard.image();
    // The coordinator of a group (a transactional id) is the leader of its
    // `__consumer_offsets` (`__transaction_state`) partition, wherever that is in the
    // cluster; its address comes from the image.
    let leader_for =
        |internal: &str, key: &str| -> Result<(i32, String, i32), (ErrorCode, String)> {
            let topic = image.topic(internal).ok_or((
                error_code::COORDINATOR_NOT_AVAILABLE,
                format!("{internal} does not exist yet"),
            ))?;
            let partition =
                crate::group::codec::partition_for_group(key, topic.partitions.len() as i32);
            let leader = topic
                .partitions
                .get(partition as usize)
                .map(|p| p.leader)
                .and_then(|leader| image.broker(leader))
                .filter(|broker| !broker.fenced)
                .ok_or((
                    error_code::COORDINATOR_NOT_AVAILABLE,
                    format!("{internal}-{partition} has no leader"),
                ))?;
            let (host, port) = leader.endpoint(&ctx.security.listener).ok_or((
                error_code::COORDINATOR_NOT_AVAILABLE,
                format!(
                    "broker {} has no {} listener",
                    leader.id, ctx.security.listener
                ),
            ))?;
            Ok((leader.id, host.to_owned(), i32::from(port)))
        };
    let answer = |key: &str, key_type: i8| -> Result<(i32, String, i32), (ErrorCode, String)> {
        match key_type {
            KEY_TYPE_GROUP if !ctx.allowed(acl::operation::DESCRIBE, acl::resource::GROUP, key) => {
                Err((
                    error_code::GROUP_AUTHORIZATION_FAILED,
                    format!("not allowed to describe group {key}"),
                ))
            }
            KEY_TYPE_TRANSACTION
                if !ctx.allowed(
                    acl::operation::DESCRIBE,
                    acl::resource::TRANSACTIONAL_ID,
                    key,
                ) =>
            {
                Err((
                    error_code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                    format!("not allowed to describe transactional id {key}"),
                ))
            }
            KEY_TYPE_GROUP => leader_for(OFFSETS_TOPIC, key),
            KEY_TYPE_TRANSACTION => leader_for(crate::txn::TRANSACTION_STATE_TOPIC, key),
            other => Err((
                error_code::INVALID_REQUEST,
                format!("unknown coordinator key type {other}"),
            )),
        }
    };
    let mut response = FindCoordinatorResponse::default();
    if ctx.version >= 4 {
        response.coordinators = request
            .coordinator_keys
            .iter()
            .map(|key| {
                let mut out = CoordinatorAnswer::default();
                out.key = key.clone();
                match answer(key, request.key_type) {
                    Ok((node, host, port)) => {
                        out.node_id = BrokerId(node);
                        out.host = str_bytes(&host);
                        out.port = port;
                    }
                    Err((error, message)) => {
                        out.error_code = error;
                        out.error_message = Some(str_bytes(&message));
                        out.node_id = BrokerId(-1);
                        out.port = -1;
                    }
                }
                out
            })
            .collect();
    } else {
        match answer(&request.key, request.key_type) {
            Ok((node, host, port)) => {
                response.node_id = BrokerId(node);
                response.host = str_bytes(&host);
                response.port = port;
            }
            Err((error, message)) => {
                response.error_code = error;
                response.error_message = Some(str_bytes(&message));
                response.node_id = BrokerId(-1);
                response.port = -1;
            }
        }
    }
    response
}
