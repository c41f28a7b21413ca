//! Paths inside the models directory. A model names its files relative to `[runner]
//! models_dir`; nothing it names may leave that directory, whether by an absolute path, by `..`,
//! or by a symbolic link on the way that points outside (Cortex accepted all three). The check
//! is made when a model is saved and again when its engine starts (links can change between).

use std::path::{Path, PathBuf};

/// Longest relative path accepted.
pub const MAX_PATH: usize = 1024;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("must be 1 to {MAX_PATH} bytes without control characters or backslashes")]
    Malformed,
    #[error("must be relative to the models directory, not absolute")]
    Absolute,
    #[error("may not contain `..`, `.` or empty components")]
    Traversal,
    #[error("leads outside the models directory through a symbolic link")]
    Escapes,
}

/// `rel` resolved under `root`: checked as text, then every part of it that exists is resolved
/// (links followed) and must still lie under `root`. Parts that do not exist yet are allowed
/// (the engine, or the operator, may put the files there before start).
pub fn confined(root: &Path, rel: &str) -> Result<PathBuf, PathError> {
    let rel = lexical(rel)?;
    let full = root.join(rel);
    let Ok(root_real) = root.canonicalize() else {
        // No models directory yet: nothing under it exists, so no link can lead out.
        return Ok(full);
    };
    let mut probe = full.as_path();
    loop {
        if probe.symlink_metadata().is_ok() {
            // The deepest part that exists: resolved, it must stay inside. A dangling link
            // cannot be resolved and is refused (it could be pointed anywhere later).
            let real = probe.canonicalize().map_err(|_| PathError::Escapes)?;
            return if real.starts_with(&root_real) {
                Ok(full)
            } else {
                Err(PathError::Escapes)
            };
        }
        match probe.parent() {
            Some(parent) if parent.starts_with(root) && parent != root => probe = parent,
            _ => return Ok(full),
        }
    }
}

/// A relative path without a trailing slash, checked as text.
fn lexical(rel: &str) -> Result<&str, PathError> {
    let trimmed = rel.strip_suffix('/').unwrap_or(rel);
    if trimmed.is_empty()
        || rel.len() > MAX_PATH
        || rel.chars().any(|c| c.is_control() || c == '\\')
    {
        return Err(PathError::Malformed);
    }
    if trimmed.starts_with('/') {
        return Err(PathError::Absolute);
    }
    if trimmed
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(PathError::Traversal);
    }
    Ok(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_models_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("models");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("qwen")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("qwen/model.gguf"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
        std::os::unix::fs::symlink(root.join("qwen"), root.join("alias")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("nowhere"), root.join("dangling")).unwrap();

        for ok in [
            "qwen",
            "qwen/",
            "qwen/model.gguf",
            "alias/model.gguf",
            "not-yet/there.gguf",
        ] {
            assert_eq!(
                confined(&root, ok),
                Ok(root.join(ok.trim_end_matches('/'))),
                "{ok}"
            );
        }
        for (bad, err) in [
            ("", PathError::Malformed),
            ("/", PathError::Malformed),
            ("a\\..\\b", PathError::Malformed),
            ("a\nb", PathError::Malformed),
            ("/etc/passwd", PathError::Absolute),
            ("../outside", PathError::Traversal),
            ("qwen/../../outside", PathError::Traversal),
            ("qwen//model.gguf", PathError::Traversal),
            ("./qwen", PathError::Traversal),
            ("escape", PathError::Escapes),
            ("escape/secret.gguf", PathError::Escapes),
            ("dangling", PathError::Escapes),
        ] {
            assert_eq!(confined(&root, bad), Err(err), "{bad:?}");
        }
        assert_eq!(
            confined(&root, &"a".repeat(MAX_PATH + 1)),
            Err(PathError::Malformed)
        );
        // Without a models directory only the text is checked.
        let missing = dir.path().join("missing");
        assert_eq!(confined(&missing, "x/y"), Ok(missing.join("x/y")));
        assert_eq!(confined(&missing, "../y"), Err(PathError::Traversal));
    }
}
