//! The IVR: dialplan files and the per-call flow state machine.
pub mod dialplan;
pub mod flow;
