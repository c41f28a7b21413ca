//! Just enough of `multipart/form-data` (RFC 7578) to read small text fields from a body that
//! is already in memory; file parts are skipped with a SIMD substring search.

use memchr::memmem;

/// The boundary parameter of a `multipart/form-data` Content-Type.
pub fn boundary(content_type: &[u8]) -> Option<&[u8]> {
    let ct = std::str::from_utf8(content_type).ok()?;
    let mut parts = ct.split(';');
    if !parts
        .next()?
        .trim()
        .eq_ignore_ascii_case("multipart/form-data")
    {
        return None;
    }
    parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let v = v.trim().trim_matches('"');
        (!v.is_empty() && v.len() <= 70).then_some(v.as_bytes())
    })
}

/// The values of the named fields (the first occurrence of each), in the order of `names`.
pub fn text_fields<'a, const N: usize>(
    body: &'a [u8],
    boundary: &[u8],
    names: &[&str; N],
) -> Result<[Option<&'a [u8]>; N], &'static str> {
    let mut delim = Vec::with_capacity(boundary.len() + 4);
    delim.extend_from_slice(b"\r\n--");
    delim.extend_from_slice(boundary);
    let finder = memmem::Finder::new(&delim);
    // The first delimiter may stand at the very start, without the leading CRLF.
    let mut pos = if body.starts_with(&delim[2..]) {
        delim.len() - 2
    } else {
        finder.find(body).ok_or("no boundary delimiter found")? + delim.len()
    };
    let mut out = [None; N];
    loop {
        let rest = &body[pos..];
        if rest.starts_with(b"--") {
            return Ok(out);
        }
        let rest = rest
            .strip_prefix(b"\r\n")
            .ok_or("a boundary delimiter is not followed by CRLF")?;
        let header_end = memmem::find(rest, b"\r\n\r\n").ok_or("a part has no header end")?;
        let headers = &rest[..header_end];
        let content_start = header_end + 4;
        let content_len = finder
            .find(&rest[content_start..])
            .ok_or("the body ends without a closing boundary")?;
        let content = &rest[content_start..content_start + content_len];
        if let Some(name) = field_name(headers) {
            if let Some(i) = names.iter().position(|n| n.as_bytes() == name) {
                out[i].get_or_insert(content);
            }
        }
        pos = body.len() - rest.len() + content_start + content_len + delim.len();
    }
}

/// The `name` parameter of a part's Content-Disposition header.
fn field_name(headers: &[u8]) -> Option<&[u8]> {
    for line in headers.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if !line[..colon].eq_ignore_ascii_case(b"content-disposition") {
            continue;
        }
        for param in line[colon + 1..].split(|&b| b == b';').skip(1) {
            let param = param.trim_ascii();
            if let Some(v) = param.strip_prefix(b"name=") {
                return Some(
                    v.strip_prefix(b"\"")
                        .and_then(|v| v.strip_suffix(b"\""))
                        .unwrap_or(v),
                );
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundary_forms() {
        assert_eq!(
            boundary(b"multipart/form-data; boundary=abc"),
            Some(&b"abc"[..])
        );
        assert_eq!(
            boundary(b"Multipart/Form-Data;boundary=\"a b\""),
            Some(&b"a b"[..])
        );
        assert_eq!(boundary(b"multipart/form-data"), None);
        assert_eq!(boundary(b"text/plain; boundary=abc"), None);
    }

    #[test]
    fn filename_parameter_is_not_the_name() {
        let body = b"--b\r\nContent-Disposition: form-data; filename=\"model\"; name=\"file\"\r\n\r\nx\r\n--b\r\ncontent-disposition: form-data; name=model\r\n\r\nm1\r\n--b--";
        let [model] = text_fields(body, b"b", &["model"]).unwrap();
        assert_eq!(model, Some(&b"m1"[..]));
    }

    #[test]
    fn truncated_bodies_are_errors() {
        let body = b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nm1";
        assert!(text_fields(body, b"b", &["model"]).is_err());
        assert!(text_fields(b"garbage", b"b", &["model"]).is_err());
    }
}
