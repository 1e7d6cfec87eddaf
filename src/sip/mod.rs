//! SIP signalling: message parsing and limits, sans-IO transactions and dialogs, SDP offer/answer,
//! server-side digest authentication, the agent registrar and the admission guard.
pub mod auth;
pub mod dialog;
pub mod digest;
pub mod endpoint;
pub mod guard;
pub mod message;
pub mod registrar;
pub mod sdp;
pub mod transaction;
