//! The target: a base URL, and the guard that keeps load on loopback unless
//! the operator says otherwise (a load test aimed at someone else's server
//! is an attack).

use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Context, Result};

/// Where the load goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port` as given.
    pub authority: String,
    /// The host part (no brackets).
    pub host: String,
    /// The port.
    pub port: u16,
}

impl Target {
    /// Parses `http://host:port` (or `ws://`, `quic://`, or `host:port`); a
    /// path is ignored.
    pub fn parse(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("ws://"))
            .or_else(|| url.strip_prefix("quic://"))
            .unwrap_or(url);
        if rest.contains("://") {
            bail!("only http://, ws:// and quic:// targets are supported, got {url:?}");
        }
        let authority = rest.split('/').next().unwrap_or_default().to_string();
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && !p.contains(']') => (
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                p.parse::<u16>()
                    .with_context(|| format!("bad port in {url:?}"))?,
            ),
            _ => (
                authority
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
                80,
            ),
        };
        if host.is_empty() {
            bail!("no host in {url:?}");
        }
        if authority.contains('@') {
            bail!("user info ('@') is not taken in a target: {url:?}");
        }
        Ok(Self {
            authority: if authority.contains(':') {
                authority
            } else {
                format!("{authority}:80")
            },
            host,
            port,
        })
    }

    /// `http://host:port` + `path`.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.authority)
    }

    /// `ws://host:port` + `path`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.authority)
    }

    /// Resolves the host and refuses any address that is not loopback,
    /// unless `allow_remote`.
    pub async fn check_loopback(&self, allow_remote: bool) -> Result<Vec<SocketAddr>> {
        let addrs: Vec<SocketAddr> = match self.host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, self.port)],
            Err(_) => tokio::net::lookup_host((self.host.as_str(), self.port))
                .await
                .with_context(|| format!("cannot resolve {}", self.host))?
                .collect(),
        };
        check_addrs(&self.host, &addrs, allow_remote)?;
        Ok(addrs)
    }
}

/// Refuses a request path (`flag`'s value) that is not an absolute path of
/// printable characters: appended to `scheme://host:port`, a value such as
/// `@example.com/x` would make everything before it user info and send the
/// load, and the key, to another host.
pub fn check_path(flag: &str, path: &str) -> Result<()> {
    if !path.starts_with('/')
        || path.starts_with("//")
        || path.contains(['@', '#', '\\'])
        || path.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        bail!("{flag} must be a path on the target starting with one '/', without '@', '#', '\\' or spaces; got {path:?}");
    }
    Ok(())
}

/// The pure part of [`Target::check_loopback`].
pub fn check_addrs(host: &str, addrs: &[SocketAddr], allow_remote: bool) -> Result<()> {
    if addrs.is_empty() {
        bail!("{host} resolves to no address");
    }
    if allow_remote {
        return Ok(());
    }
    if let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        bail!(
            "refusing to load {host} ({}): not a loopback address. Load tests go to your own \
             machine unless you pass --allow-remote for a server you are allowed to load",
            a.ip()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let t = Target::parse("http://127.0.0.1:8080/v1/detect").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 8080));
        assert_eq!(t.ws_url("/v1/stream"), "ws://127.0.0.1:8080/v1/stream");
        let t = Target::parse("[::1]:9000").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9000));
        let t = Target::parse("http://localhost").unwrap();
        assert_eq!(t.http_url("/x"), "http://localhost:80/x");
        assert!(Target::parse("https://example.com").is_err());
    }

    #[test]
    fn paths_that_would_move_the_host_are_refused() {
        let t = Target::parse("http://127.0.0.1:8080").unwrap();
        for bad in [
            "@example.com/v1/stream",
            "//example.com/x",
            "/x@example.com",
            "v1/stream",
            "",
            "/a b",
            "/a#b",
            "/a\\b",
        ] {
            assert!(check_path("--ws-path", bad).is_err(), "{bad:?} was taken");
        }
        for good in ["/v1/stream", "/v1/detect?model=nanodet-g", "/noop"] {
            check_path("--http-path", good).unwrap();
            // What the transports connect to stays the checked host.
            let uri: tokio_tungstenite::tungstenite::http::Uri = t.ws_url(good).parse().unwrap();
            assert_eq!(uri.host(), Some("127.0.0.1"), "{good}");
        }
        assert!(Target::parse("http://evil.example@127.0.0.1:8080").is_err());
    }

    #[tokio::test]
    async fn loopback_is_allowed_and_remote_refused() {
        for ok in ["http://127.0.0.1:1", "http://[::1]:1", "http://127.3.4.5:1"] {
            Target::parse(ok)
                .unwrap()
                .check_loopback(false)
                .await
                .unwrap();
        }
        let remote = Target::parse("http://192.0.2.7:80").unwrap();
        let err = remote.check_loopback(false).await.unwrap_err();
        assert!(err.to_string().contains("--allow-remote"), "{err}");
        remote.check_loopback(true).await.unwrap();
        // A name is judged by every address it resolves to.
        let mixed: Vec<SocketAddr> = vec![
            "127.0.0.1:1".parse().unwrap(),
            "10.0.0.1:1".parse().unwrap(),
        ];
        assert!(check_addrs("mixed", &mixed, false).is_err());
    }
}
