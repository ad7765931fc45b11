//! Rate limiting with the generic cell rate algorithm (GCRA).
//!
//! A limit of N requests per period is a bucket of N that refills
//! evenly, one request every period/N: a driver may scan a whole truck at
//! once, and then gets one scan back every period/N. Each bucket keeps one
//! number, its theoretical arrival time (TAT): the time at which the
//! bucket would be full again.
//!
//! Counts live in this process by default. With `REDIS_URL` they live in
//! Redis, so that every instance behind a load balancer shares them. When
//! Redis cannot be reached, each instance counts on its own until it can,
//! and logs a warning.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};

/// Buckets kept in process memory at most. Keys of unauthenticated clients
/// come from outside, so their number must not grow without bound.
const MAX_LOCAL_KEYS: usize = 100_000;

/// How long the limiter counts locally after a Redis failure before it
/// tries Redis again, so that a dead server does not slow every request.
const REDIS_RETRY_AFTER: Duration = Duration::from_secs(5);

/// How long one Redis command may take before it counts as a failure.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

/// A limit: `count` requests per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period: Duration,
}

impl Rate {
    pub fn per_hour(count: u32) -> Self {
        Self {
            count,
            period: Duration::from_secs(3600),
        }
    }

    fn period_ms(&self) -> u64 {
        self.period.as_millis().max(1) as u64
    }

    /// Returns the time one request takes to refill, in milliseconds.
    fn interval_ms(&self) -> u64 {
        (self.period_ms() / u64::from(self.count.max(1))).max(1)
    }
}

/// One counter: a key and its limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    pub key: String,
    pub rate: Rate,
}

impl Bucket {
    pub fn new(key: impl Into<String>, rate: Rate) -> Self {
        Self {
            key: key.into(),
            rate,
        }
    }
}

/// The treatment of full buckets by an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Counts the request in every bucket, or in none when any is full.
    Acquire,
    /// Counts nothing; only reports whether a request would fit.
    Peek,
    /// Counts the request in every bucket even when one is full.
    Charge,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Acquire => "acquire",
            Mode::Peek => "peek",
            Mode::Charge => "charge",
        }
    }
}

/// The limiter every request goes through.
pub struct RateLimiter {
    local: LocalCounts,
    redis: Option<RedisCounts>,
}

impl RateLimiter {
    /// Creates a limiter that counts in this process only.
    pub fn in_process() -> Self {
        Self {
            local: LocalCounts::new(),
            redis: None,
        }
    }

    /// Creates a limiter that shares counts through Redis at `url`. It does
    /// not connect yet, so start-up does not depend on Redis being up.
    pub fn with_redis(url: &SecretString, key_prefix: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url.expose_secret()).map_err(|error| {
            anyhow::anyhow!(
                "REDIS_URL cannot be used ({}). Fix: use a URL such as redis://127.0.0.1:6379/0",
                error.kind_text()
            )
        })?;
        // The address without the password, for log lines.
        let address = client.get_connection_info().addr().to_string();
        // No retries inside a request: the limiter falls back to local
        // counts at once and tries Redis again later.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(0);
        let manager = redis::aio::ConnectionManager::new_lazy_with_config(client, config).map_err(
            |error| anyhow::anyhow!("cannot set up the Redis connection: {}", error.kind_text()),
        )?;
        Ok(Self {
            local: LocalCounts::new(),
            redis: Some(RedisCounts {
                manager,
                address,
                prefix: format!("{key_prefix}rate:"),
                script: redis::Script::new(GCRA_SCRIPT),
                failed_at: Mutex::new(None),
            }),
        })
    }

    /// Returns whether counts are shared through Redis.
    pub fn is_shared(&self) -> bool {
        self.redis.is_some()
    }

    /// Sends Redis a PING and logs where the counts live. A failure
    /// is logged and switches to local counts, like a failure in a request.
    pub async fn probe(&self) {
        let Some(redis) = &self.redis else {
            tracing::info!("rate-limit counts are kept in this process");
            return;
        };
        let mut connection = redis.manager.clone();
        let answer: Result<String, redis::RedisError> =
            redis::cmd("PING").query_async(&mut connection).await;
        match answer {
            Ok(_) => {
                tracing::info!(redis = %redis.address, "rate-limit counts are shared through Redis")
            }
            Err(error) => redis.record_failure(&error),
        }
    }

    /// Counts a request in every bucket when all have room. Otherwise
    /// counts nothing and returns how long to wait.
    pub async fn acquire(&self, buckets: &[Bucket]) -> Result<(), Duration> {
        self.update(Mode::Acquire, buckets).await
    }

    /// Returns how long to wait when a request would not fit in every
    /// bucket, without counting it.
    pub async fn peek(&self, buckets: &[Bucket]) -> Result<(), Duration> {
        self.update(Mode::Peek, buckets).await
    }

    /// Counts a request in every bucket, full or not.
    pub async fn charge(&self, buckets: &[Bucket]) {
        let _ = self.update(Mode::Charge, buckets).await;
    }

    /// Gives back one request counted in `bucket`, for work that turned out
    /// not to count, such as a replayed scan.
    pub async fn release(&self, bucket: &Bucket) {
        if let Some(redis) = self.available_redis() {
            let released = redis.release(bucket).await;
            match released {
                Ok(()) => return,
                Err(error) => redis.record_failure(&error),
            }
        }
        self.local.release(bucket, self.local.now_ms());
    }

    /// Forgets a bucket, as after a successful login.
    pub async fn reset(&self, key: &str) {
        if let Some(redis) = self.available_redis() {
            match redis.reset(key).await {
                Ok(()) => return,
                Err(error) => redis.record_failure(&error),
            }
        }
        self.local.reset(key);
    }

    async fn update(&self, mode: Mode, buckets: &[Bucket]) -> Result<(), Duration> {
        if buckets.is_empty() {
            return Ok(());
        }
        if let Some(redis) = self.available_redis() {
            match redis.update(mode, buckets).await {
                Ok(wait_ms) => return wait_result(wait_ms),
                Err(error) => redis.record_failure(&error),
            }
        }
        wait_result(self.local.update(mode, buckets, self.local.now_ms()))
    }

    fn available_redis(&self) -> Option<&RedisCounts> {
        self.redis.as_ref().filter(|redis| redis.is_available())
    }
}

fn wait_result(wait_ms: u64) -> Result<(), Duration> {
    if wait_ms == 0 {
        Ok(())
    } else {
        Err(Duration::from_millis(wait_ms))
    }
}

/// Returns a wait as the whole seconds a client should put in Retry-After:
/// rounded up, and at least one.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    seconds.max(1)
}

/// Computes the GCRA step for one bucket: the new TAT if the request is counted, and
/// how many milliseconds too early it is (0 when it fits).
fn step(stored_tat: Option<u64>, rate: Rate, now: u64) -> (u64, u64) {
    let tat = stored_tat.unwrap_or(now).max(now);
    let next = tat + rate.interval_ms();
    let wait = (next - now).saturating_sub(rate.period_ms());
    (next, wait)
}

/// Counts in a map inside this process.
struct LocalCounts {
    started: Instant,
    tats: Mutex<HashMap<String, u64>>,
    full_warned_at: Mutex<Option<Instant>>,
}

impl LocalCounts {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            tats: Mutex::new(HashMap::new()),
            full_warned_at: Mutex::new(None),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn update(&self, mode: Mode, buckets: &[Bucket], now: u64) -> u64 {
        let mut tats = self
            .tats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut wait = 0;
        let mut next = Vec::with_capacity(buckets.len());
        for bucket in buckets {
            let (tat, too_early) = step(tats.get(&bucket.key).copied(), bucket.rate, now);
            wait = wait.max(too_early);
            next.push(tat);
        }
        let write = match mode {
            Mode::Acquire => wait == 0,
            Mode::Peek => false,
            Mode::Charge => true,
        };
        if write {
            for (bucket, tat) in buckets.iter().zip(next) {
                if !tats.contains_key(&bucket.key) && tats.len() >= MAX_LOCAL_KEYS {
                    // Buckets whose TAT has passed are full again, the same
                    // as absent ones, so they can go.
                    tats.retain(|_, tat| *tat > now);
                    if tats.len() >= MAX_LOCAL_KEYS {
                        self.warn_full();
                        continue;
                    }
                }
                tats.insert(bucket.key.clone(), tat);
            }
        }
        wait
    }

    fn release(&self, bucket: &Bucket, now: u64) {
        let mut tats = self
            .tats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(tat) = tats.get_mut(&bucket.key) {
            *tat = tat.saturating_sub(bucket.rate.interval_ms());
            if *tat <= now {
                tats.remove(&bucket.key);
            }
        }
    }

    fn reset(&self, key: &str) {
        let mut tats = self
            .tats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        tats.remove(key);
    }

    /// Logs, at most once a minute, that new clients go uncounted.
    fn warn_full(&self) {
        let mut warned = self
            .full_warned_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if warned.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
            *warned = Some(Instant::now());
            tracing::warn!(
                buckets = MAX_LOCAL_KEYS,
                "the in-process rate limiter is full; requests from new clients are not counted until buckets refill"
            );
        }
    }
}

/// Updates every bucket in one atomic step, with Redis's own clock, so that
/// instances whose clocks differ still agree. KEYS are the buckets; ARGV is
/// the mode, then each bucket's refill interval and period in milliseconds.
/// Returns the wait in milliseconds, 0 when the request fits.
const GCRA_SCRIPT: &str = r#"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local mode = ARGV[1]
local wait = 0
local next = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i])
  local period = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  next[i] = tat + interval
  local early = next[i] - now - period
  if early > wait then wait = early end
end
if mode == 'peek' or (mode == 'acquire' and wait > 0) then
  return wait
end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, next[i], 'PX', next[i] - now)
end
return wait
"#;

/// Gives back one interval of a bucket. ARGV is the interval in
/// milliseconds.
const RELEASE_SCRIPT: &str = r#"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat then return 0 end
tat = tat - tonumber(ARGV[1])
if tat <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], tat, 'PX', tat - now)
end
return 0
"#;

/// Counts in Redis, shared by every instance.
struct RedisCounts {
    manager: redis::aio::ConnectionManager,
    /// Host and port, never the password.
    address: String,
    prefix: String,
    script: redis::Script,
    failed_at: Mutex<Option<Instant>>,
}

impl RedisCounts {
    fn is_available(&self) -> bool {
        let failed_at = self
            .failed_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        failed_at.is_none_or(|at| at.elapsed() >= REDIS_RETRY_AFTER)
    }

    /// Switches to local counts for a while, with one warning per outage.
    fn record_failure(&self, error: &redis::RedisError) {
        let mut failed_at = self
            .failed_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if failed_at.is_none() {
            tracing::warn!(
                redis = %self.address,
                error = error.kind_text(),
                "Redis is unreachable; each instance now enforces rate limits on its own counts"
            );
        }
        *failed_at = Some(Instant::now());
    }

    fn record_success(&self) {
        let mut failed_at = self
            .failed_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if failed_at.take().is_some() {
            tracing::info!(redis = %self.address, "Redis is reachable again; rate-limit counts are shared");
        }
    }

    async fn update(&self, mode: Mode, buckets: &[Bucket]) -> Result<u64, redis::RedisError> {
        let mut invocation = self.script.prepare_invoke();
        for bucket in buckets {
            invocation.key(format!("{}{}", self.prefix, bucket.key));
        }
        invocation.arg(mode.as_str());
        for bucket in buckets {
            invocation
                .arg(bucket.rate.interval_ms())
                .arg(bucket.rate.period_ms());
        }
        let mut connection = self.manager.clone();
        let wait: i64 = invocation.invoke_async(&mut connection).await?;
        self.record_success();
        Ok(wait.max(0) as u64)
    }

    async fn release(&self, bucket: &Bucket) -> Result<(), redis::RedisError> {
        let mut connection = self.manager.clone();
        let _: i64 = redis::Script::new(RELEASE_SCRIPT)
            .key(format!("{}{}", self.prefix, bucket.key))
            .arg(bucket.rate.interval_ms())
            .invoke_async(&mut connection)
            .await?;
        self.record_success();
        Ok(())
    }

    async fn reset(&self, key: &str) -> Result<(), redis::RedisError> {
        let mut connection = self.manager.clone();
        let _: i64 = redis::cmd("DEL")
            .arg(format!("{}{key}", self.prefix))
            .query_async(&mut connection)
            .await?;
        self.record_success();
        Ok(())
    }
}

trait KindText {
    /// Returns a description of an error that never contains the URL,
    /// which may hold a password.
    fn kind_text(&self) -> String;
}

impl KindText for redis::RedisError {
    fn kind_text(&self) -> String {
        format!("{:?}", self.kind())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(key: &str, count: u32, seconds: u64) -> Bucket {
        Bucket::new(
            key,
            Rate {
                count,
                period: Duration::from_secs(seconds),
            },
        )
    }

    #[test]
    fn burst_then_refill() {
        let counts = LocalCounts::new();
        let scans = bucket("scan:a", 100, 3600);
        for _ in 0..100 {
            assert_eq!(
                counts.update(Mode::Acquire, std::slice::from_ref(&scans), 0),
                0
            );
        }
        // The 101st waits exactly one refill interval: 3600 s / 100.
        assert_eq!(
            counts.update(Mode::Acquire, std::slice::from_ref(&scans), 0),
            36_000
        );
        assert_eq!(
            counts.update(Mode::Acquire, std::slice::from_ref(&scans), 10_000),
            26_000
        );
        assert_eq!(
            counts.update(Mode::Acquire, std::slice::from_ref(&scans), 36_000),
            0
        );
        assert_eq!(
            counts.update(Mode::Acquire, std::slice::from_ref(&scans), 36_000),
            36_000
        );
    }

    #[test]
    fn refused_requests_do_not_count() {
        let counts = LocalCounts::new();
        let login = bucket("ip:a", 2, 60);
        let batch = std::slice::from_ref(&login);
        assert_eq!(counts.update(Mode::Acquire, batch, 0), 0);
        assert_eq!(counts.update(Mode::Acquire, batch, 0), 0);
        for _ in 0..50 {
            assert_eq!(counts.update(Mode::Acquire, batch, 0), 30_000);
        }
        assert_eq!(counts.update(Mode::Acquire, batch, 30_000), 0);
    }

    #[test]
    fn all_or_nothing_across_buckets() {
        let counts = LocalCounts::new();
        let roomy = bucket("api:a", 10, 60);
        let tight = bucket("scan:a", 1, 60);
        let both = [roomy.clone(), tight.clone()];
        assert_eq!(counts.update(Mode::Acquire, &both, 0), 0);
        assert_eq!(counts.update(Mode::Acquire, &both, 0), 60_000);
        // The refused second request left the roomy bucket as it was.
        let lone = std::slice::from_ref(&roomy);
        for _ in 0..9 {
            assert_eq!(counts.update(Mode::Acquire, lone, 0), 0);
        }
        assert_eq!(counts.update(Mode::Acquire, lone, 0), 6_000);
    }

    #[test]
    fn peek_charge_release_reset() {
        let counts = LocalCounts::new();
        let failures = bucket("login:a", 1, 60);
        let batch = std::slice::from_ref(&failures);
        assert_eq!(counts.update(Mode::Peek, batch, 0), 0);
        assert_eq!(counts.update(Mode::Charge, batch, 0), 0);
        assert_eq!(counts.update(Mode::Peek, batch, 0), 60_000);
        assert_eq!(counts.update(Mode::Charge, batch, 0), 60_000);
        assert_eq!(counts.update(Mode::Peek, batch, 0), 120_000);
        counts.release(&failures, 0);
        assert_eq!(counts.update(Mode::Peek, batch, 0), 60_000);
        counts.reset("login:a");
        assert_eq!(counts.update(Mode::Peek, batch, 0), 0);
    }

    #[test]
    fn local_keys_are_bounded() {
        let counts = LocalCounts::new();
        for index in 0..MAX_LOCAL_KEYS + 10 {
            let client = bucket(&format!("ip:{index}"), 5, 60);
            counts.update(Mode::Acquire, std::slice::from_ref(&client), 0);
        }
        let stored = counts
            .tats
            .lock()
            .map(|tats| tats.len())
            .unwrap_or_default();
        assert_eq!(stored, MAX_LOCAL_KEYS);
        // Once those buckets have refilled, new clients are counted again.
        let late = bucket("ip:late", 5, 60);
        counts.update(Mode::Acquire, std::slice::from_ref(&late), 61_000);
        let stored = counts
            .tats
            .lock()
            .map(|tats| tats.len())
            .unwrap_or_default();
        assert_eq!(stored, 1);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(36_000)), 36);
        assert_eq!(retry_after_seconds(Duration::from_millis(35_001)), 36);
    }
}
