//! The header of a GGUF file (llama.cpp's format): its metadata and its tensor infos, never the
//! tensor data. Reading is bounded (counts, lengths and the bytes read), so a truncated or
//! lying file is an error for that file, never a hang, a panic or a huge allocation. Types and
//! sizes follow ggml (`ggml.h`, `gguf-py/gguf/constants.py`); file types follow `llama.h`.

use super::safetensors::DtypeTotal;
use std::collections::BTreeMap;
use std::io::Read;

/// Most header bytes read from one file (metadata and tensor infos; a 150k-token vocabulary
/// takes a few MiB).
pub const MAX_HEADER: u64 = 256 << 20;
const MAX_COUNT: u64 = 1_000_000;
const MAX_KEY: u64 = 64 << 10;
/// Longest string value kept (longer ones are skipped).
const MAX_KEPT_STRING: u64 = 64 << 10;
const MAX_DIMS: u32 = 8;
/// Layers counted separately (`blk.<n>.`), for llama.cpp's offload by layer.
const MAX_LAYERS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read the file: {0}")]
    Io(String),
    #[error("not a GGUF file")]
    NotGguf,
    #[error("a legacy GGML file ({0}): convert it to GGUF")]
    Legacy(String),
    #[error("GGUF version {0}: llama.cpp reads versions 2 and 3")]
    Version(u32),
    #[error("{what}: {n} is more than {max}")]
    TooMany {
        what: &'static str,
        n: u64,
        max: u64,
    },
    #[error("malformed at byte {at}: {why}")]
    Malformed { at: u64, why: String },
    #[error("truncated: the header ends before byte {0}")]
    Truncated(u64),
}

/// What a GGUF header says.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct GgufInfo {
    pub version: u32,
    pub tensor_count: u64,
    pub kv_count: u64,
    pub architecture: Option<String>,
    pub name: Option<String>,
    /// `general.file_type` and its name in llama.cpp's enum (`Q4_K_M`, `BF16`, ...).
    pub file_type: Option<u32>,
    pub file_type_name: Option<&'static str>,
    pub quantization_version: Option<u64>,
    pub context_length: Option<u64>,
    pub embedding_length: Option<u64>,
    pub block_count: Option<u64>,
    pub head_count: Option<u64>,
    /// The largest over layers, when it is given per layer.
    pub head_count_kv: Option<u64>,
    pub key_length: Option<u64>,
    pub value_length: Option<u64>,
    /// MLA models (DeepSeek): the compressed KV width.
    pub kv_lora_rank: Option<u64>,
    pub rope_dimension_count: Option<u64>,
    pub expert_count: Option<u64>,
    pub vocab_size: Option<u64>,
    /// `split.no` (0-based) and `split.count` of a multi-part model.
    pub split: Option<(u64, u64)>,
    /// Bytes and elements of the tensors in this file.
    pub tensor_bytes: u64,
    pub tensor_elements: u64,
    pub by_type: BTreeMap<String, DtypeTotal>,
    /// Bytes of each layer's tensors (`blk.<n>.`), and of the rest (embeddings, output).
    #[serde(skip)]
    pub layer_bytes: Vec<u64>,
    #[serde(skip)]
    pub other_bytes: u64,
    /// Of those, the output layer's (`output.*`, `output_norm.*`, or the embedding matrix when
    /// the model ties them): the first thing llama.cpp offloads.
    #[serde(skip)]
    pub output_bytes: u64,
}

/// A ggml tensor type: its name, elements per block and bytes per block.
pub fn ggml_type(t: u32) -> Option<(&'static str, u64, u64)> {
    const K: u64 = 256;
    Some(match t {
        0 => ("F32", 1, 4),
        1 => ("F16", 1, 2),
        2 => ("Q4_0", 32, 18),
        3 => ("Q4_1", 32, 20),
        6 => ("Q5_0", 32, 22),
        7 => ("Q5_1", 32, 24),
        8 => ("Q8_0", 32, 34),
        // ggml-common.h: two halves and 32 quants (gguf-py's table still says 40).
        9 => ("Q8_1", 32, 36),
        10 => ("Q2_K", K, 2 + 2 + K / 16 + K / 4),
        11 => ("Q3_K", K, 2 + K / 4 + K / 8 + 12),
        12 => ("Q4_K", K, 2 + 2 + K / 2 + 12),
        13 => ("Q5_K", K, 2 + 2 + K / 2 + K / 8 + 12),
        14 => ("Q6_K", K, 2 + K / 2 + K / 4 + K / 16),
        15 => ("Q8_K", K, 4 + K + K / 8),
        16 => ("IQ2_XXS", K, 2 + K / 4),
        17 => ("IQ2_XS", K, 2 + K / 4 + K / 32),
        18 => ("IQ3_XXS", K, 2 + K / 4 + K / 8),
        19 => ("IQ1_S", K, 2 + K / 8 + K / 16),
        20 => ("IQ4_NL", 32, 18),
        21 => ("IQ3_S", K, 2 + K / 4 + K / 8 + K / 32 + 4),
        22 => ("IQ2_S", K, 2 + K / 4 + K / 16),
        23 => ("IQ4_XS", K, 2 + 2 + K / 2 + K / 64),
        24 => ("I8", 1, 1),
        25 => ("I16", 1, 2),
        26 => ("I32", 1, 4),
        27 => ("I64", 1, 8),
        28 => ("F64", 1, 8),
        29 => ("IQ1_M", K, K / 8 + K / 16 + K / 32),
        30 => ("BF16", 1, 2),
        34 => ("TQ1_0", K, 2 + 4 * 13),
        35 => ("TQ2_0", K, 2 + 64),
        39 => ("MXFP4", 32, 17),
        _ => return None,
    })
}

/// `general.file_type` as llama.cpp names it (`llama_ftype`; 4–6 and 33–35 are retired).
pub fn file_type_name(t: u32) -> Option<&'static str> {
    Some(match t {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        _ => return None,
    })
}

/// A reader that counts what it reads and stops at a budget.
struct Bounded<R> {
    r: R,
    at: u64,
    budget: u64,
}

impl<R: Read> Bounded<R> {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), GgufError> {
        let end = self.at + buf.len() as u64;
        if end > self.budget {
            return Err(GgufError::Truncated(end));
        }
        self.r.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => GgufError::Truncated(end),
            _ => GgufError::Io(e.to_string()),
        })?;
        self.at = end;
        Ok(())
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        let mut b = [0u8; 4];
        self.fill(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        let mut b = [0u8; 8];
        self.fill(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn skip(&mut self, n: u64) -> Result<(), GgufError> {
        let end = self.at.saturating_add(n);
        if end > self.budget {
            return Err(GgufError::Truncated(end));
        }
        let copied = std::io::copy(&mut (&mut self.r).take(n), &mut std::io::sink())
            .map_err(|e| GgufError::Io(e.to_string()))?;
        if copied < n {
            return Err(GgufError::Truncated(end));
        }
        self.at = end;
        Ok(())
    }

    fn malformed(&self, why: impl Into<String>) -> GgufError {
        GgufError::Malformed {
            at: self.at,
            why: why.into(),
        }
    }

    /// A string of at most `max` bytes kept; a longer one is skipped (`None`).
    fn string(&mut self, max: u64) -> Result<Option<String>, GgufError> {
        let len = self.u64()?;
        if len > max {
            self.skip(len)?;
            return Ok(None);
        }
        let mut b = vec![0u8; len as usize];
        self.fill(&mut b)?;
        String::from_utf8(b)
            .map(Some)
            .map_err(|_| self.malformed("a string is not UTF-8"))
    }

    fn count(&mut self, what: &'static str, max: u64) -> Result<u64, GgufError> {
        let n = self.u64()?;
        if n > max {
            return Err(GgufError::TooMany { what, n, max });
        }
        Ok(n)
    }
}

/// A metadata value as far as it is kept: numbers, short strings, the length of arrays (and
/// the largest of a short array of numbers).
#[derive(Debug, Clone, PartialEq)]
enum Kept {
    Int(u64),
    Float,
    Text(Option<String>),
    Array { len: u64, max: Option<u64> },
}

fn scalar_size(t: u32) -> Option<u64> {
    Some(match t {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        _ => return None,
    })
}

fn int_of(r: &mut Bounded<impl Read>, t: u32) -> Result<Option<u64>, GgufError> {
    let size = scalar_size(t).ok_or_else(|| r.malformed(format!("value type {t}")))?;
    let mut b = [0u8; 8];
    r.fill(&mut b[..size as usize])?;
    let v = u64::from_le_bytes(b);
    Ok(match t {
        // Signed: a negative count is no count.
        1 => (b[0] as i8 >= 0).then_some(v),
        3 => (i16::from_le_bytes([b[0], b[1]]) >= 0).then_some(v),
        5 => (i32::from_le_bytes([b[0], b[1], b[2], b[3]]) >= 0).then_some(v),
        11 => (v as i64 >= 0).then_some(v),
        6 | 12 => None,
        _ => Some(v),
    })
}

fn value(r: &mut Bounded<impl Read>, t: u32) -> Result<Kept, GgufError> {
    match t {
        6 | 12 => {
            r.skip(scalar_size(t).unwrap_or(8))?;
            Ok(Kept::Float)
        }
        8 => Ok(Kept::Text(r.string(MAX_KEPT_STRING)?)),
        9 => {
            let elem = r.u32()?;
            let len = r.u64()?;
            match elem {
                8 => {
                    for _ in 0..len {
                        let n = r.u64()?;
                        r.skip(n)?;
                    }
                    Ok(Kept::Array { len, max: None })
                }
                9 => Err(r.malformed("an array of arrays")),
                _ => {
                    let size = scalar_size(elem)
                        .ok_or_else(|| r.malformed(format!("array of value type {elem}")))?;
                    if len <= 4096 && elem != 6 && elem != 12 {
                        let mut max = None;
                        for _ in 0..len {
                            if let Some(v) = int_of(r, elem)? {
                                max = Some(max.map_or(v, |m: u64| m.max(v)));
                            }
                        }
                        Ok(Kept::Array { len, max })
                    } else {
                        r.skip(
                            len.checked_mul(size)
                                .ok_or(GgufError::Truncated(u64::MAX))?,
                        )?;
                        Ok(Kept::Array { len, max: None })
                    }
                }
            }
        }
        _ => int_of(r, t).map(|v| v.map_or(Kept::Float, Kept::Int)),
    }
}

/// Read the header of a GGUF file of `file_len` bytes from `r` (positioned at its start).
pub fn read(r: impl Read, file_len: u64) -> Result<GgufInfo, GgufError> {
    let mut r = Bounded {
        // Buffered: a header of many short strings is not one system call each.
        r: std::io::BufReader::with_capacity(64 << 10, r),
        at: 0,
        budget: file_len.min(MAX_HEADER),
    };
    let mut magic = [0u8; 4];
    r.fill(&mut magic).map_err(|_| GgufError::NotGguf)?;
    match &magic {
        b"GGUF" => {}
        b"lmgg" | b"ggml" | b"fmgg" | b"tjgg" | b"algg" => {
            return Err(GgufError::Legacy(String::from_utf8_lossy(&magic).into()))
        }
        _ => return Err(GgufError::NotGguf),
    }
    let mut info = GgufInfo {
        version: r.u32()?,
        ..Default::default()
    };
    if !(2..=3).contains(&info.version) {
        return Err(GgufError::Version(info.version));
    }
    info.tensor_count = r.count("tensors", MAX_COUNT)?;
    info.kv_count = r.count("metadata entries", MAX_COUNT)?;
    let mut kept: BTreeMap<String, Kept> = BTreeMap::new();
    let mut alignment = 32u64;
    for _ in 0..info.kv_count {
        let key = r
            .string(MAX_KEY)?
            .ok_or_else(|| r.malformed("a key longer than 64 KiB"))?;
        let t = r.u32()?;
        let v = value(&mut r, t)?;
        match (key.as_str(), &v) {
            ("general.alignment", Kept::Int(a)) if a.is_power_of_two() => alignment = *a,
            _ => {}
        }
        if key.starts_with("general.")
            || key.starts_with("split.")
            || key == "tokenizer.ggml.tokens"
            || KEPT_SUFFIXES.iter().any(|s| key.ends_with(s))
        {
            kept.insert(key, v);
        }
    }
    let text = |k: &str| match kept.get(k) {
        Some(Kept::Text(t)) => t.clone(),
        _ => None,
    };
    let int = |k: &str| match kept.get(k) {
        Some(Kept::Int(v)) => Some(*v),
        Some(Kept::Array { max, .. }) => *max,
        _ => None,
    };
    info.architecture = text("general.architecture");
    info.name = text("general.name");
    info.file_type = int("general.file_type").and_then(|v| u32::try_from(v).ok());
    info.file_type_name = info.file_type.and_then(file_type_name);
    info.quantization_version = int("general.quantization_version");
    if let (Some(no), Some(count)) = (int("split.no"), int("split.count")) {
        info.split = Some((no, count));
    }
    if let Some(arch) = info.architecture.clone() {
        let of = |suffix: &str| int(&format!("{arch}{suffix}"));
        info.context_length = of(".context_length");
        info.embedding_length = of(".embedding_length");
        info.block_count = of(".block_count");
        info.head_count = of(".attention.head_count");
        info.head_count_kv = of(".attention.head_count_kv");
        info.key_length = of(".attention.key_length");
        info.value_length = of(".attention.value_length");
        info.kv_lora_rank = of(".attention.kv_lora_rank");
        info.rope_dimension_count = of(".rope.dimension_count");
        info.expert_count = of(".expert_count");
        info.vocab_size = of(".vocab_size");
    }
    if info.vocab_size.is_none() {
        if let Some(Kept::Array { len, .. }) = kept.get("tokenizer.ggml.tokens") {
            info.vocab_size = Some(*len);
        }
    }
    tensors(&mut r, &mut info, alignment, file_len)?;
    Ok(info)
}

/// Read the header of the file at `path`, which must lie inside `root`; why not, as text.
pub fn read_file(root: &std::path::Path, path: &std::path::Path) -> Result<GgufInfo, String> {
    let f = super::open_inside(root, path)?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    read(f, len).map_err(|e| e.to_string())
}

/// The metadata keys read after `<architecture>`.
const KEPT_SUFFIXES: [&str; 11] = [
    ".context_length",
    ".embedding_length",
    ".block_count",
    ".attention.head_count",
    ".attention.head_count_kv",
    ".attention.key_length",
    ".attention.value_length",
    ".attention.kv_lora_rank",
    ".rope.dimension_count",
    ".expert_count",
    ".vocab_size",
];

fn tensors(
    r: &mut Bounded<impl Read>,
    info: &mut GgufInfo,
    alignment: u64,
    file_len: u64,
) -> Result<(), GgufError> {
    let mut extents = Vec::new();
    let (mut has_output, mut token_embd) = (false, 0u64);
    for _ in 0..info.tensor_count {
        let name = r
            .string(MAX_KEY)?
            .ok_or_else(|| r.malformed("a tensor name longer than 64 KiB"))?;
        let dims = r.u32()?;
        if dims > MAX_DIMS {
            return Err(r.malformed(format!("tensor {name:?} has {dims} dimensions")));
        }
        let mut elements = 1u64;
        for _ in 0..dims {
            let d = r.u64()?;
            elements = elements
                .checked_mul(d)
                .ok_or_else(|| r.malformed(format!("the size of tensor {name:?} overflows")))?;
        }
        let t = r.u32()?;
        let offset = r.u64()?;
        let (type_name, block, size) =
            ggml_type(t).ok_or_else(|| r.malformed(format!("tensor {name:?} has type {t}")))?;
        if !elements.is_multiple_of(block) {
            return Err(r.malformed(format!(
                "tensor {name:?}: {elements} elements are not whole blocks of {block} ({type_name})"
            )));
        }
        let bytes = (elements / block)
            .checked_mul(size)
            .ok_or_else(|| r.malformed(format!("the size of tensor {name:?} overflows")))?;
        extents.push((offset, bytes));
        info.tensor_bytes = info.tensor_bytes.saturating_add(bytes);
        info.tensor_elements = info.tensor_elements.saturating_add(elements);
        let total = info.by_type.entry(type_name.to_string()).or_default();
        total.tensors += 1;
        total.elements = total.elements.saturating_add(elements);
        total.bytes = total.bytes.saturating_add(bytes);
        let layer = name
            .strip_prefix("blk.")
            .and_then(|rest| rest.split('.').next())
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n < MAX_LAYERS);
        match layer {
            Some(n) => {
                if info.layer_bytes.len() <= n {
                    info.layer_bytes.resize(n + 1, 0);
                }
                info.layer_bytes[n] = info.layer_bytes[n].saturating_add(bytes);
            }
            None => {
                info.other_bytes = info.other_bytes.saturating_add(bytes);
                if name.starts_with("output") {
                    info.output_bytes = info.output_bytes.saturating_add(bytes);
                    has_output |= name == "output.weight";
                } else if name == "token_embd.weight" {
                    token_embd = bytes;
                }
            }
        }
    }
    // Tied embeddings: the output layer is the embedding matrix, and llama.cpp puts a copy of
    // it on the GPU.
    if !has_output {
        info.output_bytes = info.output_bytes.saturating_add(token_embd);
    }
    // The data starts at the next multiple of the alignment; every tensor must lie in the file.
    let data = r.at.div_ceil(alignment).saturating_mul(alignment);
    let room = file_len.saturating_sub(data);
    if info.tensor_bytes > room {
        return Err(GgufError::Malformed {
            at: r.at,
            why: format!(
                "its tensors claim {} bytes, the file holds {room} after its header",
                info.tensor_bytes
            ),
        });
    }
    for (offset, bytes) in extents {
        if offset.saturating_add(bytes) > room {
            return Err(GgufError::Truncated(
                data.saturating_add(offset).saturating_add(bytes),
            ));
        }
    }
    Ok(())
}

/// A metadata value to write (tests, benchmarks).
#[derive(Debug, Clone)]
pub enum Meta {
    U32(u32),
    U64(u64),
    F32(f32),
    Str(String),
    /// An array of `n` short strings (a vocabulary).
    Strings(u64),
    U32s(Vec<u32>),
}

/// A GGUF file with this metadata and these tensors (name, ggml type, dims), its data not
/// written (the file's length is set, so it is sparse). Returns its length.
pub fn write_sparse(
    path: &std::path::Path,
    meta: &[(&str, Meta)],
    tensors: &[(&str, u32, &[u64])],
) -> std::io::Result<u64> {
    use std::io::Write;
    let mut h: Vec<u8> = b"GGUF".to_vec();
    let s = |h: &mut Vec<u8>, t: &str| {
        h.extend_from_slice(&(t.len() as u64).to_le_bytes());
        h.extend_from_slice(t.as_bytes());
    };
    h.extend_from_slice(&3u32.to_le_bytes());
    h.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    h.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        s(&mut h, k);
        match v {
            Meta::U32(x) => {
                h.extend_from_slice(&4u32.to_le_bytes());
                h.extend_from_slice(&x.to_le_bytes());
            }
            Meta::U64(x) => {
                h.extend_from_slice(&10u32.to_le_bytes());
                h.extend_from_slice(&x.to_le_bytes());
            }
            Meta::F32(x) => {
                h.extend_from_slice(&6u32.to_le_bytes());
                h.extend_from_slice(&x.to_le_bytes());
            }
            Meta::Str(x) => {
                h.extend_from_slice(&8u32.to_le_bytes());
                s(&mut h, x);
            }
            Meta::Strings(n) => {
                h.extend_from_slice(&9u32.to_le_bytes());
                h.extend_from_slice(&8u32.to_le_bytes());
                h.extend_from_slice(&n.to_le_bytes());
                for i in 0..*n {
                    s(&mut h, &format!("t{i}"));
                }
            }
            Meta::U32s(xs) => {
                h.extend_from_slice(&9u32.to_le_bytes());
                h.extend_from_slice(&4u32.to_le_bytes());
                h.extend_from_slice(&(xs.len() as u64).to_le_bytes());
                for x in xs {
                    h.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
    }
    let mut offset = 0u64;
    for (name, t, dims) in tensors {
        s(&mut h, name);
        h.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in *dims {
            h.extend_from_slice(&d.to_le_bytes());
        }
        h.extend_from_slice(&t.to_le_bytes());
        h.extend_from_slice(&offset.to_le_bytes());
        let (_, block, size) = ggml_type(*t).unwrap_or(("?", 1, 1));
        let bytes = dims.iter().product::<u64>() / block * size;
        offset += bytes.div_ceil(32) * 32;
    }
    let data = (h.len() as u64).div_ceil(32) * 32;
    let mut f = std::fs::File::create(path)?;
    f.write_all(&h)?;
    f.set_len(data + offset)?;
    Ok(data + offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn llama_meta() -> Vec<(&'static str, Meta)> {
        vec![
            ("general.architecture", Meta::Str("llama".into())),
            ("general.name", Meta::Str("Llama 3.1 8B".into())),
            ("general.file_type", Meta::U32(15)),
            ("general.quantization_version", Meta::U32(2)),
            ("llama.context_length", Meta::U32(131_072)),
            ("llama.embedding_length", Meta::U32(4096)),
            ("llama.block_count", Meta::U32(32)),
            ("llama.attention.head_count", Meta::U32(32)),
            ("llama.attention.head_count_kv", Meta::U32(8)),
            ("llama.rope.freq_base", Meta::F32(500_000.0)),
            ("tokenizer.ggml.tokens", Meta::Strings(1000)),
        ]
    }

    #[test]
    fn metadata_and_tensor_sizes_are_read_from_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m-Q4_K_M.gguf");
        let len = write_sparse(
            &path,
            &llama_meta(),
            &[
                ("token_embd.weight", 12, &[4096, 128_256]),
                ("blk.0.attn_q.weight", 12, &[4096, 4096]),
                ("blk.0.ffn_down.weight", 14, &[14_336, 4096]),
                ("blk.1.attn_norm.weight", 0, &[4096]),
            ],
        )
        .unwrap();
        let info = read(std::fs::File::open(&path).unwrap(), len).unwrap();
        assert_eq!(info.architecture.as_deref(), Some("llama"));
        assert_eq!(info.file_type_name, Some("Q4_K_M"));
        assert_eq!(
            (info.context_length, info.block_count, info.head_count_kv),
            (Some(131_072), Some(32), Some(8))
        );
        assert_eq!(info.vocab_size, Some(1000), "from the token list");
        // Q4_K: 144 bytes per 256 values; Q6_K: 210; F32: 4 per value.
        let q4k = 4096 * 128_256 / 256 * 144;
        assert_eq!(info.other_bytes, q4k);
        assert_eq!(
            info.layer_bytes,
            vec![
                4096 * 4096 / 256 * 144 + 14_336 * 4096 / 256 * 210,
                4096 * 4
            ]
        );
        assert_eq!(
            info.tensor_bytes,
            info.other_bytes + info.layer_bytes.iter().sum::<u64>()
        );
        assert_eq!(info.by_type["Q4_K"].tensors, 2);
    }

    #[test]
    fn llama_cpp_names_its_file_types() {
        // The codes Cortex got wrong (notes §7.2).
        for (code, name) in [
            (7, "Q8_0"),
            (8, "Q5_0"),
            (9, "Q5_1"),
            (21, "Q2_K_S"),
            (22, "IQ3_XS"),
            (23, "IQ3_XXS"),
            (24, "IQ1_S"),
            (25, "IQ4_NL"),
            (26, "IQ3_S"),
            (30, "IQ4_XS"),
            (32, "BF16"),
        ] {
            assert_eq!(file_type_name(code), Some(name), "{code}");
        }
        assert_eq!(file_type_name(5), None, "retired");
    }

    #[test]
    fn damaged_and_hostile_files_are_refused_with_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        let len = write_sparse(&path, &llama_meta(), &[("blk.0.w", 8, &[4096, 4096])]).unwrap();
        let whole = std::fs::read(&path).unwrap();
        // The header cut short, the data missing, a legacy magic, a future version.
        let cut = &whole[..200];
        assert!(matches!(read(cut, 200), Err(GgufError::Truncated(_))));
        assert!(matches!(
            read(&whole[..], len - 4096),
            Err(GgufError::Truncated(_) | GgufError::Malformed { .. })
        ));
        assert!(read(&whole[..], len).is_ok());
        assert_eq!(read(&b"ggjt...."[..], 8).unwrap_err(), GgufError::NotGguf);
        assert!(matches!(
            read(&b"lmgg...."[..], 8),
            Err(GgufError::Legacy(_))
        ));
        let mut v4 = whole.clone();
        v4[4] = 4;
        assert_eq!(read(&v4[..], len), Err(GgufError::Version(4)));
        // A count that would allocate without bound.
        let mut many = whole.clone();
        many[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            read(&many[..], len),
            Err(GgufError::TooMany { .. })
        ));
        // A string that claims to be longer than the file.
        let mut long = b"GGUF".to_vec();
        long.extend_from_slice(&3u32.to_le_bytes());
        long.extend_from_slice(&0u64.to_le_bytes());
        long.extend_from_slice(&1u64.to_le_bytes());
        long.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
        assert!(read(&long[..], 1 << 40).is_err());
    }

    proptest! {
        #[test]
        fn any_bytes_are_read_or_refused_without_a_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..1024),
            extra in 0u64..1 << 40,
        ) {
            let mut file = b"GGUF\x03\x00\x00\x00".to_vec();
            file.extend_from_slice(&bytes);
            let _ = read(&file[..], file.len() as u64 + extra);
            let _ = read(&bytes[..], bytes.len() as u64);
        }

        #[test]
        fn written_headers_read_back(
            dims in proptest::collection::vec((1u64..8, 1u64..8), 1..6),
            ctx in 1u32..1_000_000,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("p.gguf");
            let names: Vec<String> = (0..dims.len()).map(|i| format!("blk.{i}.w")).collect();
            let shapes: Vec<[u64; 2]> = dims.iter().map(|(a, b)| [a * 32, *b]).collect();
            let tensors: Vec<(&str, u32, &[u64])> = names
                .iter()
                .zip(&shapes)
                .map(|(n, s)| (n.as_str(), 8, s.as_slice()))
                .collect();
            let meta = [
                ("general.architecture", Meta::Str("qwen2".into())),
                ("qwen2.context_length", Meta::U32(ctx)),
                ("qwen2.attention.head_count_kv", Meta::U32s(vec![2, 4, 8])),
            ];
            let len = write_sparse(&path, &meta, &tensors).unwrap();
            let info = read(std::fs::File::open(&path).unwrap(), len).unwrap();
            let elements: u64 = shapes.iter().map(|s| s[0] * s[1]).sum();
            prop_assert_eq!(info.context_length, Some(u64::from(ctx)));
            prop_assert_eq!(info.head_count_kv, Some(8));
            prop_assert_eq!(info.tensor_elements, elements);
            prop_assert_eq!(info.tensor_bytes, elements / 32 * 34);
            prop_assert_eq!(info.layer_bytes.len(), dims.len());
        }
    }
}
