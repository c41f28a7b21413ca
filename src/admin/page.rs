//! Pagination of admin lists: `page` (default 1) and `limit` (default 10, at most 100; a larger
//! limit is served as 100). A page or limit that is not a positive integer is a 400.

use super::error::ApiError;

pub const DEFAULT_LIMIT: u64 = 10;
pub const MAX_LIMIT: u64 = 100;

/// A requested page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub page: u64,
    pub limit: u64,
}

impl Page {
    /// From a raw query string; other parameters are ignored.
    pub fn from_query(query: Option<&str>) -> Result<Page, ApiError> {
        let mut page = 1;
        let mut limit = DEFAULT_LIMIT;
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "page" => page = positive("page", &v)?,
                "limit" => limit = positive("limit", &v)?.min(MAX_LIMIT),
                _ => {}
            }
        }
        Ok(Page { page, limit })
    }

    /// This page's items of `all`.
    pub fn slice<'a, T>(&self, all: &'a [T]) -> &'a [T] {
        let start = (self.page - 1).saturating_mul(self.limit);
        let start = usize::try_from(start).unwrap_or(usize::MAX).min(all.len());
        let end = start.saturating_add(self.limit as usize).min(all.len());
        &all[start..end]
    }
}

/// A positive decimal integer; one too large for 64 bits counts as the largest.
/// A query parameter's value (the first, when repeated); empty values count as absent.
pub fn param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

/// A boolean query parameter ("true"/"false"/"1"/"0"; absent: false).
pub fn flag(query: Option<&str>, name: &str) -> Result<bool, ApiError> {
    match param(query, name).as_deref() {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(v) => Err(ApiError::bad_request(
            "invalid query parameter",
            format!("{name} must be true or false, got {v:?}"),
        )),
    }
}

/// A positive integer query parameter (`default` when absent), as [`positive`] reads it.
pub fn positive_param(query: Option<&str>, name: &str, default: u64) -> Result<u64, ApiError> {
    param(query, name).map_or(Ok(default), |v| positive(name, &v))
}

fn positive(name: &str, v: &str) -> Result<u64, ApiError> {
    let digits = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
    match v.parse::<u64>() {
        Ok(n) if n >= 1 && digits => Ok(n),
        Err(_) if digits && v.trim_start_matches('0').len() > 19 => Ok(u64::MAX),
        _ => Err(ApiError::bad_request(
            "invalid query parameter",
            format!("{name} must be a positive integer, got {v:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_caps_and_refusals() {
        assert_eq!(Page::from_query(None).unwrap(), Page { page: 1, limit: 10 });
        assert_eq!(
            Page::from_query(Some("page=3&limit=20&x=y")).unwrap(),
            Page { page: 3, limit: 20 }
        );
        assert_eq!(Page::from_query(Some("limit=1000")).unwrap().limit, 100);
        for bad in [
            "page=0",
            "limit=0",
            "page=-1",
            "limit=abc",
            "page=1.5",
            "page=",
            "limit=+5",
        ] {
            let e = Page::from_query(Some(bad)).unwrap_err();
            assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST, "{bad}");
        }
        let huge = Page::from_query(Some(
            "page=99999999999999999999999&limit=99999999999999999999",
        ));
        assert_eq!(
            huge.unwrap(),
            Page {
                page: u64::MAX,
                limit: 100
            }
        );
        assert!(Page::from_query(Some("page=00000000000000000000000")).is_err());
    }

    #[test]
    fn slices_pages() {
        let all: Vec<u32> = (1..=25).collect();
        let p = |page, limit| Page { page, limit };
        assert_eq!(p(1, 10).slice(&all), &all[0..10]);
        assert_eq!(p(3, 10).slice(&all), &all[20..25]);
        assert!(p(4, 10).slice(&all).is_empty());
        assert!(p(u64::MAX, 100).slice(&all).is_empty());
    }
}
