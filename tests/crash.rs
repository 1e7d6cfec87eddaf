//! Crash and restart: `kill -9` the daemon under steady load, start it again on the same state,
//! and check what the store kept (ADR 0002: WAL + `synchronous=FULL`, group commit).
mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use serde_json::Value;

/// SIPp `-trace_msg` log → for each Call-ID, when SIPp received the 200 OK to its BYE
/// (the call was over for the caller). Block headers look like
/// `----------------------------------------------- 2026-11-22 11:45:08.521974` (local time).
fn bye_answered_at(msg_log: &str) -> HashMap<String, SystemTime> {
    let mut out = HashMap::new();
    let mut at: Option<SystemTime> = None;
    let mut block = String::new();
    let mut flush = |at: Option<SystemTime>, block: &str| {
        let Some(t) = at else { return };
        let mut lines = block.lines();
        let received = lines.next().is_some_and(|l| l.contains("message received"));
        let body: String = lines.map(|l| format!("{l}\r\n")).collect();
        let body = body.trim_start();
        if received
            && status_code(body) == Some(200)
            && header(body, "CSeq").is_some_and(|c| c.ends_with("BYE"))
        {
            if let Some(cid) = header(body, "Call-ID") {
                out.insert(cid.to_owned(), t);
            }
        }
    };
    for line in msg_log.lines() {
        if let Some(stamp) = line.strip_prefix("----------------------------------------------- ") {
            flush(at, &block);
            block.clear();
            at = chrono::NaiveDateTime::parse_from_str(stamp.trim(), "%Y-%m-%d %H:%M:%S%.f")
                .ok()
                .and_then(|n| n.and_local_timezone(chrono::Local).single())
                .map(SystemTime::from);
            continue;
        }
        block.push_str(line);
        block.push('\n');
    }
    flush(at, &block);
    out
}

#[test]
fn kill_9_under_load_keeps_every_finished_call_and_closes_the_rest() {
    let mut d = Daemon::start(DaemonOpts {
        rtp_ports: 400,
        rust_log: "info".into(),
        // SIPp is one source carrying all the load: exempt it like a trunk (docs/security.md),
        // so a slow moment on a shared box is not cut off by the per-source call cap.
        extra_toml: "[sip.guard]\nrate_per_sec = 0\nmax_calls_per_source = 0\n".into(),
        ..DaemonOpts::default()
    });
    // 50 calls a second, each up for 100 ms: a few are always in progress. SIPp's global
    // timeout ends the run a few seconds after the daemon died, so nothing it retransmits
    // reaches the restarted daemon.
    let sipp = Sipp::new("uac_basic.xml")
        .target(d.sip_addr)
        .work_dir(&d.run_dir("sipp"))
        .caller("3000")
        .calls(100_000)
        .rate(50.0)
        .set("hold_ms", 100)
        .timeout(Duration::from_secs(9));
    let prefix = sipp.call_id(0);
    let prefix = prefix.trim_end_matches('0').to_owned();
    let runner = std::thread::spawn(move || sipp.run());

    // Let a steady state build up: at least 100 finished records.
    let deadline = Instant::now() + Duration::from_secs(20);
    while d
        .cdrs_limit(1000)
        .iter()
        .filter(|c| !c["ended_at"].is_null())
        .count()
        < 100
    {
        assert!(Instant::now() < deadline, "no steady load reached");
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = d.pid().expect("daemon running");
    let killed_at = SystemTime::now();
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill -9");
    assert!(status.success());
    let r = runner.join().expect("sipp thread");
    // Restart on the same state and ports (reaps the killed child first).
    d.kill9_and_restart();

    let finished = bye_answered_at(&r.messages);
    assert!(
        finished.len() >= 100,
        "SIPp saw only {} finished calls:\n{}",
        finished.len(),
        r.report()
    );
    let rows: Vec<Value> = d
        .cdrs_limit(100_000)
        .into_iter()
        .filter(|c| {
            c["call_id"]
                .as_str()
                .is_some_and(|id| id.starts_with(&prefix))
        })
        .collect();
    let by_id: HashMap<&str, &Value> = rows
        .iter()
        .filter_map(|c| Some((c["call_id"].as_str()?, c)))
        .collect();

    // 1. Every call SIPp saw answered by 200 to its BYE has its record.
    let missing: Vec<&String> = finished
        .keys()
        .filter(|id| !by_id.contains_key(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} finished calls have no CDR, e.g. {:?}",
        missing.len(),
        finished.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
    // 2. A call that ended well before the kill has its real end (the 200 to the BYE leaves
    //    before the end is committed, so the last few milliseconds may legitimately be
    //    recorded as interrupted).
    let settled = killed_at - Duration::from_millis(500);
    let wrongly_interrupted: Vec<&String> = finished
        .iter()
        .filter(|(id, &t)| t < settled && by_id[id.as_str()]["outcome"] == "interrupted")
        .map(|(id, _)| id)
        .collect();
    assert!(
        wrongly_interrupted.is_empty(),
        "calls finished ≥ 500 ms before the kill recorded as interrupted: {wrongly_interrupted:?}"
    );
    // 3. Nothing is left open, and the calls cut by the kill say so.
    let open: Vec<&Value> = rows.iter().filter(|c| c["ended_at"].is_null()).collect();
    assert!(
        open.is_empty(),
        "records still open after restart: {open:?}"
    );
    let interrupted: HashSet<&str> = rows
        .iter()
        .filter(|c| c["outcome"] == "interrupted")
        .filter_map(|c| c["call_id"].as_str())
        .collect();
    assert!(
        !interrupted.is_empty(),
        "at 50 calls/s some calls were up at the kill; none recorded as interrupted"
    );
    for id in &interrupted {
        let t = finished.get(*id);
        assert!(
            t.is_none_or(|t| *t >= settled),
            "{id} finished before the kill yet is interrupted"
        );
    }
    assert!(
        d.log().contains("closed CDRs of calls interrupted"),
        "the restart reports the calls it closed"
    );
    eprintln!(
        "crash: {} calls finished before the kill, {} records, {} closed as interrupted",
        finished.len(),
        rows.len(),
        interrupted.len()
    );
    // 4. The restarted daemon serves.
    let r = Sipp::new("uac_basic.xml")
        .target(d.sip_addr)
        .work_dir(&d.run_dir("sipp"))
        .caller("3001")
        .timeout(Duration::from_secs(15))
        .run();
    r.assert_ok();
}
