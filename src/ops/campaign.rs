//! `warmline campaign ...`: what a campaign manager runs against campaign files.
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::Config;
use crate::dialer::campaign::{Campaign, CampaignError, Message};
use crate::dialer::contacts::{check_template_fields, read_contacts_with};
use crate::ivr::dialplan::{Dialplan, Severity};
use crate::media::prompt::PromptStore;

/// A campaign named on the command line: a file path, or a name under `paths.campaigns`.
pub fn campaign_path(cfg: &Config, name: &str) -> PathBuf {
    let p = PathBuf::from(name);
    if p.extension().is_some_and(|e| e == "toml") || p.components().count() > 1 {
        p
    } else {
        cfg.paths.campaigns.join(format!("{name}.toml"))
    }
}

/// Validates a campaign file, its prompts or dialplan, and every row of its contacts CSV.
/// Prints `file:line:column: error: ...` for the file and `contacts.csv:line: ...` for rows;
/// exit status 1 when the campaign could not run as written.
pub fn check(cfg: &Config, name: &str) -> ExitCode {
    let path = campaign_path(cfg, name);
    let campaign = match Campaign::load(&path, &cfg.global_fatigue()) {
        Ok((c, warnings)) => {
            for w in warnings {
                println!("{w}");
            }
            c
        }
        Err(CampaignError::Invalid(diags)) => {
            for d in &diags {
                println!("{d}");
            }
            let errors = diags
                .iter()
                .filter(|d| matches!(d.severity, Severity::Error))
                .count();
            println!("{}: {errors} error(s); not checked further", path.display());
            return ExitCode::FAILURE;
        }
        Err(e) => {
            println!("{}: error: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let mut errors = 0usize;
    match &campaign.message {
        Message::Dialplan { name } => {
            let file = cfg.paths.dialplans.join(format!("{name}.toml"));
            let prompts = PromptStore::load_dir(&cfg.paths.prompts);
            match prompts.map(|p| Dialplan::load(&file, &p)) {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    println!("{}: error: message dialplan '{name}': {e}", path.display());
                    errors += 1;
                }
                Err(e) => {
                    println!("{}: error: {e}", cfg.paths.prompts.display());
                    errors += 1;
                }
            }
        }
        Message::Recorded { prompts, .. } => match PromptStore::load_dir(&cfg.paths.prompts) {
            Ok(store) => {
                for p in prompts {
                    if store.get(p).is_none() {
                        println!(
                            "{}: error: prompt '{p}' has no file {}/{p}.wav",
                            path.display(),
                            cfg.paths.prompts.display()
                        );
                        errors += 1;
                    }
                }
            }
            Err(e) => {
                println!("{}: error: {e}", cfg.paths.prompts.display());
                errors += 1;
            }
        },
    }

    let csv = &campaign.contacts;
    let file = match std::fs::File::open(csv) {
        Ok(f) => f,
        Err(e) => {
            println!(
                "{}: error: cannot open the contacts file: {e}",
                csv.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let opts = campaign.import_options();
    let result = read_contacts_with(
        std::io::BufReader::new(file),
        &opts,
        |_row| Ok::<(), std::convert::Infallible>(()),
        |bad| println!("{}:{bad}", csv.display()),
    );
    match result {
        Ok(summary) => {
            if let Err(e) = check_template_fields(&summary.header, &campaign.template_fields()) {
                println!("{}: error: {e}", csv.display());
                errors += 1;
            }
            println!(
                "campaign {}: {} contact row(s): {} usable, {} bad, {} duplicate; window {}; fatigue {} per {} ({}); {} error(s)",
                campaign.id,
                summary.rows,
                summary.imported,
                summary.bad,
                summary.duplicates,
                campaign.window.describe(),
                campaign.fatigue.max_contacts,
                crate::dialer::policy::fmt_duration(campaign.fatigue.window),
                campaign.fatigue.counts,
                errors
            );
        }
        Err(e) => {
            println!("{}: error: {e}", csv.display());
            errors += 1;
        }
    }
    if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
