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

use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, PasswordHasher, Version};

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
    on_pool(move || verify_reusing_memory(&plain, &stored_hash)).await
}

std::thread_local! {
    /// Argon2's working memory, kept by each hashing thread between checks.
    /// Freed and reallocated for every login, these blocks stayed resident
    /// anyway: glibc's malloc raises its mmap threshold after the first
    /// free of a large block, and then keeps later ones in its heaps.
    static BLOCKS: std::cell::RefCell<Vec<Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Verifies like `Argon2::verify_password`, but with this thread's reused
/// working memory, and compares the outputs in constant time.
fn verify_reusing_memory(plain: &str, stored_hash: &str) -> bool {
    let Ok(hash) = PasswordHash::new(stored_hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return false;
    };
    let Ok(params) = Params::try_from(&hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(hash.algorithm.as_str()) else {
        return false;
    };
    let version = match hash.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(version)) => version,
        Some(Err(_)) => return false,
    };

    let argon2 = Argon2::new(algorithm, version, params.clone());
    let mut output = vec![0u8; expected.as_bytes().len()];
    let computed = BLOCKS.with(|blocks| {
        let mut blocks = blocks.borrow_mut();
        blocks.resize(params.block_count(), Block::default());
        argon2.hash_password_into_with_memory(
            plain.as_bytes(),
            salt.as_ref(),
            &mut output,
            &mut blocks[..],
        )
    });
    computed.is_ok() && constant_time_eq(&output, expected.as_bytes())
}

/// Compares two byte strings in time that depends only on their length.
fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len()
        && left
            .iter()
            .zip(right)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
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

    #[test]
    fn verify_reads_parameters_from_hash() {
        // A hash made with other parameters, as after a cost change, still
        // verifies, and the thread's memory is resized for it.
        let params = Params::new(8 * 1024, 3, 1, None).unwrap_or_default();
        let other = Argon2::new(Algorithm::Argon2i, Version::V0x13, params);
        let stored = other
            .hash_password(b"an older password")
            .map(|hash| hash.to_string());
        let Ok(stored) = stored else {
            unreachable!("hashing works")
        };
        assert!(verify_reusing_memory("an older password", &stored));
        assert!(!verify_reusing_memory("another password", &stored));
        let Ok(current) = hash_blocking("a current password") else {
            unreachable!("hashing works")
        };
        assert!(verify_reusing_memory("a current password", &current));
    }
}
