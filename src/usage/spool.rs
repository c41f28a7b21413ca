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
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
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

/// Where spool files go: `[usage] spool_dir`, else a directory that outlives the process and
/// a restart of the service (not the runtime directory, which systemd removes at stop):
/// systemd's `$STATE_DIRECTORY`, else `$XDG_STATE_HOME/infergate/spool`, else
/// `~/.local/state/infergate/spool`.
pub fn dir(config: &crate::config::Config) -> PathBuf {
    if !config.usage.spool_dir.is_empty() {
        return PathBuf::from(&config.usage.spool_dir);
    }
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    if let Some(state) = std::env::var_os("STATE_DIRECTORY").and_then(|v| {
        // Several directories are separated by colons: the first.
        absolute(v.to_string_lossy().split(':').next()?.into())
    }) {
        return state.join("spool");
    }
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").and_then(absolute) {
        return state.join("infergate").join("spool");
    }
    match std::env::var_os("HOME").and_then(absolute) {
        Some(home) => home.join(".local/state/infergate/spool"),
        None => std::env::temp_dir()
            .join(format!("infergate-{}", nix::unistd::geteuid()))
            .join("spool"),
    }
}

/// Why the spool directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("usage spool directory {0}")]
    Dir(#[from] crate::files::PrivateDirError),
    #[error("usage spool: {0}")]
    Io(#[from] std::io::Error),
}

/// Checked at start (so a bad directory shows then, not at the exit that needs it) and before
/// each use: private to this user (records name users and keys; a file planted by another user
/// would be billed).
pub fn check(dir: &Path) -> Result<(), SpoolError> {
    Ok(crate::files::private_dir(dir)?)
}

/// Write `batches` (id, records) to a new spool file of `instance` in `dir`; its path.
pub fn write(
    dir: &Path,
    name: &str,
    batches: &[(String, &[UsageRecord])],
) -> Result<PathBuf, SpoolError> {
    check(dir)?;
    let path = dir.join(format!("{PREFIX}{name}{SUFFIX}"));
    let tmp = dir.join(format!(".{PREFIX}{name}.tmp"));
    // A leftover (or planted) temporary name goes first; the new file is created, never
    // opened through a link.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let mut out = std::io::BufWriter::new(
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)?,
    );
    for (id, records) in batches {
        let line = Line {
            batch: id.as_str().into(),
            records: (*records).into(),
        };
        serde_json::to_writer(&mut out, &line).map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
    }
    out.into_inner()
        .map_err(|e| SpoolError::Io(e.into_error()))?
        .sync_all()?;
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
    if !dir.exists() {
        return Vec::new();
    }
    if let Err(e) = check(dir) {
        tracing::error!(error = %e, "spooled usage not read: the directory is not private");
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let uid = nix::unistd::geteuid().as_raw();
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(PREFIX) && name.ends_with(SUFFIX)) {
            continue;
        }
        let path = entry.path();
        let Ok(file) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
        else {
            continue;
        };
        // Only this user's own files, as it writes them.
        match file.metadata() {
            Ok(m) if m.is_file() && m.uid() == uid && m.mode() & 0o077 == 0 => {}
            _ => {
                tracing::error!(path = %path.display(), "spool file not this user's own (owner or mode): not read");
                continue;
            }
        }
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
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(claim(dir.path()).is_empty());
        assert!(path.exists());
    }

    #[test]
    fn files_others_could_write_and_links_are_not_trusted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        let r = [record(1)];
        write(&spool, "a", &[("a-0".into(), &r[..])]).unwrap();
        // A file open to others (planted, or edited) is not read.
        let planted = spool.join("usage-spool-x.jsonl");
        std::fs::copy(spool.join("usage-spool-a.jsonl"), &planted).unwrap();
        std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o644)).unwrap();
        // A link to a file is not followed.
        std::os::unix::fs::symlink(
            spool.join("usage-spool-a.jsonl"),
            spool.join("usage-spool-l.jsonl"),
        )
        .unwrap();
        let claimed = claim(&spool);
        assert_eq!(claimed.len(), 1, "only the gateway's own file");
        assert!(claimed[0].path().ends_with("usage-spool-a.jsonl"));
        drop(claimed);
        // A temporary name planted as a link is replaced, not written through.
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, spool.join(".usage-spool-b.tmp")).unwrap();
        write(&spool, "b", &[("b-0".into(), &r[..])]).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        // A directory open to others is refused.
        std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(write(&spool, "c", &[("c-0".into(), &r[..])]).is_err());
        assert!(claim(&spool).is_empty());
    }
}
