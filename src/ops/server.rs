//! `warmline serve`: opens the store, loads prompts and the dialplan, binds SIP and runs until stopped.
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::ivr::dialplan::{Dialplan, DialplanError};
use crate::media::prompt::PromptStore;
use crate::sip::endpoint::{Endpoint, EndpointConfig, IncomingCall};
use crate::store::{Store, StoreError};

use super::call::{run_call, CallContext, MediaClock};
use super::control::{CallRegistry, ControlState};
use super::dialer::Dialer;
use super::ports::PortAllocator;
use super::systemd::Notifier;
use super::transport::{CallEvent, CallSpawner, SipCommand, SipServer};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("prompts in {dir}: {message}")]
    Prompts { dir: PathBuf, message: String },
    #[error("{0}")]
    Dialplan(#[from] DialplanError),
    #[error("speech services failed to start: {0}")]
    Speech(String),
    #[error(transparent)]
    Tls(#[from] super::transport::TlsError),
    #[error("sip: {0}")]
    Sip(String),
    #[error("routing: {0}")]
    Routing(String),
    #[error("voiceprints: {0}")]
    Voiceprint(String),
    #[error("cannot start the media clock threads: {0}")]
    MediaClock(std::io::Error),
    #[error("cannot listen for metrics on {addr}: {source}")]
    MetricsBind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Control(#[from] super::control::ControlError),
    #[error("{0}")]
    ConfigValue(String),
    #[error("cannot listen for SIP on {addr} (UDP and TCP): {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

struct Spawner {
    ctx: Arc<CallContext>,
    max_calls: usize,
    /// Calls per source address (trunks exempt): `[sip.guard] max_calls_per_source`.
    per_source: Arc<PerSource>,
    /// Set on SIGTERM: new calls get 503 while the ones up finish.
    draining: Arc<AtomicBool>,
    registry: Arc<CallRegistry>,
}

/// Live inbound calls per source address.
struct PerSource {
    max: usize,
    trunks: Vec<crate::sip::guard::Cidr>,
    counts: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One call's place in [`PerSource`]; given back when dropped.
struct SourceSlot {
    owner: Arc<PerSource>,
    ip: Option<std::net::IpAddr>,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let Some(ip) = self.ip else { return };
        let mut counts = self.owner.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&ip);
            }
        }
    }
}

trait TakeSlot {
    fn take(&self, ip: std::net::IpAddr) -> Option<SourceSlot>;
}

impl TakeSlot for Arc<PerSource> {
    /// A slot for a new call from `ip`, or `None` when it has `max` calls already.
    fn take(&self, ip: std::net::IpAddr) -> Option<SourceSlot> {
        if self.max == 0 || self.trunks.iter().any(|n| n.contains(ip)) {
            return Some(SourceSlot {
                owner: self.clone(),
                ip: None,
            });
        }
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            owner: self.clone(),
            ip: Some(ip),
        })
    }
}

impl CallSpawner for Spawner {
    fn accepting_calls(&self) -> bool {
        !self.draining.load(Ordering::Relaxed)
    }

    fn spawn_call(
        &self,
        call: IncomingCall,
        commands: mpsc::UnboundedSender<SipCommand>,
    ) -> Result<mpsc::UnboundedSender<CallEvent>, u16> {
        if self.draining.load(Ordering::Relaxed) {
            super::metrics::CALLS_REJECTED_DRAINING.fetch_add(1, Ordering::Relaxed);
            tracing::info!(call_id = %call.call_id, "stopping: new call refused with 503");
            return Err(503);
        }
        // Refusing with 503 keeps the calls already up at full quality.
        if self.ctx.active.load(Ordering::Relaxed) >= self.max_calls {
            super::metrics::CALLS_REJECTED_LIMIT.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(call_id = %call.call_id, "call limit reached; 503");
            return Err(503);
        }
        let Some(slot) = self.per_source.take(call.source.ip()) else {
            super::metrics::CALLS_REJECTED_LIMIT.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(call_id = %call.call_id, src = %call.source, "too many calls from this source; 503");
            return Err(503);
        };
        self.ctx.active.fetch_add(1, Ordering::Relaxed);
        super::metrics::CALLS_TOTAL.fetch_add(1, Ordering::Relaxed);
        let call_id = call.call_id.clone();
        self.registry
            .insert(&call_id, &call.from_uri, std::time::Instant::now());
        // Events pass through here on their way to the call so `status` sees the ACK.
        let (tx, mut rx) = mpsc::unbounded_channel::<CallEvent>();
        let (call_tx, call_rx) = mpsc::unbounded_channel();
        {
            let (registry, call_id) = (self.registry.clone(), call_id.clone());
            tokio::spawn(async move {
                while let Some(ev) = rx.recv().await {
                    if matches!(ev, CallEvent::Confirmed { .. }) {
                        registry.mark_up(&call_id);
                    }
                    if call_tx.send(ev).is_err() {
                        break;
                    }
                }
            });
        }
        let ctx = self.ctx.clone();
        let registry = self.registry.clone();
        tokio::spawn(async move {
            run_call(ctx.clone(), call, call_rx, commands).await;
            drop(slot);
            registry.remove(&call_id);
            ctx.active.fetch_sub(1, Ordering::Relaxed);
        });
        Ok(tx)
    }

    fn agent_event(&self, event: super::transport::AgentEvent) {
        use super::transport::AgentEvent;
        let Some(acd) = &self.ctx.acd else { return };
        let req = match event {
            AgentEvent::Registered {
                user,
                contact,
                source,
                transport,
            } => super::acd::AcdRequest::Registered {
                username: user,
                target: super::agent_leg::AgentTarget {
                    // Call the phone at its Contact, sent where its REGISTER came from (NAT).
                    request_uri: contact,
                    destination: source,
                    transport,
                },
            },
            AgentEvent::Unregistered { user } => {
                super::acd::AcdRequest::Unregistered { username: user }
            }
        };
        acd.send(req);
    }
}

/// Loads the prompts and the configured dialplan, the way `serve` and `check` both need them.
pub fn load_ivr(cfg: &Config) -> Result<(Arc<PromptStore>, Arc<Dialplan>), ServeError> {
    let cache = cfg.paths.state_dir.join("prompt-cache");
    let prompts = PromptStore::load_dir_cached(&cfg.paths.prompts, &cache).map_err(|e| {
        ServeError::Prompts {
            dir: cfg.paths.prompts.clone(),
            message: e.to_string(),
        }
    })?;
    let (dialplan, warnings) = Dialplan::load(&cfg.dialplan_path(), &prompts)?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    Ok((Arc::new(prompts), Arc::new(dialplan)))
}

/// Runs the appliance until SIGTERM/SIGINT. `config_path` is what SIGHUP re-reads.
pub async fn serve(cfg: Config, config_path: Option<PathBuf>) -> Result<(), ServeError> {
    let started = std::time::Instant::now();
    // Caught from the start: SIGHUP's default action would kill a daemon still loading.
    let hup = signal(SignalKind::hangup()).ok();
    let notifier = Arc::new(Notifier::from_env());
    let drain_timeout = cfg.drain_timeout().map_err(ServeError::ConfigValue)?;
    let metrics_listen = cfg.metrics_listen().map_err(ServeError::ConfigValue)?;
    notifier.send("STATUS=starting: opening the store, loading prompts, dialplan and speech");
    let store = Store::open(&cfg.storage_url()).await?;
    let closed = store.close_interrupted(chrono::Utc::now()).await?;
    if closed > 0 {
        tracing::warn!(
            calls = closed,
            "closed CDRs of calls interrupted by the last stop"
        );
    }
    let (prompts, dialplan) = load_ivr(&cfg)?;
    tracing::info!(prompts = prompts.len(), dialplan = %dialplan.name(), "ivr loaded");
    // Voices and models load in seconds; fixed texts are rendered (or found in the disk cache)
    // before the first call is answered, so no caller waits for synthesis.
    let speech = {
        let (cfg, dialplan) = (cfg.clone(), dialplan.clone());
        tokio::task::spawn_blocking(move || {
            // Recognition models are large (a small one is ~500 MB in memory): load only the
            // one for the language calls run in.
            let mut cfg = cfg;
            cfg.speech
                .models
                .retain(|lang, _| lang.as_str() == dialplan.language());
            let speech = super::speech::Speech::load(&cfg);
            speech.prerender(&dialplan);
            Arc::new(speech)
        })
        .await
        .map_err(|e| ServeError::Speech(e.to_string()))?
    };

    let codecs = cfg
        .rtp
        .codecs
        .iter()
        .filter_map(|c| super::codec_from_name(c))
        .collect();
    let routing = load_routing(&cfg).await?;
    let (acd, acd_task) = match routing.acd {
        Some(acd) => {
            let (h, t) = super::acd::channel(acd);
            (Some(h), Some(t))
        }
        None => (None, None),
    };
    let ctx = Arc::new(CallContext {
        acd,
        customers: routing.customers,
        voiceprints: routing.voiceprints,
        recording: cfg.recording.clone(),
        store: store.clone(),
        prompts,
        dialplan: std::sync::RwLock::new(dialplan),
        ports: PortAllocator::new(cfg.sip.listen.ip(), cfg.rtp.port_min, cfg.rtp.port_max),
        media_ip: cfg.media_ip(),
        public_addr: cfg.public_addr(),
        codecs,
        srtp: cfg.rtp.srtp_policy(),
        jitter: Duration::from_millis(cfg.rtp.jitter_ms),
        answer_after: Duration::from_millis(cfg.ivr.answer_after_ms),
        speech,
        active: Default::default(),
        // One shard thread per core: each sends the RTP of its share of the calls.
        media_clock: MediaClock::start(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .min(8),
        )
        .map_err(ServeError::MediaClock)?,
    });
    {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            super::metrics::log_periodically(Duration::from_secs(10), &ctx.active).await
        });
    }
    // TLS first: its bound port goes into the Contact of calls that come over TLS.
    let tls = super::transport::bind_tls(&cfg.sip.tls).await?;
    let mut ep_cfg = EndpointConfig::new(cfg.public_addr());
    ep_cfg.user_agent = cfg.sip.user_agent.clone();
    if let Some(t) = &tls {
        ep_cfg.tls_public_addr = Some(tls_public_addr(&cfg, t.local_addr().ok()));
    }
    let (guard, auth) = sip_security(&cfg)?;
    let guard_trunks: Vec<crate::sip::guard::Cidr> = guard
        .trunks
        .iter()
        .flat_map(|t| t.networks.iter().cloned())
        .collect();
    ep_cfg.guard = guard;
    ep_cfg.auth = auth;
    ep_cfg.registrar = cfg.sip.registrar.clone();
    super::metrics::set_sip_counters(super::transport::sip_counters);
    let limits = ep_cfg.limits;
    let endpoint = Endpoint::try_new(ep_cfg).map_err(|e| ServeError::Sip(e.to_string()))?;
    let draining = Arc::new(AtomicBool::new(false));
    let registry = Arc::new(CallRegistry::default());
    let spawner = Arc::new(Spawner {
        ctx: ctx.clone(),
        max_calls: cfg.sip.max_calls,
        per_source: Arc::new(PerSource {
            max: cfg.sip.guard.max_calls_per_source,
            trunks: guard_trunks,
            counts: Default::default(),
        }),
        draining: draining.clone(),
        registry: registry.clone(),
    });
    let (mut server, listener) = SipServer::bind(cfg.sip.listen, endpoint, limits, spawner)
        .await
        .map_err(|source| ServeError::Bind {
            addr: cfg.sip.listen,
            source,
        })?;
    if let Some(tls) = tls {
        tracing::info!(
            listen = ?cfg.sip.tls.listen,
            verify_peers = cfg.sip.tls.ca.is_some(),
            "SIP over TLS"
        );
        if cfg.sip.tls.ca.is_none() {
            tracing::warn!("[sip.tls] ca is unset: TLS connections we open are encrypted but the peer's certificate is not checked");
        }
        server.serve_tls(tls);
    }
    if let Some(t) = acd_task {
        t.start(ctx.clone(), server.commands());
    }
    if let Some(retention) = cfg.recording.retention() {
        tokio::spawn(sweep_recordings(cfg.recording.dir.clone(), retention));
    }
    // Two stops: the dialer's (no new outbound calls, at the start of the drain) and the SIP
    // task's (hang up what is left, at the end of it).
    let (dialer_stop_tx, dialer_stop_rx) = tokio::sync::watch::channel(false);
    let (sip_stop_tx, mut sip_stop_rx) = tokio::sync::watch::channel(false);
    let dialer = Dialer::new(
        store.clone(),
        Arc::new(cfg.clone()),
        ctx.clone(),
        server.commands(),
    );
    dialer.recover().await?;
    dialer.register_trunks();
    tokio::spawn(dialer.clone().run(dialer_stop_rx));

    let exporter = {
        let (ctx, dialer, draining) = (ctx.clone(), dialer.clone(), draining.clone());
        Arc::new(super::metrics::Exporter::new(
            store.clone(),
            Box::new(move || super::metrics::Live {
                calls_active: ctx.active.load(Ordering::Relaxed) as u64,
                dialer_in_flight: u64::from(dialer.in_flight()),
                draining: draining.load(Ordering::Relaxed),
                campaigns: Vec::new(),
            }),
            Duration::from_secs(5),
        ))
    };
    if let Some(addr) = metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::MetricsBind { addr, source })?;
        tracing::info!(listen = %addr, "metrics on http://{addr}/metrics");
        tokio::spawn(super::metrics::serve_http(listener, exporter.clone()));
    }
    let reloader = Arc::new(super::reload::Reloader::new(
        config_path,
        cfg.clone(),
        ctx.clone(),
    ));
    let control_path = cfg.control_socket();
    let control = super::control::bind(&control_path)?;
    tokio::spawn(super::control::serve(
        control,
        Arc::new(ControlState {
            registry: registry.clone(),
            reloader: reloader.clone(),
            exporter,
            ctx: ctx.clone(),
            dialer: dialer.clone(),
            cfg: Arc::new(cfg.clone()),
            draining: draining.clone(),
            started,
        }),
    ));

    tracing::info!(listen = %cfg.sip.listen, storage = %cfg.storage_url(), node = %dialer.node(),
        control = %control_path.display(), "warmline ready (SIP over UDP and TCP)");
    // SIP and TCP are bound, the store is open, prompts, dialplan and speech are loaded.
    notifier.send(&format!("READY=1\nSTATUS={}", status_line(&ctx, false)));
    tokio::spawn(keepalive(notifier.clone(), ctx.clone(), draining.clone()));
    tokio::spawn(signals(
        hup,
        notifier.clone(),
        reloader,
        ctx.clone(),
        dialer.clone(),
        draining,
        drain_timeout,
        dialer_stop_tx,
        sip_stop_tx,
    ));
    server
        .run(
            listener,
            async move {
                let _ = sip_stop_rx.wait_for(|s| *s).await;
            },
            Duration::from_secs(5),
        )
        .await;
    // Outbound calls were hung up by the SIP task; let them write their attempts.
    for _ in 0..150 {
        if dialer.in_flight() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let call tasks write their final CDRs.
    for _ in 0..100 {
        if ctx.active.load(Ordering::Relaxed) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store.close().await;
    let _ = std::fs::remove_file(&control_path);
    tracing::info!("stopped");
    Ok(())
}

/// The one-line STATUS= systemd shows in `systemctl status`.
fn status_line(ctx: &CallContext, draining: bool) -> String {
    let n = ctx.active.load(Ordering::Relaxed);
    let calls = if n == 1 { "call" } else { "calls" };
    if draining {
        format!("draining: {n} {calls} finishing, new calls get 503")
    } else {
        format!("{n} active {calls}")
    }
}

/// WATCHDOG=1 from a reactor timer (so a stalled reactor stops the pings and systemd restarts
/// us) and STATUS= whenever the number of calls changes.
async fn keepalive(notifier: Arc<Notifier>, ctx: Arc<CallContext>, draining: Arc<AtomicBool>) {
    if !notifier.enabled() {
        return;
    }
    let watchdog = notifier.watchdog_interval();
    let every = watchdog
        .unwrap_or(Duration::from_secs(2))
        .min(Duration::from_secs(2));
    let mut iv = tokio::time::interval(every);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = String::new();
    loop {
        iv.tick().await;
        let status = status_line(&ctx, draining.load(Ordering::Relaxed));
        let mut msg = String::new();
        if watchdog.is_some() {
            msg.push_str("WATCHDOG=1");
        }
        if status != last {
            if !msg.is_empty() {
                msg.push('\n');
            }
            msg.push_str("STATUS=");
            msg.push_str(&status);
            last = status;
        }
        if !msg.is_empty() {
            notifier.send(&msg);
        }
    }
}

/// SIGHUP reloads; the first SIGTERM/SIGINT drains: new calls get 503, the dialer starts no
/// call, calls up get `drain` to finish, then the SIP task hangs up the rest (BYE) and exits.
#[allow(clippy::too_many_arguments)]
async fn signals(
    mut hup: Option<Signal>,
    notifier: Arc<Notifier>,
    reloader: Arc<super::reload::Reloader>,
    ctx: Arc<CallContext>,
    dialer: Arc<Dialer>,
    draining: Arc<AtomicBool>,
    drain: Duration,
    dialer_stop: tokio::sync::watch::Sender<bool>,
    sip_stop: tokio::sync::watch::Sender<bool>,
) {
    // Created once, so a signal that arrives during a reload is not lost.
    let mut stops = StopSignals::new();
    loop {
        tokio::select! {
            Some(()) = recv_opt(&mut hup) => {
                tracing::info!("SIGHUP: reloading configuration and dialplan");
                notifier.send(&super::systemd::reloading_message());
                // The outcome is logged by the reloader; a rejected file keeps the old one.
                let _ = reloader.reload().await;
                notifier.send(&format!("READY=1\nSTATUS={}", status_line(&ctx, false)));
            }
            () = stops.recv() => break,
        }
    }
    draining.store(true, Ordering::Relaxed);
    let _ = dialer_stop.send(true);
    let calls = ctx.active.load(Ordering::Relaxed);
    tracing::info!(
        calls,
        in_flight = dialer.in_flight(),
        drain_timeout_s = drain.as_secs(),
        "stopping: new calls get 503; waiting for calls in progress"
    );
    notifier.send(&format!("STOPPING=1\nSTATUS={}", status_line(&ctx, true)));
    let deadline = tokio::time::Instant::now() + drain;
    let mut iv = tokio::time::interval(Duration::from_millis(100));
    loop {
        if ctx.active.load(Ordering::Relaxed) == 0 && dialer.in_flight() == 0 {
            tracing::info!("all calls finished");
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                calls = ctx.active.load(Ordering::Relaxed),
                in_flight = dialer.in_flight(),
                "drain timeout: hanging up the calls still up"
            );
            break;
        }
        tokio::select! {
            _ = iv.tick() => {}
            // A second signal skips the rest of the drain.
            () = stops.recv() => {
                tracing::warn!("second stop signal: hanging up now");
                break;
            }
        }
    }
    let _ = sip_stop.send(true);
}

async fn recv_opt(s: &mut Option<Signal>) -> Option<()> {
    match s.as_mut() {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// SIGTERM (systemd's stop) and SIGINT (Ctrl-C).
struct StopSignals {
    term: Option<Signal>,
    int: Option<Signal>,
}

impl StopSignals {
    fn new() -> StopSignals {
        StopSignals {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    async fn recv(&mut self) {
        tokio::select! {
            Some(()) = recv_opt(&mut self.term) => {}
            Some(()) = recv_opt(&mut self.int) => {}
            else => std::future::pending().await,
        }
    }
}

/// Our TLS address for Via/Contact: `[sip.tls] public_addr`, else the public IP with the
/// port the TLS listener got (`bound`, which is `listen` unless that asked for port 0).
fn tls_public_addr(cfg: &Config, bound: Option<std::net::SocketAddr>) -> std::net::SocketAddr {
    if let Some(a) = cfg.sip.tls.public_addr {
        return a;
    }
    let port = bound.or(cfg.sip.tls.listen).map_or(5061, |a| a.port());
    std::net::SocketAddr::new(cfg.public_addr().ip(), port)
}

/// The guard and digest settings: `[sip.guard]` and `[sip.auth]` plus what other sections
/// imply (each trunk's address is a trunk network; each agent with a username is a user).
fn sip_security(
    cfg: &Config,
) -> Result<(crate::sip::guard::GuardConfig, crate::sip::auth::AuthConfig), ServeError> {
    let mut guard = cfg.sip.guard.clone();
    for name in cfg.trunks.keys() {
        let trunk = cfg
            .trunk(name)
            .map_err(|(key, message)| ServeError::Sip(format!("trunks.{name}.{key}: {message}")))?;
        if guard.trunks.iter().any(|t| t.name == *name) {
            continue;
        }
        let ip = trunk.address.ip();
        let cidr = format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 });
        if let Ok(net) = cidr.parse() {
            guard.trunks.push(crate::sip::guard::TrunkAcl {
                name: name.clone(),
                networks: vec![net],
            });
        }
    }
    let mut auth = cfg.sip.auth.clone();
    for (name, agent) in &cfg.agents {
        let Some(username) = &agent.username else {
            continue;
        };
        let password = agent
            .password(name)
            .map_err(|e| ServeError::Routing(format!("{}: {}", e.key, e.message)))?;
        if let Some(password) = password {
            if !auth.users.iter().any(|u| u.username == *username) {
                auth.users.push(crate::sip::auth::UserEntry {
                    username: username.clone(),
                    password: Some(password),
                    ..Default::default()
                });
            }
        } else if !auth.users.iter().any(|u| u.username == *username) {
            tracing::warn!(agent = %name, "agent has a username but no password; it cannot register");
        }
    }
    Ok((guard, auth))
}

/// What routing callers to people needs at start: the customer source, the ACD, voiceprints.
struct Routing {
    customers: Option<Arc<super::customers::Customers>>,
    acd: Option<crate::routing::acd::Acd>,
    voiceprints: Option<Arc<super::voiceprint::VoiceprintService>>,
}

async fn load_routing(cfg: &Config) -> Result<Routing, ServeError> {
    let routing_err = |e: crate::routing::RoutingConfigError| {
        ServeError::Routing(format!("{}: {}", e.key, e.message))
    };
    let customers = if cfg.customers.enabled() {
        let lookup = cfg.customers.lookup().map_err(routing_err)?;
        let table = match &cfg.customers.csv {
            Some(path) => {
                let path = path.clone();
                let loaded = tokio::task::spawn_blocking(move || {
                    crate::routing::customers::CustomerTable::load(&path)
                })
                .await
                .map_err(|e| ServeError::Routing(e.to_string()))?
                .map_err(|e| ServeError::Routing(e.to_string()))?;
                let (table, report) = loaded;
                tracing::info!("{report}");
                for m in report.messages() {
                    tracing::warn!("{m}");
                }
                Some(table)
            }
            None => None,
        };
        Some(Arc::new(super::customers::Customers::new(lookup, table)))
    } else {
        None
    };
    let acd = if cfg.queues.is_empty() {
        None
    } else {
        Some(
            crate::routing::build_acd(
                &cfg.agents,
                &cfg.queues,
                &cfg.customers.timezone,
                std::time::Instant::now(),
            )
            .map_err(routing_err)?,
        )
    };
    let voiceprints = if cfg.voiceprint.enabled {
        let service = super::voiceprint::VoiceprintService::load(&cfg.voiceprint)
            .await
            .map_err(|e| ServeError::Voiceprint(e.to_string()))?;
        tracing::info!(model = %service.model_version(), "voiceprints loaded");
        Some(Arc::new(service))
    } else {
        None
    };
    Ok(Routing {
        customers,
        acd,
        voiceprints,
    })
}

/// Deletes recordings past their retention, once at start and then daily.
async fn sweep_recordings(dir: PathBuf, retention: Duration) {
    let mut daily = tokio::time::interval(Duration::from_secs(86_400));
    loop {
        daily.tick().await;
        for d in [dir.clone(), dir.join("voicemail")] {
            let report = tokio::task::spawn_blocking(move || {
                crate::media::recorder::sweep(&d, std::time::SystemTime::now(), retention)
            })
            .await;
            match report {
                Ok(r) => {
                    if !r.deleted.is_empty() {
                        tracing::info!(
                            deleted = r.deleted.len(),
                            "recordings past retention deleted"
                        );
                    }
                    for e in r.errors {
                        tracing::warn!(error = %e, "recording sweep");
                    }
                }
                Err(e) => tracing::error!(error = %e, "recording sweep failed"),
            }
        }
    }
}
