//! `warmline serve`: opens the store, loads prompts and the dialplan, binds SIP and runs until stopped.
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::Config;
use crate::ivr::dialplan::{Dialplan, DialplanError};
use crate::media::prompt::PromptStore;
use crate::sip::endpoint::{Endpoint, EndpointConfig, IncomingCall};
use crate::store::{Store, StoreError};

use super::call::{run_call, CallContext, MediaClock};
use super::dialer::Dialer;
use super::ports::PortAllocator;
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
    #[error("sip: {0}")]
    Sip(String),
    #[error("routing: {0}")]
    Routing(String),
    #[error("voiceprints: {0}")]
    Voiceprint(String),
    #[error("cannot start the media clock threads: {0}")]
    MediaClock(std::io::Error),
    #[error("cannot listen for SIP on {addr} (UDP and TCP): {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

struct Spawner {
    ctx: Arc<CallContext>,
    max_calls: usize,
}

impl CallSpawner for Spawner {
    fn spawn_call(
        &self,
        call: IncomingCall,
        commands: mpsc::UnboundedSender<SipCommand>,
    ) -> Result<mpsc::UnboundedSender<CallEvent>, u16> {
        // Refusing with 503 keeps the calls already up at full quality.
        if self.ctx.active.load(Ordering::Relaxed) >= self.max_calls {
            tracing::warn!(call_id = %call.call_id, "call limit reached; 503");
            return Err(503);
        }
        self.ctx.active.fetch_add(1, Ordering::Relaxed);
        super::metrics::CALLS_TOTAL.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            run_call(ctx.clone(), call, rx, commands).await;
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

pub async fn serve(cfg: Config) -> Result<(), ServeError> {
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
    let mut ep_cfg = EndpointConfig::new(cfg.public_addr());
    ep_cfg.user_agent = cfg.sip.user_agent.clone();
    let (guard, auth) = sip_security(&cfg)?;
    ep_cfg.guard = guard;
    ep_cfg.auth = auth;
    ep_cfg.registrar = cfg.sip.registrar.clone();
    let limits = ep_cfg.limits;
    let endpoint = Endpoint::try_new(ep_cfg).map_err(|e| ServeError::Sip(e.to_string()))?;
    let spawner = Arc::new(Spawner {
        ctx: ctx.clone(),
        max_calls: cfg.sip.max_calls,
    });
    let (server, listener) = SipServer::bind(cfg.sip.listen, endpoint, limits, spawner)
        .await
        .map_err(|source| ServeError::Bind {
            addr: cfg.sip.listen,
            source,
        })?;
    if let Some(t) = acd_task {
        t.start(ctx.clone(), server.commands());
    }
    if let Some(retention) = cfg.recording.retention() {
        tokio::spawn(sweep_recordings(cfg.recording.dir.clone(), retention));
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let dialer = Dialer::new(
        store.clone(),
        Arc::new(cfg.clone()),
        ctx.clone(),
        server.commands(),
    );
    dialer.recover().await?;
    dialer.register_trunks();
    tokio::spawn(dialer.clone().run(stop_rx.clone()));
    tracing::info!(listen = %cfg.sip.listen, storage = %cfg.storage_url(), node = %dialer.node(),
        "warmline ready (SIP over UDP and TCP)");
    let mut stopped = stop_rx.clone();
    server
        .run(
            listener,
            async move {
                let _ = stopped.wait_for(|s| *s).await;
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
    Ok(())
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

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
