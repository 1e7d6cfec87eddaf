//! SIGHUP / `warmline reload`: re-reads warmline.toml and the inbound dialplan without dropping
//! a call. Each call took its own `Arc` of the dialplan when it started (`run_call`), so swapping
//! the shared one only affects calls that start afterwards. A file that does not load is
//! rejected with its `file:line:column` diagnostics and the running configuration is kept.
//!
//! What applies live: `[ivr] dialplan` (and the dialplan file's content), `[log] level`.
//! Campaign files are read by the dialer when a campaign's planner starts, and the campaigns
//! table is polled every `poll_interval_ms`, so campaign changes need no reload at all. Other
//! sections (listen addresses, storage, RTP range, speech models, trunks, …) are bound at start:
//! a change to them is reported as needing a restart and otherwise ignored.
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use crate::config::{Config, ConfigError};
use crate::ivr::dialplan::{Dialplan, DialplanError};

use super::call::CallContext;

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Dialplan(#[from] DialplanError),
    #[error("reload task failed: {0}")]
    Task(String),
}

/// Applies a new `[log] level` filter; installed by `main` when it sets up logging.
pub type LogFilterSetter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;
static LOG_FILTER: OnceLock<LogFilterSetter> = OnceLock::new();

/// Lets a reload change the log filter (first call wins).
pub fn set_log_filter_setter(setter: LogFilterSetter) {
    let _ = LOG_FILTER.set(setter);
}

pub struct Reloader {
    path: Option<PathBuf>,
    running: Mutex<Config>,
    ctx: Arc<CallContext>,
    /// One reload at a time (SIGHUP and the control socket may race).
    busy: tokio::sync::Mutex<()>,
}

/// The sections that are bound at start, by name, with their current value for comparison.
fn restart_sections(cfg: &Config) -> Vec<(&'static str, String)> {
    vec![
        ("sip", format!("{:?}", cfg.sip)),
        ("rtp", format!("{:?}", cfg.rtp)),
        (
            "paths",
            format!(
                "{:?}",
                (
                    &cfg.paths.state_dir,
                    &cfg.paths.prompts,
                    &cfg.paths.campaigns
                )
            ),
        ),
        ("storage", format!("{:?}", cfg.storage)),
        ("dialer", format!("{:?}", cfg.dialer)),
        ("trunks", format!("{:?}", cfg.trunks)),
        ("speech", format!("{:?}", cfg.speech)),
        ("metrics", format!("{:?}", cfg.metrics)),
        ("control", format!("{:?}", cfg.control)),
        ("service", format!("{:?}", cfg.service)),
        ("ivr.answer_after_ms", cfg.ivr.answer_after_ms.to_string()),
        ("log.format", cfg.log.format.clone()),
    ]
}

/// Names of the start-bound sections that differ between `old` and `new`.
pub fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    restart_sections(old)
        .into_iter()
        .zip(restart_sections(new))
        .filter(|(a, b)| a.1 != b.1)
        .map(|(a, _)| a.0)
        .collect()
}

impl Reloader {
    pub fn new(path: Option<PathBuf>, running: Config, ctx: Arc<CallContext>) -> Reloader {
        Reloader {
            path,
            running: Mutex::new(running),
            ctx,
            busy: tokio::sync::Mutex::new(()),
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Config> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-reads everything; on success the new dialplan serves the next call and the summary
    /// says what changed. On error nothing changed.
    pub async fn reload(&self) -> Result<String, ReloadError> {
        let _one = self.busy.lock().await;
        let result = self.reload_inner().await;
        match &result {
            Ok(summary) => {
                super::metrics::RELOADS_OK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(summary = %summary, "reload: applied");
            }
            Err(e) => {
                super::metrics::RELOADS_FAILED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!("reload rejected, running configuration kept: {e}");
            }
        }
        result
    }

    async fn reload_inner(&self) -> Result<String, ReloadError> {
        let path = self.path.clone();
        let ctx = self.ctx.clone();
        // File reads, validation and prompt rendering are blocking work: off the reactor.
        let (new_cfg, dialplan, warnings) = tokio::task::spawn_blocking(move || {
            let cfg = Config::load(path.as_deref())?;
            // Prompts are checked against the ones loaded at start: calls play from those.
            let (dialplan, warnings) = Dialplan::load(&cfg.dialplan_path(), &*ctx.prompts)?;
            ctx.speech.prerender(&dialplan);
            Ok::<_, ReloadError>((cfg, dialplan, warnings))
        })
        .await
        .map_err(|e| ReloadError::Task(e.to_string()))??;
        for w in warnings {
            tracing::warn!("{w}");
        }
        let mut notes = Vec::new();
        let old_language = {
            let old = match self.ctx.dialplan.read() {
                Ok(d) => d.clone(),
                Err(p) => p.into_inner().clone(),
            };
            old.language().to_string()
        };
        if dialplan.language() != old_language {
            notes.push(format!(
                "dialplan language changed from {old_language} to {}: speech recognition for it starts with the next restart (keys work now)",
                dialplan.language()
            ));
        }
        notes.insert(0, format!("dialplan {}", dialplan.name()));
        let dialplan = Arc::new(dialplan);
        match self.ctx.dialplan.write() {
            Ok(mut d) => *d = dialplan,
            Err(p) => *p.into_inner() = dialplan,
        }
        let restart = {
            let mut running = self.running();
            let restart = needs_restart(&running, &new_cfg);
            if running.log.level != new_cfg.log.level {
                let env_wins = std::env::var_os("WARMLINE_LOG").is_some()
                    || std::env::var_os("RUST_LOG").is_some();
                match LOG_FILTER.get() {
                    Some(_) if env_wins => notes.push(
                        "log.level ignored: WARMLINE_LOG/RUST_LOG set in the environment".into(),
                    ),
                    Some(set) => match set(&new_cfg.log.level) {
                        Ok(()) => notes.push(format!("log level {}", new_cfg.log.level)),
                        Err(e) => notes.push(format!("log.level not applied: {e}")),
                    },
                    None => {}
                }
            }
            running.ivr.dialplan = new_cfg.ivr.dialplan.clone();
            running.log.level = new_cfg.log.level.clone();
            restart
        };
        if !restart.is_empty() {
            let what = restart.join(", ");
            tracing::warn!(sections = %what, "reload: these changes take effect at the next restart");
            notes.push(format!("restart needed for: {what}"));
        }
        Ok(notes.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn restart_sections_are_detected() {
        let a = Config::parse(Path::new("a.toml"), "").unwrap();
        let b = Config::parse(
            Path::new("b.toml"),
            "[ivr]\ndialplan = \"other\"\n[log]\nlevel = \"debug\"\n",
        )
        .unwrap();
        assert!(needs_restart(&a, &b).is_empty());
        let c = Config::parse(
            Path::new("c.toml"),
            "[sip]\nlisten = \"127.0.0.1:5070\"\n[metrics]\nlisten = \"127.0.0.1:9100\"\n",
        )
        .unwrap();
        assert_eq!(needs_restart(&a, &c), ["sip", "metrics"]);
    }
}
