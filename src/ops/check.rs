//! `warmline check` and `warmline cdr`: the operator's offline commands.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::Config;
use crate::ivr::dialplan::{Dialplan, DialplanError, Severity};
use crate::media::prompt::PromptStore;
use crate::store::Store;

/// Validates the config (already loaded), the prompts and each dialplan. Prints every problem as
/// `file:line:column: severity: message`; exit status 1 when any is an error.
pub fn run(cfg: &Config, only: &[PathBuf]) -> ExitCode {
    let prompts = match PromptStore::load_dir(&cfg.paths.prompts) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{}: error: {e}", cfg.paths.prompts.display());
            return ExitCode::FAILURE;
        }
    };
    let files: Vec<PathBuf> = if only.is_empty() {
        match dialplan_files(&cfg.paths.dialplans) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("{}: error: {e}", cfg.paths.dialplans.display());
                return ExitCode::FAILURE;
            }
        }
    } else {
        only.to_vec()
    };
    let (mut errors, mut warnings) = (0usize, 0usize);
    if !cfg.dialplan_path().is_file() {
        eprintln!(
            "{}: error: ivr.dialplan = '{}' but no such dialplan file exists",
            cfg.dialplan_path().display(),
            cfg.ivr.dialplan
        );
        errors += 1;
    }
    for f in &files {
        match Dialplan::load(f, &prompts) {
            Ok((_, warns)) => {
                for w in warns {
                    println!("{w}");
                    warnings += 1;
                }
            }
            Err(DialplanError::Invalid(diags)) => {
                for d in diags {
                    match d.severity {
                        Severity::Error => errors += 1,
                        Severity::Warning => warnings += 1,
                    }
                    println!("{d}");
                }
            }
            Err(e) => {
                println!("{}: error: {e}", f.display());
                errors += 1;
            }
        }
    }
    println!(
        "checked {} dialplan(s) against {} prompt(s): {errors} error(s), {warnings} warning(s)",
        files.len(),
        prompts.len()
    );
    if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn dialplan_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Opens the store, runs one query and closes it again, for the offline commands.
fn query_store<T, F, Fut>(cfg: &Config, query: F) -> Result<Vec<T>, String>
where
    F: FnOnce(Store) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>, crate::store::StoreError>>,
{
    super::campaign::with_store(cfg, |store| async move {
        query(store).await.map_err(|e| e.to_string())
    })
}

/// Prints rows as JSON or through `table`; the exit status says whether it worked.
fn print_rows<T: serde::Serialize>(
    rows: Result<Vec<T>, String>,
    json: bool,
    table: impl FnOnce(Vec<T>),
) -> ExitCode {
    let rows = match rows {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !json {
        table(rows);
        return ExitCode::SUCCESS;
    }
    match serde_json::to_string_pretty(&rows) {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn print_cdrs(cfg: &Config, json: bool, limit: i64) -> ExitCode {
    let rows = query_store(cfg, |s| async move { s.recent_cdrs(limit).await });
    print_rows(rows, json, |rows| {
        println!(
            "{:<24} {:<20} {:<10} {:>8}  {:<28} digits",
            "started", "caller", "outcome", "secs", "path"
        );
        for r in rows {
            println!(
                "{:<24} {:<20} {:<10} {:>8}  {:<28} {}",
                r.started_at.format("%Y-%m-%d %H:%M:%S%.3f"),
                r.caller_number.as_deref().unwrap_or("-"),
                r.outcome.as_deref().unwrap_or("(live)"),
                r.duration_ms
                    .map(|d| format!("{:.1}", d as f64 / 1000.0))
                    .unwrap_or_else(|| "-".into()),
                r.path.join(">"),
                r.digits
            );
        }
    })
}

pub fn print_opt_outs(cfg: &Config, json: bool) -> ExitCode {
    let rows = query_store(cfg, |s| async move { s.opt_outs().await });
    print_rows(rows, json, |rows| {
        println!(
            "{:<24} {:<20} {:<8} {:<14} call",
            "since", "number", "scope", "source"
        );
        for r in rows {
            println!(
                "{:<24} {:<20} {:<8} {:<14} {}",
                r.created_at.format("%Y-%m-%d %H:%M:%S%.3f"),
                r.number,
                r.scope,
                r.source,
                r.call_id.as_deref().unwrap_or("-")
            );
        }
    })
}
