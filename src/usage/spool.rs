//! Usage records the store did not take before the process exited (Valkey down through a
//! drain or an upgrade) are written to a spool file, each batch with its id; a later gateway
//! process sharing the spool directory sends them under the same ids (so a batch the store had
//! applied before a lost reply is still counted once) and then removes the file.
//!
//! A file appears whole (written under a temporary name, synced, renamed). A process reading one
//! holds an exclusive `flock` on it until its batches are stored, so two processes (the old and
//! new one of an upgrade) never send it both; one that dies leaves the file to the next.

use super::UsageRecord;
use std::fs::File;
use std::io::{BufRead, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Spool files are `usage-spool-<instance>.jsonl`.
const PREFIX: &str = "usage-spool-";
const SUFFIX: &str = ".jsonl";

/// One line of a spool file: a batch and its id.
#[derive(serde::Serialize, serde::Deserialize)]
struct Line<'a> {
    batch: std::borrow::Cow<'a, str>,
    records: std::borrow::Cow<'a, [UsageRecord]>,
}

/// Where spool files go: `[usage] spool_dir`, else the upgrade socket's private directory
/// (0700, this user's: the records name users and keys).
pub fn dir(config: &crate::config::Config) -> PathBuf {
    if !config.usage.spool_dir.is_empty() {
        return PathBuf::from(&config.usage.spool_dir);
    }
    crate::shutdown::upgrade::socket_path(&config.proxy.upgrade_sock)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir)
}

/// Write `batches` (id, records) to a new spool file of `instance` in `dir`; its path.
pub fn write(
    dir: &Path,
    instance: &str,
    batches: &[(String, &[UsageRecord])],
) -> std::io::Result<PathBuf> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let path = dir.join(format!("{PREFIX}{instance}{SUFFIX}"));
    let tmp = dir.join(format!(".{PREFIX}{instance}.tmp"));
    let mut out = std::io::BufWriter::new(
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?,
    );
    for (id, records) in batches {
        let line = Line {
            batch: id.as_str().into(),
            records: (*records).into(),
        };
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()?;
    Ok(path)
}

/// A spool file this process holds (locked) until its batches are stored.
pub struct Claimed {
    path: PathBuf,
    _lock: nix::fcntl::Flock<File>,
    /// Its batches, in order: (id, records).
    pub batches: Vec<(String, Vec<UsageRecord>)>,
}

impl Claimed {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every batch is stored: the file goes.
    pub fn done(self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::error!(path = %self.path.display(), error = %e, "spooled usage stored, but its file could not be removed (its batches would be sent again, and counted once)");
        }
    }
}

/// Take every spool file in `dir` that no other process holds. A file that cannot be read
/// whole is left where it is, and logged.
pub fn claim(dir: &Path) -> Vec<Claimed> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(PREFIX) && name.ends_with(SUFFIX)) {
            continue;
        }
        let path = entry.path();
        let Ok(file) = File::open(&path) else {
            continue;
        };
        let Ok(lock) = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        else {
            continue; // another process sends it
        };
        // Removed by the process that held it before this one locked it: nothing to send.
        if !path.exists() {
            continue;
        }
        match read(&lock) {
            Ok(batches) => out.push(Claimed {
                path,
                _lock: lock,
                batches,
            }),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "spooled usage file unreadable: left in place")
            }
        }
    }
    out
}

fn read(file: &File) -> std::io::Result<Vec<(String, Vec<UsageRecord>)>> {
    let mut batches = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        let l: Line<'static> = serde_json::from_str(&line)?;
        batches.push((l.batch.into_owned(), l.records.into_owned()));
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u64) -> UsageRecord {
        serde_json::from_value(serde_json::json!({
            "ts_ms": n, "model": "m", "server": "s", "status": 200, "latency_ms": 1
        }))
        .unwrap_or_else(|_| panic!("a usage record from its fields"))
    }

    #[test]
    fn written_batches_are_claimed_once_with_their_ids_and_removed_when_done() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        let (a, b) = (vec![record(1), record(2)], vec![record(3)]);
        let path = write(
            &spool,
            "i1",
            &[("i1-7".into(), &a[..]), ("i1-8".into(), &b[..])],
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&spool).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let mut claimed = claim(&spool);
        assert_eq!(claimed.len(), 1);
        assert_eq!(
            claimed[0].batches,
            vec![("i1-7".to_string(), a), ("i1-8".to_string(), b)]
        );
        // Held: a second claim (another process) gets nothing.
        assert!(claim(&spool).is_empty());
        claimed.pop().unwrap().done();
        assert!(!path.exists());
        assert!(claim(&spool).is_empty());
    }

    #[test]
    fn a_damaged_file_is_left_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage-spool-x.jsonl");
        std::fs::write(&path, "{not json\n").unwrap();
        assert!(claim(dir.path()).is_empty());
        assert!(path.exists());
    }
}
