//! The one Stripe call we make, `POST /v1/billing/meter_events`, through
//! `async-stripe`, and what its answers mean for delivery.

use std::time::Duration;

use ::stripe::{Client, ClientBuilder, RequestStrategy, StripeError};
use rand::Rng;
use stripe_billing::billing_meter_event::CreateBillingMeterEvent;

/// Stripe accepts meter events whose timestamp is within the past 35
/// calendar days; we stop an hour short of it to leave room for retries.
pub const MAX_EVENT_AGE_SECS: u64 = 35 * 86_400 - 3_600;

/// One aggregated meter event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterEvent {
    /// The meter's `event_name`.
    pub event_name: String,
    /// The Stripe customer.
    pub customer: String,
    /// Frames.
    pub value: u64,
    /// Unix seconds the usage belongs to.
    pub timestamp: u64,
    /// Unique per (tenant, meter, window, first frame covered).
    pub identifier: String,
}

/// How a send ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Stripe accepted the event now.
    Accepted,
    /// Stripe already had this identifier: an earlier attempt got through.
    Duplicate,
}

/// A send that did not deliver.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Retries ran out on 429/5xx/timeouts; try again on the next pass.
    #[error("Stripe unavailable after {attempts} attempts: {last}")]
    Unavailable {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// Stripe refused the event for good (bad customer, unknown meter…).
    #[error("Stripe refused the meter event ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Stripe's message.
        message: String,
    },
}

/// The Stripe client with our retry policy. The key is never logged: it
/// lives only inside `async-stripe`'s client, as a sensitive header.
#[derive(Clone)]
pub struct StripeSender {
    client: Client,
    max_attempts: u32,
    base_backoff: Duration,
    max_backoff: Duration,
}

impl std::fmt::Debug for StripeSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeSender").finish_non_exhaustive()
    }
}

/// Whether an error is Stripe's answer to a reused `identifier`.
fn is_duplicate(status: u16, message: &str) -> bool {
    status == 400 && message.contains("already exists with identifier")
}

impl StripeSender {
    /// A sender to `api_base` (e.g. `https://api.stripe.com/`) with key
    /// `key`; `reporter` names this reporter in the User-Agent.
    pub fn new(
        api_base: &str,
        key: &str,
        timeout: Duration,
        reporter: &str,
    ) -> Result<Self, SendError> {
        let mut base = api_base.to_string();
        if !base.ends_with('/') {
            base.push('/');
        }
        let client = ClientBuilder::new(key)
            .url(base)
            .timeout(timeout)
            .request_strategy(RequestStrategy::Once)
            .app_info(
                "framegate",
                Some(env!("CARGO_PKG_VERSION").into()),
                Some(format!("reporter={reporter}")),
            )
            .build()
            .map_err(|e| SendError::Refused {
                status: 0,
                message: format!("bad Stripe client configuration: {e}"),
            })?;
        Ok(Self {
            client,
            max_attempts: 6,
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        })
    }

    /// Sets the retry policy: attempts per send and the backoff range.
    pub fn with_retries(mut self, max_attempts: u32, base: Duration, max: Duration) -> Self {
        self.max_attempts = max_attempts.max(1);
        self.base_backoff = base;
        self.max_backoff = max;
        self
    }

    /// Sends one event, retrying 429, 5xx, network errors and timeouts with
    /// exponential backoff and full jitter. Retries reuse the identifier, so
    /// an attempt that succeeded but whose answer was lost comes back as
    /// [`Delivery::Duplicate`].
    pub async fn send(&self, event: &MeterEvent) -> Result<(Delivery, u32), SendError> {
        let payload = std::collections::HashMap::from([
            ("stripe_customer_id".to_string(), event.customer.clone()),
            ("value".to_string(), event.value.to_string()),
        ]);
        let req = CreateBillingMeterEvent::new(event.event_name.clone(), payload)
            .identifier(event.identifier.clone())
            .timestamp(event.timestamp as i64);
        let mut last = String::new();
        let mut retried_after_send = false;
        for attempt in 0..self.max_attempts {
            if attempt > 0 {
                let cap = self
                    .base_backoff
                    .saturating_mul(1 << (attempt - 1).min(16))
                    .min(self.max_backoff);
                let wait = rand::thread_rng().gen_range(Duration::ZERO..=cap);
                tokio::time::sleep(wait).await;
            }
            match req.send(&self.client).await {
                Ok(_) => return Ok((Delivery::Accepted, attempt + 1)),
                Err(StripeError::Stripe(e, status)) => {
                    let message = e.message.clone().unwrap_or_default();
                    if is_duplicate(status, &message) {
                        if !retried_after_send {
                            tracing::debug!(identifier = %event.identifier, "meter event was already delivered");
                        }
                        return Ok((Delivery::Duplicate, attempt + 1));
                    }
                    if status == 429 || status == 409 || status >= 500 {
                        last = format!("{status}: {message}");
                        retried_after_send = true;
                        continue;
                    }
                    return Err(SendError::Refused { status, message });
                }
                Err(e) => {
                    // Timeouts, connection failures, unreadable answers: the
                    // event may or may not have arrived; the identifier
                    // makes the retry safe.
                    last = e.to_string();
                    retried_after_send = true;
                }
            }
        }
        Err(SendError::Unavailable {
            attempts: self.max_attempts,
            last,
        })
    }
}
