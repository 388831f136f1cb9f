//! How often, and how patiently, an operation is retried.

use std::time::Duration;

use uuid::Uuid;

/// How often, and how patiently, an operation is retried: a command after a version
/// conflict (each retry reloads the aggregate and decides again), or, in a
/// [`RunnerConfig`](crate::RunnerConfig), a projection's failing batch or store call. The delay before retry `k`
/// (1-based) is a random duration up to `min(base_delay * 2^(k-1), max_delay)`
/// ("full jitter"), so competing writers spread out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// The delay scale of the first retry.
    pub base_delay: Duration,
    /// The longest delay before one retry.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// Eight attempts, delays from up to 1 ms to at most 100 ms.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(100),
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retry.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The default delays with `max_attempts` attempts in all.
    pub fn attempts(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            ..Self::default()
        }
    }

    /// The (jittered) delay before retry number `retry` (1-based).
    pub(crate) fn delay(&self, retry: u32) -> Duration {
        let cap = self
            .base_delay
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
            .min(self.max_delay);
        // Full jitter from the random bits of a v4 UUID: no extra dependency needed.
        let fraction = (Uuid::new_v4().as_u128() % 1_000) as u32;
        cap.mul_f64(f64::from(fraction) / 1_000.0)
    }
}

/// Runs `$op` under a [`RetryPolicy`]: the one retry loop of the projection runner.
///
/// `$op` is an expression of type `Result<T, E>` (typically ending in `.await`),
/// evaluated again for each attempt; `$on_retry` is called as `(attempt, &error)` for
/// each failure that will be retried, before the policy's delay. The whole expression is
/// `Result<T, (E, u32)>`: the value, or the last error and the attempts made. A macro
/// rather than a function taking a closure, so that `$op` may borrow the caller's state
/// mutably for each attempt (an async closure would, but its future cannot be proven
/// `Send` for every lifetime, which a spawned runner needs).
macro_rules! retry {
    ($policy:expr, $op:expr, $on_retry:expr $(,)?) => {{
        let policy: $crate::RetryPolicy = $policy;
        #[allow(unused_mut)] // an `Fn` needs no `mut`, an `FnMut` does
        let mut on_retry = $on_retry;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            match $op {
                Ok(value) => break Ok(value),
                Err(error) if attempt >= policy.max_attempts => break Err((error, attempt)),
                Err(error) => {
                    on_retry(attempt, &error);
                    tokio::time::sleep(policy.delay(attempt)).await;
                }
            }
        }
    }};
}

pub(crate) use retry;
