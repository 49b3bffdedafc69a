//! On-disk embedding cache: `<dir>/embeddings-<model key>.bin`, an append-only file of
//! records `[16-byte sha256 prefix of the text][dim × f32 little-endian]`. A rebuild
//! embeds only texts whose hash is not in the file. A torn last record (a crash mid
//! append) is cut off on load. Several builds appending to the same file at once are not
//! coordinated; the worst outcome is a duplicated record.
use crate::{DecontamError, Result};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Hash key of a text.
pub type TextKey = [u8; 16];

/// First 16 bytes of sha256(text).
pub fn text_key(text: &str) -> TextKey {
    let d = Sha256::digest(text.as_bytes());
    let mut k = [0u8; 16];
    k.copy_from_slice(&d[..16]);
    k
}

/// Embeddings by text hash, for one model.
pub struct EmbeddingCache {
    path: Option<PathBuf>,
    dim: usize,
    map: HashMap<TextKey, Vec<f32>>,
    pending: Vec<(TextKey, Vec<f32>)>,
}

fn cerr(path: &Path, e: std::io::Error) -> DecontamError {
    DecontamError::Io { path: path.to_path_buf(), source: e }
}

impl EmbeddingCache {
    /// Open (or start) the cache of `model_key` in `dir`; `None` keeps it in memory.
    pub fn open(dir: Option<&Path>, model_key: &str, dim: usize) -> Result<EmbeddingCache> {
        let path = dir.map(|d| d.join(format!("embeddings-{model_key}.bin")));
        let mut map = HashMap::new();
        if let Some(p) = &path {
            match std::fs::read(p) {
                Ok(bytes) => {
                    let rec = 16 + 4 * dim;
                    let whole = bytes.len() - bytes.len() % rec;
                    if whole != bytes.len() {
                        // A torn last record: cut it off so the next append stays aligned.
                        let f = std::fs::OpenOptions::new().write(true).open(p).map_err(|e| cerr(p, e))?;
                        f.set_len(whole as u64).map_err(|e| cerr(p, e))?;
                        tracing::warn!("{}: dropped a torn record at byte {whole}", p.display());
                    }
                    for r in bytes[..whole].chunks_exact(rec) {
                        let mut k = [0u8; 16];
                        k.copy_from_slice(&r[..16]);
                        let v = r[16..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                        map.insert(k, v);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(cerr(p, e)),
            }
        }
        Ok(EmbeddingCache { path, dim, map, pending: Vec::new() })
    }

    /// Cached embedding of a text key.
    pub fn get(&self, k: &TextKey) -> Option<&[f32]> {
        self.map.get(k).map(|v| v.as_slice())
    }

    /// Number of cached embeddings.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Insert (kept in memory until [`Self::flush`]).
    pub fn insert(&mut self, k: TextKey, v: Vec<f32>) {
        debug_assert_eq!(v.len(), self.dim);
        self.pending.push((k, v.clone()));
        self.map.insert(k, v);
    }

    /// Append the new embeddings to the file.
    pub fn flush(&mut self) -> Result<()> {
        let Some(p) = &self.path else {
            self.pending.clear();
            return Ok(());
        };
        if self.pending.is_empty() {
            return Ok(());
        }
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(|e| cerr(dir, e))?;
        }
        let mut buf = Vec::with_capacity(self.pending.len() * (16 + 4 * self.dim));
        for (k, v) in self.pending.drain(..) {
            buf.extend_from_slice(&k);
            for x in v {
                buf.extend_from_slice(&x.to_le_bytes());
            }
        }
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(p).map_err(|e| cerr(p, e))?;
        f.write_all(&buf).map_err(|e| cerr(p, e))
    }
}
