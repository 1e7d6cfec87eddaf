//! What the appliance knows about the caller, shared by the lookup (`routing::customers`), the
//! call flow's routing rules and the call record. Plain data: no I/O.
use serde::{Deserialize, Serialize};

/// A caller's entry in the customer source (CSV/SQLite table or the HTTP hook).
/// Every field is optional: an unknown number yields `CallerProfile::default()`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallerProfile {
    /// The customer id in the bank's systems; `None` for an unknown number.
    pub customer_id: Option<String>,
    pub name: Option<String>,
    /// Age in whole years on the day of the call: given by the source, or computed from a birth
    /// date by the lookup.
    pub age: Option<u32>,
    /// Segment as the bank names it ("vip", "standard", ...), lower-cased by the lookup.
    pub segment: Option<String>,
    /// Preferred language ("en", "zh", "ko").
    pub language: Option<String>,
    /// An open complaint is on file for this customer.
    pub open_complaint: bool,
}

impl CallerProfile {
    pub fn is_known(&self) -> bool {
        self.customer_id.is_some()
    }
}

/// How the caller lookup ended; written to the call record with the profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LookupStatus {
    /// The source knew the number.
    Found,
    /// The source answered and does not know the number.
    NotFound,
    /// The HTTP hook failed or timed out; the fallback source (or nothing) was used.
    Fallback,
    /// No customer source is configured.
    Disabled,
}

/// The outcome of a voiceprint check as the call flow sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VoiceDecision {
    Accepted,
    Rejected,
    /// Less net speech than the configured minimum, or no voiceprint enrolled.
    NotEnoughSpeech,
    NotEnrolled,
}
