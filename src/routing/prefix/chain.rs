//! A prompt as a chain of block hashes. The prompt is cut into fixed-size blocks of bytes
//! (the rendered prompt: each chat message's role and content in order, or the completion
//! prompt, as `routing::request` feeds them); block `i`'s hash is XXH3 of its bytes seeded with block `i - 1`'s hash, so one hash
//! stands for the whole prefix up to its block and two prompts share the hashes of the blocks
//! they share from the start. Only whole blocks count (an engine caches whole blocks only).
//!
//! The bytes are fed as they are found (the body scan that finds `model` feeds the messages),
//! and the hashes go to a buffer the caller keeps: no allocation per request once it has grown.

/// Bytes per block: about 32 tokens of English (two of vLLM's default KV blocks). Finer
/// blocks find a shared prefix to within fewer bytes, at the cost of more hashes per prompt
/// and more entries per server.
pub const DEFAULT_BLOCK_BYTES: usize = 128;
/// The largest block (the partial block is kept on the stack).
pub const MAX_BLOCK_BYTES: usize = 1024;
/// The most blocks of one prompt a chain holds.
pub const MAX_CHAIN_BLOCKS: usize = 16_384;

/// Builds a prompt's chain of block hashes from its bytes, fed in pieces.
pub struct Chainer<'a> {
    out: &'a mut Vec<u64>,
    block: [u8; MAX_BLOCK_BYTES],
    fill: usize,
    size: usize,
    last: u64,
    /// Stop after this many blocks (the index's depth bound).
    max_blocks: usize,
}

impl<'a> Chainer<'a> {
    /// Hashes go to `out` (cleared first), blocks of `size` bytes (1 to [`MAX_BLOCK_BYTES`]),
    /// at most `max_blocks`; the first block's hash is seeded with `seed` (the deployment's,
    /// random: see `routing::prefix::seed`).
    pub fn new(out: &'a mut Vec<u64>, size: usize, max_blocks: usize, seed: u64) -> Self {
        out.clear();
        Self {
            out,
            block: [0; MAX_BLOCK_BYTES],
            fill: 0,
            size: size.clamp(1, MAX_BLOCK_BYTES),
            last: seed,
            max_blocks,
        }
    }

    /// Feed the next bytes of the rendered prompt.
    pub fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.out.len() < self.max_blocks {
            let room = self.size - self.fill;
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            if self.fill == 0 && now.len() == self.size {
                self.last = seal(self.out, self.last, now);
            } else {
                self.block[self.fill..self.fill + now.len()].copy_from_slice(now);
                self.fill += now.len();
                if self.fill == self.size {
                    self.last = seal(self.out, self.last, &self.block[..self.size]);
                    self.fill = 0;
                }
            }
            bytes = rest;
        }
    }

    /// The number of whole blocks so far.
    pub fn blocks(&self) -> usize {
        self.out.len()
    }
}

/// Hash a whole block onto the chain; the new last hash.
#[inline]
fn seal(out: &mut Vec<u64>, last: u64, block: &[u8]) -> u64 {
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(block, last);
    out.push(h);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(text: &[u8], size: usize) -> Vec<u64> {
        let mut out = Vec::new();
        Chainer::new(&mut out, size, usize::MAX, 7).push(text);
        out
    }

    #[test]
    fn shared_prefixes_share_their_block_hashes_and_only_whole_blocks_count() {
        let a = chain(b"system: you are a helpful assistant. user: hello there", 8);
        let b = chain(
            b"system: you are a helpful assistant. user: what is rust?",
            8,
        );
        assert_eq!(a.len(), 6, "53 bytes: six whole blocks of 8");
        let shared = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        assert_eq!(shared, 5, "the first 40 bytes are the same");
        // A change in block 0 changes every hash after it (the chain).
        let c = chain(b"System: you are a helpful assistant. user: hello there", 8);
        assert!(a.iter().zip(&c).all(|(x, y)| x != y));
        // Another seed: the same prompt, other hashes (every one of them).
        let mut other = Vec::new();
        Chainer::new(&mut other, 8, usize::MAX, 8)
            .push(b"system: you are a helpful assistant. user: hello there");
        assert_eq!(other.len(), a.len());
        assert!(a.iter().zip(&other).all(|(x, y)| x != y));
    }

    #[test]
    fn the_same_bytes_give_the_same_chain_however_they_are_split() {
        let text: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let whole = chain(&text, 64);
        for cut in [1usize, 3, 63, 64, 65, 500] {
            let mut out = Vec::new();
            let mut ch = Chainer::new(&mut out, 64, usize::MAX, 7);
            for piece in text.chunks(cut) {
                ch.push(piece);
            }
            assert_eq!(out, whole, "pieces of {cut}");
        }
        let mut bounded = Vec::new();
        Chainer::new(&mut bounded, 64, 3, 7).push(&text);
        assert_eq!(bounded, whole[..3]);
    }
}
