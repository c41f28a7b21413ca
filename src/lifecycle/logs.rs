//! An engine's output, kept as its last lines in a bounded ring (by lines and by bytes), so a
//! model's logs and diagnosis survive the engine's exit without growing without end.

use std::collections::VecDeque;
use std::sync::Mutex;

/// Longest line kept (longer ones are cut, marked with `…`).
const MAX_LINE: usize = 4096;

/// The last lines an engine wrote.
pub struct LogRing {
    inner: Mutex<Ring>,
    max_lines: usize,
    max_bytes: usize,
}

#[derive(Default)]
struct Ring {
    lines: VecDeque<String>,
    bytes: usize,
    /// Lines dropped from the front so far.
    dropped: u64,
}

impl LogRing {
    pub fn new(max_lines: usize, max_bytes: usize) -> Self {
        Self {
            inner: Mutex::default(),
            max_lines: max_lines.max(1),
            max_bytes: max_bytes.max(MAX_LINE),
        }
    }

    /// Add a line (without its newline).
    pub fn push(&self, line: &str) {
        let mut line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push('…');
        }
        let Ok(mut ring) = self.inner.lock() else {
            return;
        };
        ring.bytes += line.len();
        ring.lines.push_back(line);
        while ring.lines.len() > self.max_lines || ring.bytes > self.max_bytes {
            match ring.lines.pop_front() {
                Some(old) => {
                    ring.bytes -= old.len();
                    ring.dropped += 1;
                }
                None => break,
            }
        }
    }

    /// The last `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let Ok(ring) = self.inner.lock() else {
            return Vec::new();
        };
        let skip = ring.lines.len().saturating_sub(n);
        ring.lines.iter().skip(skip).cloned().collect()
    }

    /// Lines dropped from the front to stay within the bounds.
    pub fn dropped(&self) -> u64 {
        self.inner.lock().map_or(0, |r| r.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_lines_within_its_bounds() {
        let ring = LogRing::new(3, 1 << 20);
        for i in 0..5 {
            ring.push(&format!("line {i}\n"));
        }
        assert_eq!(ring.tail(10), ["line 2", "line 3", "line 4"]);
        assert_eq!(ring.tail(1), ["line 4"]);
        assert_eq!(ring.dropped(), 2);
        let ring = LogRing::new(100, 2 * MAX_LINE);
        ring.push(&"é".repeat(MAX_LINE));
        let kept = ring.tail(1).remove(0);
        assert!(kept.len() <= MAX_LINE + '…'.len_utf8() && kept.ends_with('…'));
        ring.push("next");
        assert_eq!(ring.tail(5).len(), 2);
        // The byte bound drops the oldest lines.
        ring.push(&"x".repeat(MAX_LINE));
        assert_eq!(ring.tail(5)[0], "next");
        assert_eq!(ring.dropped(), 1);
    }
}
