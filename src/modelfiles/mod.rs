//! Reading model files without loading them: the headers of safetensors and GGUF files (their
//! tensors' sizes and types, GGUF metadata), a model's `config.json`, and what a model folder
//! holds; all bounded against damaged or hostile files.

use std::path::Path;

/// Open a file for reading only if it is a regular file inside `root`: checked on the open file
/// itself (its `/proc/self/fd` link), so a symbolic link swapped after any earlier check cannot
/// lead elsewhere; opened without blocking, so a FIFO cannot hold the caller.
pub fn open_inside(root: &Path, path: &Path) -> Result<std::fs::File, String> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.to_string())?;
    if !f.metadata().map_err(|e| e.to_string())?.is_file() {
        return Err("not a regular file".into());
    }
    let real = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))
        .map_err(|e| e.to_string())?;
    let root = root.canonicalize().map_err(|e| e.to_string())?;
    if !real.starts_with(&root) {
        return Err("leads outside the models directory".into());
    }
    Ok(f)
}

/// Bytes in GiB, to two decimals (as every size in the admin API is shown).
pub fn gib(bytes: f64) -> f64 {
    (bytes / (1u64 << 30) as f64 * 100.0).round() / 100.0
}

pub mod folder;
pub mod gguf;
pub mod hfconfig;
pub mod hub;
pub mod safetensors;
