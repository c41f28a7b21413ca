//! The simulator's tokenizer and chat template.
//!
//! A token is 4 bytes of the rendered prompt (the mock's convention everywhere), and its id is
//! those bytes read as a little-endian `u32` (a short last piece is padded with zeros): equal
//! text gives equal ids, and two different 4-byte pieces never share an id. A chat request is
//! rendered with a fixed template, `<|role|>\n{content}\n` per message, then the assistant's
//! header `<|assistant|>\n` (unless `add_generation_prompt` is false). The prompt's whole
//! blocks are hashed as a chain, as vLLM's prefix cache hashes them: block i's hash covers the
//! token ids of blocks 0..=i (and the request's `cache_salt`, when it has one).

use serde_json::Value;

/// Bytes of rendered prompt per token.
pub const BYTES_PER_TOKEN: usize = 4;

/// Why a request's prompt cannot be rendered (answered 400, as vLLM does).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    #[error("'messages' must be a non-empty array")]
    NoMessages,
    #[error("message {0} has no string 'role'")]
    NoRole(usize),
    #[error("message {0}: 'content' must be a string, an array of parts or null")]
    BadContent(usize),
    #[error("'prompt' must be a string, an array of strings, an array of token ids or an array of arrays of token ids")]
    BadPrompt,
    #[error("the prompt is empty")]
    Empty,
}

/// The token ids of `text`.
pub fn tokenize(text: &[u8]) -> Vec<u32> {
    text.chunks(BYTES_PER_TOKEN)
        .map(|c| {
            let mut w = [0u8; BYTES_PER_TOKEN];
            w[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(w)
        })
        .collect()
}

/// The bytes a token stands for (a short last piece's zero padding dropped).
pub fn token_bytes(id: u32) -> Vec<u8> {
    let mut b = id.to_le_bytes().to_vec();
    while b.last() == Some(&0) {
        b.pop();
    }
    b
}

/// The text of token ids (the inverse of [`tokenize`] for text without NUL bytes).
pub fn detokenize(ids: &[u32]) -> Vec<u8> {
    ids.iter().flat_map(|&t| token_bytes(t)).collect()
}

/// A chat request's `messages` rendered with the simulator's template.
pub fn render_chat(messages: &Value, add_generation_prompt: bool) -> Result<String, RenderError> {
    let messages = messages
        .as_array()
        .filter(|m| !m.is_empty())
        .ok_or(RenderError::NoMessages)?;
    let mut out = String::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or(RenderError::NoRole(i))?;
        out.push_str("<|");
        out.push_str(role);
        out.push_str("|>\n");
        match m.get("content").unwrap_or(&Value::Null) {
            Value::String(s) => out.push_str(s),
            Value::Null => {}
            Value::Array(parts) => {
                for p in parts {
                    // Text parts only; an image or audio part adds nothing to the prompt.
                    if let Some(t) = p.get("text").and_then(Value::as_str) {
                        out.push_str(t);
                    }
                }
            }
            _ => return Err(RenderError::BadContent(i)),
        }
        out.push('\n');
    }
    if add_generation_prompt {
        out.push_str("<|assistant|>\n");
    }
    Ok(out)
}

/// One prompt of a completion request: its text (when it was given as text) and token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub text: Option<String>,
    pub token_ids: Vec<u32>,
}

/// The prompts of a completion request's `prompt`: a string, an array of strings, an array of
/// token ids, or an array of arrays of token ids.
pub fn completion_prompts(prompt: &Value) -> Result<Vec<Prompt>, RenderError> {
    let text = |s: &str| Prompt {
        text: Some(s.to_owned()),
        token_ids: tokenize(s.as_bytes()),
    };
    let ids = |a: &[Value]| -> Result<Prompt, RenderError> {
        let token_ids = a
            .iter()
            .map(|t| {
                t.as_u64()
                    .and_then(|t| u32::try_from(t).ok())
                    .ok_or(RenderError::BadPrompt)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Prompt {
            text: None,
            token_ids,
        })
    };
    let prompts = match prompt {
        Value::String(s) => vec![text(s)],
        Value::Array(a) if a.is_empty() => return Err(RenderError::Empty),
        Value::Array(a) if a[0].is_string() => a
            .iter()
            .map(|s| s.as_str().map(text).ok_or(RenderError::BadPrompt))
            .collect::<Result<_, _>>()?,
        Value::Array(a) if a[0].is_array() => a
            .iter()
            .map(|p| {
                p.as_array()
                    .ok_or(RenderError::BadPrompt)
                    .and_then(|p| ids(p))
            })
            .collect::<Result<_, _>>()?,
        Value::Array(a) => vec![ids(a)?],
        _ => return Err(RenderError::BadPrompt),
    };
    if prompts.iter().any(|p| p.token_ids.is_empty()) {
        return Err(RenderError::Empty);
    }
    Ok(prompts)
}

/// The chained hashes of the whole blocks of `ids` (a last partial block has none): block i's
/// hash is XXH3 of its token ids seeded with block i-1's hash, the first seeded with the hash
/// of `salt` (vLLM salts a prompt's first block with its `cache_salt`).
pub fn block_hashes(ids: &[u32], block_tokens: usize, salt: Option<&str>) -> Vec<u64> {
    let block_tokens = block_tokens.max(1);
    let mut last = salt.map_or(0, |s| xxhash_rust::xxh3::xxh3_64(s.as_bytes()));
    let mut buf = Vec::with_capacity(block_tokens * 4);
    ids.chunks_exact(block_tokens)
        .map(|block| {
            buf.clear();
            for id in block {
                buf.extend_from_slice(&id.to_le_bytes());
            }
            last = xxhash_rust::xxh3::xxh3_64_with_seed(&buf, last);
            last
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn four_bytes_a_token_and_equal_text_equal_ids() {
        assert_eq!(tokenize(b"abcdefgh").len(), 2);
        assert_eq!(tokenize(b"abcdefghi").len(), 3);
        assert_eq!(tokenize(b"abcd"), tokenize(b"abcd"));
        assert_ne!(tokenize(b"abcd"), tokenize(b"abce"));
        assert_eq!(tokenize(b"abcd")[0], u32::from_le_bytes(*b"abcd"));
        assert!(tokenize(b"").is_empty());
        assert_eq!(detokenize(&tokenize(b"hello world")), b"hello world");
    }

    #[test]
    fn chat_template_renders_roles_in_order_then_the_assistant_header() {
        let m = json!([{"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]}]);
        assert_eq!(
            render_chat(&m, true).unwrap(),
            "<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\n"
        );
        assert_eq!(
            render_chat(&m, false).unwrap(),
            "<|system|>\nbe brief\n<|user|>\nhi\n"
        );
        assert_eq!(render_chat(&json!([]), true), Err(RenderError::NoMessages));
        assert_eq!(
            render_chat(&json!([{"content": "x"}]), true),
            Err(RenderError::NoRole(0))
        );
    }

    #[test]
    fn completion_prompts_of_every_shape() {
        let one = completion_prompts(&json!("abcdefgh")).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].token_ids, tokenize(b"abcdefgh"));
        assert_eq!(completion_prompts(&json!(["ab", "cd"])).unwrap().len(), 2);
        assert_eq!(
            completion_prompts(&json!([1, 2, 3])).unwrap()[0].token_ids,
            vec![1, 2, 3]
        );
        assert_eq!(completion_prompts(&json!([[1], [2, 3]])).unwrap().len(), 2);
        assert_eq!(completion_prompts(&json!(7)), Err(RenderError::BadPrompt));
        assert_eq!(
            completion_prompts(&json!([-1])),
            Err(RenderError::BadPrompt)
        );
        assert_eq!(completion_prompts(&json!("")), Err(RenderError::Empty));
    }

    #[test]
    fn block_hashes_chain_and_salt() {
        let a: Vec<u32> = (0..40).collect();
        let mut b = a.clone();
        b[20] = 999; // in the second block
        let (ha, hb) = (block_hashes(&a, 16, None), block_hashes(&b, 16, None));
        assert_eq!(ha.len(), 2); // 40 tokens: two whole blocks
        assert_eq!(ha[0], hb[0]);
        assert_ne!(ha[1], hb[1]);
        // A block's hash depends on every block before it.
        let mut c = a.clone();
        c[0] = 999;
        assert_ne!(block_hashes(&c, 16, None)[1], ha[1]);
        assert_ne!(block_hashes(&a, 16, Some("tenant"))[0], ha[0]);
    }
}
