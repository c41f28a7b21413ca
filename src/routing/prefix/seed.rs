//! The seed of prompts' block hashes. A fixed seed, known from the source, would let a client
//! craft prompts whose blocks fall into the index buckets of another tenant's system prompt and
//! push it out (the index would forget where it is cached), or whose hashes equal it. So each
//! deployment draws its own: an instance starts with a random one, and with a shared store
//! every instance takes the one the store holds (the first instance's), so that the prompts
//! they share hash alike. Agreed before serving and checked again every
//! [`CHECK_EVERY`] (a store that lost its data gets the running instances' seed back, or a
//! new instance's, which the others then take). The seed is never logged or shown.

use super::PrefixIndexes;
use crate::store::{Store, StoreError};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// How often a running instance checks the seed the store holds.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Take the store's seed into `seed` (proposing the one in use when it holds none). When it
/// differs from the one in use, the prefix `indexes` are emptied: what they hold was hashed
/// with the other. Returns whether the seed changed.
pub async fn agree(
    store: &dyn Store,
    seed: &AtomicU64,
    indexes: &PrefixIndexes,
) -> Result<bool, StoreError> {
    let mine = seed.load(Relaxed);
    let held = store.prefix_seed(mine).await?;
    if held == mine {
        return Ok(false);
    }
    seed.store(held, Relaxed);
    for (model, p) in indexes.all() {
        p.index.forget(u64::MAX);
        tracing::info!(%model, "prefix index emptied: the instances' hash seed changed");
    }
    Ok(true)
}
