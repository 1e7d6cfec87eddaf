//! `warmline.toml`: what an operator writes. Every field has a default, so the appliance runs with no
//! file at all (the embedded defaults: loopback SIP on 5060, SQLite under `state/`, the demo dialplan).
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub sip: SipConfig,
    pub rtp: RtpConfig,
    pub paths: PathsConfig,
    pub ivr: IvrConfig,
    pub storage: StorageConfig,
    pub log: LogConfig,
    pub dialer: DialerConfig,
    /// SIP trunks campaigns dial out through, by name (`[trunks.main]`).
    pub trunks: std::collections::BTreeMap<String, TrunkConfig>,
    pub speech: SpeechConfig,
    /// Caller voiceprints (`[voiceprint]`).
    pub voiceprint: crate::ops::voiceprint::VoiceprintConfig,
    /// Recordings of calls bridged to agents, and voicemail (`[recording]`).
    pub recording: crate::media::recorder::RecordingConfig,
    /// Where callers are looked up (`[customers]`).
    pub customers: crate::routing::CustomersConfig,
    /// Agents' phones by name (`[agents.alice]`).
    pub agents: std::collections::BTreeMap<String, crate::routing::AgentConfig>,
    /// Agent queues by name (`[queues.agents]`); the dialplan declares what callers hear.
    pub queues: std::collections::BTreeMap<String, crate::routing::QueueConfig>,
    pub metrics: MetricsConfig,
    pub control: ControlConfig,
    pub service: ServiceConfig,
}

/// Prometheus exposition (`GET /metrics`).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `host:port` to serve `/metrics` on, e.g. "127.0.0.1:9100"; empty (the default) = off.
    pub listen: String,
}

/// The local control socket `warmline status` and `warmline reload` talk to.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Unix socket path; defaults to `<state_dir>/warmline.sock`. Created with mode 0660.
    pub socket: Option<PathBuf>,
}

/// How the daemon stops.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// On SIGTERM new calls get 503 and calls in progress have this long to finish before they
    /// are hung up (BYE), e.g. "30s". Keep systemd's TimeoutStopSec above it.
    pub drain_timeout: String,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            drain_timeout: "30s".into(),
        }
    }
}

/// Offline speech: Vosk models for recognition and Piper voices for prompts rendered from
/// text, by language code. A language without a model still works by keys; a missing file is
/// logged at start-up with where to get it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpeechConfig {
    /// Language code → Vosk model directory (`am/`, `conf/`, `graph/`).
    pub models: std::collections::BTreeMap<String, PathBuf>,
    /// Language code → Piper voice (`.onnx`, with its `.onnx.json` beside it).
    pub voices: std::collections::BTreeMap<String, PathBuf>,
    /// libonnxruntime.so (>= 1.24) that Piper runs on.
    pub onnxruntime: PathBuf,
    /// The folder holding `espeak-ng-data/` (phonemes for Piper).
    pub espeak_data: PathBuf,
    /// Rendered prompts, keyed by text, voice and settings; defaults to `<state_dir>/tts-cache`.
    pub cache_dir: Option<PathBuf>,
    /// Recogniser threads; 0 = one per core.
    pub asr_threads: usize,
    /// Run recognition on a CUDA GPU: needs a libvosk built with CUDA (the PyPI one is
    /// CPU-only, and then this has no effect). Off by default; the CPU path is what is tested.
    pub gpu: bool,
}

impl Default for SpeechConfig {
    fn default() -> Self {
        let cache = PathBuf::from(".cache/speech");
        Self {
            models: [
                ("ko", cache.join("models/vosk-model-small-ko")),
                ("en", cache.join("models/en")),
                ("zh", cache.join("models/zh")),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            voices: [("en", cache.join("voices/en_US-joe-medium.onnx"))]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            onnxruntime: cache.join("onnxruntime/libonnxruntime.so.1.24.4"),
            espeak_data: PathBuf::from("/usr/lib/x86_64-linux-gnu"),
            cache_dir: None,
            asr_threads: 0,
            gpu: false,
        }
    }
}

/// One SIP trunk (a carrier or an SBC) for outbound calls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrunkConfig {
    /// `host:port` of the trunk; a host name is resolved at start.
    pub address: String,
    /// "udp", "tcp" or "tls" (needs `[sip.tls] listen`).
    pub transport: String,
    /// Host part of the Request-URI and To (`sip:+15551230001@<domain>`); defaults to `address`.
    pub domain: Option<String>,
    /// Digest credentials, if the trunk challenges (401/407).
    pub username: Option<String>,
    pub password: Option<String>,
    /// Read the password from this environment variable instead (keeps it out of the file).
    pub password_env: Option<String>,
    /// REGISTER to the trunk and keep the registration fresh.
    pub register: bool,
    /// Expires asked for in REGISTER, e.g. "1h".
    pub register_expires: String,
    /// New calls per second through this trunk, across all campaigns.
    pub calls_per_second: f64,
    /// Calls up at once through this trunk, across all campaigns.
    pub max_concurrent: u32,
    /// Give up (CANCEL) on a call that rings this long, e.g. "30s".
    pub ring_timeout: String,
}

impl Default for TrunkConfig {
    fn default() -> Self {
        Self {
            address: String::new(),
            transport: "udp".into(),
            domain: None,
            username: None,
            password: None,
            password_env: None,
            register: false,
            register_expires: "1h".into(),
            calls_per_second: 5.0,
            max_concurrent: 30,
            ring_timeout: "30s".into(),
        }
    }
}

/// A trunk with its values checked and its address resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Trunk {
    pub name: String,
    pub address: SocketAddr,
    pub transport: crate::sip::endpoint::Transport,
    pub domain: String,
    pub credentials: Option<(String, String)>,
    pub register: Option<std::time::Duration>,
    pub calls_per_second: f64,
    pub max_concurrent: u32,
    pub ring_timeout: std::time::Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DialerConfig {
    /// The global fatigue rule, across all campaigns; campaigns may only make it stricter.
    pub fatigue_max_contacts: u32,
    /// e.g. "7d", "36h".
    pub fatigue_window: String,
    /// What counts as a contact: answered_by_person, answered, attempted.
    pub fatigue_counts: String,
    /// This appliance's name in the ledger; crash recovery closes only its own attempts, so
    /// every node sharing one database needs its own. Defaults to the host name.
    pub node: Option<String>,
    /// How often the dialer looks for running campaigns and due contacts.
    pub poll_interval_ms: u64,
}

impl Default for DialerConfig {
    fn default() -> Self {
        Self {
            fatigue_max_contacts: 1,
            fatigue_window: "7d".into(),
            fatigue_counts: "answered_by_person".into(),
            node: None,
            poll_interval_ms: 1000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    /// UDP and TCP listen on this address.
    pub listen: SocketAddr,
    /// Address written into Via/Contact/SDP when the appliance sits behind NAT; defaults to `listen`.
    pub public_addr: Option<SocketAddr>,
    pub user_agent: String,
    /// New calls above this are refused with 503 so existing calls keep their quality.
    pub max_calls: usize,
    /// Who may talk to us at all, rate limits and blocking after failed authentication
    /// (`[sip.guard]`). Configured trunks are added to its trunk list automatically.
    pub guard: crate::sip::guard::GuardConfig,
    /// Digest authentication of agents' REGISTERs and, with `inbound`, of calls from
    /// non-trunk sources (`[sip.auth]`). Agents with `username` are added to its users.
    pub auth: crate::sip::auth::AuthConfig,
    /// Agent registrations (`[sip.registrar]`).
    pub registrar: crate::sip::registrar::RegistrarConfig,
    /// SIP over TLS (`[sip.tls]`): off unless `listen` is set.
    pub tls: crate::ops::transport::TlsConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtpConfig {
    pub port_min: u16,
    pub port_max: u16,
    /// Codecs we accept, in our order of preference for offers we make: "pcmu", "pcma", "opus".
    pub codecs: Vec<String>,
    pub jitter_ms: u64,
    /// IP written in our SDP `c=` lines when media is reached on another address than SIP
    /// (NAT, a media relay), like Asterisk's `external_media_address`; defaults to the SIP
    /// public address.
    pub public_ip: Option<IpAddr>,
    /// SDES-keyed SRTP (RFC 4568): "off", "optional" (SRTP when the caller offers it) or
    /// "required" (plain-RTP offers get 488; our offers are RTP/SAVP).
    pub srtp: String,
}

impl RtpConfig {
    /// The `srtp` setting (validated at load; an unknown value reads as the default).
    pub fn srtp_policy(&self) -> crate::media::srtp::SrtpPolicy {
        crate::media::srtp::SrtpPolicy::from_name(&self.srtp).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathsConfig {
    pub state_dir: PathBuf,
    pub dialplans: PathBuf,
    pub prompts: PathBuf,
    pub campaigns: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IvrConfig {
    /// Name of the dialplan file (without `.toml`) under `paths.dialplans` that answers inbound calls.
    pub dialplan: String,
    /// Ring (180) this long before answering, like Asterisk's `Ringing(); Wait()`. 0 answers at once.
    pub answer_after_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `sqlite://...` or `postgres://...`; defaults to `sqlite://<state_dir>/warmline.db`.
    pub url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter, e.g. "info" or "warmline=debug"; the WARMLINE_LOG env var wins.
    pub level: String,
    /// "auto" (the journal's native protocol under systemd, else text), "journald" or "text".
    pub format: String,
}

impl Default for SipConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 5060)),
            public_addr: None,
            // No version: scanners match versions to known flaws (`warmline status` shows it).
            user_agent: "warmline".into(),
            max_calls: 4000,
            guard: Default::default(),
            auth: Default::default(),
            registrar: Default::default(),
            tls: Default::default(),
        }
    }
}

impl Default for RtpConfig {
    fn default() -> Self {
        Self {
            port_min: 20000,
            port_max: 29999,
            codecs: vec!["pcmu".into(), "pcma".into(), "opus".into()],
            jitter_ms: 60,
            public_ip: None,
            srtp: "optional".into(),
        }
    }
}

impl Default for PathsConfig {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("state"),
            dialplans: PathBuf::from("dialplans"),
            prompts: PathBuf::from("voice-prompts"),
            campaigns: PathBuf::from("campaigns"),
        }
    }
}

impl Default for IvrConfig {
    fn default() -> Self {
        Self {
            dialplan: "demo-bank".into(),
            answer_after_ms: 0,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "auto".into(),
        }
    }
}

impl Config {
    /// Loads `path`, or the embedded defaults when `None`. Relative paths inside a file are taken
    /// relative to the file's folder, so `warmline --config /etc/warmline/warmline.toml` works from anywhere.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            let mut cfg = Config::default();
            cfg.resolve_state_paths();
            cfg.validate(Path::new("<defaults>"), "")?;
            return Ok(cfg);
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg = Self::parse(path, &text)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let speech = &mut cfg.speech;
        for p in [
            &mut cfg.paths.state_dir,
            &mut cfg.paths.dialplans,
            &mut cfg.paths.prompts,
            &mut cfg.paths.campaigns,
            &mut speech.onnxruntime,
            &mut speech.espeak_data,
        ]
        .into_iter()
        .chain(speech.cache_dir.as_mut())
        .chain(cfg.control.socket.as_mut())
        .chain(speech.models.values_mut())
        .chain(speech.voices.values_mut())
        .chain(cfg.customers.csv.as_mut())
        .chain(cfg.sip.tls.cert.as_mut())
        .chain(cfg.sip.tls.key.as_mut())
        .chain(cfg.sip.tls.ca.as_mut())
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        cfg.voiceprint.resolve(base);
        cfg.resolve_state_paths();
        Ok(cfg)
    }

    /// Recordings live with the rest of the state unless the configuration says otherwise.
    fn resolve_state_paths(&mut self) {
        if self.recording.dir.is_relative() {
            self.recording.dir = self.paths.state_dir.join(&self.recording.dir);
        }
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                message: e.message().to_string(),
            }
        })?;
        cfg.validate(path, text)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let fail = |key: &str, message: String| {
            let (line, column) = find_key(text, key);
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                message,
            })
        };
        if self.rtp.port_min > self.rtp.port_max || self.rtp.port_max - self.rtp.port_min < 2 {
            return fail(
                "port_min",
                format!(
                    "rtp.port_min ({}) .. rtp.port_max ({}) must span at least 2 ports",
                    self.rtp.port_min, self.rtp.port_max
                ),
            );
        }
        if !self.rtp.port_min.is_multiple_of(2) {
            return fail(
                "port_min",
                "rtp.port_min must be even (RTP takes even ports, RTCP the odd one above)".into(),
            );
        }
        for c in &self.rtp.codecs {
            if crate::ops::codec_from_name(c).is_none() {
                return fail(
                    "codecs",
                    format!("unknown codec '{c}' in rtp.codecs (known: pcmu, pcma, opus)"),
                );
            }
        }
        if self.rtp.codecs.is_empty() {
            return fail("codecs", "rtp.codecs must name at least one codec".into());
        }
        if crate::media::srtp::SrtpPolicy::from_name(&self.rtp.srtp).is_none() {
            return fail(
                "srtp",
                format!(
                    "rtp.srtp = {:?} must be one of {}",
                    self.rtp.srtp,
                    crate::media::srtp::SrtpPolicy::NAMES
                ),
            );
        }
        if !(20..=1000).contains(&self.rtp.jitter_ms) {
            return fail(
                "jitter_ms",
                format!("rtp.jitter_ms = {} must be 20..=1000", self.rtp.jitter_ms),
            );
        }
        if let Some(ip) = self
            .rtp
            .public_ip
            .filter(|ip| ip.is_unspecified() || ip.is_multicast())
        {
            return fail(
                "public_ip",
                format!(
                    "rtp.public_ip = '{ip}': callers send media to this address, so it must be one specific unicast IP (e.g. the NAT's public address), not a wildcard or multicast address"
                ),
            );
        }
        if self.ivr.answer_after_ms > 60_000 {
            return fail(
                "answer_after_ms",
                format!(
                    "ivr.answer_after_ms = {} must be at most 60000",
                    self.ivr.answer_after_ms
                ),
            );
        }
        if let Err(message) = self.try_global_fatigue() {
            return fail("fatigue_window", message);
        }
        if self.ivr.dialplan.is_empty() {
            return fail("dialplan", "ivr.dialplan must name a dialplan".into());
        }
        if !(50..=60_000).contains(&self.dialer.poll_interval_ms) {
            return fail(
                "poll_interval_ms",
                format!(
                    "dialer.poll_interval_ms = {} must be 50..=60000",
                    self.dialer.poll_interval_ms
                ),
            );
        }
        if let Err(message) = self.metrics_listen() {
            let (line, column) = find_table_key(text, "[metrics]", "listen");
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                message,
            });
        }
        if let Err(message) = self.drain_timeout() {
            return fail("drain_timeout", message);
        }
        if !matches!(self.log.format.as_str(), "auto" | "journald" | "text") {
            return fail(
                "format",
                format!(
                    "log.format = '{}': use \"auto\", \"journald\" or \"text\"",
                    self.log.format
                ),
            );
        }
        let routing_fail = |e: crate::routing::RoutingConfigError| {
            let (line, column) = crate::routing::locate(text, &e.key).unwrap_or((1, 1));
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                message: format!("{}: {}", e.key, e.message),
            })
        };
        if let Err(e) = self.customers.lookup() {
            return routing_fail(e);
        }
        if let Err(e) =
            crate::routing::acd_specs(&self.agents, &self.queues, &self.customers.timezone)
        {
            return routing_fail(e);
        }
        for name in self.trunks.keys() {
            if let Err((key, message)) = self.trunk(name) {
                let (line, column) = find_trunk_key(text, name, key);
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    line,
                    column,
                    message,
                });
            }
        }
        Ok(())
    }

    /// The node name written with every attempt.
    pub fn node_name(&self) -> String {
        if let Some(n) = &self.dialer.node {
            return n.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "warmline".into())
    }

    /// A configured trunk, checked and resolved; on error the key at fault and what is wrong.
    pub fn trunk(&self, name: &str) -> Result<Trunk, (&'static str, String)> {
        use crate::dialer::policy::parse_duration;
        use std::net::ToSocketAddrs;
        let Some(t) = self.trunks.get(name) else {
            let known: Vec<&str> = self.trunks.keys().map(String::as_str).collect();
            return Err((
                "trunk",
                format!(
                    "trunk '{name}' is not configured: add [trunks.{name}] with address = \"host:port\" to warmline.toml (configured: {})",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                ),
            ));
        };
        let at = |what: &str| format!("trunks.{name}.{what}");
        if t.address.is_empty() {
            return Err((
                "address",
                format!("{} is missing (host:port of the trunk)", at("address")),
            ));
        }
        let address = t
            .address
            .to_socket_addrs()
            .map_err(|e| {
                (
                    "address",
                    format!("{} = '{}': {e}", at("address"), t.address),
                )
            })?
            .next()
            .ok_or_else(|| {
                (
                    "address",
                    format!("{} = '{}' resolves to nothing", at("address"), t.address),
                )
            })?;
        let transport = match t.transport.as_str() {
            "udp" => crate::sip::endpoint::Transport::Udp,
            "tcp" => crate::sip::endpoint::Transport::Tcp,
            "tls" => crate::sip::endpoint::Transport::Tls,
            other => {
                return Err((
                    "transport",
                    format!(
                        "{} = '{other}': use \"udp\", \"tcp\" or \"tls\"",
                        at("transport")
                    ),
                ))
            }
        };
        let password = match (&t.password, &t.password_env) {
            (Some(_), Some(_)) => {
                return Err((
                    "password_env",
                    format!(
                        "{} and {} are both set; keep one",
                        at("password"),
                        at("password_env")
                    ),
                ))
            }
            (Some(p), None) => Some(p.clone()),
            (None, Some(var)) => Some(std::env::var(var).map_err(|_| {
                (
                    "password_env",
                    format!("{} names ${var}, which is not set", at("password_env")),
                )
            })?),
            (None, None) => None,
        };
        let credentials = match (&t.username, password) {
            (Some(u), Some(p)) => Some((u.clone(), p)),
            (None, None) => None,
            (Some(_), None) => {
                return Err((
                    "username",
                    format!(
                        "{} is set but no password (password or password_env)",
                        at("username")
                    ),
                ))
            }
            (None, Some(_)) => {
                return Err((
                    "password",
                    format!("a password is set but {} is missing", at("username")),
                ))
            }
        };
        let dur = |key: &'static str,
                   text: &str|
         -> Result<std::time::Duration, (&'static str, String)> {
            parse_duration(text)
                .ok()
                .and_then(|d| d.to_std().ok())
                .ok_or_else(|| {
                    (
                        key,
                        format!(
                            "{} = '{text}': not a duration like \"30s\" or \"1h\"",
                            at(key)
                        ),
                    )
                })
        };
        let ring_timeout = dur("ring_timeout", &t.ring_timeout)?;
        if !(std::time::Duration::from_secs(5)..=std::time::Duration::from_secs(300))
            .contains(&ring_timeout)
        {
            return Err((
                "ring_timeout",
                format!("{} must be 5s..=5m", at("ring_timeout")),
            ));
        }
        let register = if t.register {
            let e = dur("register_expires", &t.register_expires)?;
            if !(std::time::Duration::from_secs(60)..=std::time::Duration::from_secs(86_400))
                .contains(&e)
            {
                return Err((
                    "register_expires",
                    format!("{} must be 1m..=24h", at("register_expires")),
                ));
            }
            Some(e)
        } else {
            None
        };
        if !(t.calls_per_second.is_finite() && (0.01..=500.0).contains(&t.calls_per_second)) {
            return Err((
                "calls_per_second",
                format!(
                    "{} = {} must be 0.01..=500",
                    at("calls_per_second"),
                    t.calls_per_second
                ),
            ));
        }
        if !(1..=10_000).contains(&t.max_concurrent) {
            return Err((
                "max_concurrent",
                format!(
                    "{} = {} must be 1..=10000",
                    at("max_concurrent"),
                    t.max_concurrent
                ),
            ));
        }
        Ok(Trunk {
            name: name.to_string(),
            address,
            transport,
            domain: t.domain.clone().unwrap_or_else(|| t.address.clone()),
            credentials,
            register,
            calls_per_second: t.calls_per_second,
            max_concurrent: t.max_concurrent,
            ring_timeout,
        })
    }

    /// Where `/metrics` is served, or `None` when `[metrics] listen` is empty.
    pub fn metrics_listen(&self) -> Result<Option<SocketAddr>, String> {
        let l = self.metrics.listen.trim();
        if l.is_empty() {
            return Ok(None);
        }
        l.parse()
            .map(Some)
            .map_err(|_| format!("metrics.listen = '{l}': not an address like \"127.0.0.1:9100\""))
    }

    /// How long calls may run on after SIGTERM before they are hung up.
    pub fn drain_timeout(&self) -> Result<std::time::Duration, String> {
        let t = &self.service.drain_timeout;
        crate::dialer::policy::parse_duration(t)
            .ok()
            .and_then(|d| d.to_std().ok())
            .filter(|d| *d <= std::time::Duration::from_secs(3600))
            .ok_or_else(|| {
                format!("service.drain_timeout = '{t}': use a duration from \"0s\" to \"1h\"")
            })
    }

    /// The control socket's path.
    pub fn control_socket(&self) -> PathBuf {
        self.control
            .socket
            .clone()
            .unwrap_or_else(|| self.paths.state_dir.join("warmline.sock"))
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.sip.public_addr.unwrap_or(self.sip.listen)
    }

    /// The IP written into SDP: `[rtp] public_ip`, else the SIP public address (an unspecified
    /// listen address cannot be advertised).
    pub fn media_ip(&self) -> IpAddr {
        self.rtp
            .public_ip
            .unwrap_or_else(|| self.public_addr().ip())
    }

    pub fn storage_url(&self) -> String {
        match &self.storage.url {
            Some(u) => u.clone(),
            None => format!(
                "sqlite://{}",
                self.paths.state_dir.join("warmline.db").display()
            ),
        }
    }

    /// The global fatigue rule from `[dialer]` (validated at load, so this cannot fail there).
    pub fn global_fatigue(&self) -> crate::dialer::policy::FatigueRule {
        self.try_global_fatigue().unwrap_or_default()
    }

    fn try_global_fatigue(&self) -> Result<crate::dialer::policy::FatigueRule, String> {
        use crate::dialer::policy::{parse_duration, ContactCounting, FatigueRule};
        let d = &self.dialer;
        let window = parse_duration(&d.fatigue_window)
            .map_err(|e| format!("dialer.fatigue_window = '{}': {e}", d.fatigue_window))?;
        let counts = ContactCounting::parse(&d.fatigue_counts).ok_or_else(|| {
            format!(
                "dialer.fatigue_counts = '{}': use answered_by_person, answered or attempted",
                d.fatigue_counts
            )
        })?;
        if d.fatigue_max_contacts == 0 {
            return Err("dialer.fatigue_max_contacts must be at least 1".into());
        }
        Ok(FatigueRule {
            max_contacts: d.fatigue_max_contacts,
            window,
            counts,
        })
    }

    pub fn dialplan_path(&self) -> PathBuf {
        self.paths
            .dialplans
            .join(format!("{}.toml", self.ivr.dialplan))
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map(|i| before.len() - i)
        .unwrap_or(before.len() + 1);
    (line, column)
}

/// Position of `key =` inside `[trunks.<name>]` (or of the table header), else (1, 1).
fn find_trunk_key(text: &str, trunk: &str, key: &str) -> (usize, usize) {
    find_table_key(text, &format!("[trunks.{trunk}]"), key)
}

/// Position of `key =` inside the table `header` (or of the header), else (1, 1).
fn find_table_key(text: &str, header: &str, key: &str) -> (usize, usize) {
    let Some(start) = text.lines().position(|l| l.trim() == header) else {
        return (1, 1);
    };
    for (i, line) in text.lines().enumerate().skip(start + 1) {
        let t = line.trim_start();
        if t.starts_with('[') {
            break;
        }
        if let Some(rest) = t.strip_prefix(key) {
            if rest.trim_start().starts_with('=') {
                return (i + 1, line.len() - t.len() + 1);
            }
        }
    }
    (start + 1, 1)
}

/// Position of `key =` in the text, so value errors found after parsing still point at a line.
fn find_key(text: &str, key: &str) -> (usize, usize) {
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix(key) {
            if rest.trim_start().starts_with('=') {
                return (i + 1, line.len() - t.len() + 1);
            }
        }
    }
    (1, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let cfg = Config::load(None).unwrap();
        assert_eq!(cfg.sip.listen, "127.0.0.1:5060".parse().unwrap());
        assert!(cfg.storage_url().starts_with("sqlite://"));
        assert_eq!(
            cfg.dialplan_path(),
            PathBuf::from("dialplans/demo-bank.toml")
        );
    }

    #[test]
    fn unknown_field_names_line_and_column() {
        let text = "[sip]\nlisten = \"127.0.0.1:5070\"\nlisen = \"x\"\n";
        let err = Config::parse(Path::new("w.toml"), text).unwrap_err();
        let s = err.to_string();
        assert!(s.starts_with("w.toml:3:1:"), "{s}");
        assert!(s.contains("lisen"), "{s}");
    }

    #[test]
    fn bad_port_range_points_at_key() {
        let text = "[rtp]\nport_min = 30000\nport_max = 20000\n";
        let err = Config::parse(Path::new("w.toml"), text).unwrap_err();
        assert!(err.to_string().starts_with("w.toml:2:1:"), "{err}");
    }

    #[test]
    fn unknown_codec_rejected() {
        let text = "[rtp]\ncodecs = [\"pcmu\", \"g729\"]\n";
        let err = Config::parse(Path::new("w.toml"), text).unwrap_err();
        assert!(err.to_string().contains("g729"), "{err}");
    }

    #[test]
    fn rtp_public_ip_goes_into_sdp_and_must_be_specific() {
        let text = "[sip]\nlisten = \"10.0.0.5:5060\"\npublic_addr = \"198.51.100.7:5060\"\n";
        let cfg = Config::parse(Path::new("w.toml"), text).unwrap();
        assert_eq!(cfg.media_ip(), "198.51.100.7".parse::<IpAddr>().unwrap());
        let cfg = Config::parse(
            Path::new("w.toml"),
            &format!("{text}[rtp]\npublic_ip = \"203.0.113.9\"\n"),
        )
        .unwrap();
        assert_eq!(cfg.media_ip(), "203.0.113.9".parse::<IpAddr>().unwrap());
        assert_eq!(cfg.public_addr(), "198.51.100.7:5060".parse().unwrap());
        for bad in ["0.0.0.0", "::", "239.1.2.3"] {
            let text = format!("[rtp]\nport_min = 20000\npublic_ip = \"{bad}\"\n");
            let err = Config::parse(Path::new("w.toml"), &text)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("w.toml:3:1:") && err.contains(bad), "{err}");
        }
        let err = Config::parse(Path::new("w.toml"), "[rtp]\npublic_ip = \"host\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("w.toml:2:"), "{err}");
    }

    #[test]
    fn srtp_policy_parsed_and_validated() {
        use crate::media::srtp::SrtpPolicy;
        assert_eq!(
            Config::load(None).unwrap().rtp.srtp_policy(),
            SrtpPolicy::Optional
        );
        for (name, want) in [
            ("off", SrtpPolicy::Off),
            ("optional", SrtpPolicy::Optional),
            ("Required", SrtpPolicy::Required),
        ] {
            let text = format!("[rtp]\nsrtp = \"{name}\"\n");
            let cfg = Config::parse(Path::new("w.toml"), &text).unwrap();
            assert_eq!(cfg.rtp.srtp_policy(), want);
        }
        let text = "[rtp]\njitter_ms = 60\nsrtp = \"sdes\"\n";
        let err = Config::parse(Path::new("w.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("w.toml:3:1:")
                && err.contains("rtp.srtp")
                && err.contains("\"required\""),
            "{err}"
        );
    }

    #[test]
    fn global_fatigue_defaults_and_errors() {
        let cfg = Config::load(None).unwrap();
        let f = cfg.global_fatigue();
        assert_eq!((f.max_contacts, f.window), (1, chrono::Duration::days(7)));
        let text = "[dialer]\nfatigue_window = \"7 days\"\n";
        let err = Config::parse(Path::new("w.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("w.toml:2:1:") && err.contains("7 days"),
            "{err}"
        );
    }

    #[test]
    fn trunks_are_checked_with_line_numbers() {
        let text = "[trunks.main]\naddress = \"127.0.0.1:5070\"\nusername = \"u\"\npassword = \"p\"\nring_timeout = \"20s\"\n";
        let cfg = Config::parse(Path::new("w.toml"), text).unwrap();
        let t = cfg.trunk("main").unwrap();
        assert_eq!(t.address, "127.0.0.1:5070".parse().unwrap());
        assert_eq!(t.credentials, Some(("u".into(), "p".into())));
        assert_eq!(t.ring_timeout, std::time::Duration::from_secs(20));
        assert_eq!(t.domain, "127.0.0.1:5070");
        assert_eq!(t.transport, crate::sip::endpoint::Transport::Udp);
        let tls = "[trunks.main]\naddress = \"127.0.0.1:5071\"\ntransport = \"tls\"\n";
        let tls = Config::parse(Path::new("w.toml"), tls).unwrap();
        assert_eq!(
            tls.trunk("main").unwrap().transport,
            crate::sip::endpoint::Transport::Tls
        );
        let err = cfg.trunk("backup").unwrap_err().1;
        assert!(
            err.contains("[trunks.backup]") && err.contains("main"),
            "{err}"
        );

        let bad = "[sip]\nmax_calls = 10\n[trunks.main]\naddress = \"127.0.0.1:5070\"\ntransport = \"sctp\"\n";
        let err = Config::parse(Path::new("w.toml"), bad)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("w.toml:5:1:") && err.contains("sctp"),
            "{err}"
        );
        let bad = "[trunks.main]\naddress = \"127.0.0.1:5070\"\nusername = \"u\"\n";
        let err = Config::parse(Path::new("w.toml"), bad)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("w.toml:3:1:") && err.contains("no password"),
            "{err}"
        );
        let bad = "[trunks.main]\ntransport = \"udp\"\n";
        let err = Config::parse(Path::new("w.toml"), bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("trunks.main.address is missing"), "{err}");
    }

    #[test]
    fn ops_sections_default_and_validate() {
        let cfg = Config::load(None).unwrap();
        assert_eq!(cfg.metrics_listen(), Ok(None));
        assert_eq!(cfg.drain_timeout(), Ok(std::time::Duration::from_secs(30)));
        assert_eq!(cfg.control_socket(), PathBuf::from("state/warmline.sock"));
        let text = "[metrics]\nlisten = \"127.0.0.1:9100\"\n[service]\ndrain_timeout = \"2m\"\n";
        let cfg = Config::parse(Path::new("w.toml"), text).unwrap();
        assert_eq!(
            cfg.metrics_listen(),
            Ok(Some("127.0.0.1:9100".parse().unwrap()))
        );
        assert_eq!(cfg.drain_timeout(), Ok(std::time::Duration::from_secs(120)));
        let bad = "[sip]\nlisten = \"127.0.0.1:5060\"\n[metrics]\nlisten = \"localhost\"\n";
        let err = Config::parse(Path::new("w.toml"), bad)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("w.toml:4:1:") && err.contains("metrics.listen"),
            "{err}"
        );
        let bad = "[service]\ndrain_timeout = \"soon\"\n";
        let err = Config::parse(Path::new("w.toml"), bad)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("w.toml:2:1:") && err.contains("drain_timeout"),
            "{err}"
        );
        let bad = "[log]\nformat = \"xml\"\n";
        let err = Config::parse(Path::new("w.toml"), bad)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("w.toml:2:1:") && err.contains("journald"),
            "{err}"
        );
    }

    #[test]
    fn relative_control_socket_follows_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.toml");
        std::fs::write(&path, "[control]\nsocket = \"run/wl.sock\"\n").unwrap();
        let cfg = Config::load(Some(&path)).unwrap();
        assert_eq!(cfg.control_socket(), dir.path().join("run/wl.sock"));
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("ab", 99), (1, 3));
    }
}
