//! Browser-origin checks on the tenant port: `Origin` and, when asked for, `Host`.
//!
//! A web page can make a browser send requests to a daemon on the user's machine; the
//! `Origin` header says which site the page came from. Loopback origins (the user's own
//! machine) and the operator's `--allowed-origins` are accepted, anything else is 403.
//! DNS rebinding (a foreign name re-pointed at 127.0.0.1, so `Host` and `Origin` both name
//! it) is refused by that same rule. The one request a rebinding page can send without an
//! `Origin` (a same-origin GET) is what `--allowed-hosts` covers: off by default, because a
//! reverse proxy passes its own public name in `Host`.

use std::net::{IpAddr, Ipv6Addr};

use http::{HeaderMap, StatusCode, header};

use super::error::ApiError;

/// Admits or refuses a request on its headers alone: every `Origin` header must be a
/// loopback origin or one of `allowed_origins`; with `allowed_hosts` (`--allowed-hosts`:
/// `name` for any port, or `name:port`), `Host` must be a loopback name or one of those.
pub fn check(
    headers: &HeaderMap,
    allowed_origins: &[String],
    allowed_hosts: Option<&[String]>,
) -> Result<(), ApiError> {
    for origin in headers.get_all(header::ORIGIN) {
        let allowed = origin
            .to_str()
            .is_ok_and(|o| allowed_origins.iter().any(|a| a == o) || is_loopback_origin(o));
        if !allowed {
            let msg = "Origin not allowed. Loopback origins are accepted; add others with --allowed-origins.";
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "FORBIDDEN_ORIGIN",
                msg,
            ));
        }
    }
    if let Some(hosts) = allowed_hosts {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        if !host.is_some_and(|h| host_allowed(h, hosts)) {
            let msg =
                "Host not allowed. Loopback names are accepted; add others with --allowed-hosts.";
            return Err(ApiError::new(StatusCode::FORBIDDEN, "FORBIDDEN_HOST", msg));
        }
    }
    Ok(())
}

/// `http(s)://` + a loopback host + an optional port, nothing else (no path, no userinfo).
pub fn is_loopback_origin(origin: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false; // includes the opaque origin "null"
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return false;
    }
    split_authority(authority).is_some_and(|(name, _)| is_loopback_name(name))
}

/// `name[:port]` of a `Host` header or an origin's authority; `None` when malformed.
fn split_authority(authority: &str) -> Option<(&str, Option<u16>)> {
    if authority.is_empty() || authority.contains(['/', '@', '?', '#', ' ']) {
        return None;
    }
    let (name, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        (&authority[..inside.len() + 2], port)
    } else {
        match authority.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
    };
    (!name.is_empty()).then_some((name, port))
}

/// `localhost`, an address in 127.0.0.0/8, or `[::1]`.
fn is_loopback_name(name: &str) -> bool {
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    if let Some(inside) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return inside.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback());
    }
    name.parse::<IpAddr>()
        .is_ok_and(|ip| ip.is_ipv4() && ip.is_loopback())
}

fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let Some((name, port)) = split_authority(host) else {
        return false;
    };
    if is_loopback_name(name) {
        return true;
    }
    allowed.iter().any(|entry| match split_authority(entry) {
        Some((want, None)) => want.eq_ignore_ascii_case(name),
        Some((want, want_port)) => want.eq_ignore_ascii_case(name) && want_port == port,
        None => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_origins_any_port_either_scheme() {
        for origin in [
            "http://127.0.0.1:8080",
            "http://127.9.8.7",
            "https://localhost",
            "http://LOCALHOST:3000",
            "http://[::1]:1",
            "HTTPS://[::1]",
        ] {
            assert!(is_loopback_origin(origin), "{origin}");
        }
        for origin in [
            "null",
            "http://localhost.evil.example",
            "http://127.0.0.1.evil.example",
            "http://128.0.0.1",
            "http://[::2]",
            "ftp://localhost",
            "http://evil.example@127.0.0.1",
            "http://127.0.0.1/path",
            "http://127.0.0.1:",
            "http://127.0.0.1:x",
            "http://localhost:99999",
            "http://[::1",
            "127.0.0.1",
        ] {
            assert!(!is_loopback_origin(origin), "{origin}");
        }
    }

    #[test]
    fn hosts_by_name_or_name_and_port() {
        let allowed = ["mcp.example".to_string(), "other.example:8443".to_string()];
        for host in [
            "127.0.0.1:9",
            "localhost",
            "[::1]:80",
            "MCP.example:1",
            "mcp.example",
            "other.example:8443",
        ] {
            assert!(host_allowed(host, &allowed), "{host}");
        }
        for host in [
            "evil.example",
            "other.example",
            "other.example:8444",
            "",
            "mcp.example:",
        ] {
            assert!(!host_allowed(host, &allowed), "{host}");
        }
    }

    #[test]
    fn every_origin_must_pass_and_host_only_when_asked() {
        let origins = ["http://ok.example".to_string()];
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "evil.example".parse().unwrap());
        assert!(
            check(&headers, &origins, None).is_ok(),
            "no Origin, Host unchecked"
        );
        headers.append(header::ORIGIN, "http://ok.example".parse().unwrap());
        assert!(check(&headers, &origins, None).is_ok());
        headers.append(header::ORIGIN, "http://evil.example".parse().unwrap());
        let refused = check(&headers, &origins, None).unwrap_err();
        assert_eq!(refused.code, "FORBIDDEN_ORIGIN");
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "evil.example".parse().unwrap());
        let refused = check(&headers, &origins, Some(&[])).unwrap_err();
        assert_eq!(refused.code, "FORBIDDEN_HOST");
        headers.insert(header::HOST, "127.0.0.1:1".parse().unwrap());
        assert!(check(&headers, &origins, Some(&[])).is_ok());
    }
}
