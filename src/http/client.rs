//! The client behind a request: its IP address and whether it reached us
//! over HTTPS. Forwarding headers count only when the direct peer is one of
//! `TRUSTED_PROXIES`; anyone else could write them.

use std::net::{IpAddr, SocketAddr};

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use ipnet::IpNet;

use super::error::ApiError;

/// The resolved client of a request, put into its extensions by the guard
/// middleware before any handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    pub ip: IpAddr,
    /// True when the client's connection to us, or to the trusted proxy in
    /// front of us, is encrypted.
    pub https: bool,
}

impl Client {
    /// Returns the key that rate limits count this client under. IPv6
    /// clients are counted per /64 network, because one host usually has a
    /// whole /64 and could otherwise rotate addresses to escape a limit.
    pub fn limit_key(&self) -> String {
        match self.ip {
            IpAddr::V4(address) => address.to_string(),
            IpAddr::V6(address) => match address.to_ipv4_mapped() {
                Some(mapped) => mapped.to_string(),
                None => ipnet::Ipv6Net::new(address, 64)
                    .map(|network| network.trunc().to_string())
                    .unwrap_or_else(|_| address.to_string()),
            },
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Client {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Client>()
            .copied()
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("the client was not resolved")))
    }
}

/// A forwarding header that a trusted proxy sent but that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {header} header from the proxy is malformed: {problem}")]
pub struct BadForwarding {
    pub header: &'static str,
    pub problem: String,
}

impl BadForwarding {
    fn new(header: &'static str, problem: impl Into<String>) -> Self {
        Self {
            header,
            problem: problem.into(),
        }
    }
}

/// Resolves the client of a request that arrived from `peer` over a
/// connection that is encrypted when `tls` is true.
///
/// When `peer` is a trusted proxy, the client is the nearest address in
/// the forwarding chain that is not itself a trusted proxy. `Forwarded` is
/// read first, then `X-Forwarded-For`, then `X-Real-IP`; the scheme comes
/// from `Forwarded`'s `proto` or from `X-Forwarded-Proto`.
pub fn resolve(
    peer: SocketAddr,
    tls: bool,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> Result<Client, BadForwarding> {
    let peer_ip = canonical(peer.ip());
    let direct = Client {
        ip: peer_ip,
        https: tls,
    };
    if !is_trusted(peer_ip, trusted) {
        return Ok(direct);
    }

    let (chain, proto) = if headers.contains_key("forwarded") {
        forwarded(headers)?
    } else {
        let chain = if headers.contains_key("x-forwarded-for") {
            forwarded_for(headers)?
        } else if headers.contains_key("x-real-ip") {
            vec![single_address(headers, "x-real-ip", "X-Real-IP")?]
        } else {
            Vec::new()
        };
        (chain, forwarded_proto(headers)?)
    };

    // Walk from the nearest hop outwards, past every trusted proxy.
    let mut client = peer_ip;
    for hop in chain.iter().rev() {
        client = *hop;
        if !is_trusted(*hop, trusted) {
            break;
        }
    }
    Ok(Client {
        ip: client,
        https: tls || proto.as_deref() == Some("https"),
    })
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|network| network.contains(&ip))
}

/// Maps an IPv4-mapped IPv6 address to IPv4, so that a dual-stack socket
/// and the configuration agree on what 127.0.0.1 is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(address) => address.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        IpAddr::V4(_) => ip,
    }
}

/// Returns the values of every `name` header joined by commas, as RFC 9110
/// says a list-valued field may be split across lines.
fn joined(headers: &HeaderMap, name: &str, label: &'static str) -> Result<String, BadForwarding> {
    let mut parts = Vec::new();
    for value in headers.get_all(name) {
        let text = value.to_str().map_err(|_| {
            BadForwarding::new(label, "it contains bytes that are not visible ASCII")
        })?;
        parts.push(text.to_string());
    }
    Ok(parts.join(","))
}

/// Parses one address as proxies write it: bare, with a port, or an IPv6
/// address in brackets with an optional port.
fn parse_address(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(socket) = text.parse::<SocketAddr>() {
        return Some(canonical(socket.ip()));
    }
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<IpAddr>().ok().map(canonical)
}

fn forwarded_for(headers: &HeaderMap) -> Result<Vec<IpAddr>, BadForwarding> {
    let text = joined(headers, "x-forwarded-for", "X-Forwarded-For")?;
    text.split(',')
        .map(|item| {
            parse_address(item).ok_or_else(|| {
                BadForwarding::new(
                    "X-Forwarded-For",
                    format!("'{}' is not an IP address", clip(item.trim())),
                )
            })
        })
        .collect()
}

fn single_address(
    headers: &HeaderMap,
    name: &str,
    label: &'static str,
) -> Result<IpAddr, BadForwarding> {
    let text = joined(headers, name, label)?;
    parse_address(&text).ok_or_else(|| {
        BadForwarding::new(
            label,
            format!("'{}' is not an IP address", clip(text.trim())),
        )
    })
}

fn forwarded_proto(headers: &HeaderMap) -> Result<Option<String>, BadForwarding> {
    if !headers.contains_key("x-forwarded-proto") {
        return Ok(None);
    }
    let text = joined(headers, "x-forwarded-proto", "X-Forwarded-Proto")?;
    // A chain of proxies appends; the last value is the nearest proxy's view.
    let last = text.rsplit(',').next().unwrap_or_default().trim();
    scheme(last, "X-Forwarded-Proto").map(Some)
}

fn scheme(text: &str, label: &'static str) -> Result<String, BadForwarding> {
    let lowered = text.to_ascii_lowercase();
    match lowered.as_str() {
        "http" | "https" => Ok(lowered),
        _ => Err(BadForwarding::new(
            label,
            format!("'{}' is not http or https", clip(text)),
        )),
    }
}

/// Parses RFC 7239 `Forwarded`: elements separated by commas, each a list
/// of `name=value` pairs separated by semicolons, values optionally quoted.
/// Returns the `for` addresses in order and the nearest element's `proto`.
fn forwarded(headers: &HeaderMap) -> Result<(Vec<IpAddr>, Option<String>), BadForwarding> {
    const LABEL: &str = "Forwarded";
    let text = joined(headers, "forwarded", LABEL)?;
    let mut chain = Vec::new();
    let mut proto = None;
    for element in split_unquoted(&text, ',') {
        let mut element_proto = None;
        for pair in split_unquoted(element, ';') {
            let pair = pair.trim();
            if pair.is_empty() {
                continue;
            }
            let (name, value) = pair.split_once('=').ok_or_else(|| {
                BadForwarding::new(LABEL, format!("'{}' is not a name=value pair", clip(pair)))
            })?;
            let value = unquote(value.trim()).ok_or_else(|| {
                BadForwarding::new(LABEL, format!("'{}' has an unterminated quote", clip(pair)))
            })?;
            match name.trim().to_ascii_lowercase().as_str() {
                "for" => {
                    // `unknown` and obfuscated `_name` identifiers hide the
                    // hop; the chain stops being traceable there.
                    if value.eq_ignore_ascii_case("unknown") || value.starts_with('_') {
                        chain.clear();
                        continue;
                    }
                    let address = parse_address(&value).ok_or_else(|| {
                        BadForwarding::new(
                            LABEL,
                            format!("for='{}' is not an IP address", clip(&value)),
                        )
                    })?;
                    chain.push(address);
                }
                "proto" => element_proto = Some(scheme(&value, LABEL)?),
                "by" | "host" => {}
                other => {
                    return Err(BadForwarding::new(
                        LABEL,
                        format!("'{}' is not a Forwarded parameter", clip(other)),
                    ));
                }
            }
        }
        if element_proto.is_some() {
            proto = element_proto;
        }
    }
    Ok((chain, proto))
}

/// Splits `text` at `separator` outside double quotes.
fn split_unquoted(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut quoted = false;
    let mut escaped = false;
    let mut start = 0;
    for (index, character) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && character == '\\' {
            escaped = true;
        } else if character == '"' {
            quoted = !quoted;
        } else if character == separator && !quoted {
            parts.push(&text[start..index]);
            start = index + character.len_utf8();
        }
    }
    parts.push(&text[start..]);
    parts
}

/// Removes the quotes of a quoted-string and its escapes; `None` when a
/// quote is not closed.
fn unquote(value: &str) -> Option<String> {
    let Some(inner) = value.strip_prefix('"') else {
        return (!value.contains('"')).then(|| value.to_string());
    };
    let inner = inner.strip_suffix('"')?;
    let mut text = String::with_capacity(inner.len());
    let mut characters = inner.chars();
    while let Some(character) = characters.next() {
        if character == '\\' {
            text.push(characters.next()?);
        } else {
            text.push(character);
        }
    }
    Some(text)
}

/// Shortens a header fragment quoted back in an error message.
fn clip(text: &str) -> String {
    const MAX_CHARS: usize = 64;
    if text.chars().count() <= MAX_CHARS {
        text.to_string()
    } else {
        let head: String = text.chars().take(MAX_CHARS).collect();
        format!("{head}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn peer(text: &str) -> SocketAddr {
        SocketAddr::new(text.parse().unwrap_or_else(|_| unreachable!()), 40_000)
    }

    fn networks(items: &[&str]) -> Vec<IpNet> {
        items
            .iter()
            .map(|item| item.parse().unwrap_or_else(|_| unreachable!()))
            .collect()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                *name,
                HeaderValue::from_str(value).unwrap_or_else(|_| unreachable!()),
            );
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn untrusted_peer_ignores_headers() {
        let sent = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
        ]);
        let client = resolve(
            peer("198.51.100.7"),
            false,
            &sent,
            &networks(&["10.0.0.0/8"]),
        );
        assert_eq!(
            client,
            Ok(Client {
                ip: ip("198.51.100.7"),
                https: false
            })
        );
    }

    #[test]
    fn untrusted_peer_with_garbage_is_fine() {
        let sent = headers(&[("x-forwarded-for", "not an address")]);
        let client = resolve(peer("198.51.100.7"), false, &sent, &[]);
        assert_eq!(client.map(|client| client.ip), Ok(ip("198.51.100.7")));
    }

    #[test]
    fn forwarded_for_skips_trusted_hops() {
        let trusted = networks(&["10.0.0.0/8"]);
        let sent = headers(&[("x-forwarded-for", "1.2.3.4, 203.0.113.9, 10.0.0.2")]);
        let client = resolve(peer("10.0.0.1"), false, &sent, &trusted);
        assert_eq!(client.map(|client| client.ip), Ok(ip("203.0.113.9")));
    }

    #[test]
    fn forwarded_for_split_lines_join() {
        let trusted = networks(&["10.0.0.0/8"]);
        let sent = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "10.0.0.2"),
        ]);
        let client = resolve(peer("10.0.0.1"), false, &sent, &trusted);
        assert_eq!(client.map(|client| client.ip), Ok(ip("203.0.113.9")));
    }

    #[test]
    fn all_trusted_chain_gives_first() {
        let trusted = networks(&["10.0.0.0/8"]);
        let sent = headers(&[("x-forwarded-for", "10.9.9.9, 10.0.0.2")]);
        let client = resolve(peer("10.0.0.1"), false, &sent, &trusted);
        assert_eq!(client.map(|client| client.ip), Ok(ip("10.9.9.9")));
    }

    #[test]
    fn real_ip_and_proto() {
        let trusted = networks(&["127.0.0.1/32"]);
        let sent = headers(&[("x-real-ip", "203.0.113.9"), ("x-forwarded-proto", "https")]);
        let client = resolve(peer("127.0.0.1"), false, &sent, &trusted);
        assert_eq!(
            client,
            Ok(Client {
                ip: ip("203.0.113.9"),
                https: true
            })
        );
    }

    #[test]
    fn forwarded_header_wins() {
        let trusted = networks(&["127.0.0.1/32"]);
        let sent = headers(&[
            (
                "forwarded",
                "for=192.0.2.60;proto=http, for=\"[2001:db8:cafe::17]:4711\";proto=https",
            ),
            ("x-forwarded-for", "198.51.100.1"),
        ]);
        let client = resolve(peer("127.0.0.1"), false, &sent, &trusted);
        assert_eq!(
            client,
            Ok(Client {
                ip: ip("2001:db8:cafe::17"),
                https: true
            })
        );
    }

    #[test]
    fn forwarded_unknown_stops_chain() {
        let trusted = networks(&["127.0.0.1/32"]);
        let sent = headers(&[("forwarded", "for=unknown")]);
        let client = resolve(peer("127.0.0.1"), false, &sent, &trusted);
        assert_eq!(client.map(|client| client.ip), Ok(ip("127.0.0.1")));
    }

    #[test]
    fn malformed_headers_from_proxy() {
        let trusted = networks(&["127.0.0.1/32"]);
        let cases = [
            ("x-forwarded-for", "203.0.113.9, bogus", "X-Forwarded-For"),
            ("x-forwarded-for", "", "X-Forwarded-For"),
            ("x-real-ip", "999.1.1.1", "X-Real-IP"),
            ("x-forwarded-proto", "gopher", "X-Forwarded-Proto"),
            ("forwarded", "for=\"203.0.113.9", "Forwarded"),
            ("forwarded", "for", "Forwarded"),
            ("forwarded", "for=300.1.1.1", "Forwarded"),
            ("forwarded", "secret=1", "Forwarded"),
        ];
        for (name, value, label) in cases {
            let sent = headers(&[(name, value)]);
            let error = resolve(peer("127.0.0.1"), false, &sent, &trusted).err();
            assert_eq!(
                error.map(|error| error.header),
                Some(label),
                "{name}: {value}"
            );
        }
    }

    #[test]
    fn mapped_ipv4_matches_ipv4_network() {
        let trusted = networks(&["127.0.0.1/32"]);
        let sent = headers(&[("x-forwarded-for", "203.0.113.9")]);
        let client = resolve(peer("::ffff:127.0.0.1"), false, &sent, &trusted);
        assert_eq!(client.map(|client| client.ip), Ok(ip("203.0.113.9")));
    }

    #[test]
    fn ipv6_limit_key_is_network() {
        let first = Client {
            ip: ip("2001:db8:1:2:aaaa::1"),
            https: false,
        };
        let second = Client {
            ip: ip("2001:db8:1:2:bbbb::9"),
            https: false,
        };
        assert_eq!(first.limit_key(), second.limit_key());
        assert_eq!(first.limit_key(), "2001:db8:1:2::/64");
        let v4 = Client {
            ip: ip("203.0.113.9"),
            https: false,
        };
        assert_eq!(v4.limit_key(), "203.0.113.9");
    }
}
