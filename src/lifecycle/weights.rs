//! What an engine is given as its model: a Hub repository id, or a path in the models
//! directory, resolved for llama.cpp to the one GGUF file to load. A folder with several GGUF
//! models is refused rather than guessed at (Cortex silently took the first split file of
//! another quantization in the same folder).

use super::paths::confined;
use super::record::{EngineType, ModelSpec};
use std::path::{Path, PathBuf};

/// A model's configuration with every path it names resolved inside the models directory.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// The engine's model argument: a repository id, or an absolute path.
    pub weights: String,
    /// The configuration, with `tokenizer` and `hf_config_path` as absolute paths when they name
    /// files in the models directory, and the values of path flags in `engine_args` absolute
    /// too (so the engine never resolves them against its own working directory).
    pub spec: ModelSpec,
}

/// Resolve the weights and every auxiliary path of `spec`.
pub fn resolve_all(spec: &ModelSpec, models_dir: &Path) -> Result<Resolved, String> {
    let weights = resolve(spec, models_dir)?;
    let mut spec = spec.clone();
    for (field, value) in [
        ("tokenizer", &mut spec.tokenizer),
        ("hf_config_path", &mut spec.hf_config_path),
    ] {
        if let Some(v) = value.as_mut() {
            *v = auxiliary(field, v, models_dir)?;
        }
    }
    for arg in &mut spec.engine_args {
        if !super::guard::path_flag(&arg.flag) {
            continue;
        }
        if let serde_json::Value::String(v) = &mut arg.value {
            // An inline chat template (vLLM's --chat-template) is no path.
            if arg.flag.contains("chat") && v.contains('{') {
                continue;
            }
            let path = confined(models_dir, v).map_err(|e| format!("{}: {v:?} {e}", arg.flag))?;
            *v = path.to_string_lossy().into_owned();
        }
    }
    Ok(Resolved { weights, spec })
}

/// A tokenizer or config: a path in the models directory when one exists there, else a Hub
/// repository id.
fn auxiliary(field: &str, value: &str, models_dir: &Path) -> Result<String, String> {
    if let Ok(path) = confined(models_dir, value) {
        if path.exists() {
            return Ok(path.to_string_lossy().into_owned());
        }
    }
    if super::validate::repo_id(value) {
        return Ok(value.to_string());
    }
    Err(format!(
        "{field}: {value:?} is neither a path in the models directory nor a repository id"
    ))
}

/// The engine's model argument, or why there is none.
pub fn resolve(spec: &ModelSpec, models_dir: &Path) -> Result<String, String> {
    if let Some(repo) = &spec.repo_id {
        return Ok(repo.clone());
    }
    let rel = spec.local_path.as_deref().unwrap_or_default();
    let full = confined(models_dir, rel).map_err(|e| format!("local_path {e}"))?;
    if !full.exists() {
        return Err(format!(
            "local_path {rel:?} does not exist in the models directory {}",
            models_dir.display()
        ));
    }
    let path = match spec.engine_type {
        EngineType::Vllm => full,
        EngineType::Llamacpp => {
            // The file chosen inside a folder is held to the same rules (a link in the folder
            // may not lead out).
            let file = gguf(&full)?;
            let rel = file
                .strip_prefix(models_dir)
                .map_err(|_| "local_path leads outside the models directory".to_string())?;
            confined(models_dir, &rel.to_string_lossy()).map_err(|e| format!("local_path {e}"))?
        }
    };
    Ok(path.to_string_lossy().into_owned())
}

/// The GGUF file llama-server loads for `path`: the file itself (the first part of its set
/// when it is a part of a split model), or the one model in a folder.
fn gguf(path: &Path) -> Result<PathBuf, String> {
    if path.is_file() {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !name.ends_with(".gguf") {
            return Err(format!("local_path {name:?} is not a .gguf file"));
        }
        return Ok(match split_part(name) {
            Some((prefix, total)) => path.with_file_name(format!("{prefix}-00001-of-{total}.gguf")),
            None => path.to_path_buf(),
        });
    }
    let mut models: Vec<String> = std::fs::read_dir(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".gguf"))
        .map(|name| match split_part(&name) {
            // A split model counts once, by its first part.
            Some((prefix, total)) => format!("{prefix}-00001-of-{total}.gguf"),
            None => name,
        })
        .collect();
    models.sort();
    models.dedup();
    match models.as_slice() {
        [one] => Ok(path.join(one)),
        [] => Err(format!("no .gguf file in {}", path.display())),
        several => Err(format!(
            "{} GGUF models in {} ({}): name one in local_path",
            several.len(),
            path.display(),
            several.join(", ")
        )),
    }
}

/// `(prefix, total)` of a split file `<prefix>-00002-of-00003.gguf`.
fn split_part(name: &str) -> Option<(&str, &str)> {
    let stem = name.strip_suffix(".gguf")?;
    let (rest, total) = stem.rsplit_once("-of-")?;
    let (prefix, part) = rest.rsplit_once('-')?;
    let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    (digits(part) && digits(total)).then_some((prefix, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(engine: &str, path: &str) -> ModelSpec {
        serde_json::from_value(serde_json::json!({"name":"m","served_model_name":"m",
            "engine_type": engine, "local_path": path}))
        .unwrap()
    }

    #[test]
    fn gguf_models_are_found_and_never_guessed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for f in [
            "one/m-Q4_K_M.gguf",
            "split/m-Q8_0-00001-of-00002.gguf",
            "split/m-Q8_0-00002-of-00002.gguf",
            "two/m-Q4_K_M.gguf",
            "two/m-Q8_0-00001-of-00002.gguf",
            "two/m-Q8_0-00002-of-00002.gguf",
            "two/README.md",
            "hf/config.json",
        ] {
            std::fs::create_dir_all(root.join(f).parent().unwrap()).unwrap();
            std::fs::write(root.join(f), b"x").unwrap();
        }
        std::fs::create_dir_all(root.join("empty")).unwrap();
        let at = |p: &str| root.join(p).to_string_lossy().into_owned();
        let llama = |p: &str| resolve(&spec("llamacpp", p), root);
        assert_eq!(llama("one"), Ok(at("one/m-Q4_K_M.gguf")));
        assert_eq!(llama("split"), Ok(at("split/m-Q8_0-00001-of-00002.gguf")));
        // The named file is the one loaded, never another quantization beside it.
        assert_eq!(llama("two/m-Q4_K_M.gguf"), Ok(at("two/m-Q4_K_M.gguf")));
        assert_eq!(
            llama("two/m-Q8_0-00002-of-00002.gguf"),
            Ok(at("two/m-Q8_0-00001-of-00002.gguf"))
        );
        let err = llama("two").unwrap_err();
        assert!(
            err.contains("2 GGUF models") && err.contains("name one"),
            "{err}"
        );
        assert!(llama("empty").unwrap_err().contains("no .gguf file"));
        assert!(llama("two/README.md")
            .unwrap_err()
            .contains("not a .gguf file"));
        assert!(llama("nope").unwrap_err().contains("does not exist"));
        assert_eq!(resolve(&spec("vllm", "hf"), root), Ok(at("hf")));
    }

    #[test]
    fn every_path_the_engine_gets_is_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("hf/t")).unwrap();
        let mut s = spec("vllm", "hf");
        s.tokenizer = Some("hf/t".into());
        s.hf_config_path = Some("Qwen/Qwen2.5-7B".into());
        s.engine_args = serde_json::from_value(serde_json::json!([
            {"flag": "--chat-template", "type": "string", "value": "hf/chat.jinja"},
            {"flag": "--chat-template", "type": "string", "value": "{{ messages }}"},
            {"flag": "--max-logprobs", "type": "int", "value": 5}]))
        .unwrap();
        let r = resolve_all(&s, root).unwrap();
        let at = |p: &str| root.join(p).to_string_lossy().into_owned();
        assert_eq!(r.spec.tokenizer, Some(at("hf/t")));
        // Not in the models directory: a Hub repository, left as it is.
        assert_eq!(r.spec.hf_config_path.as_deref(), Some("Qwen/Qwen2.5-7B"));
        assert_eq!(r.spec.engine_args[0].value, at("hf/chat.jinja"));
        assert_eq!(r.spec.engine_args[1].value, "{{ messages }}");
        assert_eq!(r.spec.engine_args[2].value, 5);
    }
}
