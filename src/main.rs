use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use warmline::config::Config;
use warmline::ops;

#[derive(Parser)]
#[command(
    name = "warmline",
    version,
    about = "On-prem voice appliance: SIP, IVR menus, reminder campaigns"
)]
struct Cli {
    /// Configuration file (warmline.toml). Without one, the embedded defaults are used.
    #[arg(short, long, global = true, env = "WARMLINE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the appliance: SIP on UDP and TCP, the IVR, the CDR store.
    Serve,
    /// Validate the configuration, the prompts and every dialplan; print file:line:column problems.
    Check {
        /// Dialplan files to check (default: every *.toml in the dialplans folder).
        dialplans: Vec<PathBuf>,
    },
    /// Show call records.
    Cdr {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// How many of the newest records.
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Reminder campaigns (campaigns/<name>.toml + contacts CSV).
    Campaign {
        #[command(subcommand)]
        action: CampaignAction,
    },
    /// Run a call against a dialplan without a phone: audio files for what the caller says,
    /// keys for what they press; prints the path taken, transcripts and timings.
    Simulate {
        /// The dialplan file.
        dialplan: PathBuf,
        /// A WAV file the caller says (any rate; repeatable, in order with --press and --wait).
        #[arg(long, value_name = "WAV")]
        say: Vec<PathBuf>,
        /// Keys the caller presses, e.g. 1 or 31# (repeatable).
        #[arg(long, value_name = "KEYS")]
        press: Vec<String>,
        /// Silence for this long, e.g. 3s (repeatable).
        #[arg(long, value_name = "DURATION")]
        wait: Vec<String>,
        /// The call's language (default: the dialplan's).
        #[arg(long)]
        language: Option<String>,
        /// Print one JSON object instead of a timeline.
        #[arg(long)]
        json: bool,
    },
    /// Show what the running daemon is doing: calls, campaigns, trunks (over the control socket).
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make the running daemon re-read its configuration and dialplan (what SIGHUP does);
    /// calls in progress are not touched; a broken file is rejected and reported.
    Reload,
    /// Caller voiceprints: enrol, verify, delete, expire, the fraud watchlist, and the
    /// error-rate evaluation on a folder of speakers.
    Voiceprint {
        #[command(subcommand)]
        action: ops::voiceprint::VoiceprintCommand,
    },
    /// Show the global do-not-call list (callers who pressed the opt-out key).
    OptOuts {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CampaignAction {
    /// Validate a campaign file, its prompts or dialplan and every contacts row.
    Check {
        /// Campaign name (campaigns/<name>.toml) or a path to the file.
        name: String,
    },
    /// Validate, import the contacts (bad rows are reported and skipped) and start dialling.
    Start { name: String },
    /// Stop starting new calls; calls in progress finish.
    Pause { name: String },
    /// Continue a paused campaign.
    Resume { name: String },
    /// End the campaign: no new calls, ever (calls in progress finish).
    Stop { name: String },
    /// Progress: contacts by state, attempts by outcome.
    Status {
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Every decision the dialer made (dialled, skipped, waiting, retried, completed), in order.
    Audit {
        name: String,
        /// Write CSV to standard output.
        #[arg(long)]
        csv: bool,
    },
    /// Every attempt of the campaign.
    Report {
        name: String,
        /// Write CSV (one row per attempt) to standard output.
        #[arg(long)]
        csv: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Serve => {
            init_logging(&cfg);
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(ops::server::serve(cfg, cli.config.clone())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // Logging goes to stderr (and the journal under systemd): one line is enough.
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { dialplans } => ops::check::run(&cfg, &dialplans),
        Command::Simulate {
            dialplan,
            json,
            language,
            ..
        } => {
            let steps = match simulate_steps() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let args = ops::simulate::SimulateArgs {
                dialplan,
                steps,
                language,
                json,
            };
            ops::simulate::run(&cfg, &args)
        }
        Command::Cdr { json, limit } => ops::check::print_cdrs(&cfg, json, limit),
        Command::Status { json } => ops::control::run_status(&cfg, json),
        Command::Reload => ops::control::run_reload(&cfg),
        Command::OptOuts { json } => ops::check::print_opt_outs(&cfg, json),
        Command::Voiceprint { action } => {
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(ops::voiceprint::run(action, cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Campaign { action } => {
            use warmline::store::ledger::CampaignStatus;
            match action {
                CampaignAction::Check { name } => ops::campaign::check(&cfg, &name),
                CampaignAction::Start { name } => ops::campaign::start(&cfg, &name),
                CampaignAction::Pause { name } => {
                    ops::campaign::set_status(&cfg, &name, CampaignStatus::Paused)
                }
                CampaignAction::Resume { name } => {
                    ops::campaign::set_status(&cfg, &name, CampaignStatus::Running)
                }
                CampaignAction::Stop { name } => {
                    ops::campaign::set_status(&cfg, &name, CampaignStatus::Stopped)
                }
                CampaignAction::Status { name, json } => ops::campaign::status(&cfg, &name, json),
                CampaignAction::Report { name, csv } => ops::campaign::report(&cfg, &name, csv),
                CampaignAction::Audit { name, csv } => ops::campaign::audit(&cfg, &name, csv),
            }
        }
    }
}

/// The --say/--press/--wait steps in command-line order (clap keeps each list separately).
fn simulate_steps() -> Result<Vec<ops::simulate::Step>, String> {
    use ops::simulate::Step;
    let mut steps = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (a.clone(), None),
        };
        if !matches!(flag.as_str(), "--say" | "--press" | "--wait") {
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => args.next().ok_or_else(|| format!("{flag} needs a value"))?,
        };
        steps.push(match flag.as_str() {
            "--say" => Step::Say(PathBuf::from(value)),
            "--press" => Step::Press(value),
            _ => {
                let d = warmline::dialer::policy::parse_duration(&value)
                    .ok()
                    .and_then(|d| d.to_std().ok())
                    .ok_or_else(|| format!("--wait {value}: not a duration like 3s"))?;
                Step::Wait(d)
            }
        });
    }
    Ok(steps)
}

/// Logs to stderr as text, or to the journal with structured fields (CALL_ID=…) when running
/// under systemd (`JOURNAL_STREAM` set) and `[log] format` is "auto" or "journald". The filter
/// is reloadable so SIGHUP can apply a new `[log] level`.
fn init_logging(cfg: &Config) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{fmt, reload, EnvFilter, Layer};
    let filter = EnvFilter::try_from_env("WARMLINE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(&cfg.log.level));
    let (filter, handle) = reload::Layer::new(filter);
    ops::reload::set_log_filter_setter(Box::new(move |level: &str| {
        let f = EnvFilter::try_new(level).map_err(|e| format!("'{level}': {e}"))?;
        handle.reload(f).map_err(|e| e.to_string())
    }));
    let under_journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let journald = match cfg.log.format.as_str() {
        "journald" => true,
        "auto" => under_journal,
        _ => false,
    };
    let registry = tracing_subscriber::registry().with(filter);
    if journald {
        match tracing_journald::layer() {
            Ok(layer) => {
                registry
                    .with(layer.with_syslog_identifier("warmline".into()).boxed())
                    .init();
                return;
            }
            Err(e) => eprintln!("warning: cannot log to the journal ({e}); logging to stderr"),
        }
    }
    use std::io::IsTerminal;
    // The journal stamps every line itself: no second timestamp, no colours in stored logs.
    let text = fmt::layer()
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stderr);
    if under_journal {
        registry.with(text.without_time().boxed()).init();
    } else {
        registry.with(text.boxed()).init();
    }
}
