//! Incremental decoding of `Transfer-Encoding: chunked` bodies, in place over a read buffer.

use bytes::{Buf, BytesMut};

/// Longest chunk-size line (with extensions) or trailer line accepted.
const MAX_LINE: usize = 4096;
/// Most trailer bytes accepted (they are read and dropped).
const MAX_TRAILERS: usize = 16 * 1024;

/// A malformed chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("a chunk size is not hexadecimal")]
    BadSize,
    #[error("a chunk size line or trailer is too long")]
    LineTooLong,
    #[error("a chunk is not followed by CRLF")]
    MissingCrlf,
    #[error("a line ends in a bare LF")]
    BareLf,
    #[error("a chunk extension is malformed")]
    BadExtension,
}

/// What the front of the buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// This many body bytes at the front of the buffer: the caller consumes exactly them.
    Data(usize),
    /// More input is needed.
    NeedMore,
    /// The last chunk and the trailers are consumed.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataEnd,
    Trailers(usize),
    Done,
}

/// The decoder's position in a chunked body.
#[derive(Debug, Clone, Copy)]
pub struct Chunked(State);

impl Default for Chunked {
    fn default() -> Self {
        Self(State::Size)
    }
}

impl Chunked {
    pub fn is_done(&self) -> bool {
        self.0 == State::Done
    }

    /// Advance over framing at the front of `buf` (consuming it) up to the next body bytes.
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, ChunkError> {
        loop {
            match self.0 {
                State::Size => {
                    let Some(nl) = memchr::memchr(b'\n', buf) else {
                        return if buf.len() > MAX_LINE {
                            Err(ChunkError::LineTooLong)
                        } else {
                            Ok(Step::NeedMore)
                        };
                    };
                    let size = parse_size(crlf_line(&buf[..nl])?)?;
                    buf.advance(nl + 1);
                    self.0 = if size == 0 {
                        State::Trailers(0)
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let n = (buf.len() as u64).min(left);
                    self.0 = if n == left {
                        State::DataEnd
                    } else {
                        State::Data(left - n)
                    };
                    return Ok(Step::Data(n as usize));
                }
                State::DataEnd => match buf.first() {
                    None => return Ok(Step::NeedMore),
                    Some(b'\r') => match buf.get(1) {
                        None => return Ok(Step::NeedMore),
                        Some(b'\n') => {
                            buf.advance(2);
                            self.0 = State::Size;
                        }
                        Some(_) => return Err(ChunkError::MissingCrlf),
                    },
                    Some(_) => return Err(ChunkError::MissingCrlf),
                },
                State::Trailers(seen) => {
                    let Some(nl) = memchr::memchr(b'\n', buf) else {
                        return if buf.len() > MAX_LINE || seen + buf.len() > MAX_TRAILERS {
                            Err(ChunkError::LineTooLong)
                        } else {
                            Ok(Step::NeedMore)
                        };
                    };
                    let blank = crlf_line(&buf[..nl])?.is_empty();
                    buf.advance(nl + 1);
                    if blank {
                        self.0 = State::Done;
                    } else if seen + nl + 1 > MAX_TRAILERS {
                        return Err(ChunkError::LineTooLong);
                    } else {
                        self.0 = State::Trailers(seen + nl + 1);
                    }
                }
                State::Done => return Ok(Step::Done),
            }
        }
    }
}

/// A line without its CRLF; a bare LF is refused (lenient line endings are what request
/// smuggling between two parsers feeds on).
fn crlf_line(line: &[u8]) -> Result<&[u8], ChunkError> {
    line.strip_suffix(b"\r").ok_or(ChunkError::BareLf)
}

/// The hexadecimal size at the start of a chunk-size line. Extensions (`;name=value`, after
/// optional whitespace) are ignored but must be printable.
fn parse_size(line: &[u8]) -> Result<u64, ChunkError> {
    let end = line
        .iter()
        .position(|&b| b == b';' || b == b' ' || b == b'\t')
        .unwrap_or(line.len());
    let (digits, ext) = line.split_at(end);
    let ext_ok = {
        let rest = ext.trim_ascii_start();
        (rest.is_empty() && ext.iter().all(|&b| b == b' ' || b == b'\t'))
            || (rest.first() == Some(&b';')
                && rest.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f)))
    };
    if !ext_ok {
        return Err(ChunkError::BadExtension);
    }
    if digits.is_empty() || digits.len() > 15 {
        return Err(ChunkError::BadSize);
    }
    let mut size = 0u64;
    for &b in digits {
        let d = (b as char).to_digit(16).ok_or(ChunkError::BadSize)?;
        size = size * 16 + u64::from(d);
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(wire: &[u8], piece: usize) -> Result<Vec<u8>, ChunkError> {
        let mut d = Chunked::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut input = wire.chunks(piece);
        loop {
            match d.step(&mut buf)? {
                Step::Data(n) => {
                    out.extend_from_slice(&buf[..n]);
                    buf.advance(n);
                }
                Step::NeedMore => match input.next() {
                    Some(p) => buf.extend_from_slice(p),
                    None => panic!("ran out of input"),
                },
                Step::Done => return Ok(out),
            }
        }
    }

    #[test]
    fn decodes_whatever_the_pieces() {
        let wire = b"5\r\nhello\r\n1 ;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\n";
        for piece in 1..wire.len() {
            assert_eq!(
                decode_in_pieces(wire, piece).unwrap(),
                b"hello 0123456789",
                "pieces of {piece}"
            );
        }
    }

    #[test]
    fn refuses_bad_framing() {
        assert_eq!(
            decode_in_pieces(b"zz\r\n", 64).unwrap_err(),
            ChunkError::BadSize
        );
        assert_eq!(
            decode_in_pieces(b"2\r\nabX\r\n", 64).unwrap_err(),
            ChunkError::MissingCrlf
        );
        assert_eq!(
            decode_in_pieces(b"fffffffffffffffff\r\n", 64).unwrap_err(),
            ChunkError::BadSize
        );
        for (wire, err) in [
            (&b"5\nhello\r\n0\r\n\r\n"[..], ChunkError::BareLf),
            (b"5\r\nhello\n0\r\n\r\n", ChunkError::MissingCrlf),
            (b"5 xyz\r\nhello\r\n", ChunkError::BadExtension),
            (b"5;a\x01\r\nhello\r\n", ChunkError::BadExtension),
            (b"0\r\n\n", ChunkError::BareLf),
        ] {
            assert_eq!(decode_in_pieces(wire, 64).unwrap_err(), err, "{wire:?}");
        }
        let long = vec![b'1'; MAX_LINE + 2];
        let mut d = Chunked::default();
        let mut buf = BytesMut::from(&long[..]);
        assert_eq!(d.step(&mut buf).unwrap_err(), ChunkError::LineTooLong);
    }
}
