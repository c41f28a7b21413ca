//! Property tests of the data plane's parsers: no input makes them panic, and the same bytes
//! give the same result however they are split into reads (a client or server chooses the
//! splits, so a parser that depends on them can be steered).

use super::chunked::{Chunked, Step};
use super::head_scan::HeadScan;
use super::request::{BodyFraming, RequestHead};
use bytes::{Buf, BytesMut};
use proptest::prelude::*;

/// A token (header name, method) of 1 to 12 characters.
fn token() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop::sample::select(
            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_".to_vec(),
        ),
        1..12,
    )
    .prop_map(|b| String::from_utf8(b).unwrap())
}

/// A field value: printable ASCII and spaces inside, none at either end.
fn value() -> impl Strategy<Value = String> {
    proptest::collection::vec(0x21u8..0x7f, 0..24).prop_map(|b| String::from_utf8(b).unwrap())
}

/// How a generated request's body is framed.
#[derive(Debug, Clone)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

fn framing() -> impl Strategy<Value = Framing> {
    prop_oneof![
        Just(Framing::None),
        (0u64..1 << 40).prop_map(Framing::Length),
        Just(Framing::Chunked)
    ]
}

/// A valid request head and what the parser must read from it.
fn head() -> impl Strategy<Value = (Vec<u8>, String, usize, Framing)> {
    (
        prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "OPTIONS"]),
        proptest::collection::vec(token(), 1..4),
        proptest::collection::vec((token(), value()), 0..8),
        framing(),
        any::<bool>(),
    )
        .prop_filter(
            "no framing or host fields among the extra ones",
            |(_, _, fields, _, _)| {
                fields.iter().all(|(n, _)| {
                    let n = n.to_ascii_lowercase();
                    n != "content-length" && n != "transfer-encoding" && n != "host"
                })
            },
        )
        .prop_map(|(method, segments, fields, framing, bare_lf)| {
            let path = format!("/{}", segments.join("/"));
            let eol = if bare_lf { "\n" } else { "\r\n" };
            let mut h = format!("{method} {path} HTTP/1.1{eol}host: gw{eol}");
            for (n, v) in &fields {
                h.push_str(&format!("{n}: {v}{eol}"));
            }
            match framing {
                Framing::None => {}
                Framing::Length(n) => h.push_str(&format!("content-length: {n}{eol}")),
                Framing::Chunked => h.push_str(&format!("transfer-encoding: chunked{eol}")),
            }
            h.push_str(eol);
            (h.into_bytes(), path, fields.len() + 1, framing)
        })
}

/// Feed `wire` to a head scan in the reads given by `cuts`, as the client connection does;
/// the bytes the first complete head took (blank lines before it included), and the head.
fn parse_in_reads(wire: &[u8], cuts: &[usize]) -> Option<(usize, RequestHead)> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    points.push(wire.len());
    points.sort_unstable();
    let (mut scan, mut head, mut buf) =
        (HeadScan::default(), RequestHead::default(), BytesMut::new());
    let mut fed = 0;
    for end in points {
        buf.extend_from_slice(&wire[fed..end]);
        fed = end;
        match scan.poll(&mut buf, &mut head) {
            Ok(true) => return Some((fed - buf.len(), head)),
            Ok(false) => continue,
            Err(e) => panic!("a prefix of a valid head was refused: {e}"),
        }
    }
    None
}

/// Decode a chunked body arriving in the reads given by `cuts`.
fn decode_in_reads(wire: &[u8], cuts: &[usize]) -> Result<Option<Vec<u8>>, String> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    points.push(wire.len());
    points.sort_unstable();
    let mut reads = points.windows(2).map(|w| &wire[w[0]..w[1]]);
    let first = &wire[..points[0]];
    let mut d = Chunked::default();
    let mut buf = BytesMut::from(first);
    let mut out = Vec::new();
    loop {
        match d.step(&mut buf).map_err(|e| e.to_string())? {
            Step::Data(n) => {
                out.extend_from_slice(&buf[..n]);
                buf.advance(n);
            }
            Step::NeedMore => match reads.next() {
                Some(r) => buf.extend_from_slice(r),
                None => return Ok(None),
            },
            Step::Done => return Ok(Some(out)),
        }
    }
}

/// A chunked encoding of `chunks`, with optional extensions and trailer fields.
fn chunked_wire(chunks: &[Vec<u8>], ext: bool, trailers: &[(String, String)]) -> Vec<u8> {
    let mut w = Vec::new();
    for c in chunks.iter().filter(|c| !c.is_empty()) {
        w.extend_from_slice(format!("{:x}", c.len()).as_bytes());
        if ext {
            w.extend_from_slice(b";name=\"v\"");
        }
        w.extend_from_slice(b"\r\n");
        w.extend_from_slice(c);
        w.extend_from_slice(b"\r\n");
    }
    w.extend_from_slice(b"0\r\n");
    for (n, v) in trailers {
        w.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    w.extend_from_slice(b"\r\n");
    w
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_bytes_are_parsed_or_refused_without_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut head = RequestHead::default();
        let _ = head.parse(&bytes);
        let _ = decode_in_reads(&bytes, &[]);
    }

    #[test]
    fn a_head_reads_the_same_however_it_arrives(
        (wire, path, fields, framing) in head(),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
        pipelined in proptest::collection::vec(any::<u8>(), 0..32),
        blank in proptest::collection::vec(prop_oneof![Just("\r\n"), Just("\n")], 0..4),
    ) {
        // Blank lines before the head are skipped; bytes after it (a body, the next request)
        // never change how it is read.
        let mut all = blank.concat().into_bytes();
        let skipped = all.len();
        all.extend_from_slice(&wire);
        all.extend_from_slice(&pipelined);
        let (n, head) = parse_in_reads(&all, &cuts).expect("a whole head is complete");
        prop_assert_eq!(n, skipped + wire.len());
        prop_assert_eq!(head.path(), path.as_str());
        prop_assert_eq!(head.headers().count(), fields + usize::from(!matches!(framing, Framing::None)));
        match framing {
            Framing::None => prop_assert!(head.framing.is_none()),
            Framing::Length(len) => prop_assert!(matches!(head.framing, Some(BodyFraming::Length(l)) if l == len)),
            Framing::Chunked => prop_assert!(matches!(head.framing, Some(BodyFraming::Chunked))),
        }
    }

    #[test]
    fn a_chunked_body_decodes_the_same_however_it_arrives(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..6),
        ext in any::<bool>(),
        trailers in proptest::collection::vec((token(), value()), 0..3),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let wire = chunked_wire(&chunks, ext, &trailers);
        let body: Vec<u8> = chunks.concat();
        prop_assert_eq!(decode_in_reads(&wire, &cuts), Ok(Some(body)));
    }

    #[test]
    fn a_request_target_is_split_or_refused_without_a_panic(target in proptest::collection::vec(0x20u8..0x7f, 0..64)) {
        let target = String::from_utf8(target).unwrap();
        for m in [http::Method::GET, http::Method::OPTIONS, http::Method::CONNECT] {
            if let Ok(t) = super::target::split(&m, &target) {
                // The parts lie inside the target.
                prop_assert!(t.path.end <= target.len());
                prop_assert!(t.query.is_none_or(|q| q.end <= target.len()));
            }
        }
    }
}
