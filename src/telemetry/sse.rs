//! Scans a `text/event-stream` body as it passes through, chunk by chunk, without holding it:
//! finds the first token-bearing event (for TTFT), counts token events and their timing (for
//! inter-token latency) and reads the final `usage` event.

use super::usage::Usage;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;
use std::time::Instant;

/// Longest SSE line kept while waiting for its end; longer lines are skipped, not buffered.
const MAX_LINE: usize = 1 << 20;

/// What a stream showed so far.
#[derive(Default)]
pub struct SseScanner {
    carry: Vec<u8>,
    skipping: bool,
    pub token_events: u64,
    pub first_token: Option<Instant>,
    pub last_token: Option<Instant>,
    pub usage: Option<Usage>,
}

impl SseScanner {
    /// Scan one chunk. Returns `true` when this chunk carried the stream's first token.
    pub fn feed(&mut self, chunk: &[u8], now: Instant) -> bool {
        let had_first = self.first_token.is_some();
        let mut rest = chunk;
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            let (line, tail) = rest.split_at(nl);
            rest = &tail[1..];
            if self.carry.is_empty() {
                if !self.skipping {
                    self.line(line, now);
                }
            } else {
                let mut joined = std::mem::take(&mut self.carry);
                joined.extend_from_slice(line);
                if !self.skipping {
                    self.line(&joined, now);
                }
                joined.clear();
                self.carry = joined;
            }
            self.skipping = false;
        }
        if !rest.is_empty() && !self.skipping {
            if self.carry.len() + rest.len() > MAX_LINE {
                self.carry.clear();
                self.skipping = true;
            } else {
                self.carry.extend_from_slice(rest);
            }
        }
        !had_first && self.first_token.is_some()
    }

    /// Completion tokens: the server's usage when it sent one, else the token events seen.
    pub fn completion_tokens(&self) -> u64 {
        self.usage
            .map_or(self.token_events, |u| u.completion_tokens)
    }

    /// Mean time per output token after the first, in seconds.
    pub fn inter_token_latency(&self) -> Option<f64> {
        let (first, last) = (self.first_token?, self.last_token?);
        let n = self.completion_tokens();
        (n >= 2).then(|| last.duration_since(first).as_secs_f64() / (n - 1) as f64)
    }

    fn line(&mut self, line: &[u8], now: Instant) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(payload) = line.strip_prefix(b"data:") else {
            return;
        };
        let payload = payload.trim_ascii_start();
        if payload.is_empty() || payload == b"[DONE]" {
            return;
        }
        let Ok(event) = serde_json::from_slice::<Event>(payload) else {
            return;
        };
        if event.usage.is_some() {
            self.usage = event.usage;
        }
        if event.choices.0 || event.delta.0 {
            self.token_events += 1;
            self.first_token.get_or_insert(now);
            self.last_token = Some(now);
        }
    }
}

/// The parts of an OpenAI-style stream event that matter here. `delta` (top level) covers
/// audio transcription streams (`transcript.text.delta`).
#[derive(Deserialize)]
struct Event {
    #[serde(default)]
    choices: AnyToken,
    #[serde(default)]
    delta: NonEmpty,
    #[serde(default)]
    usage: Option<Usage>,
}

/// `true` when any choice carries generated text, reasoning or a tool call.
#[derive(Default)]
struct AnyToken(bool);

impl<'de> Deserialize<'de> for AnyToken {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AnyToken;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of choices")
            }
            fn visit_unit<E>(self) -> Result<AnyToken, E> {
                Ok(AnyToken(false))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<AnyToken, A::Error> {
                let mut any = false;
                while let Some(c) = seq.next_element::<Choice>()? {
                    any |= c.text.0
                        || c.delta.as_ref().is_some_and(|d| {
                            d.content.0 || d.reasoning_content.0 || d.reasoning.0 || d.tool_calls.0
                        });
                }
                Ok(AnyToken(any))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    text: NonEmpty,
    #[serde(default)]
    delta: Option<Delta>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: NonEmpty,
    #[serde(default)]
    reasoning_content: NonEmpty,
    #[serde(default)]
    reasoning: NonEmpty,
    #[serde(default)]
    tool_calls: NonEmpty,
}

/// `true` for a non-empty string or a non-empty list; `false` for anything else. Allocates nothing.
#[derive(Default)]
struct NonEmpty(bool);

impl<'de> Deserialize<'de> for NonEmpty {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NonEmpty;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_str<E>(self, s: &str) -> Result<NonEmpty, E> {
                Ok(NonEmpty(!s.is_empty()))
            }
            fn visit_unit<E>(self) -> Result<NonEmpty, E> {
                Ok(NonEmpty(false))
            }
            fn visit_bool<E>(self, _: bool) -> Result<NonEmpty, E> {
                Ok(NonEmpty(false))
            }
            fn visit_i64<E>(self, _: i64) -> Result<NonEmpty, E> {
                Ok(NonEmpty(false))
            }
            fn visit_u64<E>(self, _: u64) -> Result<NonEmpty, E> {
                Ok(NonEmpty(false))
            }
            fn visit_f64<E>(self, _: f64) -> Result<NonEmpty, E> {
                Ok(NonEmpty(false))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NonEmpty, A::Error> {
                let mut any = false;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    any = true;
                }
                Ok(NonEmpty(any))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NonEmpty, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(NonEmpty(false))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ev(content: &str) -> String {
        format!("data: {{\"id\":\"c\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}}}}]}}\n\n")
    }

    #[test]
    fn first_token_skips_role_only_events() {
        let t0 = Instant::now();
        let mut s = SseScanner::default();
        let role =
            "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n";
        assert!(!s.feed(role.as_bytes(), t0));
        assert!(s.first_token.is_none());
        assert!(s.feed(ev("Hel").as_bytes(), t0 + Duration::from_millis(5)));
        assert!(!s.feed(ev("lo").as_bytes(), t0 + Duration::from_millis(10)));
        assert_eq!(s.token_events, 2);
        assert_eq!(s.first_token, Some(t0 + Duration::from_millis(5)));
    }

    #[test]
    fn events_split_at_any_byte_are_reassembled() {
        let t0 = Instant::now();
        let mut stream = String::new();
        for i in 0..10 {
            stream.push_str(&ev(&format!("t{i} \\\"quoted\\\"")));
        }
        stream.push_str("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":10}}\n\ndata: [DONE]\n\n");
        for split in 1..40 {
            let mut s = SseScanner::default();
            for (i, c) in stream.as_bytes().chunks(split).enumerate() {
                s.feed(c, t0 + Duration::from_millis(i as u64));
            }
            assert_eq!(s.token_events, 10, "split {split}");
            assert_eq!(
                s.usage,
                Some(Usage {
                    prompt_tokens: 4,
                    completion_tokens: 10
                })
            );
        }
    }

    #[test]
    fn inter_token_latency_is_mean_gap_after_first() {
        let t0 = Instant::now();
        let mut s = SseScanner::default();
        for i in 0..5u64 {
            s.feed(ev("x").as_bytes(), t0 + Duration::from_millis(100 + 20 * i));
        }
        let itl = s.inter_token_latency().unwrap();
        assert!((itl - 0.020).abs() < 1e-9, "{itl}");
        assert_eq!(s.completion_tokens(), 5);
    }

    #[test]
    fn completions_text_tool_calls_and_transcription_deltas_count() {
        let t0 = Instant::now();
        let mut s = SseScanner::default();
        s.feed(b"data: {\"choices\":[{\"text\":\"a\"}]}\r\n\r\n", t0);
        s.feed(
            b"data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"id\":\"t\"}]}}]}\n\n",
            t0,
        );
        s.feed(
            b"data: {\"type\":\"transcript.text.delta\",\"delta\":\"hi\"}\n\n",
            t0,
        );
        s.feed(
            b": keep-alive comment\n\nevent: ping\ndata: not json\n\n",
            t0,
        );
        assert_eq!(s.token_events, 3);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn a_stream_scans_the_same_however_it_is_split(
            contents in proptest::collection::vec(proptest::collection::vec(0x20u8..0x7f, 0..12), 1..12),
            usage in proptest::option::of((0u64..1000, 0u64..1000)),
            cuts in proptest::collection::vec(proptest::prelude::any::<usize>(), 0..10),
            crlf in proptest::prelude::any::<bool>(),
        ) {
            let mut stream = String::new();
            for c in &contents {
                // JSON-escaped text (quotes and backslashes are in the range).
                let text = serde_json::to_string(&String::from_utf8(c.clone()).unwrap()).unwrap();
                stream.push_str(&format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{text}}}}}]}}\n\n"));
            }
            if let Some((p, c)) = usage {
                stream.push_str(&format!("data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":{p},\"completion_tokens\":{c}}}}}\n\n"));
            }
            stream.push_str("data: [DONE]\n\n");
            if crlf {
                stream = stream.replace('\n', "\r\n");
            }
            let bytes = stream.as_bytes();
            let scan = |points: &[usize]| {
                let t0 = Instant::now();
                let mut s = SseScanner::default();
                let mut from = 0;
                for &p in points.iter().chain(std::iter::once(&bytes.len())) {
                    s.feed(&bytes[from..p], t0);
                    from = p;
                }
                (s.token_events, s.usage.map(|u| (u.prompt_tokens, u.completion_tokens)), s.first_token.is_some())
            };
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            points.sort_unstable();
            let whole = scan(&[]);
            let tokens = contents.iter().filter(|c| !c.is_empty()).count() as u64;
            proptest::prop_assert_eq!(whole.0, tokens);
            proptest::prop_assert_eq!(whole.1, usage);
            proptest::prop_assert_eq!(scan(&points), whole);
        }

        #[test]
        fn any_bytes_are_scanned_without_a_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let mut s = SseScanner::default();
            s.feed(&bytes, Instant::now());
        }
    }
}
