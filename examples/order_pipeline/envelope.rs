//! The event envelope every service speaks.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope<T> {
    pub event_id: String,
    pub event_type: String,
    pub event_version: u32,
    /// RFC 3339, UTC.
    pub timestamp: String,
    pub correlation_id: String,
    pub causation_id: Option<String>,
    pub data: T,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderCreated {
    pub order_id: String,
    pub customer_id: String,
    pub amount_cents: u64,
    /// ISO 4217; OrderCreated v2 only (v1 events leave it out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Item {
    pub sku: String,
    pub quantity: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FollowUp {
    pub order_id: String,
    pub detail: String,
}

impl<T: Serialize> Envelope<T> {
    pub fn new(
        event_type: &str,
        correlation_id: String,
        causation_id: Option<String>,
        data: T,
    ) -> Self {
        Self {
            event_id: eventscope::message::new_id(),
            event_type: event_type.to_owned(),
            event_version: 1,
            timestamp: rfc3339_now(),
            correlation_id,
            causation_id,
            data,
        }
    }

    /// The event's schema version (default 1).
    pub fn version(mut self, version: u32) -> Self {
        self.event_version = version;
        self
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("envelopes serialize")
    }
}

/// Current UTC time as RFC 3339 with milliseconds, without a date crate.
fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (secs, millis) = (now.as_secs() as i64, now.subsec_millis());
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
