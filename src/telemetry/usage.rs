//! Token usage (`{"usage":{"prompt_tokens":..,"completion_tokens":..}}`) read from a non-streaming
//! response body as it passes, without buffering the body: only the last 8 to 16 KiB are kept,
//! because servers write `usage` after the choices.

use serde::Deserialize;

/// Prompt and completion token counts reported by a server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

const TAIL_BYTES: usize = 8 * 1024;
const NEEDLE: &[u8] = b"\"usage\"";

/// Keeps the tail of a body and finds the top-level `usage` object in it at the end.
#[derive(Default)]
pub struct UsageTail {
    tail: Vec<u8>,
}

impl UsageTail {
    pub fn feed(&mut self, chunk: &[u8]) {
        if chunk.len() >= TAIL_BYTES {
            self.tail.clear();
            self.tail
                .extend_from_slice(&chunk[chunk.len() - TAIL_BYTES..]);
            return;
        }
        if self.tail.len() + chunk.len() > 2 * TAIL_BYTES {
            let keep = TAIL_BYTES - chunk.len();
            self.tail.drain(..self.tail.len() - keep);
        }
        self.tail.extend_from_slice(chunk);
    }

    /// The usage in the body's tail, if the server reported one.
    pub fn finish(&self) -> Option<Usage> {
        find_usage(&self.tail)
    }
}

/// Parse the value after the last `"usage"` key in `body`.
pub fn find_usage(body: &[u8]) -> Option<Usage> {
    let at = memchr::memmem::rfind(body, NEEDLE)?;
    let rest = &body[at + NEEDLE.len()..];
    let colon = rest.iter().position(|&b| !b.is_ascii_whitespace())?;
    if rest[colon] != b':' {
        return None;
    }
    let value = &rest[colon + 1..];
    let mut stream = serde_json::Deserializer::from_slice(value).into_iter::<Option<Usage>>();
    stream.next()?.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_usage_from_one_chunk() {
        let body = br#"{"id":"x","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":7,"total_tokens":23,"completion_tokens":16}}"#;
        let mut t = UsageTail::default();
        t.feed(body);
        assert_eq!(
            t.finish(),
            Some(Usage {
                prompt_tokens: 7,
                completion_tokens: 16
            })
        );
    }

    #[test]
    fn reads_usage_split_across_small_chunks_of_a_large_body() {
        let filler = "a".repeat(100_000);
        let body = format!(
            r#"{{"choices":[{{"message":{{"content":"{filler} \"usage\": fake"}}}}],"usage":{{"prompt_tokens":3,"completion_tokens":5}}}}"#
        );
        let mut t = UsageTail::default();
        for c in body.as_bytes().chunks(7) {
            t.feed(c);
        }
        assert!(t.tail.len() <= 2 * TAIL_BYTES);
        assert_eq!(
            t.finish().map(|u| (u.prompt_tokens, u.completion_tokens)),
            Some((3, 5))
        );
    }

    #[test]
    fn no_or_null_usage_is_none() {
        assert_eq!(find_usage(br#"{"data":[]}"#), None);
        assert_eq!(find_usage(br#"{"usage":null}"#), None);
        assert_eq!(find_usage(br#"{"usage":"#), None);
    }
}
