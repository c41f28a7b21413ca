//! Cache-aware routing (issue 16): a prompt's prefix as a chain of block hashes
//! ([`chain`]), and per model pool an index of which servers recently served which prefixes
//! ([`index`]), so that a request goes where its prefix is likely still in the KV cache.

pub mod chain;
pub mod index;

pub use chain::{Chainer, DEFAULT_BLOCK_BYTES};
pub use index::{Match, PrefixIndex, MAX_SERVERS};
