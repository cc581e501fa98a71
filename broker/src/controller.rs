//! The metadata controller: applies admin commands to the cluster metadata image, makes the
//! result durable, and publishes it to every shard of this broker.
//!
//! `Controller` is the interface handlers use (through shard 0); `LocalController` is the
//! one-voter implementation: the image is persisted to `<data>/__cluster_metadata/image.json`
//! (written to a temporary file, fsynced, renamed, the directory fsynced) before any shard sees
//! it, so an acknowledged admin change survives a crash. Commands are applied one batch at a
//! time (a semaphore of one), in arrival order. A Raft-backed controller will implement the
//! same interface, committing the commands to the quorum's log instead of a file.
//!
//! The controller does not know the shards: it is given a `Publish` function at start-up that
//! hands each new image to them and resolves once every shard has applied it.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::limits;
use futures::future::LocalBoxFuture;
use glommio::io::{BufferedFile, Directory};
use glommio::sync::Semaphore;
use tern_replication::metadata::{BrokerId, Command, MetadataError, MetadataImage};

pub const METADATA_DIR: &str = "__cluster_metadata";
const IMAGE_FILE: &str = "image.json";

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("metadata could not be persisted: {0}")]
    Persist(String),
    #[error("a shard was unavailable while the new metadata was published")]
    ShardUnavailable,
    #[error("the metadata quorum is unavailable: {0}")]
    Unavailable(String),
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

/// The one-voter controller: the image lives in a file in the data directory.
pub struct LocalController {
    node_id: BrokerId,
    dir: PathBuf,
    serial: Semaphore,
    /// The last committed image.
    image: RefCell<Arc<MetadataImage>>,
    /// Producer ids reserved in the persisted image but not yet handed out.
    producer_ids: RefCell<std::ops::Range<i64>>,
    publish: Publish,
}

impl LocalController {
    pub fn new(
        node_id: BrokerId,
        data_dir: &Path,
        image: Arc<MetadataImage>,
        publish: Publish,
    ) -> LocalController {
        LocalController {
            node_id,
            dir: data_dir.join(METADATA_DIR),
            serial: Semaphore::new(1),
            image: RefCell::new(image),
            producer_ids: RefCell::new(0..0),
            publish,
        }
    }

    async fn execute_serially(
        &self,
        commands: Vec<Command>,
    ) -> Result<CommandResults, ControllerError> {
        let _permit = self
            .serial
            .acquire_permit(1)
            .await
            .map_err(|_| ControllerError::ShardUnavailable)?;
        let mut image = (**self.image.borrow()).clone();
        let mut results = Vec::with_capacity(commands.len());
        let mut changed = false;
        for command in &commands {
            match image.apply(command) {
                Ok(next) => {
                    image = next;
                    changed = true;
                    results.push(Ok(()));
                }
                Err(error) => results.push(Err(error)),
            }
        }
        if changed {
            self.persist(&image).await?;
            let image = Arc::new(image);
            *self.image.borrow_mut() = image.clone();
            (self.publish)(image).await?;
        }
        Ok(results)
    }

    async fn persist(&self, image: &MetadataImage) -> Result<(), ControllerError> {
        let error = |e: glommio::GlommioError<()>| ControllerError::Persist(e.to_string());
        let json = serde_json::to_vec_pretty(image)
            .map_err(|e| ControllerError::Persist(e.to_string()))?;
        let tmp = self.dir.join(format!("{IMAGE_FILE}.tmp"));
        let file = BufferedFile::create(&tmp).await.map_err(error)?;
        file.write_at(json, 0).await.map_err(error)?;
        file.fdatasync().await.map_err(error)?;
        file.close().await.map_err(error)?;
        glommio::io::rename(&tmp, self.dir.join(IMAGE_FILE))
            .await
            .map_err(error)?;
        let dir = Directory::open(&self.dir).await.map_err(error)?;
        dir.sync().await.map_err(error)?;
        dir.close().await.map_err(error)?;
        Ok(())
    }
}

impl Controller for LocalController {
    fn execute(
        &self,
        commands: Vec<Command>,
    ) -> LocalBoxFuture<'_, Result<CommandResults, ControllerError>> {
        Box::pin(self.execute_serially(commands))
    }

    fn allocate_producer_id(&self) -> LocalBoxFuture<'_, Result<i64, ControllerError>> {
        Box::pin(async move {
            if let Some(id) = self.producer_ids.borrow_mut().next() {
                return Ok(id);
            }
            self.execute_serially(vec![Command::AllocateProducerIds {
                count: limits::PRODUCER_ID_BLOCK,
            }])
            .await?;
            let end = self.image.borrow().producer_id_next;
            let mut block = self.producer_ids.borrow_mut();
            if block.is_empty() {
                *block = (end - limits::PRODUCER_ID_BLOCK)..end;
            }
            block.next().ok_or(ControllerError::ShardUnavailable)
        })
    }

    fn controller_id(&self) -> BrokerId {
        self.node_id
    }
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

/// Writes the image from the main thread (at start-up, before any shard runs).
pub fn store_image_blocking(data_dir: &Path, image: &MetadataImage) -> Result<(), String> {
    let dir = data_dir.join(METADATA_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let tmp = dir.join(format!("{IMAGE_FILE}.tmp"));
    let json = serde_json::to_vec_pretty(image).map_err(|e| e.to_string())?;
    std::fs::write(&tmp, json).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, dir.join(IMAGE_FILE)).map_err(|e| e.to_string())?;
    std::fs::File::open(&dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| e.to_string())?;
    Ok(())
}
