//! The header of a `.safetensors` file, and only the header: an 8-byte little-endian length,
//! then that many bytes of JSON naming every tensor (`dtype`, `shape`, `data_offsets`). The
//! tensor data is never read. A header that is too large, not JSON, or lies about its tensors
//! is an error for that file (with why), never a panic or a huge allocation.

use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;

/// Longest header read (the format allows 100 MB; real ones take a few MiB, and parsing a
/// hostile 100 MB one would take gigabytes).
pub const MAX_HEADER: u64 = 16 << 20;

/// Why a header could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SafetensorsError {
    #[error("cannot read the file: {0}")]
    Io(String),
    #[error("shorter than its 8-byte header length")]
    Truncated,
    #[error("header of {0} bytes: more than the 16 MiB infergate reads")]
    HeaderTooLarge(u64),
    #[error("header of {header} bytes in a file of {file} bytes")]
    HeaderPastEnd { header: u64, file: u64 },
    #[error("header is not a JSON object: {0}")]
    NotJson(String),
    #[error("tensor {name:?}: {why}")]
    BadTensor { name: String, why: String },
}

/// The tensors of one dtype.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DtypeTotal {
    pub tensors: u64,
    /// Elements (parameters, for unpacked weights).
    pub elements: u64,
    pub bytes: u64,
}

/// What a header says.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SafetensorsInfo {
    pub tensors: u64,
    /// Elements of every tensor: the parameter count of unquantized weights.
    pub elements: u64,
    /// Bytes of tensor data.
    pub bytes: u64,
    /// By dtype (`BF16`, `F8_E4M3`, ...).
    pub by_dtype: BTreeMap<String, DtypeTotal>,
    /// The `__metadata__` strings (`format`, `total_size`, ...).
    pub metadata: BTreeMap<String, String>,
}

/// Bits per element of a dtype the format defines.
pub fn dtype_bits(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" => 64,
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        _ => return None,
    })
}

/// Read the header of a file of `file_len` bytes from `r` (positioned at its start).
pub fn read(mut r: impl Read, file_len: u64) -> Result<SafetensorsInfo, SafetensorsError> {
    let mut len = [0u8; 8];
    r.read_exact(&mut len).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => SafetensorsError::Truncated,
        _ => SafetensorsError::Io(e.to_string()),
    })?;
    let header = u64::from_le_bytes(len);
    if header > MAX_HEADER {
        return Err(SafetensorsError::HeaderTooLarge(header));
    }
    if header > file_len.saturating_sub(8) {
        return Err(SafetensorsError::HeaderPastEnd {
            header,
            file: file_len,
        });
    }
    // Bounded by MAX_HEADER and by the file's real length.
    let mut text = Vec::with_capacity(header as usize);
    r.take(header)
        .read_to_end(&mut text)
        .map_err(|e| SafetensorsError::Io(e.to_string()))?;
    if (text.len() as u64) < header {
        return Err(SafetensorsError::Truncated);
    }
    parse(&text, file_len - 8 - header)
}

/// Read the header of the file at `path`, which must lie inside `root`; why not, as text.
pub fn read_file(
    root: &std::path::Path,
    path: &std::path::Path,
) -> Result<SafetensorsInfo, String> {
    let f = super::open_inside(root, path)?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    read(std::io::BufReader::new(f), len).map_err(|e| e.to_string())
}

/// Parse header JSON whose tensors' data takes `data_len` bytes.
pub fn parse(text: &[u8], data_len: u64) -> Result<SafetensorsInfo, SafetensorsError> {
    let json: serde_json::Map<String, Value> =
        serde_json::from_slice(text).map_err(|e| SafetensorsError::NotJson(e.to_string()))?;
    let mut info = SafetensorsInfo::default();
    for (name, entry) in json {
        if name == "__metadata__" {
            if let Value::Object(m) = entry {
                for (k, v) in m {
                    if let Value::String(s) = v {
                        info.metadata.insert(k, s);
                    }
                }
            }
            continue;
        }
        let bad = |why: String| SafetensorsError::BadTensor {
            name: name.clone(),
            why,
        };
        let dtype = entry["dtype"]
            .as_str()
            .ok_or_else(|| bad("no dtype".into()))?;
        let shape = entry["shape"]
            .as_array()
            .ok_or_else(|| bad("no shape".into()))?;
        let mut elements: u64 = 1;
        for d in shape {
            let d = d
                .as_u64()
                .ok_or_else(|| bad(format!("dimension {d} is not a size")))?;
            elements = elements
                .checked_mul(d)
                .ok_or_else(|| bad("its size overflows".into()))?;
        }
        let offsets = entry["data_offsets"]
            .as_array()
            .filter(|o| o.len() == 2)
            .and_then(|o| Some((o[0].as_u64()?, o[1].as_u64()?)))
            .ok_or_else(|| bad("data_offsets is not [start, end]".into()))?;
        let (start, end) = offsets;
        if start > end || end > data_len {
            return Err(bad(format!(
                "data [{start}, {end}) outside the {data_len} bytes of data"
            )));
        }
        let bytes = end - start;
        if let Some(bits) = dtype_bits(dtype) {
            let expected = elements
                .checked_mul(bits)
                .map(|b| b.div_ceil(8))
                .ok_or_else(|| bad("its size overflows".into()))?;
            if expected != bytes {
                return Err(bad(format!(
                    "{elements} elements of {dtype} take {expected} bytes, its data {bytes}"
                )));
            }
        }
        info.tensors += 1;
        info.elements = info.elements.saturating_add(elements);
        info.bytes = info.bytes.saturating_add(bytes);
        if info.bytes > data_len {
            return Err(bad(format!(
                "the tensors claim more than the {data_len} bytes of data (overlapping offsets)"
            )));
        }
        let total = info.by_dtype.entry(dtype.to_string()).or_default();
        total.tensors += 1;
        total.elements = total.elements.saturating_add(elements);
        total.bytes = total.bytes.saturating_add(bytes);
    }
    Ok(info)
}

/// A file with `tensors` (name, dtype, shape), its data laid out in order (tests and
/// benchmarks: the data is not written, only the file's length set, so the file is sparse).
pub fn write_sparse(
    path: &std::path::Path,
    tensors: &[(&str, &str, &[u64])],
) -> std::io::Result<u64> {
    use std::io::Write;
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0u64;
    for (name, dtype, shape) in tensors {
        let elements: u64 = shape.iter().product();
        let bytes = (elements * dtype_bits(dtype).unwrap_or(8)).div_ceil(8);
        header.insert(
            (*name).to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let text = serde_json::to_vec(&header)?;
    let mut f = std::fs::File::create(path)?;
    f.write_all(&(text.len() as u64).to_le_bytes())?;
    f.write_all(&text)?;
    let len = 8 + text.len() as u64 + offset;
    f.set_len(len)?;
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file(header: &[u8], data: u64) -> (Vec<u8>, u64) {
        let mut f = (header.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(header);
        let len = f.len() as u64 + data;
        (f, len)
    }

    #[test]
    fn a_header_is_read_without_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        // A Llama-3-8B embedding in bf16: 1 GiB of data that is never written.
        let len = write_sparse(
            &path,
            &[
                ("model.embed_tokens.weight", "BF16", &[128_256, 4096]),
                ("model.norm.weight", "F32", &[4096]),
            ],
        )
        .unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        let info = read(std::fs::File::open(&path).unwrap(), len).unwrap();
        assert_eq!(info.tensors, 2);
        assert_eq!(info.elements, 128_256 * 4096 + 4096);
        assert_eq!(info.bytes, 128_256 * 4096 * 2 + 4096 * 4);
        assert_eq!(info.by_dtype["BF16"].elements, 128_256 * 4096);
        assert_eq!(info.metadata["format"], "pt");
    }

    #[test]
    fn lies_and_damage_are_named() {
        let cases: [(&[u8], u64, &str); 5] = [
            (br#"{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,8]}}"#, 8, "take 4 bytes"),
            (br#"{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}"#, 2, "outside"),
            (br#"{"a":{"dtype":"F16","shape":[-1],"data_offsets":[0,4]}}"#, 4, "not a size"),
            (br#"{"a":{"dtype":"F16","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]}}"#, 4, "overflows"),
            (br#"[1,2]"#, 0, "not a JSON object"),
        ];
        for (header, data, want) in cases {
            let (bytes, len) = file(header, data);
            let err = read(&bytes[..], len).unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
        let huge = (MAX_HEADER + 1).to_le_bytes();
        assert_eq!(
            read(&huge[..], u64::MAX),
            Err(SafetensorsError::HeaderTooLarge(MAX_HEADER + 1))
        );
        let past = 1000u64.to_le_bytes();
        assert!(matches!(
            read(&past[..], 100),
            Err(SafetensorsError::HeaderPastEnd { .. })
        ));
        assert_eq!(read(&[1u8, 2][..], 2), Err(SafetensorsError::Truncated));
    }

    proptest! {
        #[test]
        fn any_bytes_are_read_or_refused_without_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), extra in 0u64..1 << 40) {
            let _ = read(&bytes[..], bytes.len() as u64 + extra);
        }

        #[test]
        fn written_headers_read_back(shapes in proptest::collection::vec(proptest::collection::vec(1u64..64, 0..4), 1..8)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("p.safetensors");
            let names: Vec<String> = (0..shapes.len()).map(|i| format!("t{i}")).collect();
            let tensors: Vec<(&str, &str, &[u64])> = names
                .iter()
                .zip(&shapes)
                .map(|(n, s)| (n.as_str(), "BF16", s.as_slice()))
                .collect();
            let len = write_sparse(&path, &tensors).unwrap();
            let info = read(std::fs::File::open(&path).unwrap(), len).unwrap();
            let elements: u64 = shapes.iter().map(|s| s.iter().product::<u64>()).sum();
            prop_assert_eq!(info.tensors, shapes.len() as u64);
            prop_assert_eq!(info.elements, elements);
            prop_assert_eq!(info.bytes, elements * 2);
        }
    }
}
