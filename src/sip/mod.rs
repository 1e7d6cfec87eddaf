//! SIP signalling: message parsing and limits, sans-IO transactions and dialogs, SDP offer/answer.
pub mod dialog;
pub mod digest;
pub mod endpoint;
pub mod message;
pub mod sdp;
pub mod transaction;
