//! A server's base URL (`http(s)://host:port/v1`), split into what the proxy needs.

/// Why a server URL was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum UrlError {
    #[error("{0:?} is not a URL: {1}")]
    Parse(String, String),
    #[error("{0:?} must use http or https")]
    Scheme(String),
    #[error("{0:?} has no host")]
    NoHost(String),
    #[error("{0:?} must not carry credentials, a query or a fragment")]
    Extra(String),
}

/// A parsed server base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// `true` for https.
    pub tls: bool,
    /// Host name or IP literal, without brackets.
    pub host: String,
    pub port: u16,
    /// Base path without a trailing slash, e.g. `/v1` (may be empty).
    pub base_path: String,
}

impl ServerUrl {
    pub fn parse(raw: &str) -> Result<Self, UrlError> {
        let u = ::url::Url::parse(raw).map_err(|e| UrlError::Parse(raw.into(), e.to_string()))?;
        let tls = match u.scheme() {
            "http" => false,
            "https" => true,
            _ => return Err(UrlError::Scheme(raw.into())),
        };
        if !u.username().is_empty()
            || u.password().is_some()
            || u.query().is_some()
            || u.fragment().is_some()
        {
            return Err(UrlError::Extra(raw.into()));
        }
        let host = match u.host() {
            Some(::url::Host::Ipv6(a)) => a.to_string(),
            Some(h) => h.to_string(),
            None => return Err(UrlError::NoHost(raw.into())),
        };
        let port = u
            .port_or_known_default()
            .unwrap_or(if tls { 443 } else { 80 });
        let base_path = u.path().trim_end_matches('/').to_string();
        Ok(Self {
            tls,
            host,
            port,
            base_path,
        })
    }

    /// `scheme://host:port` — what health probes are sent to.
    pub fn origin(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.authority())
    }

    /// `host:port` (IPv6 hosts bracketed), as sent in the `Host` header.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The canonical form used to identify a server (`scheme://host:port/base`).
    pub fn canonical(&self) -> String {
        format!("{}{}", self.origin(), self.base_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_a_runpod_url() {
        let u = ServerUrl::parse("https://abc123-8000.proxy.runpod.net/v1/").unwrap();
        assert!(u.tls);
        assert_eq!(u.host, "abc123-8000.proxy.runpod.net");
        assert_eq!(u.port, 443);
        assert_eq!(u.base_path, "/v1");
        assert_eq!(u.origin(), "https://abc123-8000.proxy.runpod.net:443");
    }

    #[test]
    fn keeps_ipv6_and_ports() {
        let u = ServerUrl::parse("http://[::1]:8001/v1").unwrap();
        assert_eq!(u.host, "::1");
        assert_eq!(u.authority(), "[::1]:8001");
    }

    #[test]
    fn refuses_other_schemes_and_extras() {
        assert!(matches!(
            ServerUrl::parse("ftp://a/v1"),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            ServerUrl::parse("http://u:p@a/v1"),
            Err(UrlError::Extra(_))
        ));
        assert!(matches!(
            ServerUrl::parse("not a url"),
            Err(UrlError::Parse(..))
        ));
    }
}
