//! What a model folder holds, read from headers only: safetensors shards (bytes, parameters,
//! dtypes), `config.json`, tokenizer files, and GGUF files grouped by model and quantization
//! (multi-part sets checked complete, the metadata of each group's first part), with an engine
//! recommendation and its reasons. Every unreadable file is a warning naming it; nothing here
//! fails the whole folder. The caller has already confined the path to the models directory.

use super::gguf::{self, GgufInfo};
use super::hfconfig::HfConfig;
use super::safetensors::{self, DtypeTotal};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Entries looked at in one folder (and in each subfolder holding GGUF files).
const MAX_ENTRIES: usize = 10_000;
const TOKENIZER_FILES: [&str; 5] = [
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
];
const CONFIG_FILES: [&str; 4] = [
    "config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
];

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct SafetensorsSummary {
    pub files: Vec<String>,
    pub file_count: usize,
    /// Bytes of the files.
    pub total_bytes: u64,
    pub total_size_gb: f64,
    /// Elements of every tensor (the parameters, for unquantized weights).
    pub parameters: u64,
    /// The dtype holding most bytes.
    pub dtype: Option<String>,
    #[schema(value_type = Object)]
    pub by_dtype: BTreeMap<String, DtypeTotal>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GgufGroup {
    /// `Q4_K_M`, `BF16`, ... from the file's `general.file_type`, else its name.
    pub quant_type: String,
    pub display_name: String,
    /// Relative to the inspected folder, parts in order.
    pub files: Vec<String>,
    pub is_multipart: bool,
    pub expected_parts: Option<u32>,
    pub actual_parts: u32,
    /// Part numbers (1-based) of a multi-part set that are not there.
    pub missing_parts: Vec<u32>,
    pub total_bytes: u64,
    pub total_size_mb: f64,
    /// `ready`, `incomplete` (parts missing) or `invalid` (its header cannot be read).
    pub status: &'static str,
    pub can_use: bool,
    pub warning: Option<String>,
    pub is_recommended: bool,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<GgufInfo>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EngineOption {
    pub engine: &'static str,
    pub format: &'static str,
    /// The `local_path` to give (relative to the models directory).
    pub local_path: String,
    pub is_recommended: bool,
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EngineRecommendation {
    /// `vllm`, `llamacpp` or `none`.
    pub recommended: &'static str,
    pub reasons: Vec<String>,
    pub has_safetensors: bool,
    pub has_gguf: bool,
    pub has_multipart_gguf: bool,
    pub options: Vec<EngineOption>,
}

/// One folder's report.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FolderReport {
    /// The folder, relative to the models directory.
    pub folder: String,
    pub has_safetensors: bool,
    pub safetensor_info: Option<SafetensorsSummary>,
    pub config: Option<HfConfig>,
    /// Parameters in billions, from the safetensors headers (else the GGUF tensors).
    pub params_b: Option<f64>,
    pub tokenizer_files: Vec<String>,
    pub config_files: Vec<String>,
    pub gguf_files: Vec<String>,
    pub gguf_groups: Vec<GgufGroup>,
    pub engine_recommendation: EngineRecommendation,
    /// `file: what is wrong with it`, one per file that could not be read.
    pub warnings: Vec<String>,
}

/// `name-00001-of-00003.gguf` → (`name`, 1, 3).
pub fn split_part(file: &str) -> Option<(&str, u32, u32)> {
    let stem = file
        .strip_suffix(".gguf")
        .or_else(|| file.strip_suffix(".GGUF"))?;
    let (rest, total) = stem.rsplit_once("-of-")?;
    let (base, part) = rest.rsplit_once('-')?;
    let five = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !five(part) || !five(total) || base.is_empty() {
        return None;
    }
    Some((base, part.parse().ok()?, total.parse().ok()?))
}

/// A quantization named in a file name (`model-Q4_K_M.gguf` → `Q4_K_M`): the last part between
/// `-` or `.` that reads as one.
pub fn quant_in_name(file: &str) -> Option<String> {
    let upper = file.rsplit('/').next().unwrap_or(file).to_ascii_uppercase();
    let stem = upper.trim_end_matches(".GGUF");
    stem.split(['-', '.'])
        .rev()
        .find(|p| {
            let digit_after = |prefix: &str| {
                p.strip_prefix(prefix)
                    .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
            };
            digit_after("Q")
                || digit_after("IQ")
                || digit_after("TQ")
                || matches!(*p, "F16" | "F32" | "BF16")
        })
        .map(str::to_string)
}

fn size_of(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn mib(bytes: u64) -> f64 {
    (bytes as f64 / (1u64 << 20) as f64 * 10.0).round() / 10.0
}

/// The files of `dir` (names, sorted), at most [`MAX_ENTRIES`]; and its subfolders.
fn listing(dir: &Path) -> (Vec<String>, Vec<String>) {
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten().take(MAX_ENTRIES) {
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            // Symlinks are followed by metadata(): a link out of the models directory is
            // refused by the caller's confinement of every path it opens (see `inspect`).
            match std::fs::metadata(e.path()) {
                Ok(m) if m.is_dir() => dirs.push(name),
                Ok(m) if m.is_file() => files.push(name),
                _ => {}
            }
        }
    }
    files.sort();
    dirs.sort();
    (files, dirs)
}

/// Inspect `path` (the folder `folder` of the models directory `root`). Files whose resolved
/// path leaves `root` (through a symlink) are skipped with a warning.
pub fn inspect(root: &Path, folder: &str, path: &Path) -> FolderReport {
    let mut warnings = Vec::new();
    let inside = |p: &Path| {
        p.canonicalize()
            .ok()
            .zip(root.canonicalize().ok())
            .is_some_and(|(p, r)| p.starts_with(r))
    };
    let (files, dirs) = listing(path);
    let usable = |name: &str, warnings: &mut Vec<String>| {
        let p = path.join(name);
        if inside(&p) {
            true
        } else {
            warnings.push(format!(
                "{name}: leads outside the models directory (skipped)"
            ));
            false
        }
    };

    // Safetensors shards.
    let mut st = SafetensorsSummary::default();
    for name in files.iter().filter(|f| f.ends_with(".safetensors")) {
        if !usable(name, &mut warnings) {
            continue;
        }
        let p = path.join(name);
        let len = size_of(&p);
        match safetensors::read_file(root, &p) {
            Ok(info) => {
                st.parameters = st.parameters.saturating_add(info.elements);
                for (dtype, t) in info.by_dtype {
                    let total = st.by_dtype.entry(dtype).or_default();
                    total.tensors = total.tensors.saturating_add(t.tensors);
                    total.elements = total.elements.saturating_add(t.elements);
                    total.bytes = total.bytes.saturating_add(t.bytes);
                }
            }
            Err(e) => warnings.push(format!("{name}: {e}")),
        }
        st.files.push(name.clone());
        st.total_bytes = st.total_bytes.saturating_add(len);
    }
    st.file_count = st.files.len();
    st.total_size_gb = super::gib(st.total_bytes as f64);
    st.dtype = st
        .by_dtype
        .iter()
        .max_by_key(|(_, t)| t.bytes)
        .map(|(d, _)| d.clone());
    let has_safetensors = st.file_count > 0;

    let config = if files.iter().any(|f| f == "config.json") && usable("config.json", &mut warnings)
    {
        match HfConfig::read(root, &path.join("config.json")) {
            Ok(c) => Some(c),
            Err(e) => {
                warnings.push(format!("config.json: {e}"));
                None
            }
        }
    } else {
        None
    };
    let tokenizer_files: Vec<String> = files
        .iter()
        .filter(|f| TOKENIZER_FILES.contains(&f.as_str()))
        .cloned()
        .collect();
    let config_files: Vec<String> = files
        .iter()
        .filter(|f| CONFIG_FILES.contains(&f.as_str()))
        .cloned()
        .collect();

    // GGUF files here and one level down (repositories often keep a folder per quantization).
    let mut gguf_files: Vec<String> = files
        .iter()
        .filter(|f| f.to_ascii_lowercase().ends_with(".gguf"))
        .cloned()
        .collect();
    for d in &dirs {
        // A folder that leads out of the models directory is not looked into.
        if !inside(&path.join(d)) {
            warnings.push(format!(
                "{d}/: leads outside the models directory (skipped)"
            ));
            continue;
        }
        let (sub, _) = listing(&path.join(d));
        gguf_files.extend(
            sub.into_iter()
                .filter(|f| f.to_ascii_lowercase().ends_with(".gguf"))
                .map(|f| format!("{d}/{f}")),
        );
    }
    gguf_files.retain(|f| usable(f, &mut warnings));
    let mut gguf_groups = group_gguf(root, path, &gguf_files, &mut warnings);
    // Usable first, then the larger quantization, then the name; the first usable one is
    // recommended.
    gguf_groups.sort_by(|a, b| {
        b.can_use
            .cmp(&a.can_use)
            .then(b.total_bytes.cmp(&a.total_bytes))
            .then(a.display_name.cmp(&b.display_name))
    });
    if let Some(g) = gguf_groups.iter_mut().find(|g| g.can_use) {
        g.is_recommended = true;
    }

    let params = if st.parameters > 0 {
        Some(st.parameters)
    } else {
        gguf_groups
            .iter()
            .find(|g| g.can_use)
            .and_then(|g| g.metadata.as_ref())
            .map(|m| m.tensor_elements)
            .filter(|&e| e > 0)
    };
    let engine_recommendation = recommend(
        folder,
        has_safetensors,
        &config,
        &tokenizer_files,
        &gguf_groups,
    );
    FolderReport {
        folder: folder.to_string(),
        has_safetensors,
        safetensor_info: has_safetensors.then_some(st),
        config,
        params_b: params.map(|p| (p as f64 / 1e7).round() / 100.0),
        tokenizer_files,
        config_files,
        gguf_files,
        gguf_groups,
        engine_recommendation,
        warnings,
    }
}

/// Group GGUF files: a multi-part set by its base name, every other file on its own.
fn group_gguf(
    root: &Path,
    dir: &Path,
    files: &[String],
    warnings: &mut Vec<String>,
) -> Vec<GgufGroup> {
    let mut sets: BTreeMap<String, Vec<(u32, u32, String)>> = BTreeMap::new();
    let mut groups = Vec::new();
    for f in files {
        match split_part(f) {
            Some((base, part, total)) => {
                sets.entry(base.to_string())
                    .or_default()
                    .push((part, total, f.clone()))
            }
            None => groups.push(group(root, dir, vec![f.clone()], None, warnings)),
        }
    }
    for (_, mut parts) in sets {
        parts.sort();
        let expected = parts.iter().map(|p| p.1).max().unwrap_or(0);
        let missing: Vec<u32> = (1..=expected)
            .filter(|n| !parts.iter().any(|p| p.0 == *n))
            .collect();
        // Parts that disagree on their count are not one set: none of it is usable.
        let agree = parts.iter().all(|p| p.1 == expected);
        let files = parts.into_iter().map(|p| p.2).collect();
        let mut g = group(root, dir, files, Some((expected, missing)), warnings);
        if !agree {
            g.status = "invalid";
            g.can_use = false;
            g.warning = Some("its parts disagree on how many parts there are".into());
        }
        groups.push(g);
    }
    groups
}

fn group(
    root: &Path,
    dir: &Path,
    files: Vec<String>,
    split: Option<(u32, Vec<u32>)>,
    warnings: &mut Vec<String>,
) -> GgufGroup {
    let total_bytes: u64 = files.iter().map(|f| size_of(&dir.join(f))).sum();
    // The first part's header (the metadata is there); the other parts count by their size.
    let first = &files[0];
    let metadata = match gguf::read_file(root, &dir.join(first)) {
        Ok(m) => Some(m),
        Err(e) => {
            warnings.push(format!("{first}: {e}"));
            None
        }
    };
    let quant = metadata
        .as_ref()
        .and_then(|m| m.file_type_name.map(str::to_string))
        .or_else(|| quant_in_name(first))
        .unwrap_or_else(|| "unknown".into());
    let (is_multipart, expected, missing) = match split {
        Some((e, m)) => (true, Some(e), m),
        None => (false, None, Vec::new()),
    };
    let (status, warning) = if metadata.is_none() {
        (
            "invalid",
            Some(format!("{first} cannot be read (see warnings)")),
        )
    } else if !missing.is_empty() {
        (
            "incomplete",
            Some(format!(
                "parts {} of {} are missing",
                missing
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                expected.unwrap_or(0)
            )),
        )
    } else {
        ("ready", None)
    };
    let base = split_part(first).map_or_else(
        || first.trim_end_matches(".gguf").to_string(),
        |(b, _, _)| b.to_string(),
    );
    GgufGroup {
        display_name: format!("{} ({quant})", base.rsplit('/').next().unwrap_or(&base)),
        quant_type: quant,
        actual_parts: files.len() as u32,
        files,
        is_multipart,
        expected_parts: expected,
        missing_parts: missing,
        total_bytes,
        total_size_mb: mib(total_bytes),
        can_use: status == "ready",
        status,
        warning,
        is_recommended: false,
        metadata,
    }
}

fn recommend(
    folder: &str,
    has_safetensors: bool,
    config: &Option<HfConfig>,
    tokenizer_files: &[String],
    groups: &[GgufGroup],
) -> EngineRecommendation {
    let usable: Vec<&GgufGroup> = groups.iter().filter(|g| g.can_use).collect();
    let has_gguf = !groups.is_empty();
    let has_multipart_gguf = groups.iter().any(|g| g.is_multipart);
    let mut reasons = Vec::new();
    let mut options = Vec::new();
    let vllm_ready = has_safetensors && config.is_some();
    if vllm_ready {
        reasons.push("safetensors weights with config.json: vLLM serves them as they are".into());
        options.push(EngineOption {
            engine: "vllm",
            format: "safetensors",
            local_path: folder.to_string(),
            is_recommended: true,
            note: None,
        });
    } else if has_safetensors {
        reasons.push("safetensors weights without config.json: vLLM cannot load them".into());
    }
    for g in &usable {
        let file = format!("{folder}/{}", g.files[0]);
        options.push(EngineOption {
            engine: "llamacpp",
            format: "gguf",
            local_path: file.clone(),
            is_recommended: !vllm_ready && g.is_recommended,
            note: g
                .is_multipart
                .then(|| "llama.cpp loads the parts from the first".into()),
        });
        if !g.is_multipart {
            options.push(EngineOption {
                engine: "vllm",
                format: "gguf",
                local_path: file,
                is_recommended: false,
                note: Some(if tokenizer_files.is_empty() {
                    "vLLM's GGUF support is experimental, and it needs a tokenizer: give the base model's in `tokenizer`".into()
                } else {
                    "vLLM's GGUF support is experimental".into()
                }),
            });
        }
    }
    let recommended = if vllm_ready {
        "vllm"
    } else if !usable.is_empty() {
        reasons.push(format!(
            "GGUF weights ({}): llama.cpp serves them natively",
            usable
                .iter()
                .map(|g| g.quant_type.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        if has_multipart_gguf {
            reasons.push("vLLM cannot load a multi-part GGUF model".into());
        }
        "llamacpp"
    } else {
        if has_gguf {
            reasons.push("no GGUF model here is complete and readable".into());
        }
        if !has_safetensors && !has_gguf {
            reasons.push("no safetensors or GGUF weights here".into());
        }
        "none"
    };
    EngineRecommendation {
        recommended,
        reasons,
        has_safetensors,
        has_gguf,
        has_multipart_gguf,
        options,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modelfiles::gguf::Meta;

    #[test]
    fn split_names_and_quantizations_are_recognised() {
        assert_eq!(
            split_part("Qwen-Q8_0-00002-of-00003.gguf"),
            Some(("Qwen-Q8_0", 2, 3))
        );
        assert_eq!(split_part("m-1-of-3.gguf"), None);
        assert_eq!(split_part("m.gguf"), None);
        assert_eq!(
            quant_in_name("llama-3.1-8b-Q4_K_M.gguf").as_deref(),
            Some("Q4_K_M")
        );
        assert_eq!(quant_in_name("model-bf16.gguf").as_deref(), Some("BF16"));
    }

    #[test]
    fn a_folder_is_described_from_its_headers_and_damage_is_a_warning() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("m");
        std::fs::create_dir_all(dir.join("Q8_0")).unwrap();
        safetensors::write_sparse(
            &dir.join("model-00001-of-00002.safetensors"),
            &[("a", "BF16", &[1000, 1000])],
        )
        .unwrap();
        safetensors::write_sparse(
            &dir.join("model-00002-of-00002.safetensors"),
            &[("b", "BF16", &[500, 1000])],
        )
        .unwrap();
        std::fs::write(
            dir.join("broken.safetensors"),
            b"\xff\xff\xff\xff\xff\xff\xff\x7f",
        )
        .unwrap();
        std::fs::write(
            dir.join("config.json"),
            r#"{"architectures":["LlamaForCausalLM"],"num_hidden_layers":2,"hidden_size":64,"num_attention_heads":4}"#,
        )
        .unwrap();
        std::fs::write(dir.join("tokenizer.json"), b"{}").unwrap();
        let meta = |ft: u32| {
            vec![
                ("general.architecture", Meta::Str("llama".into())),
                ("general.file_type", Meta::U32(ft)),
            ]
        };
        gguf::write_sparse(
            &dir.join("m-Q4_K_M.gguf"),
            &meta(15),
            &[("blk.0.w", 12, &[256, 4])],
        )
        .unwrap();
        // A split set with its second part missing, one level down.
        gguf::write_sparse(
            &dir.join("Q8_0/m-Q8_0-00001-of-00003.gguf"),
            &meta(7),
            &[("blk.0.w", 8, &[32, 4])],
        )
        .unwrap();
        gguf::write_sparse(&dir.join("Q8_0/m-Q8_0-00003-of-00003.gguf"), &meta(7), &[]).unwrap();
        // Two parts that disagree on how many there are.
        gguf::write_sparse(&dir.join("x-Q5_K_M-00001-of-00002.gguf"), &meta(17), &[]).unwrap();
        gguf::write_sparse(&dir.join("x-Q5_K_M-00002-of-00003.gguf"), &meta(17), &[]).unwrap();
        std::fs::write(
            dir.join("lying.gguf"),
            b"GGUF\x03\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff",
        )
        .unwrap();

        let r = inspect(root.path(), "m", &dir);
        let st = r.safetensor_info.as_ref().unwrap();
        assert_eq!(st.file_count, 3);
        assert_eq!(st.parameters, 1_500_000);
        assert_eq!(st.dtype.as_deref(), Some("BF16"));
        assert_eq!(r.params_b, Some(0.0));
        assert_eq!(r.config.as_ref().unwrap().num_key_value_heads, Some(4));
        assert_eq!(r.tokenizer_files, ["tokenizer.json"]);
        assert!(
            r.warnings
                .iter()
                .any(|w| w.starts_with("broken.safetensors: header of")),
            "{:?}",
            r.warnings
        );
        assert!(
            r.warnings.iter().any(|w| w.starts_with("lying.gguf:")),
            "{:?}",
            r.warnings
        );
        let by_quant = |q: &str| r.gguf_groups.iter().find(|g| g.quant_type == q).unwrap();
        let q4 = by_quant("Q4_K_M");
        assert!(q4.can_use && q4.is_recommended && !q4.is_multipart);
        let q8 = by_quant("Q8_0");
        assert_eq!(
            (q8.status, q8.expected_parts, q8.missing_parts.clone()),
            ("incomplete", Some(3), vec![2])
        );
        assert!(q8.files[0].starts_with("Q8_0/"));
        let q5 = by_quant("Q5_K_M");
        assert_eq!((q5.status, q5.can_use), ("invalid", false));
        assert_eq!(r.engine_recommendation.recommended, "vllm");
        assert!(r.engine_recommendation.has_multipart_gguf);
    }
}
