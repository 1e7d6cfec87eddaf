//! The IVR: dialplan files, routing conditions, the caller profile and the per-call flow state machine.
pub mod caller;
pub mod dialplan;
pub mod flow;
pub mod routing;
