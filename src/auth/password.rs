//! Argon2id password hashing, run on Tokio's blocking thread pool so that a
//! burst of logins never stalls the async worker threads.

use argon2::{Argon2, PasswordHasher, PasswordVerifier};

use crate::domain::value::Password;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("password hashing failed: {0}")]
    Hashing(String),
    #[error("the password hashing task did not finish: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Hashes `password` with Argon2id and the crate's default cost parameters
/// (19 MiB of memory, 2 passes, 1 lane, the OWASP minimum), returning a PHC
/// string that records the parameters with the salt.
pub async fn hash(password: &Password) -> Result<String, PasswordError> {
    let plain = password.expose().to_owned();
    tokio::task::spawn_blocking(move || hash_blocking(&plain)).await?
}

/// Synchronous form of [`hash`] for command-line use outside a runtime.
pub fn hash_blocking(plain: &str) -> Result<String, PasswordError> {
    Argon2::default()
        .hash_password(plain.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|error| PasswordError::Hashing(error.to_string()))
}

/// Checks `plain` against a stored PHC string. A malformed stored hash
/// counts as a mismatch, so it cannot be used to log in.
pub async fn verify(plain: String, stored_hash: String) -> Result<bool, PasswordError> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .verify_password(plain.as_bytes(), stored_hash.as_str())
            .is_ok()
    })
    .await
    .map_err(PasswordError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify() {
        let password = Password::parse("password", "correct horse battery".into());
        let Ok(password) = password else {
            unreachable!("valid password")
        };
        let Ok(stored) = hash(&password).await else {
            unreachable!("hashing works")
        };
        assert!(stored.starts_with("$argon2id$"));
        assert!(matches!(
            verify("correct horse battery".into(), stored.clone()).await,
            Ok(true)
        ));
        assert!(matches!(
            verify("wrong horse battery".into(), stored).await,
            Ok(false)
        ));
        assert!(matches!(
            verify("x".into(), "not a hash".into()).await,
            Ok(false)
        ));
    }
}
