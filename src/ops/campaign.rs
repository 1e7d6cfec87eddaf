//! `warmline campaign ...`: what a campaign manager runs against campaign files.
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::Config;
use crate::dialer::campaign::{Campaign, CampaignError, Message};
use crate::dialer::contacts::{
    check_template_fields, read_contacts_with, ContactRow, ImportSummary,
};
use crate::ivr::dialplan::{Dialplan, Severity};
use crate::media::prompt::PromptStore;
use crate::store::ledger::{
    CampaignCounts, CampaignRow, CampaignStatus, NewContact, IMPORT_BATCH_ROWS,
};
use crate::store::Store;

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
    for p in message_problems(cfg, &campaign, &path) {
        println!("{p}");
        errors += 1;
    }
    if let Err((_, message)) = cfg.trunk(&campaign.trunk) {
        println!("{}: warning: {message}", path.display());
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

/// Runs `f` on a fresh single-threaded runtime with the store open, and closes the store:
/// how every offline command (`cdr`, `opt-outs`, `campaign ...`) reaches the database.
pub(crate) fn with_store<T, F, Fut>(cfg: &Config, f: F) -> Result<T, String>
where
    F: FnOnce(Store) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(async {
        let store = Store::open(&cfg.storage_url())
            .await
            .map_err(|e| e.to_string())?;
        let out = f(store.clone()).await;
        store.close().await;
        out
    })
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The campaign id a command line name stands for: the id inside the campaign file when the
/// file reads, else the name itself (a campaign whose file is gone can still be stopped).
fn campaign_id(cfg: &Config, name: &str) -> String {
    let path = campaign_path(cfg, name);
    match Campaign::load(&path, &cfg.global_fatigue()) {
        Ok((c, _)) => c.id,
        Err(_) => path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| name.to_string()),
    }
}

fn contact_from_row(row: ContactRow) -> NewContact {
    NewContact {
        customer_id: row.customer_id,
        phone: row.phone,
        tz: row.tz.name().to_string(),
        consent: row.consent,
        birth_date: row.birth_date.map(|d| d.format("%Y-%m-%d").to_string()),
        segment: row.segment,
        fields: row
            .fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        import_line: i64::try_from(row.line).unwrap_or(i64::MAX),
    }
}

/// `campaign start`: validates the campaign, registers it, imports its contacts (bad rows are
/// printed with their line and skipped; contacts already imported are kept as they are) and
/// marks it running. The appliance (`warmline serve`) picks it up within a poll interval.
pub fn start(cfg: &Config, name: &str) -> ExitCode {
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
            println!(
                "{}: not started; `warmline campaign check {name}` shows every problem",
                path.display()
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            println!("{}: error: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    if let Err((_, message)) = cfg.trunk(&campaign.trunk) {
        println!("{}: error: {message}", path.display());
        return ExitCode::FAILURE;
    }
    if let Message::Dialplan { name } = &campaign.message {
        println!(
            "{}: error: message dialplan '{name}': outbound calls play recorded prompts and a \
             spoken template; a dialplan message is not dialled by this version",
            path.display()
        );
        return ExitCode::FAILURE;
    }
    let problems = message_problems(cfg, &campaign, &path);
    if !problems.is_empty() {
        for p in problems {
            println!("{p}");
        }
        return ExitCode::FAILURE;
    }
    let csv_path = campaign.contacts.clone();
    let file = match std::fs::File::open(&csv_path) {
        Ok(f) => f,
        Err(e) => {
            println!(
                "{}: error: cannot open the contacts file: {e}",
                csv_path.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let result = with_store(cfg, |store| async move {
        store
            .upsert_campaign(
                &campaign.id,
                &campaign.description,
                &path.display().to_string(),
                now_ms(),
            )
            .await
            .map_err(|e| e.to_string())?;
        let (added, summary) = import(&store, &campaign, file, size, &csv_path).await?;
        store
            .set_campaign_status(&campaign.id, CampaignStatus::Running, now_ms())
            .await
            .map_err(|e| e.to_string())?;
        Ok((campaign.id.clone(), added, summary))
    });
    match result {
        Ok((id, added, summary)) => {
            println!(
                "campaign {id}: {} row(s) read, {added} new contact(s) imported, {} bad and {} duplicate row(s) skipped; running",
                summary.rows, summary.bad, summary.duplicates
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reads the CSV on a blocking thread and imports it in batches; bad rows are printed as
/// `file:line: ...`. Returns how many contacts were new.
async fn import(
    store: &Store,
    campaign: &Campaign,
    file: std::fs::File,
    size: u64,
    csv_path: &std::path::Path,
) -> Result<(u64, ImportSummary), String> {
    let bar = indicatif::ProgressBar::new(size);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "importing {msg} [{bar:30}] {bytes}/{total_bytes} ({eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(campaign.id.clone());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<NewContact>>(4);
    let opts = campaign.import_options();
    let reader = bar.wrap_read(std::io::BufReader::with_capacity(1 << 20, file));
    let shown = csv_path.display().to_string();
    let printer = bar.clone();
    let reading = tokio::task::spawn_blocking(move || {
        let mut batch = Vec::with_capacity(IMPORT_BATCH_ROWS);
        let summary = read_contacts_with(
            reader,
            &opts,
            |row| {
                batch.push(contact_from_row(row));
                if batch.len() >= IMPORT_BATCH_ROWS {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(IMPORT_BATCH_ROWS));
                    tx.blocking_send(full)
                        .map_err(|_| "the importer stopped".to_string())?;
                }
                Ok::<(), String>(())
            },
            |bad| printer.suspend(|| println!("{shown}:{bad}")),
        );
        if !batch.is_empty() {
            let _ = tx.blocking_send(batch);
        }
        summary
    });
    let mut added = 0u64;
    let mut failure = None;
    while let Some(batch) = rx.recv().await {
        if failure.is_some() {
            continue;
        }
        match store.import_contacts_batch(&campaign.id, &batch).await {
            Ok(n) => added += n,
            // Keep draining so the reader ends; batches already committed stay.
            Err(e) => failure = Some(e.to_string()),
        }
    }
    bar.finish_and_clear();
    let summary = reading
        .await
        .map_err(|e| format!("the CSV reader failed: {e}"))?
        .map_err(|e| format!("{}: {e}", csv_path.display()))?;
    if let Some(e) = failure {
        return Err(format!(
            "importing {} stopped: {e} ({added} contact(s) imported before it are kept)",
            csv_path.display()
        ));
    }
    Ok((added, summary))
}

/// Prompts or dialplan the campaign's message needs that are missing.
fn message_problems(cfg: &Config, campaign: &Campaign, path: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    match &campaign.message {
        Message::Dialplan { name } => {
            let file = cfg.paths.dialplans.join(format!("{name}.toml"));
            match PromptStore::load_dir(&cfg.paths.prompts).map(|p| Dialplan::load(&file, &p)) {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => out.push(format!(
                    "{}: error: message dialplan '{name}': {e}",
                    path.display()
                )),
                Err(e) => out.push(format!("{}: error: {e}", cfg.paths.prompts.display())),
            }
        }
        Message::Recorded { prompts, .. } => match PromptStore::load_dir(&cfg.paths.prompts) {
            Ok(store) => {
                for p in prompts {
                    if store.get(p).is_none() {
                        out.push(format!(
                            "{}: error: prompt '{p}' has no file {}/{p}.wav",
                            path.display(),
                            cfg.paths.prompts.display()
                        ));
                    }
                }
            }
            Err(e) => out.push(format!("{}: error: {e}", cfg.paths.prompts.display())),
        },
    }
    out
}

/// `campaign pause|resume|stop`: moves a registered campaign to `to`. Calls in progress finish;
/// no new call starts while it is not running.
pub fn set_status(cfg: &Config, name: &str, to: CampaignStatus) -> ExitCode {
    let id = campaign_id(cfg, name);
    let result = with_store(cfg, |store| async move {
        let Some(row) = store.campaign(&id).await.map_err(|e| e.to_string())? else {
            return Err(format!(
                "campaign '{id}' was never started (warmline campaign start {id})"
            ));
        };
        let allowed = match to {
            CampaignStatus::Paused => row.status == CampaignStatus::Running,
            CampaignStatus::Running => row.status == CampaignStatus::Paused,
            CampaignStatus::Stopped => {
                matches!(row.status, CampaignStatus::Running | CampaignStatus::Paused)
            }
            _ => false,
        };
        if !allowed {
            return Err(format!(
                "campaign '{id}' is {}; cannot make it {}",
                row.status.as_str(),
                to.as_str()
            ));
        }
        store
            .set_campaign_status(&id, to, now_ms())
            .await
            .map_err(|e| e.to_string())?;
        Ok(id)
    });
    match result {
        Ok(id) => {
            println!("campaign {id}: {}", to.as_str());
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(serde::Serialize)]
struct StatusReport {
    campaign: CampaignRow,
    counts: CampaignCounts,
}

/// `campaign status`: the campaign's state, contacts by state and attempts by outcome.
pub fn status(cfg: &Config, name: &str, json: bool) -> ExitCode {
    let id = campaign_id(cfg, name);
    let result = with_store(cfg, |store| async move {
        let Some(campaign) = store.campaign(&id).await.map_err(|e| e.to_string())? else {
            return Err(format!(
                "campaign '{id}' was never started (warmline campaign start {id})"
            ));
        };
        let counts = store
            .campaign_counts(&id)
            .await
            .map_err(|e| e.to_string())?;
        Ok(StatusReport { campaign, counts })
    });
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            println!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        return match serde_json::to_string_pretty(&report) {
            Ok(s) => {
                println!("{s}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let c = &report.counts;
    let state = |s: &str| c.contacts_by_state.get(s).copied().unwrap_or(0);
    let finished = state("done") + state("skipped");
    println!(
        "campaign {}: {} ({})",
        report.campaign.id,
        report.campaign.status.as_str(),
        report.campaign.name
    );
    let pct = if c.contacts_total > 0 {
        finished as f64 * 100.0 / c.contacts_total as f64
    } else {
        0.0
    };
    println!(
        "contacts: {} total, {finished} finished ({pct:.1}%): {} done, {} skipped, {} pending, {} dialling",
        c.contacts_total,
        state("done"),
        state("skipped"),
        state("pending"),
        state("dialling")
    );
    let attempts: i64 = c.attempts_by_outcome.values().sum();
    let outcomes: Vec<String> = c
        .attempts_by_outcome
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!(
        "attempts: {attempts}{}{}",
        if outcomes.is_empty() { "" } else { ": " },
        outcomes.join(", ")
    );
    ExitCode::SUCCESS
}

/// `campaign report`: every attempt, as CSV (`--csv`) or a table.
pub fn report(cfg: &Config, name: &str, csv_out: bool) -> ExitCode {
    let id = campaign_id(cfg, name);
    let result = with_store(cfg, |store| async move {
        if store
            .campaign(&id)
            .await
            .map_err(|e| e.to_string())?
            .is_none()
        {
            return Err(format!(
                "campaign '{id}' was never started (warmline campaign start {id})"
            ));
        }
        store
            .attempts_for_report(&id)
            .await
            .map_err(|e| e.to_string())
    });
    let rows = match result {
        Ok(r) => r,
        Err(e) => {
            println!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let iso = |ms: Option<i64>| {
        ms.and_then(chrono::DateTime::from_timestamp_millis)
            .map(crate::dialer::policy::fmt_utc)
            .unwrap_or_default()
    };
    if csv_out {
        let mut w = csv::Writer::from_writer(std::io::stdout().lock());
        let header = [
            "attempt_id",
            "campaign_id",
            "customer_id",
            "phone",
            "node",
            "started_at",
            "answered_at",
            "ended_at",
            "outcome",
            "sip_status",
            "amd_decision",
            "amd_confidence",
            "counted_as_contact",
            "call_id",
        ];
        let mut ok = w.write_record(header).is_ok();
        for r in &rows {
            ok &= w
                .write_record([
                    r.id.to_string(),
                    r.campaign_id.clone(),
                    r.customer_id.clone(),
                    r.phone.clone(),
                    r.node.clone(),
                    iso(Some(r.started_at_ms)),
                    iso(r.answered_at_ms),
                    iso(r.ended_at_ms),
                    r.outcome.clone().unwrap_or_else(|| "in-progress".into()),
                    r.sip_status.map(|s| s.to_string()).unwrap_or_default(),
                    r.amd_decision.clone().unwrap_or_default(),
                    r.amd_confidence
                        .map(|c| format!("{c:.2}"))
                        .unwrap_or_default(),
                    r.counted_as_contact
                        .map(|c| if c { "yes" } else { "no" }.to_string())
                        .unwrap_or_default(),
                    r.call_id.clone().unwrap_or_default(),
                ])
                .is_ok();
        }
        ok &= w.flush().is_ok();
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    println!(
        "{:<22} {:<16} {:<17} {:<16} {:>4}  amd",
        "started", "customer", "phone", "outcome", "sip"
    );
    for r in &rows {
        println!(
            "{:<22} {:<16} {:<17} {:<16} {:>4}  {}",
            iso(Some(r.started_at_ms)),
            r.customer_id,
            r.phone,
            r.outcome.as_deref().unwrap_or("in-progress"),
            r.sip_status.map(|s| s.to_string()).unwrap_or_default(),
            r.amd_decision.as_deref().unwrap_or("")
        );
    }
    ExitCode::SUCCESS
}

/// `campaign audit`: every decision the dialer made, in order (append-only).
pub fn audit(cfg: &Config, name: &str, csv_out: bool) -> ExitCode {
    let id = campaign_id(cfg, name);
    let result = with_store(cfg, |store| async move {
        if store
            .campaign(&id)
            .await
            .map_err(|e| e.to_string())?
            .is_none()
        {
            return Err(format!(
                "campaign '{id}' was never started (warmline campaign start {id})"
            ));
        }
        store
            .audit_for_campaign(&id)
            .await
            .map_err(|e| e.to_string())
    });
    let rows = match result {
        Ok(r) => r,
        Err(e) => {
            println!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let iso = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .map(crate::dialer::policy::fmt_utc)
            .unwrap_or_default()
    };
    if csv_out {
        let mut w = csv::Writer::from_writer(std::io::stdout().lock());
        let mut ok = w
            .write_record(["at", "customer_id", "decision", "rule", "reason"])
            .is_ok();
        for r in &rows {
            ok &= w
                .write_record([
                    iso(r.at_ms).as_str(),
                    r.customer_id.as_str(),
                    r.decision.as_str(),
                    r.rule.as_deref().unwrap_or(""),
                    r.reason.as_str(),
                ])
                .is_ok();
        }
        ok &= w.flush().is_ok();
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    for r in &rows {
        println!(
            "{:<22} {:<16} {:<10} {}",
            iso(r.at_ms),
            r.customer_id,
            r.decision.as_str(),
            r.reason
        );
    }
    ExitCode::SUCCESS
}
