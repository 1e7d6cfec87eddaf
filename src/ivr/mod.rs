//! The IVR: dialplan files, the caller profile and the per-call flow state machine.
pub mod caller;
pub mod dialplan;
pub mod flow;
