//! Reading model files without loading them: the headers of safetensors and GGUF files (their
//! tensors' sizes and types, GGUF metadata), a model's `config.json`, and what a model folder
//! holds; all bounded against damaged or hostile files.

pub mod folder;
pub mod gguf;
pub mod hfconfig;
pub mod hub;
pub mod safetensors;
