//! The metadata controller, hosted on shard 0: applies admin commands to the metadata image,
//! persists the image, and hands the new image to every shard.
//!
//! A single-node Tern is a one-voter cluster: the image is persisted to
//! `<data>/__cluster_metadata/image.json` (written to a temporary file, fsynced, renamed, the
//! directory fsynced) before any shard sees it, so an acknowledged admin change survives a
//! crash. Commands are applied one batch at a time (a semaphore of one), in arrival order.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use glommio::io::{BufferedFile, Directory};
use glommio::sync::Semaphore;
use tern_replication::metadata::{Command, MetadataError, MetadataImage};

use crate::shard::Shard;

pub const METADATA_DIR: &str = "__cluster_metadata";
const IMAGE_FILE: &str = "image.json";

pub struct Controller {
    dir: PathBuf,
    serial: Semaphore,
    /// Producer ids reserved in the persisted image but not yet handed out.
    producer_ids: std::cell::RefCell<std::ops::Range<i64>>,
}

/// Producer ids reserved per metadata write.
const PRODUCER_ID_BLOCK: i64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("metadata could not be persisted: {0}")]
    Persist(String),
    #[error("shard unavailable while applying metadata")]
    ShardUnavailable,
}

impl Controller {
    pub fn new(data_dir: &Path) -> Controller {
        Controller {
            dir: data_dir.join(METADATA_DIR),
            serial: Semaphore::new(1),
            producer_ids: std::cell::RefCell::new(0..0),
        }
    }

    /// Hands out a producer id that no earlier run of this cluster has used.
    pub async fn allocate_producer_id(&self, shard: &Rc<Shard>) -> Result<i64, ControllerError> {
        if let Some(id) = self.producer_ids.borrow_mut().next() {
            return Ok(id);
        }
        self.execute(
            shard,
            vec![Command::AllocateProducerIds {
                count: PRODUCER_ID_BLOCK,
            }],
        )
        .await?;
        let end = shard.image().producer_id_next;
        let mut block = self.producer_ids.borrow_mut();
        if block.is_empty() {
            *block = (end - PRODUCER_ID_BLOCK)..end;
        }
        block.next().ok_or(ControllerError::ShardUnavailable)
    }

    /// Applies `commands` in order, persists once, and waits until every shard has the new
    /// image. Each command gets its own result; a failed command changes nothing.
    pub async fn execute(
        &self,
        shard: &Rc<Shard>,
        commands: Vec<Command>,
    ) -> Result<Vec<Result<(), MetadataError>>, ControllerError> {
        let _permit = self
            .serial
            .acquire_permit(1)
            .await
            .map_err(|_| ControllerError::ShardUnavailable)?;
        let mut image = (*shard.image()).clone();
        let mut results = Vec::with_capacity(commands.len());
        let mut changed = false;
        for command in &commands {
            match image.apply(command, shard.count as u32) {
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
            broadcast(shard, Arc::new(image)).await?;
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

/// Gives every shard `image` and waits for all of them to open or drop their partitions.
pub async fn broadcast(
    shard: &Rc<Shard>,
    image: Arc<MetadataImage>,
) -> Result<(), ControllerError> {
    for target in 0..shard.count {
        let image = image.clone();
        shard
            .invoke_on(target, move |shard| async move {
                shard.apply_image(image).await
            })
            .await
            .map_err(|_| ControllerError::ShardUnavailable)?;
    }
    Ok(())
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

/// Writes the image from the main thread (first start, or a rebalance after a core-count change).
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
