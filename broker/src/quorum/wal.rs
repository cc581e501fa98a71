//! The metadata quorum's durable state: one append-only file of checksummed frames in
//! `<data>/__cluster_metadata/quorum.log`, read back into a `Durable` at start-up.
//!
//! Each `Output` of the quorum appends its durable parts as frames (an installed snapshot,
//! entries, the hard state) and syncs the file before anything of that output is sent or
//! published. A snapshot taken by the node rewrites the file (snapshot, remaining entries,
//! hard state) through a temporary file, synced and renamed, the directory synced: that is the
//! Raft log's compaction. A frame is `[len u32][crc32c u32][kind u8][protobuf]`; a torn or
//! damaged tail (a crash mid-write) is cut at the first bad frame, which was never synced and
//! so never acknowledged.
//!
//! Why not a partition `Log` (record batches, direct I/O): the metadata log is small and
//! written a few times per admin change; what matters is the ordering and fsync contract,
//! which this file keeps with a fraction of the code. docs/ARCHITECTURE.md records the choice.

use std::path::{Path, PathBuf};

use glommio::io::{BufferedFile, Directory, OpenOptions};
use tern_replication::quorum::{
    decode_entry, decode_hard_state, decode_snapshot, encode_entry, encode_hard_state,
    encode_snapshot, Durable, Output,
};

pub const FILE: &str = "quorum.log";

const HARD_STATE: u8 = 1;
const ENTRY: u8 = 2;
const INSTALL: u8 = 3;
const SNAPSHOT: u8 = 4;
const FRAME_HEADER: usize = 9;
const FRAME_BYTES_MAX: usize = 256 << 20;

/// Reads `dir/quorum.log` (plain std I/O, before the shards start). `None` if there is none.
/// Returns the state and the length of its valid prefix.
pub fn load(dir: &Path) -> Result<Option<(Durable, u64)>, String> {
    let path = dir.join(FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
    };
    let mut durable = Durable::default();
    let mut at = 0usize;
    while bytes.len() - at >= FRAME_HEADER {
        let word = |from: usize| {
            u32::from_le_bytes([
                bytes[from],
                bytes[from + 1],
                bytes[from + 2],
                bytes[from + 3],
            ])
        };
        let (len, crc) = (word(at) as usize, word(at + 4));
        let body = at + 8;
        if len == 0 || len > FRAME_BYTES_MAX || bytes.len() - body < len {
            break;
        }
        let frame = &bytes[body..body + len];
        if crc32c::crc32c(frame) != crc {
            break;
        }
        let (kind, payload) = (frame[0], &frame[1..]);
        let mut output = Output::default();
        match kind {
            HARD_STATE => output.hard_state = Some(decode_hard_state(payload)?),
            ENTRY => output.entries.push(decode_entry(payload)?),
            INSTALL => output.install = Some(decode_snapshot(payload)?),
            SNAPSHOT => output.snapshot = Some(decode_snapshot(payload)?),
            other => return Err(format!("{}: unknown frame kind {other}", path.display())),
        }
        durable.absorb(&output);
        at = body + len;
    }
    if at < bytes.len() {
        tracing::warn!(
            path = %path.display(),
            valid = at,
            len = bytes.len(),
            "cutting a torn tail off the metadata quorum log"
        );
    }
    Ok(Some((durable, at as u64)))
}

/// Writes a whole new state file from the main thread (a new node, or an upgraded one-node
/// `image.json`), synced before it is used.
pub fn create_blocking(dir: &Path, durable: &Durable) -> Result<u64, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let bytes = whole(durable);
    let tmp = dir.join(format!("{FILE}.tmp"));
    std::fs::write(&tmp, &bytes).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, dir.join(FILE)).map_err(|e| e.to_string())?;
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| e.to_string())?;
    Ok(bytes.len() as u64)
}

fn frame(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let len = payload.len() + 1;
    let start = out.len();
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(kind);
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn whole(durable: &Durable) -> Vec<u8> {
    let mut bytes = Vec::new();
    frame(&mut bytes, INSTALL, &encode_snapshot(&durable.snapshot));
    for entry in &durable.entries {
        frame(&mut bytes, ENTRY, &encode_entry(entry));
    }
    frame(
        &mut bytes,
        HARD_STATE,
        &encode_hard_state(&durable.hard_state),
    );
    bytes
}

/// The open state file on shard 0, and a mirror of what it holds (for rewrites).
pub struct Wal {
    dir: PathBuf,
    file: BufferedFile,
    len: u64,
    durable: Durable,
}

impl Wal {
    pub async fn open(dir: &Path, durable: Durable, len: u64) -> Result<Wal, String> {
        let path = dir.join(FILE);
        let file = OpenOptions::new()
            .write(true)
            .buffered_open(&path)
            .await
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        // Drop a torn tail found at load so appends continue from the valid prefix.
        file.truncate(len).await.map_err(|e| e.to_string())?;
        Ok(Wal {
            dir: dir.to_owned(),
            file,
            len,
            durable,
        })
    }

    /// Makes `output`'s durable part durable (see the module documentation).
    pub async fn persist(&mut self, output: &Output) -> Result<(), String> {
        if !output.must_persist() {
            return Ok(());
        }
        self.durable.absorb(output);
        if output.snapshot.is_some() || output.install.is_some() {
            return self.rewrite().await;
        }
        let mut bytes = Vec::new();
        for entry in &output.entries {
            frame(&mut bytes, ENTRY, &encode_entry(entry));
        }
        if let Some(hard_state) = &output.hard_state {
            frame(&mut bytes, HARD_STATE, &encode_hard_state(hard_state));
        }
        let written = bytes.len() as u64;
        let error = |e: glommio::GlommioError<()>| format!("metadata log write failed: {e}");
        self.file.write_at(bytes, self.len).await.map_err(error)?;
        self.file.fdatasync().await.map_err(error)?;
        self.len += written;
        Ok(())
    }

    async fn rewrite(&mut self) -> Result<(), String> {
        let error = |e: glommio::GlommioError<()>| format!("metadata log rewrite failed: {e}");
        let bytes = whole(&self.durable);
        let len = bytes.len() as u64;
        let tmp = self.dir.join(format!("{FILE}.tmp"));
        let file = BufferedFile::create(&tmp).await.map_err(error)?;
        file.write_at(bytes, 0).await.map_err(error)?;
        file.fdatasync().await.map_err(error)?;
        glommio::io::rename(&tmp, self.dir.join(FILE))
            .await
            .map_err(error)?;
        let dir = Directory::open(&self.dir).await.map_err(error)?;
        dir.sync().await.map_err(error)?;
        dir.close().await.map_err(error)?;
        let old = std::mem::replace(&mut self.file, file);
        let _ = old.close().await;
        self.len = len;
        Ok(())
    }
}
