//! Reading model files without loading them: the headers of safetensors and GGUF files (their
//! tensors' sizes and types, GGUF metadata), bounded against damaged or hostile files.

pub mod gguf;
pub mod safetensors;
