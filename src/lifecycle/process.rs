//! An engine run as a child process of the gateway, in a process group of its own (so a stop
//! reaches the workers it forks), with its stdout and stderr captured line by line into the
//! model's log ring. Stop is SIGTERM to the group, then SIGKILL after a grace period. It starts
//! in an empty directory of its own (every path it gets is absolute) with a clean environment: only the variables an engine needs (locale,
//! CUDA, NCCL, Hugging Face caches, vLLM settings, `[runner] pass_env`) pass from the gateway's,
//! never its own secrets.

use super::command::EngineCommand;
use super::logs::LogRing;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Gateway variables an engine gets, by name.
const PASSED: [&str; 12] = [
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "LD_LIBRARY_PATH",
    "XDG_CACHE_HOME",
    "HF_HOME",
    "HF_HUB_CACHE",
];
/// Gateway variables an engine gets, by prefix (the API key variables are set by the gateway
/// itself, after these).
const PASSED_PREFIXES: [&str; 5] = ["LC_", "CUDA_", "NVIDIA_", "NCCL_", "VLLM_"];
/// Longest output line kept whole.
const MAX_LINE: usize = 4096;
/// Set in every engine's environment to `<model id>.<run>@<node>`, inherited by every process it
/// forks: how a node finds processes of its engines that outlived them (workers that left the
/// group, or an engine's children when the gateway was killed outright).
pub const MARKER: &str = "INFERGATE_ENGINE";

fn passed(name: &str, extra: &[String]) -> bool {
    PASSED.contains(&name)
        || PASSED_PREFIXES.iter().any(|p| name.starts_with(p))
        || extra.iter().any(|e| e == name)
}

/// A running engine process.
pub struct EngineProcess {
    child: tokio::process::Child,
    group: Option<Pid>,
    exited: Option<ExitStatus>,
}

/// Start `cmd` in `workdir` (when it exists) with the passed part of the gateway's
/// environment plus the command's own, logging its output into `logs`.
pub fn spawn(
    cmd: &EngineCommand,
    logs: &Arc<LogRing>,
    workdir: &std::path::Path,
    pass_env: &[String],
) -> std::io::Result<EngineProcess> {
    let Some((program, args)) = cmd.argv.split_first() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "empty command",
        ));
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(std::env::vars_os().filter(|(k, _)| k.to_str().is_some_and(|k| passed(k, pass_env))))
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: the closure runs in the forked child before exec and only makes one
    // async-signal-safe system call (prctl). It kills the engine when the thread that forked it
    // dies; the supervisor forks from a thread that lives as long as the gateway, so a gateway
    // killed outright (SIGKILL, a crash) leaves no engine behind.
    if workdir.is_dir() {
        command.current_dir(workdir);
    }
    #[cfg(target_os = "linux")]
    {
        let parent = nix::unistd::getpid();
        // SAFETY: as above; getppid is async-signal-safe too. A parent gone before the signal
        // was armed would leave the engine unwatched, so it does not start.
        unsafe {
            command.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
                if nix::unistd::getppid() != parent {
                    return Err(std::io::Error::other("the gateway exited"));
                }
                Ok(())
            });
        }
    }
    let mut child = command.spawn()?;
    let group = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(copy_lines(out, logs.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(copy_lines(err, logs.clone()));
    }
    Ok(EngineProcess {
        child,
        group,
        exited: None,
    })
}

/// Copy output into the ring a line at a time: lines end at LF or CR (progress bars redraw
/// with CR), and a line is cut at MAX_LINE bytes however long the engine makes it.
async fn copy_lines(mut stream: impl AsyncRead + Unpin, logs: Arc<LogRing>) {
    let mut chunk = [0u8; 8192];
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut cut = false;
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &chunk[..n] {
            if b == b'\n' || b == b'\r' {
                if !line.is_empty() || cut {
                    logs.push(&String::from_utf8_lossy(&line));
                }
                line.clear();
                cut = false;
            } else if line.len() < MAX_LINE {
                line.push(b);
            } else if !cut {
                cut = true;
                line.extend_from_slice("…".as_bytes());
            }
        }
    }
    if !line.is_empty() {
        logs.push(&String::from_utf8_lossy(&line));
    }
}

impl EngineProcess {
    /// Wait for the process to exit (cancel-safe).
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        if let Some(status) = self.exited {
            return Ok(status);
        }
        let status = self.child.wait().await?;
        self.exited = Some(status);
        Ok(status)
    }

    /// SIGTERM to the whole group, SIGKILL when it has not exited after `grace`; then reap.
    pub async fn stop(&mut self, grace: Duration) -> std::io::Result<ExitStatus> {
        if self.exited.is_none() {
            self.signal(Signal::SIGTERM);
            if let Ok(status) = tokio::time::timeout(grace, self.wait()).await {
                // The group may still hold workers that ignored SIGTERM.
                self.signal(Signal::SIGKILL);
                return status;
            }
        }
        self.signal(Signal::SIGKILL);
        self.wait().await
    }

    fn signal(&self, signal: Signal) {
        if let Some(group) = self.group {
            // ESRCH once every member is gone: nothing left to stop.
            let _ = killpg(group, signal);
        }
    }
}

impl Drop for EngineProcess {
    /// No engine outlives its handle: the whole group is killed (the child alone would be
    /// killed by `kill_on_drop`, its workers not).
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

/// The mark of one run of a model's engine on a node.
pub fn mark(model: &str, run: &str, node: &str) -> String {
    format!("{model}.{run}@{node}")
}

/// A process marked as an engine of this node: its pid, model id and run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marked {
    pub pid: i32,
    pub model: String,
    pub run: String,
}

/// The processes marked as engines of `node` (see [`MARKER`]). Processes whose environment
/// cannot be read (another user's) are not ours.
pub fn marked(node: &str) -> Vec<Marked> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    let prefix = format!("{MARKER}=");
    let suffix = format!("@{node}");
    dir.filter_map(|e| {
        let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        if pid == me {
            return None;
        }
        let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        environ.split(|&b| b == 0).find_map(|var| {
            let value = std::str::from_utf8(var).ok()?.strip_prefix(&prefix)?;
            let (model, run) = value.strip_suffix(&suffix)?.rsplit_once('.')?;
            Some(Marked {
                pid,
                model: model.to_string(),
                run: run.to_string(),
            })
        })
    })
    .collect()
}

/// An empty working directory of its own for an engine (emptied if an earlier run left one):
/// a repository id such as `org/name` must never be read as a folder of the models directory
/// or anywhere else (every path the engine gets is absolute). Named by the model and this
/// gateway process, so that two gateways on one host (two nodes) never share one: each removes
/// its engine's when the engine ends.
pub fn fresh_workdir(id: &str) -> std::io::Result<std::path::PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!("infergate-engine-{id}-{}", std::process::id()));
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

/// SIGKILL one process (gone already is not an error).
pub fn kill(pid: i32) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
}

/// How an exit reads in a state detail: `exited with code 1`, `killed by signal 9`.
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => "exited".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> EngineCommand {
        EngineCommand {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            env: vec![("GREETING".into(), "hello".into())],
        }
    }

    #[tokio::test]
    async fn output_is_captured_and_the_exit_code_reported() {
        let logs = Arc::new(LogRing::new(100, 1 << 20));
        let mut p = spawn(
            &sh("echo $GREETING; echo oops >&2; exit 3"),
            &logs,
            std::path::Path::new("/"),
            &[],
        )
        .unwrap();
        let status = p.wait().await.unwrap();
        assert_eq!(describe(status), "exited with code 3");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut lines = logs.tail(10);
        lines.sort();
        assert_eq!(lines, ["hello", "oops"]);
    }

    #[tokio::test]
    async fn marked_processes_are_found_by_node() {
        let logs = Arc::new(LogRing::new(100, 1 << 20));
        let node = format!("test-{}", std::process::id());
        let mut cmd = sh("sleep 30");
        cmd.env.push((MARKER.into(), mark("mdl_x", "r1", &node)));
        let mut p = spawn(&cmd, &logs, std::path::Path::new("/"), &[]).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The shell and the sleep it forked both carry the mark.
        let found = marked(&node);
        assert!(!found.is_empty());
        assert!(
            found.iter().all(|m| m.model == "mdl_x" && m.run == "r1"),
            "{found:?}"
        );
        assert!(marked(&format!("{node}-other")).is_empty());
        for m in &found {
            kill(m.pid);
        }
        assert!(p.wait().await.is_ok());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let left: Vec<_> = marked(&node)
            .into_iter()
            .filter(|Marked { pid, .. }| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                !stat.contains(") Z")
            })
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[tokio::test]
    async fn stop_reaches_the_whole_group_and_escalates() {
        let logs = Arc::new(LogRing::new(100, 1 << 20));
        // A parent that ignores SIGTERM, with a child of its own.
        let mut p = spawn(
            &sh("trap '' TERM; sleep 300 & echo child $!; wait"),
            &logs,
            std::path::Path::new("/"),
            &[],
        )
        .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let child: i32 = logs.tail(1)[0]
            .strip_prefix("child ")
            .unwrap()
            .parse()
            .unwrap();
        let started = std::time::Instant::now();
        let status = p.stop(Duration::from_millis(300)).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(describe(status), "killed by signal 9");
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The forked child is gone too (or a zombie, if nothing reaps orphans here).
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .chars()
            .next();
        assert!(matches!(state, None | Some('Z') | Some('X')), "{stat}");
    }
}
