//! One bounded GET of a `/metrics` page (an engine's or an exporter's): a deadline for the
//! whole exchange, a cap on the page's size, and a reason when it fails.

use super::promtext::Page;
use std::time::Duration;

/// A page larger than this is refused (vLLM's is about 100 KB with two engines; parsing holds
/// several times a page's size while it runs, and `scrape_concurrency` pages may be read at
/// once).
pub const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// Fetch and parse `url`; the error is the reason to report.
pub async fn page(
    client: &reqwest::Client,
    url: &str,
    auth: Option<&http::HeaderValue>,
    timeout: Duration,
) -> Result<Page, String> {
    let text = text(client, url, auth, timeout)
        .await
        .map_err(|e| match e {
            Fail::Timeout => format!("no answer within {} ms", timeout.as_millis()),
            Fail::Other(why) => why,
        })?;
    Page::parse(&text).map_err(|e| e.to_string())
}

enum Fail {
    Timeout,
    Other(String),
}

impl From<reqwest::Error> for Fail {
    fn from(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            Fail::Timeout
        } else if e.is_body() || e.is_decode() {
            Fail::Other(format!("answer cut short: {}", e.without_url()))
        } else {
            Fail::Other(format!("unreachable: {}", e.without_url()))
        }
    }
}

/// The page's text; `timeout` covers the whole exchange, body included.
async fn text(
    client: &reqwest::Client,
    url: &str,
    auth: Option<&http::HeaderValue>,
    timeout: Duration,
) -> Result<String, Fail> {
    let mut req = client.get(url).timeout(timeout);
    if let Some(auth) = auth {
        req = req.header(http::header::AUTHORIZATION, auth.clone());
    }
    let mut resp = req.send().await?;
    if !resp.status().is_success() {
        return Err(Fail::Other(format!("answered {}", resp.status())));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > MAX_PAGE_BYTES {
            return Err(Fail::Other(format!(
                "answer larger than {MAX_PAGE_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| Fail::Other("answer is not UTF-8 text".into()))
}
