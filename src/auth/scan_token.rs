//! The auth token of a successful verification: proof, valid for a few
//! minutes, that the service found a cylinder genuine at one scan. It is an
//! HMAC-SHA-256 keyed by the cylinder's own secret over the scan id, the
//! cylinder id and the issue time, so only the server can make one, and
//! reissuing the cylinder's codes invalidates its tokens.

use chrono::{DateTime, Utc};
use hmac::Mac;
use uuid::Uuid;

use crate::domain::codes::keyed_mac;

/// Maximum length of a token accepted for checking, in bytes.
pub const MAX_TOKEN_BYTES: usize = 200;

fn mac(
    secret: &[u8],
    scan_id: Uuid,
    cylinder_id: Uuid,
    issued_at: i64,
) -> hmac::Hmac<sha2::Sha256> {
    let mut mac = keyed_mac(secret);
    mac.update(b"cyltrack scan token v1");
    mac.update(scan_id.as_bytes());
    mac.update(cylinder_id.as_bytes());
    mac.update(&issued_at.to_be_bytes());
    mac
}

/// Makes the token of `scan_id`, issued at `issued_at` (whole seconds).
pub fn issue(secret: &[u8], scan_id: Uuid, cylinder_id: Uuid, issued_at: DateTime<Utc>) -> String {
    let seconds = issued_at.timestamp();
    let tag = mac(secret, scan_id, cylinder_id, seconds)
        .finalize()
        .into_bytes();
    format!("{}.{seconds}.{}", scan_id.simple(), hex::encode(tag))
}

/// A token split into its parts; the tag is not checked yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedToken {
    pub scan_id: Uuid,
    pub issued_at: DateTime<Utc>,
    tag: Vec<u8>,
}

/// Splits `token` into scan id, issue time and tag. Returns `None` for
/// anything that is not a well-formed token.
pub fn parse(token: &str) -> Option<ParsedToken> {
    let mut parts = token.trim().split('.');
    let (scan, seconds, tag) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || scan.len() != 32 || tag.len() != 64 {
        return None;
    }
    Some(ParsedToken {
        scan_id: Uuid::try_parse(scan).ok()?,
        issued_at: DateTime::from_timestamp(seconds.parse().ok()?, 0)?,
        tag: hex::decode(tag).ok()?,
    })
}

/// Checks the tag of `token` in constant time.
pub fn is_authentic(token: &ParsedToken, secret: &[u8], cylinder_id: Uuid) -> bool {
    mac(
        secret,
        token.scan_id,
        cylinder_id,
        token.issued_at.timestamp(),
    )
    .verify_slice(&token.tag)
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip_and_tampering() {
        let (scan, cylinder) = (Uuid::new_v4(), Uuid::new_v4());
        let issued = DateTime::from_timestamp(1_796_000_000, 0).unwrap_or_default();
        let token = issue(b"cylinder secret", scan, cylinder, issued);

        let parsed = parse(&token);
        assert_eq!(parsed.as_ref().map(|token| token.scan_id), Some(scan));
        assert_eq!(parsed.as_ref().map(|token| token.issued_at), Some(issued));
        assert!(parsed.as_ref().is_some_and(|token| is_authentic(
            token,
            b"cylinder secret",
            cylinder
        )));
        assert!(parsed.as_ref().is_some_and(|token| !is_authentic(
            token,
            b"other secret",
            cylinder
        )));
        assert!(parsed.as_ref().is_some_and(|token| !is_authentic(
            token,
            b"cylinder secret",
            Uuid::new_v4()
        )));

        // A later issue time with the old tag does not verify.
        let mut parts: Vec<&str> = token.split('.').collect();
        let later = (issued.timestamp() + 600).to_string();
        parts[1] = &later;
        let stretched = parts.join(".");
        assert!(parse(&stretched).is_some_and(|token| !is_authentic(
            &token,
            b"cylinder secret",
            cylinder
        )));

        for garbage in ["", "a.b.c", "abc", &format!("{token}.extra")] {
            assert_eq!(parse(garbage), None, "{garbage}");
        }
    }
}
