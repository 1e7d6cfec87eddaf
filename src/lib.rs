//! warmline: an on-prem voice appliance.
//!
//! Protocol and decision logic lives in sans-IO state machines (`sip`, `media`, `ivr`);
//! the tokio shell in `ops` owns sockets, timers and the database (`store`).
pub mod config;
pub mod dialer;
pub mod ivr;
pub mod media;
pub mod ops;
pub mod routing;
pub mod sip;
pub mod speech;
pub mod store;
pub(crate) mod tomlcheck;
