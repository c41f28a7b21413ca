//! Binary upgrade: a new process takes the listening sockets from the running one through
//! Pingora's hand-over, and the old one drains.
//!
//! `infergate upgrade --pid <old>` starts `infergate serve --upgrade` from the binary on
//! disk, waits for it to listen on the upgrade socket, and sends the old process SIGQUIT. The
//! old process hands both listening sockets (data plane and admin) over that socket, keeps
//! serving for five seconds with every response closing its connection (its clients reconnect,
//! and land on the new process), then closes its side and drains like a SIGTERM without the
//! grace period: the sockets never close, so no client sees a refused connection.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The longest path of a Unix socket (`sun_path` holds 108 bytes, one of them the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// How long the old process waits, after SIGQUIT, for a new one to listen on the upgrade
/// socket before it gives up the upgrade and goes on serving.
pub const WAIT_FOR_NEW: Duration = Duration::from_secs(15);

/// After the new process has the sockets, how long its listeners get to start before the
/// old process tells its clients to reconnect.
pub const NEW_LISTENS: Duration = Duration::from_millis(250);

/// Why an upgrade cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("upgrade socket directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "upgrade socket directory {dir} belongs to uid {owner}, not to this process's uid {uid}: \
         another user could take the listening sockets (set [proxy] upgrade_sock)"
    )]
    NotOurs { dir: PathBuf, owner: u32, uid: u32 },
    #[error(
        "upgrade socket directory {dir} has mode {mode:o}: open to other users, one of whom \
         could take the listening sockets (chmod 700, or set [proxy] upgrade_sock)"
    )]
    Open { dir: PathBuf, mode: u32 },
    #[error("upgrade socket directory {0} is not a directory (a symlink is refused)")]
    NotADirectory(PathBuf),
    #[error(
        "process {pid} does not hold the gateway lock {lock} (held by {holder}): it is not a \
         gateway of this configuration that takes part in upgrades (a gateway older than this \
         version drains on SIGQUIT: restart it instead); nothing was signalled"
    )]
    NotUpgradable {
        pid: i32,
        lock: PathBuf,
        holder: String,
    },
    #[error("upgrade socket {0} is longer than {MAX_SOCKET_PATH} bytes")]
    TooLong(PathBuf),
    #[error("cannot start {exe}: {source}")]
    Spawn {
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error("the new process exited ({0}) before it took the sockets; the old one goes on")]
    NewExited(std::process::ExitStatus),
    #[error(
        "the new process exited ({0}) as it took the sockets; if the old one had sent them, it \
         stops: start the gateway again"
    )]
    NewDied(std::process::ExitStatus),
    #[error(
        "the new process did not listen on {0} in time; it was stopped and the old one goes on"
    )]
    NewSilent(PathBuf),
    #[error("cannot signal the running gateway (pid {pid}): {source}")]
    Signal { pid: i32, source: nix::Error },
    #[error("the running gateway (pid {0}) did not hand its sockets over in time")]
    NotHandedOver(i32),
}

/// The upgrade socket's path: the configured one, else one in the user's runtime directory.
pub fn socket_path(configured: &str) -> PathBuf {
    if !configured.is_empty() {
        return PathBuf::from(configured);
    }
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir.join("infergate").join("upgrade.sock"),
        _ => std::env::temp_dir()
            .join(format!("infergate-{}", nix::unistd::geteuid()))
            .join("upgrade.sock"),
    }
}

/// Makes sure the socket's directory exists, is a real directory (not a symlink), belongs to
/// this process's user and is open to no one else, and that no directory above it can be
/// swapped by another user (writable by others without the sticky bit): whoever can create
/// the socket there would be sent the listening sockets, or could send a new process its own.
pub fn prepare(socket: &Path) -> Result<(), UpgradeError> {
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(UpgradeError::TooLong(socket.to_path_buf()));
    }
    let dir = socket.parent().unwrap_or(Path::new("/")).to_path_buf();
    use crate::files::PrivateDirError as E;
    crate::files::private_dir(&dir).map_err(|e| match e {
        E::Io { dir, source } => UpgradeError::Dir { dir, source },
        E::NotADirectory(dir) => UpgradeError::NotADirectory(dir),
        E::NotOurs { dir, owner, uid } => UpgradeError::NotOurs { dir, owner, uid },
        E::Open { dir, mode } => UpgradeError::Open { dir, mode },
    })
}

/// The process holding the gateway lock beside `socket` (from `/proc/locks`), if any.
pub fn lock_holder(socket: &Path) -> Option<i32> {
    let inode = std::fs::metadata(Tenancy::new(socket).path).ok()?.ino();
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        // `1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF`
        let f: Vec<&str> = line.split_whitespace().collect();
        let ino = f.get(5)?.rsplit(':').next()?.parse::<u64>().ok()?;
        (f.get(1) == Some(&"FLOCK") && ino == inode).then(|| f.get(4)?.parse().ok())?
    })
}

/// Pingora's table of listening sockets (the same one every listening service gets): kept
/// so that the upgrade can send them itself and know whether they went.
static LISTEN_FDS: std::sync::OnceLock<pingora::server::ListenFds> = std::sync::OnceLock::new();

/// Keep the table of listening sockets for the upgrade.
pub fn remember(fds: &pingora::server::ListenFds) {
    let _ = LISTEN_FDS.set(fds.clone());
}

/// Sends the listening sockets to the new process waiting on `socket` (Pingora's hand-over,
/// blocking: it retries for about 5 s); whether they went.
pub fn send(socket: &Path) -> Result<(), String> {
    let fds = LISTEN_FDS
        .get()
        .ok_or("no listening sockets are known yet")?;
    let fds = fds.lock();
    let path = socket.to_string_lossy().into_owned();
    fds.send_to_sock(path.as_str())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Whether a process listens for the sockets at `socket` (a new process waiting in its
/// bootstrap creates it, and removes it once it has them).
pub fn new_process_waiting(socket: &Path) -> bool {
    std::fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket())
}

/// Polls `done` every 50 ms for at most `limit`; whether it came true.
fn poll(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `infergate upgrade`: starts `exe serve --upgrade` with `serve_args`, and once it waits on
/// `socket`, asks `old` to hand its sockets over (SIGQUIT). Returns the new process's pid once
/// it has them. Nothing is signalled unless the new process is ready to take them.
pub fn hand_over(
    exe: &Path,
    serve_args: &[std::ffi::OsString],
    socket: &Path,
    old: i32,
) -> Result<u32, UpgradeError> {
    use nix::sys::signal::{kill, Signal};
    use std::os::unix::process::CommandExt;
    let pid = nix::unistd::Pid::from_raw(old);
    prepare(socket)?;
    // Only a gateway that holds this configuration's lock is signalled: never another
    // process (`--pid 0` or `-1` would reach a whole group), nor a gateway older than this
    // version (which would drain on SIGQUIT and leave no one to take the sockets).
    let holder = lock_holder(socket);
    if old <= 1 || holder != Some(old) {
        return Err(UpgradeError::NotUpgradable {
            pid: old,
            lock: Tenancy::new(socket).path,
            holder: holder.map_or("no process".into(), |p| format!("process {p}")),
        });
    }
    // A socket left by a new process that died while it waited would pass for a new one.
    if new_process_waiting(socket) {
        let _ = std::fs::remove_file(socket);
    }
    let mut child = std::process::Command::new(exe)
        .arg("serve")
        .arg("--upgrade")
        .args(serve_args)
        .stdin(std::process::Stdio::null())
        // The gateway writes nothing to stdout (this command prints the new pid there); its
        // log goes where this command's goes (stderr).
        .stdout(std::process::Stdio::null())
        // Its own process group: the new gateway outlives this command and is not stopped by
        // a Ctrl-C meant for it.
        .process_group(0)
        .spawn()
        .map_err(|source| UpgradeError::Spawn {
            exe: exe.to_path_buf(),
            source,
        })?;
    let mut exited = None;
    let waiting = poll(WAIT_FOR_NEW, || {
        if let Ok(Some(status)) = child.try_wait() {
            exited = Some(status);
            return true;
        }
        new_process_waiting(socket)
    });
    if let Some(status) = exited {
        return Err(UpgradeError::NewExited(status));
    }
    if !waiting {
        let _ = child.kill();
        let _ = child.wait();
        return Err(UpgradeError::NewSilent(socket.to_path_buf()));
    }
    kill(pid, Signal::SIGQUIT).map_err(|source| UpgradeError::Signal { pid: old, source })?;
    // The new process removes the socket once it holds the listening sockets.
    let taken = poll(WAIT_FOR_NEW, || {
        if let Ok(Some(status)) = child.try_wait() {
            exited = Some(status);
            return true;
        }
        !new_process_waiting(socket)
    });
    if let Some(status) = exited {
        return Err(UpgradeError::NewExited(status));
    }
    if !taken {
        return Err(UpgradeError::NotHandedOver(old));
    }
    // The socket also goes when the new process gives up waiting (and then exits): it must
    // still run a moment later.
    std::thread::sleep(Duration::from_millis(500));
    if let Ok(Some(status)) = child.try_wait() {
        return Err(UpgradeError::NewDied(status));
    }
    // Under systemd (this command runs as ExecReload): the new process is the service's
    // main process now (it says so too, once its services run).
    let _ = sd_notify::notify(&[sd_notify::NotifyState::MainPid(child.id())]);
    Ok(child.id())
}

/// The lock a serving gateway holds for its whole life (`gateway.lock` beside the upgrade
/// socket, released by the kernel when the process ends, however it ends). The new process
/// of an upgrade waits for it before it touches managed engines: until the old process has
/// exited, the engines running on this node are the old one's, not leftovers to remove.
pub struct Tenancy {
    path: PathBuf,
}

/// Whether this process holds the gateway lock (only then may it hand its sockets over).
static HOLDS_LOCK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process holds the gateway lock.
pub fn holds_lock() -> bool {
    HOLDS_LOCK.load(std::sync::atomic::Ordering::Relaxed)
}

impl Tenancy {
    pub fn new(socket: &Path) -> Self {
        Self {
            path: socket.with_file_name("gateway.lock"),
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the lock if it is free, and holds it until the process ends; whether it did.
    pub fn try_take(&self) -> bool {
        let file = match std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.path)
        {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(path = %self.path.display(), error = %e, "gateway lock not opened");
                return false;
            }
        };
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                // Held until the process ends.
                std::mem::forget(lock);
                HOLDS_LOCK.store(true, std::sync::atomic::Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }

    /// Resolves once the lock is taken (the process before this one has ended).
    pub async fn take(&self) {
        let mut said = false;
        while !self.try_take() {
            if !said {
                tracing::info!("managed engines wait for the process being upgraded to exit");
                said = true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Tells systemd (when it started the gateway as `Type=notify`) that this process is the
/// service's main process and ready. Nothing happens elsewhere.
pub fn notify_ready() {
    let pid = std::process::id();
    if let Err(e) = sd_notify::notify(&[
        sd_notify::NotifyState::MainPid(pid),
        sd_notify::NotifyState::Ready,
    ]) {
        tracing::warn!(error = %e, "could not tell systemd the gateway is ready");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_default_socket_is_in_a_private_directory() {
        let path = socket_path("");
        assert!(path.ends_with("upgrade.sock"), "{path:?}");
        assert_eq!(socket_path("/run/x/u.sock"), PathBuf::from("/run/x/u.sock"));
    }

    #[test]
    fn a_directory_others_can_open_a_symlink_or_a_long_path_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("private");
        prepare(&private.join("upgrade.sock")).unwrap();
        let mode = std::fs::metadata(&private).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = prepare(&open.join("upgrade.sock")).unwrap_err();
        assert!(
            matches!(err, UpgradeError::Open { mode: 0o777, .. }),
            "{err}"
        );
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = prepare(&open.join("upgrade.sock")).unwrap_err();
        assert!(
            matches!(err, UpgradeError::Open { mode: 0o755, .. }),
            "{err}"
        );
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&private, &link).unwrap();
        let err = prepare(&link.join("upgrade.sock")).unwrap_err();
        assert!(matches!(err, UpgradeError::NotADirectory(_)), "{err}");
        let long = dir.path().join("x".repeat(120));
        assert!(matches!(prepare(&long), Err(UpgradeError::TooLong(_))));
    }

    #[test]
    fn the_gateway_lock_is_held_by_one_process_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tenancy::new(&dir.path().join("upgrade.sock"));
        // flock locks belong to the open file: a second open, as another process would
        // make, does not get it.
        assert!(t.try_take());
        assert!(!t.try_take());
        assert_eq!(
            lock_holder(&dir.path().join("upgrade.sock")),
            Some(std::process::id() as i32)
        );
        let other = tempfile::tempdir().unwrap();
        assert_eq!(lock_holder(&other.path().join("upgrade.sock")), None);
    }

    #[test]
    fn a_socket_file_means_a_process_waits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade.sock");
        assert!(!new_process_waiting(&path));
        std::fs::write(&path, b"").unwrap();
        assert!(!new_process_waiting(&path), "a plain file is not a socket");
        std::fs::remove_file(&path).unwrap();
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(new_process_waiting(&path));
    }
}
