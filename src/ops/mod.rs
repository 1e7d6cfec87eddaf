//! The tokio shell: sockets, timers, per-call tasks and the database around the sans-IO cores.
pub mod acd;
pub mod agent_leg;
pub mod call;
pub mod campaign;
pub mod check;
pub mod control;
pub mod customers;
pub mod dialer;
pub mod metrics;
pub mod outbound;
pub mod ports;
pub mod reload;
pub mod server;
pub mod simulate;
pub mod speech;
pub mod systemd;
pub mod transport;
pub mod voiceprint;

use crate::media::codec::CodecKind;

/// Codec names as operators write them in `warmline.toml`.
pub fn codec_from_name(name: &str) -> Option<CodecKind> {
    match name.to_ascii_lowercase().as_str() {
        "pcmu" | "ulaw" | "g711u" => Some(CodecKind::Pcmu),
        "pcma" | "alaw" | "g711a" => Some(CodecKind::Pcma),
        "opus" => Some(CodecKind::Opus),
        _ => None,
    }
}

impl crate::ivr::dialplan::PromptCatalog for crate::media::prompt::PromptStore {
    fn has_prompt(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
    fn prompt_names(&self) -> Vec<String> {
        self.names().map(str::to_string).collect()
    }
}
