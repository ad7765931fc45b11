//! Argon2id password hashing on a small pool of dedicated threads, so that
//! a burst of logins never stalls the async worker threads.
//!
//! Each hash needs 19 MiB. On Tokio's blocking pool, every thread that ever
//! hashed would keep such a block in its own malloc arena, and resident
//! memory would grow with the number of threads used. A fixed pool of one
//! thread per CPU bounds it, and queues the work of a login flood instead
//! of running it all at once.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};

use argon2::{Argon2, PasswordHasher, PasswordVerifier};

use crate::domain::value::Password;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("password hashing failed: {0}")]
    Hashing(String),
    #[error("the password hashing threads stopped")]
    PoolStopped,
}

type Job = Box<dyn FnOnce() + Send>;

/// Most hashing threads, whatever the number of CPUs.
const MAX_THREADS: usize = 4;

/// Returns the queue of the hashing threads, starting them on first use.
fn pool() -> &'static Mutex<Sender<Job>> {
    static POOL: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (sender, receiver) = channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        let threads = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(MAX_THREADS);
        for index in 0..threads {
            let receiver = receiver.clone();
            let started = std::thread::Builder::new()
                .name(format!("argon2-{index}"))
                .spawn(move || run_jobs(&receiver));
            if let Err(error) = started {
                tracing::error!(error = %error, "cannot start a password hashing thread");
            }
        }
        Mutex::new(sender)
    })
}

fn run_jobs(receiver: &Mutex<Receiver<Job>>) {
    loop {
        let job = match receiver.lock() {
            Ok(queue) => queue.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

/// Runs `work` on a hashing thread and waits for its result.
async fn on_pool<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PasswordError> {
    let (reply, result) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        // The caller may have gone away; then the result is not needed.
        let _ = reply.send(work());
    });
    pool()
        .lock()
        .map_err(|_| PasswordError::PoolStopped)?
        .send(job)
        .map_err(|_| PasswordError::PoolStopped)?;
    result.await.map_err(|_| PasswordError::PoolStopped)
}

/// Hashes `password` with Argon2id and the crate's default cost parameters
/// (19 MiB of memory, 2 passes, 1 lane, the OWASP minimum), returning a PHC
/// string that records the parameters with the salt.
pub async fn hash(password: &Password) -> Result<String, PasswordError> {
    let plain = password.expose().to_owned();
    on_pool(move || hash_blocking(&plain)).await?
}

/// Synchronous form of [`hash`] for start-up and command-line use.
pub fn hash_blocking(plain: &str) -> Result<String, PasswordError> {
    Argon2::default()
        .hash_password(plain.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|error| PasswordError::Hashing(error.to_string()))
}

/// Checks `plain` against a stored PHC string. A malformed stored hash
/// counts as a mismatch, so it cannot be used to log in.
pub async fn verify(plain: String, stored_hash: String) -> Result<bool, PasswordError> {
    on_pool(move || {
        Argon2::default()
            .verify_password(plain.as_bytes(), stored_hash.as_str())
            .is_ok()
    })
    .await
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
