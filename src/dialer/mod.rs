//! Outbound reminder campaigns: the dialing policy, campaign files and contact import.
pub mod campaign;
pub mod contacts;
pub mod outbound;
pub mod policy;
