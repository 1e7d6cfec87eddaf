//! The local control socket (`[control] socket`, mode 0660): `warmline status [--json]` and
//! `warmline reload` talk to the running daemon through it. One request line (`status` or
//! `reload`), one JSON line back, then the daemon closes the connection.
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "control socket {path} answers: another warmline is running with this state directory"
    )]
    InUse { path: PathBuf },
    #[error(
        "cannot reach warmline at {path}: {source} (is `warmline serve` running with this config?)"
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("warmline at {path} sent an unreadable answer: {message}")]
    Protocol { path: PathBuf, message: String },
}

/// One call as `warmline status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallStatus {
    pub call_id: String,
    pub from: String,
    /// "setup" until the caller's ACK, then "up".
    pub state: String,
    pub duration_s: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CampaignLine {
    pub name: String,
    pub status: String,
    pub contacts_by_state: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrunkLine {
    pub name: String,
    pub address: String,
    /// `None` when the trunk does not register or no answer came yet.
    pub registered: Option<bool>,
    pub register: bool,
    pub backoff_s: u64,
}

/// What `status` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
    pub pid: u32,
    pub node: String,
    pub uptime_s: u64,
    pub draining: bool,
    pub dialplan: String,
    pub dialer_in_flight: u64,
    pub calls: Vec<CallStatus>,
    pub campaigns: Vec<CampaignLine>,
    pub trunks: Vec<TrunkLine>,
}

/// What `reload` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadReply {
    pub ok: bool,
    pub message: String,
}

struct CallEntry {
    from: String,
    up: bool,
    started: Instant,
}

/// The inbound calls in progress, kept by the spawner for `status`.
#[derive(Default)]
pub struct CallRegistry {
    calls: Mutex<BTreeMap<String, CallEntry>>,
}

impl CallRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, CallEntry>> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, call_id: &str, from: &str, now: Instant) {
        self.lock().insert(
            call_id.to_string(),
            CallEntry {
                from: from.to_string(),
                up: false,
                started: now,
            },
        );
    }

    /// The caller's ACK arrived.
    pub fn mark_up(&self, call_id: &str) {
        if let Some(c) = self.lock().get_mut(call_id) {
            c.up = true;
        }
    }

    pub fn remove(&self, call_id: &str) {
        self.lock().remove(call_id);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    pub fn snapshot(&self, now: Instant) -> Vec<CallStatus> {
        self.lock()
            .iter()
            .map(|(id, c)| CallStatus {
                call_id: id.clone(),
                from: c.from.clone(),
                state: if c.up { "up" } else { "setup" }.into(),
                duration_s: now.saturating_duration_since(c.started).as_secs(),
            })
            .collect()
    }
}

/// What the control socket needs from the running daemon.
pub struct ControlState {
    pub registry: Arc<CallRegistry>,
    pub reloader: Arc<super::reload::Reloader>,
    pub exporter: Arc<super::metrics::Exporter>,
    pub ctx: Arc<super::call::CallContext>,
    pub dialer: Arc<super::dialer::Dialer>,
    pub cfg: Arc<Config>,
    pub draining: Arc<AtomicBool>,
    pub started: Instant,
}

impl ControlState {
    pub async fn status(&self) -> StatusReport {
        let dialplan = match self.ctx.dialplan.read() {
            Ok(d) => d.name().to_string(),
            Err(p) => p.into_inner().name().to_string(),
        };
        let runtime = super::metrics::trunk_runtime();
        let trunks = self
            .cfg
            .trunks
            .iter()
            .map(|(name, t)| {
                let rt = runtime.get(name).cloned().unwrap_or_default();
                TrunkLine {
                    name: name.clone(),
                    address: t.address.clone(),
                    registered: rt.registered,
                    register: t.register,
                    backoff_s: rt.backoff_s,
                }
            })
            .collect();
        let campaigns = self
            .exporter
            .campaigns()
            .await
            .into_iter()
            .map(|g| CampaignLine {
                name: g.name,
                status: g.status,
                contacts_by_state: g.contacts_by_state,
            })
            .collect();
        StatusReport {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            node: self.dialer.node().to_string(),
            uptime_s: self.started.elapsed().as_secs(),
            draining: self.draining.load(Ordering::Relaxed),
            dialplan,
            dialer_in_flight: u64::from(self.dialer.in_flight()),
            calls: self.registry.snapshot(Instant::now()),
            campaigns,
            trunks,
        }
    }
}

/// Binds the socket (removing a stale one left by a crash), mode 0660.
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse {
                path: path.to_path_buf(),
            });
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(io)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
    Ok(listener)
}

/// Answers requests until the task is dropped.
pub async fn serve(listener: tokio::net::UnixListener, state: Arc<ControlState>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &state).await {
                tracing::debug!(error = %e, "control: request failed");
            }
        });
    }
}

async fn answer(stream: tokio::net::UnixStream, state: &ControlState) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
    let got = tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await;
    if !matches!(got, Ok(Ok(_))) {
        return Ok(());
    }
    let reply = match line.trim() {
        "status" => serde_json::to_string(&state.status().await),
        "reload" => {
            let r = match state.reloader.reload().await {
                Ok(message) => ReloadReply { ok: true, message },
                Err(e) => ReloadReply {
                    ok: false,
                    message: e.to_string(),
                },
            };
            serde_json::to_string(&r)
        }
        other => serde_json::to_string(&ReloadReply {
            ok: false,
            message: format!(
                "unknown request '{}': use status or reload",
                other.escape_default()
            ),
        }),
    }
    .unwrap_or_else(|e| format!("{{\"ok\":false,\"message\":\"{e}\"}}"));
    write.write_all(reply.as_bytes()).await?;
    write.write_all(b"\n").await?;
    write.shutdown().await
}

/// A request line longer than this is not one of ours.
const MAX_REQUEST: u64 = 256;

/// Sends one request and reads the JSON answer (blocking: the CLI has no runtime).
pub fn request(path: &Path, what: &str, timeout: Duration) -> Result<String, ControlError> {
    let connect = |source| ControlError::Connect {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(connect)?;
    stream.set_read_timeout(Some(timeout)).map_err(connect)?;
    stream
        .write_all(format!("{what}\n").as_bytes())
        .map_err(connect)?;
    let mut line = String::new();
    BufReader::new(stream)
        .take(4 << 20)
        .read_line(&mut line)
        .map_err(connect)?;
    Ok(line)
}

/// `warmline status [--json]`.
pub fn run_status(cfg: &Config, json: bool) -> ExitCode {
    let path = cfg.control_socket();
    let report = request(&path, "status", Duration::from_secs(10)).and_then(|line| {
        serde_json::from_str::<StatusReport>(&line).map_err(|e| ControlError::Protocol {
            path: path.clone(),
            message: e.to_string(),
        })
    });
    match report {
        Ok(r) if json => match serde_json::to_string_pretty(&r) {
            Ok(s) => {
                println!("{s}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Ok(r) => {
            print!("{}", render_status(&r));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `warmline reload`: what SIGHUP does, with the outcome printed.
pub fn run_reload(cfg: &Config) -> ExitCode {
    let path = cfg.control_socket();
    let reply = request(&path, "reload", Duration::from_secs(120)).and_then(|line| {
        serde_json::from_str::<ReloadReply>(&line).map_err(|e| ControlError::Protocol {
            path: path.clone(),
            message: e.to_string(),
        })
    });
    match reply {
        Ok(r) if r.ok => {
            println!("reloaded: {}", r.message);
            ExitCode::SUCCESS
        }
        Ok(r) => {
            eprintln!(
                "reload rejected (the running configuration is kept):\n{}",
                r.message
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The human form of a status report.
pub fn render_status(r: &StatusReport) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "warmline {} pid {} node {} up {}s{} dialplan {}",
        r.version,
        r.pid,
        r.node,
        r.uptime_s,
        if r.draining { " DRAINING" } else { "" },
        r.dialplan
    );
    let _ = writeln!(
        o,
        "\ncalls: {} inbound, {} outbound in flight",
        r.calls.len(),
        r.dialer_in_flight
    );
    if !r.calls.is_empty() {
        let _ = writeln!(
            o,
            "  {:<40} {:<32} {:<6} {:>8}",
            "CALL-ID", "FROM", "STATE", "SECONDS"
        );
        for c in &r.calls {
            let _ = writeln!(
                o,
                "  {:<40} {:<32} {:<6} {:>8}",
                c.call_id, c.from, c.state, c.duration_s
            );
        }
    }
    let _ = writeln!(o, "\ncampaigns: {}", r.campaigns.len());
    for c in &r.campaigns {
        let counts: Vec<String> = c
            .contacts_by_state
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(o, "  {:<24} {:<8} {}", c.name, c.status, counts.join(", "));
    }
    let _ = writeln!(o, "\ntrunks: {}", r.trunks.len());
    for t in &r.trunks {
        let reg = match (t.register, t.registered) {
            (false, _) => "no registration",
            (true, None) => "registering",
            (true, Some(true)) => "registered",
            (true, Some(false)) => "REGISTRATION FAILED",
        };
        let backoff = if t.backoff_s > 0 {
            format!(", backing off {}s", t.backoff_s)
        } else {
            String::new()
        };
        let _ = writeln!(o, "  {:<16} {:<24} {reg}{backoff}", t.name, t.address);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_tracks_state_and_duration() {
        let reg = CallRegistry::default();
        let t0 = Instant::now();
        reg.insert("c1", "sip:1001@x", t0);
        reg.insert("c2", "sip:1002@x", t0 + Duration::from_secs(2));
        reg.mark_up("c1");
        reg.mark_up("unknown");
        let s = reg.snapshot(t0 + Duration::from_secs(5));
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].state.as_str(), s[0].duration_s), ("up", 5));
        assert_eq!((s[1].state.as_str(), s[1].duration_s), ("setup", 3));
        // A clock that reads earlier than the start never underflows.
        assert_eq!(reg.snapshot(t0)[1].duration_s, 0);
        reg.remove("c1");
        assert_eq!(reg.len(), 1);
    }

    #[test]
    fn status_text_lists_calls_campaigns_and_trunks() {
        let r = StatusReport {
            version: "0.1.0".into(),
            pid: 7,
            node: "n1".into(),
            uptime_s: 9,
            draining: true,
            dialplan: "demo-bank".into(),
            dialer_in_flight: 2,
            calls: vec![CallStatus {
                call_id: "abc@h".into(),
                from: "sip:1001@h".into(),
                state: "up".into(),
                duration_s: 42,
            }],
            campaigns: vec![CampaignLine {
                name: "renewal".into(),
                status: "running".into(),
                contacts_by_state: [("pending".to_string(), 3)].into_iter().collect(),
            }],
            trunks: vec![TrunkLine {
                name: "main".into(),
                address: "198.51.100.10:5060".into(),
                registered: Some(false),
                register: true,
                backoff_s: 8,
            }],
        };
        let text = render_status(&r);
        assert!(text.contains("DRAINING"), "{text}");
        assert!(
            text.contains("abc@h") && text.contains(" up ") && text.contains("42"),
            "{text}"
        );
        assert!(
            text.contains("renewal") && text.contains("pending 3"),
            "{text}"
        );
        assert!(
            text.contains("REGISTRATION FAILED, backing off 8s"),
            "{text}"
        );
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<StatusReport>(&json).unwrap(), r);
    }

    #[test]
    fn bind_replaces_a_stale_socket_and_refuses_a_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/wl.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = bind(&path).unwrap();
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o660);
            assert!(matches!(bind(&path), Err(ControlError::InUse { .. })));
            drop(l);
            // The file is left behind, as after a crash: the next bind replaces it.
            assert!(path.exists());
            bind(&path).unwrap();
        });
    }

    #[test]
    fn client_reports_a_missing_daemon_with_the_path() {
        let err = request(
            Path::new("/nonexistent/wl.sock"),
            "status",
            Duration::from_secs(1),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("/nonexistent/wl.sock") && err.contains("warmline serve"),
            "{err}"
        );
    }
}
