//! The metadata controller as handlers see it: `Controller` applies admin commands to the
//! cluster metadata image and answers once they are committed and every shard of this broker
//! has the new image. `quorum::RaftController` implements it over the Raft quorum. Its
//! failures (`ControllerError`) carry the Kafka code a request answers with.
//!
//! The controller does not know the shards: it is given a `Publish` function at start-up that
//! hands each new image to them and resolves once every shard has applied it.
//!
//! Also here: reading the image file (`image.json`) that brokers before the quorum persisted,
//! which `quorum` upgrades in place.

use std::path::Path;
use std::sync::Arc;

use futures::future::LocalBoxFuture;
use tern_replication::metadata::{BrokerId, Command, MetadataError, MetadataImage};

pub const METADATA_DIR: &str = "__cluster_metadata";
const IMAGE_FILE: &str = "image.json";

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("a shard was unavailable while the new metadata was published")]
    ShardUnavailable,
    #[error("the metadata quorum is unavailable: {0}")]
    Unavailable(String),
    /// Submitted, but not answered in time: the change may still be made (Kafka's
    /// REQUEST_TIMED_OUT, after which a client looks before it asks again).
    #[error("{0}")]
    TimedOut(String),
}

impl ControllerError {
    /// The Kafka error code a request that needed the controller answers with.
    pub fn code(&self) -> i16 {
        match self {
            ControllerError::TimedOut(_) => tern_protocol::error_code::REQUEST_TIMED_OUT,
            ControllerError::ShardUnavailable | ControllerError::Unavailable(_) => {
                tern_protocol::error_code::UNKNOWN_SERVER_ERROR
            }
        }
    }
}

/// One result per command: a failed command changed nothing.
pub type CommandResults = Vec<Result<(), MetadataError>>;

/// Hands a committed image to every shard; resolves once all have applied it.
pub type Publish =
    Box<dyn Fn(Arc<MetadataImage>) -> LocalBoxFuture<'static, Result<(), ControllerError>>>;

/// What handlers ask of the cluster's controller.
pub trait Controller {
    /// Applies `commands` in order and returns once the changes are committed and every shard
    /// of this broker has the new image.
    fn execute(
        &self,
        commands: Vec<Command>,
    ) -> LocalBoxFuture<'_, Result<CommandResults, ControllerError>>;

    /// A producer id that no earlier run of this cluster has handed out.
    fn allocate_producer_id(&self) -> LocalBoxFuture<'_, Result<i64, ControllerError>>;

    /// The broker acting as controller (DescribeCluster, Metadata).
    fn controller_id(&self) -> BrokerId;
}

/// Loads the persisted image (before the shards start; plain std I/O on the main thread).
pub fn load_image(data_dir: &Path) -> Result<Option<MetadataImage>, String> {
    let path = data_dir.join(METADATA_DIR).join(IMAGE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|error| format!("metadata file {} is damaged: {error}", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(format!("cannot read {}: {error}", path.display())),
    }
}
