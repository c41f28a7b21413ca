//! The fleet simulator (`infergate mock --sim`, issue 16): the mock answers as one GPU running
//! vLLM V1 would, in real time, so that routing policies can be compared on a laptop.
//!
//! - [`tokens`]: the tokenizer (4 bytes a token) and chat template, and the prompt's chained
//!   block hashes;
//! - [`kv_cache`]: a KV cache of a fixed number of blocks with prefix caching and LRU eviction
//!   of freed blocks, as vLLM's block pool.

pub mod kv_cache;
pub mod tokens;
