//! Gathering a request head that arrives in pieces. Blank lines before a request line are
//! dropped as they come (RFC 9112 §2.2 lets a server ignore them; a client sends them after
//! a body), so a client sending only blank lines neither grows the buffer nor makes each read
//! parse again. A head is parsed once the blank line that ends it is in, not on every piece.

use super::request::{HeadError, Parsed, RequestHead};
use bytes::{Buf, BytesMut};

/// Largest request head accepted.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Where the scan of one head stands (reset when a head is complete).
#[derive(Default)]
pub struct HeadScan {
    /// Bytes at the front of the buffer already looked at for the end of the head.
    scanned: usize,
}

impl HeadScan {
    /// Look at `buf` after a read. `Ok(true)`: `head` holds the next request and `buf` starts
    /// after it; `Ok(false)`: more bytes are needed.
    pub fn poll(&mut self, buf: &mut BytesMut, head: &mut RequestHead) -> Result<bool, HeadError> {
        let blank = leading_blank_lines(buf);
        if blank > 0 {
            buf.advance(blank);
            self.scanned = self.scanned.saturating_sub(blank);
        }
        if ends_head(buf, self.scanned) {
            if let Parsed::Complete(n) = head.parse(buf)? {
                buf.advance(n);
                self.scanned = 0;
                return Ok(true);
            }
        }
        if buf.len() >= MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge(MAX_HEAD_BYTES));
        }
        self.scanned = buf.len();
        Ok(false)
    }
}

/// The length of the empty lines (CRLF or LF) at the start of `buf`; a CR not yet followed by
/// its LF stays.
fn leading_blank_lines(buf: &[u8]) -> usize {
    let mut at = 0;
    loop {
        match buf[at..] {
            [b'\n', ..] => at += 1,
            [b'\r', b'\n', ..] => at += 2,
            _ => return at,
        }
    }
}

/// Whether `buf` holds the blank line that ends a head, looking from `from` (minus the three
/// bytes a CRLFCRLF split across reads could start in).
fn ends_head(buf: &[u8], from: usize) -> bool {
    let tail = &buf[from.saturating_sub(3)..];
    memchr::memchr_iter(b'\n', tail).any(|i| match tail.get(i + 1) {
        Some(b'\n') => true,
        Some(b'\r') => tail.get(i + 2) == Some(&b'\n'),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_end_of_a_head_across_reads() {
        let head = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
        assert!(ends_head(head, 0));
        assert!(!ends_head(&head[..head.len() - 1], 0));
        for from in 0..head.len() {
            assert!(ends_head(head, from), "from {from}");
        }
        assert!(ends_head(b"GET / HTTP/1.0\n\n", 14));
    }

    #[test]
    fn blank_lines_are_dropped_as_they_come_and_never_parsed() {
        let (mut scan, mut head, mut buf) =
            (HeadScan::default(), RequestHead::default(), BytesMut::new());
        // A megabyte of blank lines, a byte at a time: the buffer never holds more than a CR.
        for _ in 0..512 * 1024 {
            for b in [b'\r', b'\n'] {
                buf.extend_from_slice(&[b]);
                assert!(!scan.poll(&mut buf, &mut head).unwrap());
                assert!(buf.len() <= 1);
            }
        }
        buf.extend_from_slice(b"\nGET /v1/models HTTP/1.1\r\nHost: a\r\n\r\nnext");
        assert!(scan.poll(&mut buf, &mut head).unwrap());
        assert_eq!((head.path(), &buf[..]), ("/v1/models", &b"next"[..]));
        // A lone CR before a request line is not a blank line: the head is refused.
        let mut buf = BytesMut::from(&b"\rGET / HTTP/1.1\r\nHost: a\r\n\r\n"[..]);
        assert!(HeadScan::default().poll(&mut buf, &mut head).is_err());
    }

    #[test]
    fn a_head_that_does_not_end_is_refused_at_the_limit() {
        let (mut scan, mut head) = (HeadScan::default(), RequestHead::default());
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nx: "[..]);
        assert!(!scan.poll(&mut buf, &mut head).unwrap());
        buf.extend_from_slice(&vec![b'a'; MAX_HEAD_BYTES]);
        assert!(matches!(
            scan.poll(&mut buf, &mut head),
            Err(HeadError::TooLarge(MAX_HEAD_BYTES))
        ));
    }
}
