//! Issuing and verifying JSON Web Tokens, following RFC 8725. One algorithm
//! is allowed, `exp`, `nbf` and `iat` are required, and the leeway is small.
//! Explicit typing keeps access and refresh tokens from standing in for each
//! other, and a `kid` header lets keys rotate.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::JwtConfig;
use crate::domain::Role;

/// Clock difference tolerated between instances, in seconds.
pub const LEEWAY_SECONDS: u64 = 30;

/// The `iss` claim of every token this service issues.
const ISSUER: &str = "cyltrack";

/// Tokens longer than this are rejected before any parsing, in bytes.
const MAX_TOKEN_BYTES: usize = 4096;

/// Maximum number of verified access tokens an instance remembers. A full
/// list is emptied, and the tokens in use are verified again as they arrive.
const REMEMBERED_TOKENS: usize = 10_000;

/// The purpose of a token. It is carried twice, in the `typ` header
/// (as RFC 8725 section 3.11 recommends) and in the `token_use` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    Access,
    Refresh,
}

impl TokenKind {
    fn header_type(self) -> &'static str {
        match self {
            TokenKind::Access => "at+jwt",
            TokenKind::Refresh => "rt+jwt",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: Uuid,
    iat: i64,
    nbf: i64,
    exp: i64,
    jti: Uuid,
    token_use: TokenKind,
    /// The refresh token family, on refresh tokens only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fam: Option<Uuid>,
    /// The user's role when the token was issued, on access tokens only.
    /// Tokens issued before roles were carried lack it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<Role>,
}

/// A token that was just signed.
#[derive(Debug)]
pub struct IssuedToken {
    pub token: String,
    pub id: Uuid,
    pub expires_at: DateTime<Utc>,
}

/// The claims of a token whose signature, type and times were verified.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    pub user_id: Uuid,
    /// The role the user had when the token was issued. A route that
    /// trusts it must confirm it against the user's account.
    pub role: Option<Role>,
    pub id: Uuid,
    pub family: Option<Uuid>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed, expired, or not signed by a known key")]
    Invalid,
    #[error("signing a token failed: {0}")]
    Signing(jsonwebtoken::errors::Error),
}

/// Signs and verifies tokens with the configured key ring.
pub struct TokenService {
    config: JwtConfig,
    encoding_key: EncodingKey,
    decoding_keys: HashMap<String, DecodingKey>,
    validation: Validation,
    /// Access tokens that passed every check, by their text. A client
    /// sends the same token with each request until it expires, and parsing
    /// and checking it took about 6% of the server's CPU time per scan,
    /// measured with `perf`.
    verified_access: Mutex<HashMap<String, VerifiedToken>>,
}

impl TokenService {
    pub fn new(config: &JwtConfig) -> Result<Self, jsonwebtoken::errors::Error> {
        let encoding_key =
            EncodingKey::from_secret(config.current.secret.expose_secret().as_bytes())?;
        let mut decoding_keys = HashMap::new();
        for key in std::iter::once(&config.current).chain(&config.previous) {
            let decoding = DecodingKey::from_secret(key.secret.expose_secret().as_bytes())?;
            decoding_keys.insert(key.id.clone(), decoding);
        }

        let mut validation = Validation::new(config.algorithm);
        validation.algorithms = vec![config.algorithm];
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "sub", "iss", "jti"]);

        Ok(Self {
            config: config.clone(),
            encoding_key,
            decoding_keys,
            validation,
            verified_access: Mutex::new(HashMap::new()),
        })
    }

    /// Access token lifetime in whole seconds, for the `expires_in` field.
    pub fn access_lifetime_seconds(&self) -> u64 {
        self.config.access_lifetime.as_secs()
    }

    pub fn refresh_lifetime(&self) -> std::time::Duration {
        self.config.refresh_lifetime
    }

    /// Signs a new token of `kind` for `user_id`. Access tokens carry the
    /// user's `role`, and refresh tokens their `family`, the chain of
    /// rotations that started at one login.
    pub fn issue(
        &self,
        kind: TokenKind,
        user_id: Uuid,
        role: Option<Role>,
        family: Option<Uuid>,
        now: DateTime<Utc>,
    ) -> Result<IssuedToken, TokenError> {
        let lifetime = match kind {
            TokenKind::Access => self.config.access_lifetime,
            TokenKind::Refresh => self.config.refresh_lifetime,
        };
        let expires_at = now + chrono::Duration::seconds(lifetime.as_secs() as i64);
        let id = Uuid::new_v4();
        let claims = Claims {
            iss: ISSUER.to_string(),
            sub: user_id,
            iat: now.timestamp(),
            nbf: now.timestamp(),
            exp: expires_at.timestamp(),
            jti: id,
            token_use: kind,
            fam: family,
            role,
        };

        let mut header = Header::new(self.config.algorithm);
        header.kid = Some(self.config.current.id.clone());
        header.typ = Some(kind.header_type().to_string());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding_key)
            .map_err(TokenError::Signing)?;
        Ok(IssuedToken {
            token,
            id,
            expires_at,
        })
    }

    /// Verifies `token` as a token of `expected` kind at time `now`.
    pub fn verify(
        &self,
        token: &str,
        expected: TokenKind,
        now: DateTime<Utc>,
    ) -> Result<VerifiedToken, TokenError> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Invalid);
        }
        if expected == TokenKind::Access
            && let Some(verified) = self.remembered_access(token, now)
        {
            return Ok(verified);
        }
        let verified = self.verify_signed(token, expected, now)?;
        if expected == TokenKind::Access {
            self.remember_access(token, &verified);
        }
        Ok(verified)
    }

    /// Returns the claims of an access token that was verified before and
    /// has not expired at `now`, with the same leeway as a full check.
    fn remembered_access(&self, token: &str, now: DateTime<Utc>) -> Option<VerifiedToken> {
        let mut remembered = self.verified_list();
        let verified = remembered.get(token)?;
        if now.timestamp() > verified.expires_at.timestamp() + LEEWAY_SECONDS as i64 {
            remembered.remove(token);
            return None;
        }
        Some(verified.clone())
    }

    /// Remembers `token` as verified, emptying the list first when it is full.
    fn remember_access(&self, token: &str, verified: &VerifiedToken) {
        let mut remembered = self.verified_list();
        if remembered.len() >= REMEMBERED_TOKENS {
            remembered.clear();
        }
        remembered.insert(token.to_string(), verified.clone());
    }

    /// Locks the list of verified access tokens. A panic while it was held
    /// cannot leave the map half-changed, so a poisoned lock is still used.
    fn verified_list(&self) -> MutexGuard<'_, HashMap<String, VerifiedToken>> {
        self.verified_access
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks the signature, type, claims and times of `token`.
    fn verify_signed(
        &self,
        token: &str,
        expected: TokenKind,
        now: DateTime<Utc>,
    ) -> Result<VerifiedToken, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        if header.alg != self.config.algorithm
            || header.typ.as_deref() != Some(expected.header_type())
        {
            return Err(TokenError::Invalid);
        }
        let key = header
            .kid
            .as_ref()
            .and_then(|kid| self.decoding_keys.get(kid))
            .ok_or(TokenError::Invalid)?;

        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map_err(|_| TokenError::Invalid)?;
        let claims = data.claims;

        // The library checks exp and nbf but not iat: a token issued in the
        // future comes from a forged or badly skewed clock.
        if claims.iat > now.timestamp() + LEEWAY_SECONDS as i64 {
            return Err(TokenError::Invalid);
        }
        // The library checks exp against the system clock, and a remembered
        // token is checked against `now`, so the full check does the same.
        if claims.exp + (LEEWAY_SECONDS as i64) < now.timestamp() {
            return Err(TokenError::Invalid);
        }
        if claims.token_use != expected || (expected == TokenKind::Refresh) != claims.fam.is_some()
        {
            return Err(TokenError::Invalid);
        }
        let expires_at = DateTime::from_timestamp(claims.exp, 0).ok_or(TokenError::Invalid)?;
        Ok(VerifiedToken {
            user_id: claims.sub,
            role: claims.role,
            id: claims.jti,
            family: claims.fam,
            expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JwtKey;
    use base64_helpers::*;
    use secrecy::SecretString;
    use std::time::Duration;

    fn key(secret: &str, id: &str) -> JwtKey {
        JwtKey {
            id: id.to_string(),
            secret: SecretString::from(secret.to_string()),
        }
    }

    fn config(current: JwtKey, previous: Vec<JwtKey>) -> JwtConfig {
        JwtConfig {
            algorithm: jsonwebtoken::Algorithm::HS256,
            current,
            previous,
            access_lifetime: Duration::from_secs(3600),
            refresh_lifetime: Duration::from_secs(86_400),
        }
    }

    fn service(config: &JwtConfig) -> TokenService {
        TokenService::new(config).unwrap_or_else(|error| unreachable!("{error}"))
    }

    fn issue(service: &TokenService, kind: TokenKind, now: DateTime<Utc>) -> String {
        let family = (kind == TokenKind::Refresh).then(Uuid::new_v4);
        let role = (kind == TokenKind::Access).then_some(Role::Driver);
        match service.issue(kind, Uuid::new_v4(), role, family, now) {
            Ok(issued) => issued.token,
            Err(error) => unreachable!("{error}"),
        }
    }

    #[test]
    fn access_token_round_trip() {
        let tokens = service(&config(key(&"a".repeat(40), "k1"), vec![]));
        let now = Utc::now();
        let token = issue(&tokens, TokenKind::Access, now);
        let verified = tokens.verify(&token, TokenKind::Access, now);
        assert!(verified.is_ok(), "{verified:?}");
        assert_eq!(
            verified.ok().and_then(|token| token.role),
            Some(Role::Driver)
        );
    }

    #[test]
    fn access_token_without_role_verifies() {
        let tokens = service(&config(key(&"a".repeat(40), "k1"), vec![]));
        let now = Utc::now();
        let issued = tokens.issue(TokenKind::Access, Uuid::new_v4(), None, None, now);
        let token = issued.map(|issued| issued.token).unwrap_or_default();
        let verified = tokens.verify(&token, TokenKind::Access, now);
        assert!(verified.is_ok(), "{verified:?}");
        assert_eq!(verified.ok().and_then(|token| token.role), None);
    }

    #[test]
    fn kinds_do_not_stand_in_for_each_other() {
        let tokens = service(&config(key(&"a".repeat(40), "k1"), vec![]));
        let now = Utc::now();
        let access = issue(&tokens, TokenKind::Access, now);
        let refresh = issue(&tokens, TokenKind::Refresh, now);
        assert!(tokens.verify(&access, TokenKind::Refresh, now).is_err());
        assert!(tokens.verify(&refresh, TokenKind::Access, now).is_err());
        assert!(tokens.verify(&refresh, TokenKind::Refresh, now).is_ok());
    }

    #[test]
    fn expired_and_future_tokens_rejected() {
        let tokens = service(&config(key(&"a".repeat(40), "k1"), vec![]));
        let now = Utc::now();
        let old = issue(
            &tokens,
            TokenKind::Access,
            now - chrono::Duration::seconds(3600 + 60),
        );
        assert!(tokens.verify(&old, TokenKind::Access, now).is_err());
        let within_leeway = issue(
            &tokens,
            TokenKind::Access,
            now - chrono::Duration::seconds(3600 + 10),
        );
        assert!(
            tokens
                .verify(&within_leeway, TokenKind::Access, now)
                .is_ok()
        );
        let future = issue(
            &tokens,
            TokenKind::Access,
            now + chrono::Duration::seconds(600),
        );
        assert!(tokens.verify(&future, TokenKind::Access, now).is_err());
    }

    #[test]
    fn rotated_key_still_verifies() {
        let old_key = key(&"o".repeat(40), "old");
        let old = service(&config(old_key.clone(), vec![]));
        let now = Utc::now();
        let token = issue(&old, TokenKind::Access, now);

        let rotated = service(&config(key(&"n".repeat(40), "new"), vec![old_key]));
        assert!(rotated.verify(&token, TokenKind::Access, now).is_ok());
        let dropped = service(&config(key(&"n".repeat(40), "new"), vec![]));
        assert!(dropped.verify(&token, TokenKind::Access, now).is_err());
    }

    #[test]
    fn wrong_key_and_alg_none_rejected() {
        let tokens = service(&config(key(&"a".repeat(40), "k1"), vec![]));
        let other = service(&config(key(&"b".repeat(40), "k1"), vec![]));
        let now = Utc::now();
        let forged = issue(&other, TokenKind::Access, now);
        assert!(tokens.verify(&forged, TokenKind::Access, now).is_err());

        // An unsigned token with alg "none" and the right kid and typ.
        let genuine = issue(&tokens, TokenKind::Access, now);
        let payload = genuine.split('.').nth(1).unwrap_or_default();
        let header = encode_json(r#"{"alg":"none","typ":"at+jwt","kid":"k1"}"#);
        let unsigned = format!("{header}.{payload}.");
        assert!(tokens.verify(&unsigned, TokenKind::Access, now).is_err());

        // Every other HMAC algorithm is rejected too, even with the right key.
        let mut hs512 = config(key(&"a".repeat(40), "k1"), vec![]);
        hs512.algorithm = jsonwebtoken::Algorithm::HS512;
        let hs512_token = issue(&service(&hs512), TokenKind::Access, now);
        assert!(tokens.verify(&hs512_token, TokenKind::Access, now).is_err());
        assert!(tokens.verify("garbage", TokenKind::Access, now).is_err());
        assert!(
            tokens
                .verify(&"a".repeat(5000), TokenKind::Access, now)
                .is_err()
        );
    }

    #[test]
    fn remembered_token_still_expires() {
        let tokens = service(&config(key(&"a".repeat(40), "k1"), vec![]));
        let now = Utc::now();
        let token = issue(&tokens, TokenKind::Access, now);
        assert!(tokens.verify(&token, TokenKind::Access, now).is_ok());

        let within_leeway = now + chrono::Duration::seconds(3600 + 10);
        let past_leeway = now + chrono::Duration::seconds(3600 + LEEWAY_SECONDS as i64 + 1);
        assert!(
            tokens
                .verify(&token, TokenKind::Access, within_leeway)
                .is_ok()
        );
        assert!(
            tokens
                .verify(&token, TokenKind::Access, past_leeway)
                .is_err()
        );
    }

    #[test]
    fn remembered_access_token_not_refresh() {
        let tokens = service(&config(key(&"a".repeat(40), "k1"), vec![]));
        let now = Utc::now();
        let access = issue(&tokens, TokenKind::Access, now);
        assert!(tokens.verify(&access, TokenKind::Access, now).is_ok());
        assert!(tokens.verify(&access, TokenKind::Refresh, now).is_err());
    }

    #[test]
    fn full_token_list_is_emptied() {
        let tokens = service(&config(key(&"a".repeat(40), "k1"), vec![]));
        let now = Utc::now();
        let token = issue(&tokens, TokenKind::Access, now);
        let verified = tokens.verify(&token, TokenKind::Access, now);
        let Ok(verified) = verified else {
            unreachable!("{verified:?}")
        };
        for index in 1..REMEMBERED_TOKENS {
            tokens.remember_access(&format!("token-{index}"), &verified);
        }
        assert_eq!(tokens.verified_list().len(), REMEMBERED_TOKENS);

        tokens.remember_access("one more", &verified);
        assert_eq!(tokens.verified_list().len(), 1);
    }

    /// Base64url without padding, enough to forge a header in a test.
    mod base64_helpers {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

        pub fn encode_json(json: &str) -> String {
            let bytes = json.as_bytes();
            let mut output = String::new();
            for chunk in bytes.chunks(3) {
                let buffer = chunk.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b))
                    << (8 * (3 - chunk.len()));
                for index in 0..=chunk.len() {
                    output.push(ALPHABET[((buffer >> (18 - 6 * index)) & 63) as usize] as char);
                }
            }
            output
        }
    }
}
