//! The metering write-ahead file (`usage.wal` in the data folder).
//!
//! Every drained delta is appended (and `fsync`ed) here before it waits for
//! the store, and an `ack` line is appended once its flush is applied. At
//! start-up the gateway replays whatever has no ack. One JSON object per
//! line:
//!
//! ```text
//! {"batch":"gw1-8f2c…-17","deltas":[{"tenant":"acme",…,"frames":12,"pixels":…}]}
//! {"ack":"gw1-8f2c…-17"}
//! ```
//!
//! A line cut short by a crash is ignored (its deltas were never
//! acknowledged to anyone, and the kill bound covers them), and so is one a
//! failed write left behind: the next line starts on a line of its own, and
//! the flusher rewrites what is pending after a failed append, so the lines
//! after a fragment still count. The file is
//! truncated whenever nothing is pending and rewritten compactly when it
//! grows past its size limit during a long store outage, so it stays bounded
//! by the number of distinct (series, window) pairs waiting.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{merge_deltas, UsageDelta};
use crate::usage::FlushBatch;

/// A write-ahead file failure.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// Another gateway process holds this data folder.
    #[error("{0} is in use by another framegate process (give each gateway its own data_dir)")]
    Locked(PathBuf),
    /// Reading or writing failed.
    #[error("write-ahead file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    Deltas {
        batch: String,
        deltas: Vec<UsageDelta>,
    },
    Ack {
        ack: String,
    },
}

/// Takes the exclusive advisory lock of the file (released when it closes).
// `File::try_lock` is Rust 1.89; the workspace still says 1.85, but redb 4,
// redis 1 and async-stripe 1.0 already need 1.88–1.90 to build at all.
#[allow(clippy::incompatible_msrv)]
fn lock(file: &File) -> Result<(), std::fs::TryLockError> {
    file.try_lock()
}

/// The open write-ahead file (locked for this process).
#[derive(Debug)]
pub struct Wal {
    path: PathBuf,
    file: File,
    bytes: u64,
    /// A write failed, maybe part-way: the file may end in a fragment.
    torn: bool,
}

impl Wal {
    /// Opens (creating) and locks the file, and returns the batches it holds
    /// that were never acknowledged, oldest first.
    pub fn open(path: &Path) -> Result<(Self, Vec<FlushBatch>), WalError> {
        let io = |source| WalError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        if lock(&file).is_err() {
            return Err(WalError::Locked(path.to_path_buf()));
        }
        let mut order: Vec<String> = Vec::new();
        let mut batches: std::collections::HashMap<String, Vec<UsageDelta>> = Default::default();
        let mut skipped = 0usize;
        for line in BufReader::new(&file).split(b'\n') {
            let line = line.map_err(io)?;
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<Line>(&line) {
                Ok(Line::Deltas { batch, deltas }) => {
                    if !batches.contains_key(&batch) {
                        order.push(batch.clone());
                    }
                    merge_deltas(batches.entry(batch).or_default(), deltas);
                }
                Ok(Line::Ack { ack }) => {
                    batches.remove(&ack);
                }
                // A line cut short, by a crash or by a write that failed
                // part-way (the lines after it start on a line of their
                // own, see `write_line`): skipped, the rest still counts.
                Err(_) => skipped += 1,
            }
        }
        if skipped > 0 {
            tracing::warn!(
                path = %path.display(),
                lines = skipped,
                "write-ahead file: skipped lines cut short by a crash or a failed write"
            );
        }
        let pending: Vec<FlushBatch> = order
            .into_iter()
            .filter_map(|id| batches.remove(&id).map(|deltas| FlushBatch { id, deltas }))
            .collect();
        let bytes = file.metadata().map_err(io)?.len();
        let mut wal = Self {
            path: path.to_path_buf(),
            file,
            bytes,
            torn: false,
        };
        // Start from a compact file holding exactly what is pending.
        wal.rewrite(&pending)?;
        Ok((wal, pending))
    }

    fn io(&self, source: std::io::Error) -> WalError {
        WalError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn write_line(&mut self, line: &Line) -> Result<(), WalError> {
        let mut text = Vec::with_capacity(256);
        if self.torn {
            // End the fragment a failed write may have left, so this line
            // is read on its own.
            text.push(b'\n');
        }
        serde_json::to_writer(&mut text, line).expect("serialisable");
        text.push(b'\n');
        if let Err(e) = self.file.write_all(&text) {
            self.torn = true;
            return Err(self.io(e));
        }
        self.torn = false;
        self.bytes += text.len() as u64;
        Ok(())
    }

    /// Appends deltas of the (not yet sent) batch `batch` and syncs.
    pub fn append(&mut self, batch: &str, deltas: &[UsageDelta]) -> Result<(), WalError> {
        self.write_line(&Line::Deltas {
            batch: batch.to_string(),
            deltas: deltas.to_vec(),
        })?;
        self.file.sync_data().map_err(|e| self.io(e))
    }

    /// Records that `batch` is in the store. Not synced: losing an ack only
    /// means a replay that the store recognises by its id.
    pub fn ack(&mut self, batch: &str) -> Result<(), WalError> {
        self.write_line(&Line::Ack {
            ack: batch.to_string(),
        })
    }

    /// Makes the next writes fail (the file handle becomes read-only), as
    /// a full or failing disk would.
    #[cfg(test)]
    pub(super) fn fail_writes_for_test(&mut self) {
        self.file = File::open(&self.path).unwrap();
    }

    /// Bytes in the file now.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Replaces the file's content with exactly `pending` (empty: truncates),
    /// atomically (a new file renamed over the old).
    pub fn rewrite(&mut self, pending: &[FlushBatch]) -> Result<(), WalError> {
        if pending.is_empty() {
            self.file.set_len(0).map_err(|e| self.io(e))?;
            self.file.sync_data().map_err(|e| self.io(e))?;
            self.bytes = 0;
            self.torn = false;
            return Ok(());
        }
        let tmp = self.path.with_extension("wal.tmp");
        let mut text = Vec::new();
        for b in pending {
            text.extend(
                serde_json::to_vec(&Line::Deltas {
                    batch: b.id.clone(),
                    deltas: b.deltas.clone(),
                })
                .expect("serialisable"),
            );
            text.push(b'\n');
        }
        let io = |e| WalError::Io {
            path: tmp.clone(),
            source: e,
        };
        {
            let mut f = File::create(&tmp).map_err(io)?;
            f.write_all(&text).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        // The rename itself, durable: else a power loss may bring the old
        // file back (with batches this one no longer holds).
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| self.io(e))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| self.io(e))?;
        if lock(&file).is_err() {
            return Err(WalError::Locked(self.path.clone()));
        }
        self.file = file;
        self.bytes = text.len() as u64;
        self.torn = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(frames: u64) -> UsageDelta {
        UsageDelta {
            tenant: "t".into(),
            key_id: "k".into(),
            model: "m".into(),
            window_start: 0,
            frames,
            pixels: frames,
        }
    }

    #[test]
    fn unacknowledged_batches_survive_a_crash_and_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.wal");
        {
            let (mut wal, pending) = Wal::open(&path).unwrap();
            assert!(pending.is_empty());
            wal.append("a", &[d(1)]).unwrap();
            wal.append("a", &[d(2)]).unwrap();
            wal.append("b", &[d(5)]).unwrap();
            wal.ack("a").unwrap();
            wal.append("c", &[d(7)]).unwrap();
            // A write that failed part-way, then the process went on.
            wal.file.write_all(br#"{"batch":"x","del"#).unwrap();
            wal.torn = true;
            wal.append("e", &[d(3)]).unwrap();
            // A crash in the middle of a line.
            wal.file.write_all(br#"{"batch":"d","del"#).unwrap();
        }
        let (mut wal, pending) = Wal::open(&path).unwrap();
        let ids: Vec<_> = pending.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(ids, ["b", "c", "e"]);
        assert_eq!(pending[0].deltas[0].frames, 5);
        // A second process cannot open the same file.
        assert!(matches!(Wal::open(&path), Err(WalError::Locked(_))));
        wal.ack("b").unwrap();
        wal.ack("c").unwrap();
        wal.ack("e").unwrap();
        drop(wal);
        let (_wal, pending) = Wal::open(&path).unwrap();
        assert!(pending.is_empty());
    }
}
