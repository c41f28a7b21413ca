//! Cache-aware routing (issue 16): a prompt's prefix as a chain of block hashes
//! ([`chain`]), and per model pool an index of which servers recently served which prefixes
//! ([`index`]), kept across routing-table rebuilds ([`pools`]) and shared between instances
//! through the store ([`share`]), so that a request goes where its prefix is likely still in
//! the KV cache. The hashes' seed is each deployment's own ([`seed`]).

pub mod chain;
pub mod demand;
pub mod index;
pub mod pools;
pub mod seed;
pub mod share;

pub use chain::{Chainer, DEFAULT_BLOCK_BYTES, MAX_BLOCK_BYTES, MAX_CHAIN_BLOCKS};
pub use demand::PrefixDemand;
pub use index::{Match, PrefixIndex, MAX_SERVERS};
pub use pools::{PoolIndex, PrefixIndexes, NO_SLOT};
