//! Files the gateway keeps for itself (the upgrade socket, the usage spool): directories that
//! only this process's user can reach.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a directory is not private to this process's user.
#[derive(Debug, thiserror::Error)]
pub enum PrivateDirError {
    #[error("{dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not a directory (a symlink is refused)")]
    NotADirectory(PathBuf),
    #[error("{dir} belongs to uid {owner}, not to this process's uid {uid}")]
    NotOurs { dir: PathBuf, owner: u32, uid: u32 },
    #[error("{dir} has mode {mode:o}: other users could reach it")]
    Open { dir: PathBuf, mode: u32 },
}

/// Make sure `dir` exists (created 0700 when missing), is a real directory (not a symlink),
/// belongs to this process's user and is open to no one else, and that no directory above it
/// is writable by others without the sticky bit (one could swap it).
pub fn private_dir(dir: &Path) -> Result<(), PrivateDirError> {
    let io = |source| PrivateDirError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    if std::fs::symlink_metadata(dir).is_err() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    let meta = std::fs::symlink_metadata(dir).map_err(io)?;
    if !meta.is_dir() {
        return Err(PrivateDirError::NotADirectory(dir.to_path_buf()));
    }
    let uid = nix::unistd::geteuid().as_raw();
    if meta.uid() != uid {
        return Err(PrivateDirError::NotOurs {
            dir: dir.to_path_buf(),
            owner: meta.uid(),
            uid,
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(PrivateDirError::Open {
            dir: dir.to_path_buf(),
            mode,
        });
    }
    for above in dir.ancestors().skip(1) {
        let Ok(m) = std::fs::metadata(above) else {
            continue;
        };
        let mode = m.permissions().mode();
        if mode & 0o002 != 0 && mode & 0o1000 == 0 {
            return Err(PrivateDirError::Open {
                dir: above.to_path_buf(),
                mode: mode & 0o7777,
            });
        }
    }
    Ok(())
}
