//! InitProducerId for idempotent producers: a fresh producer id from the controller, or,
//! when the client names its current id and epoch (KIP-360, v3+), the same id with the
//! epoch bumped. A transactional id goes to its transaction coordinator (`handlers::txn`).

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use tern_protocol::error_code;

use super::Ctx;
use crate::security::acl;

pub async fn init_producer_id(
    ctx: &Ctx<'_>,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let mut response = InitProducerIdResponse::default();
    response.producer_id = ProducerId(-1);
    response.producer_epoch = -1;
    if let Some(txn_id) = request.transactional_id.as_ref().map(|t| t.0.to_string()) {
        if !ctx.allowed(
            acl::operation::WRITE,
            acl::resource::TRANSACTIONAL_ID,
            &txn_id,
        ) {
            response.error_code = error_code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
            return response;
        }
        let (code, producer_id, producer_epoch) =
            super::txn::init_producer_id(ctx, &request, txn_id).await;
        response.error_code = code;
        response.producer_id = ProducerId(producer_id);
        response.producer_epoch = producer_epoch;
        return response;
    }
    // An idempotent producer: IDEMPOTENT_WRITE on the cluster, or (as Kafka 3 allows) WRITE
    // on some topic.
    if !ctx.allowed_on_cluster(acl::operation::IDEMPOTENT_WRITE)
        && !ctx.allowed_somewhere(acl::operation::WRITE, acl::resource::TOPIC)
    {
        response.error_code = error_code::CLUSTER_AUTHORIZATION_FAILED;
        return response;
    }
    if request.producer_id.0 >= 0 && request.producer_epoch >= 0 {
        // Epoch bump: same id, next epoch; on overflow, a fresh id.
        if request.producer_epoch < i16::MAX - 1 {
            response.producer_id = request.producer_id;
            response.producer_epoch = request.producer_epoch + 1;
            return response;
        }
    }
    let allocated = ctx
        .shard
        .invoke_on(0, |shard| async move {
            match shard.controller() {
                Some(controller) => controller
                    .allocate_producer_id()
                    .await
                    .map_err(|e| e.to_string()),
                None => Err("no controller on shard 0".to_owned()),
            }
        })
        .await;
    match allocated {
        Ok(Ok(id)) => {
            response.producer_id = ProducerId(id);
            response.producer_epoch = 0;
        }
        Ok(Err(message)) => {
            tracing::warn!(%message, "producer id allocation failed");
            response.error_code = error_code::COORDINATOR_NOT_AVAILABLE;
        }
        Err(error) => {
            tracing::warn!(%error, "producer id allocation failed");
            response.error_code = error_code::COORDINATOR_NOT_AVAILABLE;
        }
    }
    response
}
