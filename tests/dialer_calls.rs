//! Reminder campaigns end to end: `warmline campaign start` on the command line, `warmline
//! serve` dialling through a SIP trunk that is a real SIPp UAS (answering, busy, never
//! answering, an answering machine, a trunk that challenges with 401), and the ledger read
//! back with `warmline campaign report --csv`.
mod common;

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A time zone whose local clock is not near midnight now, so a 00:00–23:59 window is open.
fn open_tz() -> &'static str {
    use chrono::Timelike;
    let h = chrono::Utc::now().hour();
    if (1..23).contains(&h) {
        "UTC"
    } else {
        "Asia/Tokyo"
    }
}

struct Trunk {
    sipp: SippServer,
}

fn trunk_toml(addr: std::net::SocketAddr, extra: &str) -> String {
    node_toml(addr, extra, "node-a")
}

fn node_toml(addr: std::net::SocketAddr, extra: &str, node: &str) -> String {
    format!(
        "[trunks.main]\naddress = \"{addr}\"\nring_timeout = \"5s\"\ncalls_per_second = 20\n{extra}\n\n[dialer]\npoll_interval_ms = 200\nnode = \"{node}\"\n"
    )
}

/// Writes `campaigns/<name>.toml` and its CSV into the daemon's folder.
fn write_campaign(daemon: &Daemon, name: &str, body: &str, customers: &[(&str, &str)]) {
    let dir = daemon.dir().join("campaigns");
    fs::create_dir_all(&dir).unwrap();
    let tz = open_tz();
    let mut csv = String::from("customer_id,phone,timezone,name\n");
    for (id, phone) in customers {
        csv.push_str(&format!("{id},{phone},{tz},Customer {id}\n"));
    }
    fs::write(dir.join(format!("{name}.csv")), csv).unwrap();
    let toml = format!(
        "trunk = \"main\"\ncaller_id = \"+12125550100\"\ncontacts = \"{name}.csv\"\nstart_date = 2020-01-01\n\
         {body}\n\n[message]\nprompt = [\"reminders/coupon-expiry\"]\n\n\
         [window]\nstart = \"00:00\"\nend = \"23:59\"\ndays = \"mon-sun\"\nfinish_margin = \"0s\"\n"
    );
    fs::write(dir.join(format!("{name}.toml")), toml).unwrap();
}

/// Runs the CLI against the daemon's configuration.
fn cli(daemon: &Daemon, args: &[&str]) -> (bool, String) {
    let out = Command::new(warmline_bin())
        .arg("--config")
        .arg(&daemon.config_path)
        .args(args)
        .current_dir(daemon.dir())
        .output()
        .expect("run warmline");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn report(daemon: &Daemon, name: &str) -> Vec<HashMap<String, String>> {
    csv_command(daemon, &["campaign", "report", name, "--csv"])
}

/// Runs a CLI command that prints CSV; one map per row, by header.
fn csv_command(daemon: &Daemon, args: &[&str]) -> Vec<HashMap<String, String>> {
    let (ok, text) = cli(daemon, args);
    assert!(ok, "{args:?} failed: {text}");
    let mut rd = csv::Reader::from_reader(text.as_bytes());
    let header = rd.headers().unwrap().clone();
    rd.records()
        .map(|r| {
            let r = r.unwrap();
            header
                .iter()
                .zip(r.iter())
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// Waits until `n` attempts have ended; returns the report.
fn wait_ended(
    daemon: &Daemon,
    name: &str,
    n: usize,
    timeout: Duration,
) -> Vec<HashMap<String, String>> {
    let deadline = Instant::now() + timeout;
    loop {
        let rows = report(daemon, name);
        let ended = rows
            .iter()
            .filter(|r| r["outcome"] != "in-progress")
            .count();
        if ended >= n {
            return rows;
        }
        if Instant::now() > deadline {
            panic!(
                "only {ended} of {n} attempts ended within {timeout:?}: {rows:?}\nlog:\n{}",
                daemon.log_tail(80)
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn status_json(daemon: &Daemon, name: &str) -> serde_json::Value {
    let (ok, text) = cli(daemon, &["campaign", "status", name, "--json"]);
    assert!(ok, "status failed: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("status json: {e}: {text}"))
}

fn start_daemon(trunk_addr: std::net::SocketAddr, extra_trunk: &str) -> Daemon {
    Daemon::start(DaemonOpts {
        extra_toml: trunk_toml(trunk_addr, extra_trunk),
        ..DaemonOpts::default()
    })
}

fn uas(scenario: &str, dir: &Path) -> Sipp {
    Sipp::new(scenario)
        .work_dir(dir)
        .timeout(Duration::from_secs(120))
        .calls(100)
}

impl Trunk {
    fn addr(&self) -> std::net::SocketAddr {
        self.sipp.addr
    }
}

/// A person who answers "Hello?", then (while the reminder plays) presses `key` at `at_ms`
/// after the answer: the pcap `uas_answer_dtmf.xml` plays. Needs root (raw RTP).
fn hello_then_key(dir: &Path, at_ms: u32, key: char) -> std::path::PathBuf {
    require_tool("sipp");
    if !can_send_raw_rtp() {
        panic!("this test plays an RTP pcap with SIPp and needs root (CAP_NET_RAW)");
    }
    let hello = dir.join("hello.wav");
    make_caller_wav("Hello?", &hello, 0.2).unwrap();
    let pcap = dir.join(format!("hello-then-{key}.pcap"));
    DtmfPcap::new(&[(at_ms, key)])
        .audio(&hello)
        .tail_ms(8000)
        .write(&pcap)
        .unwrap();
    pcap
}

#[test]
fn person_answers_hears_the_reminder_and_confirms_with_1() {
    let work = tempfile::tempdir().unwrap();
    let pcap = hello_then_key(work.path(), 6000, '1');
    let trunk = Trunk {
        sipp: uas("uas_answer_dtmf.xml", work.path())
            .key("dtmf_pcap", &pcap.display().to_string())
            .spawn(),
    };
    let daemon = start_daemon(trunk.addr(), "");
    write_campaign(&daemon, "confirm", "", &[("c1", "+15551230001")]);
    let (ok, out) = cli(&daemon, &["campaign", "start", "confirm"]);
    assert!(ok, "{out}");
    assert!(out.contains("1 new contact(s) imported"), "{out}");

    let rows = wait_ended(&daemon, "confirm", 1, Duration::from_secs(40));
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r = &rows[0];
    assert_eq!(r["outcome"], "confirmed", "{r:?}\n{}", daemon.log_tail(60));
    assert_eq!(r["amd_decision"], "human", "{r:?}");
    assert_eq!(r["sip_status"], "200");
    assert_eq!(r["counted_as_contact"], "yes");
    assert_eq!(r["phone"], "+15551230001");
    assert!(!r["answered_at"].is_empty());

    // The planner sees the contact done and the campaign completed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status_json(&daemon, "confirm");
        if s["campaign"]["status"] == "completed" {
            assert_eq!(s["counts"]["contacts_by_state"]["done"], 1, "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "campaign not completed: {s}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let (_, text) = cli(&daemon, &["campaign", "status", "confirm"]);
    assert!(text.contains("confirmed 1"), "{text}");
}

fn audit(daemon: &Daemon, name: &str) -> Vec<HashMap<String, String>> {
    csv_command(daemon, &["campaign", "audit", name, "--csv"])
}

#[test]
fn the_template_is_spoken_for_each_contact_by_text_to_speech() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let voice = repo.join(".cache/speech/voices/en_US-joe-medium.onnx");
    assert!(
        voice.is_file(),
        "needs the Piper voice: run scripts/setup-piper.sh"
    );
    let work = tempfile::tempdir().unwrap();
    let pcap = hello_then_key(work.path(), 7000, '1');
    // The trunk starts after the daemon, whose first start renders the demo bank's texts.
    let trunk_port = free_port();
    let trunk_addr = std::net::SocketAddr::from(([127, 0, 0, 1], trunk_port));
    // A shared render cache keeps the demo bank's fixed texts warm between test runs.
    let speech =
        format!(
        "[speech]\nmodels = {{}}\nvoices = {{ en = {:?} }}\nonnxruntime = {:?}\ncache_dir = {:?}\n",
        voice.display().to_string(),
        repo.join(".cache/speech/onnxruntime/libonnxruntime.so.1.24.4")
            .display()
            .to_string(),
        repo.join(".cache/speech/tts-cache-tests").display().to_string()
    );
    let daemon = Daemon::start(DaemonOpts {
        extra_toml: format!("{}\n{speech}", trunk_toml(trunk_addr, "")),
        ready_timeout: Duration::from_secs(240),
        ..DaemonOpts::default()
    });
    let _trunk = Trunk {
        sipp: uas("uas_answer_dtmf.xml", work.path())
            .local_port(trunk_port)
            .key("dtmf_pcap", &pcap.display().to_string())
            .spawn(),
    };
    let dir = daemon.dir().join("campaigns");
    write_campaign(&daemon, "spoken", "", &[("t1", "+15551230015")]);
    let p = dir.join("spoken.toml");
    let text = fs::read_to_string(&p).unwrap().replace(
        "[message]\n",
        "[message]\ntemplate = \"Hello {name}. Your coupon of $49.95 expires on 2026-12-31. Press 1 to confirm.\"\n",
    );
    fs::write(&p, text).unwrap();
    let (ok, out) = cli(&daemon, &["campaign", "start", "spoken"]);
    assert!(ok, "{out}");
    let rows = wait_ended(&daemon, "spoken", 1, Duration::from_secs(60));
    assert_eq!(
        rows[0]["outcome"],
        "confirmed",
        "{rows:?}\n{}",
        daemon.log_tail(40)
    );
    let log = daemon.log();
    let line = log
        .lines()
        .find(|l| l.contains("message spoken by text-to-speech"))
        .unwrap_or_else(|| panic!("no TTS message:\n{}", daemon.log_tail(40)));
    assert!(!line.contains("sentences=0"), "{line}");
}

#[test]
fn opt_out_key_in_a_reminder_stops_every_campaign_at_once() {
    let work = tempfile::tempdir().unwrap();
    let pcap = hello_then_key(work.path(), 6000, '9');
    let trunk = Trunk {
        sipp: uas("uas_answer_dtmf.xml", work.path())
            .key("dtmf_pcap", &pcap.display().to_string())
            .spawn(),
    };
    let daemon = start_daemon(trunk.addr(), "");
    write_campaign(&daemon, "first", "", &[("o1", "+15551230016")]);
    let (ok, out) = cli(&daemon, &["campaign", "start", "first"]);
    assert!(ok, "{out}");
    let rows = wait_ended(&daemon, "first", 1, Duration::from_secs(40));
    assert_eq!(
        rows[0]["outcome"],
        "opted_out",
        "{rows:?}\n{}",
        daemon.log_tail(40)
    );
    // On the global list at once, with this campaign as its source.
    let (ok, list) = cli(&daemon, &["opt-outs", "--json"]);
    assert!(ok, "{list}");
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|r| r["number"] == "+15551230016"
                && r["source"]
                    .as_str()
                    .unwrap_or("")
                    .contains("campaign:first")),
        "{list}"
    );
    // Another campaign (another customer id, the same number) never calls it.
    write_campaign(&daemon, "second", "", &[("o1-other", "+1 555 123 0016")]);
    let (ok, out) = cli(&daemon, &["campaign", "start", "second"]);
    assert!(ok, "{out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let trail = audit(&daemon, "second");
        if let Some(a) = trail.iter().find(|a| a["decision"] == "skipped") {
            assert!(a["reason"].contains("opted out"), "{a:?}");
            break;
        }
        assert!(Instant::now() < deadline, "not skipped: {trail:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        report(&daemon, "second").is_empty(),
        "the opted-out number was dialled"
    );
}

#[test]
fn busy_is_scheduled_for_a_retry_after_its_delay() {
    let work = tempfile::tempdir().unwrap();
    let trunk = Trunk {
        sipp: uas("uas_busy.xml", work.path()).spawn(),
    };
    let daemon = start_daemon(trunk.addr(), "");
    write_campaign(
        &daemon,
        "busy",
        "[retry]\nmax_attempts = 5\nbusy = { delay = \"10m\", max_retries = 1 }",
        &[("b1", "+15551230002")],
    );
    let (ok, out) = cli(&daemon, &["campaign", "start", "busy"]);
    assert!(ok, "{out}");
    let rows = wait_ended(&daemon, "busy", 1, Duration::from_secs(30));
    let r = &rows[0];
    assert_eq!(r["outcome"], "busy", "{r:?}");
    assert_eq!(r["sip_status"], "486");
    assert_eq!(
        r["counted_as_contact"], "no",
        "busy is not answered by a person"
    );
    // The planner decides again: a retry in 10 minutes, written to the audit trail.
    let deadline = Instant::now() + Duration::from_secs(10);
    let trail = loop {
        let trail = audit(&daemon, "busy");
        if trail.iter().any(|a| a["decision"] == "retried") {
            break trail;
        }
        assert!(Instant::now() < deadline, "no retry decision: {trail:?}");
        std::thread::sleep(Duration::from_millis(300));
    };
    let decisions: Vec<&str> = trail.iter().map(|a| a["decision"].as_str()).collect();
    assert_eq!(decisions, ["dialled", "retried"], "{trail:?}");
    let retried = &trail[1];
    assert!(
        retried["reason"].contains("retry delay") && retried["reason"].contains("busy"),
        "{retried:?}"
    );
    assert_eq!(retried["rule"], "retry", "{retried:?}");
    let s = status_json(&daemon, "busy");
    assert_eq!(s["counts"]["contacts_by_state"]["pending"], 1, "{s}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        report(&daemon, "busy").len(),
        1,
        "redialled before the retry delay"
    );
}

#[test]
fn unanswered_call_is_cancelled_at_the_ring_timeout() {
    let work = tempfile::tempdir().unwrap();
    let trunk = Trunk {
        sipp: uas("uas_noanswer.xml", work.path()).spawn(),
    };
    let daemon = start_daemon(trunk.addr(), "");
    write_campaign(&daemon, "ring", "", &[("n1", "+15551230003")]);
    let started = Instant::now();
    let (ok, out) = cli(&daemon, &["campaign", "start", "ring"]);
    assert!(ok, "{out}");
    let rows = wait_ended(&daemon, "ring", 1, Duration::from_secs(30));
    let r = &rows[0];
    assert_eq!(r["outcome"], "no_answer", "{r:?}\n{}", daemon.log_tail(40));
    assert_eq!(r["sip_status"], "487", "{r:?}");
    assert!(r["answered_at"].is_empty());
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "ring timeout is 5 s"
    );
    let res = trunk.sipp.stop();
    assert!(
        res.received().iter().any(|m| m.starts_with("CANCEL ")),
        "SIPp saw no CANCEL:\n{}",
        res.report()
    );
}

#[test]
fn answering_machine_is_detected_and_hung_up_on() {
    let work = tempfile::tempdir().unwrap();
    let greeting = work.path().join("greeting.wav");
    make_caller_wav(
        "Hi, you have reached the voicemail of Anna Smith. I cannot take your call right now. \
         Please leave your name, your number and a short message after the tone, and I will \
         call you back as soon as I can.",
        &greeting,
        2.0,
    )
    .unwrap();
    let trunk = Trunk {
        sipp: uas("uas_machine.xml", work.path())
            .caller_audio(&greeting)
            .spawn(),
    };
    let daemon = start_daemon(trunk.addr(), "");
    write_campaign(
        &daemon,
        "machine",
        "answering_machine = \"hangup\"",
        &[("m1", "+15551230004")],
    );
    let (ok, out) = cli(&daemon, &["campaign", "start", "machine"]);
    assert!(ok, "{out}");
    let rows = wait_ended(&daemon, "machine", 1, Duration::from_secs(30));
    let r = &rows[0];
    assert_eq!(
        r["outcome"],
        "answered_machine",
        "{r:?}\n{}",
        daemon.log_tail(40)
    );
    assert_eq!(r["amd_decision"], "machine");
    let confidence: f64 = r["amd_confidence"].parse().unwrap();
    assert!((0.5..=1.0).contains(&confidence), "{r:?}");
    assert_eq!(
        r["counted_as_contact"], "no",
        "a machine is not a contact under answered_by_person"
    );
}

#[test]
fn answering_machine_gets_the_message_after_the_beep_when_asked_to() {
    let work = tempfile::tempdir().unwrap();
    let speech = work.path().join("speech.wav");
    make_caller_wav(
        "Hello, you have reached Mark. I am away from my desk. Please leave a message after the tone.",
        &speech,
        0.3,
    )
    .unwrap();
    // The greeting, a 600 ms 1 kHz beep, then a recording machine's silence.
    let greeting = work.path().join("greeting.wav");
    let beep = work.path().join("beep.wav");
    let st = std::process::Command::new("sox")
        .args(["-n", "-r", "8000", "-c", "1", "-b", "16"])
        .arg(&beep)
        .args([
            "synth", "0.6", "sine", "1000", "vol", "0.5", "pad", "0", "30",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let st = std::process::Command::new("sox")
        .arg(&speech)
        .arg(&beep)
        .arg(&greeting)
        .status()
        .unwrap();
    assert!(st.success());
    let trunk = Trunk {
        sipp: uas("uas_machine.xml", work.path())
            .caller_audio(&greeting)
            .spawn(),
    };
    let daemon = start_daemon(trunk.addr(), "");
    write_campaign(
        &daemon,
        "voicemail",
        "answering_machine = \"leave_message\"",
        &[("v1", "+15551230014")],
    );
    let (ok, out) = cli(&daemon, &["campaign", "start", "voicemail"]);
    assert!(ok, "{out}");
    let rows = wait_ended(&daemon, "voicemail", 1, Duration::from_secs(60));
    let r = &rows[0];
    assert_eq!(
        r["outcome"],
        "message_left",
        "{r:?}\n{}",
        daemon.log_tail(40)
    );
    assert_eq!(r["amd_decision"], "machine");
    assert!(
        daemon.log().contains("greeting ended") && daemon.log().contains("Beep"),
        "{}",
        daemon.log_tail(30)
    );
    // The message was delivered: the contact is done, never called again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status_json(&daemon, "voicemail");
        if s["counts"]["contacts_by_state"]["done"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "contact not done: {s}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn trunk_digest_challenge_is_answered_and_a_wrong_password_fails() {
    let work = tempfile::tempdir().unwrap();
    let hello = work.path().join("hello.wav");
    make_caller_wav("Hello?", &hello, 6.0).unwrap();
    let trunk = Trunk {
        sipp: uas("uas_auth.xml", work.path())
            .caller_audio(&hello)
            .key("auth_user", "warmline")
            .key("auth_pass", "s3cret")
            .spawn(),
    };
    let daemon = start_daemon(
        trunk.addr(),
        "username = \"warmline\"\npassword = \"s3cret\"\n",
    );
    write_campaign(&daemon, "auth", "", &[("a1", "+15551230005")]);
    let (ok, out) = cli(&daemon, &["campaign", "start", "auth"]);
    assert!(ok, "{out}");
    let rows = wait_ended(&daemon, "auth", 1, Duration::from_secs(60));
    let r = &rows[0];
    assert_eq!(r["sip_status"], "200", "{r:?}\n{}", daemon.log_tail(60));
    assert!(
        ["answered_person", "confirmed"].contains(&r["outcome"].as_str()),
        "{r:?}"
    );
    drop(daemon);
    let res = trunk.sipp.stop();
    let received = res.received();
    let invites: Vec<&String> = received
        .iter()
        .filter(|m| m.starts_with("INVITE "))
        .collect();
    assert!(invites.len() >= 2, "{}", res.report());
    let auth = header(invites[1], "Authorization").unwrap_or_default();
    assert!(
        auth.contains("username=\"warmline\"") && auth.contains("qop=auth"),
        "{auth}"
    );

    // The same trunk with a wrong password: 403 → failed, never retried into a loop.
    let work2 = tempfile::tempdir().unwrap();
    let trunk2 = Trunk {
        sipp: uas("uas_auth.xml", work2.path())
            .caller_audio(&hello)
            .key("auth_user", "warmline")
            .key("auth_pass", "other")
            .spawn(),
    };
    let daemon2 = start_daemon(
        trunk2.addr(),
        "username = \"warmline\"\npassword = \"s3cret\"\n",
    );
    write_campaign(&daemon2, "auth", "", &[("a1", "+15551230005")]);
    let (ok, out) = cli(&daemon2, &["campaign", "start", "auth"]);
    assert!(ok, "{out}");
    let rows = wait_ended(&daemon2, "auth", 1, Duration::from_secs(30));
    assert_eq!(rows[0]["outcome"], "failed", "{rows:?}");
    assert_eq!(rows[0]["sip_status"], "403", "{rows:?}");
}

#[test]
fn kill_9_mid_call_closes_the_attempt_and_never_dials_the_customer_twice() {
    let work = tempfile::tempdir().unwrap();
    let hello = work.path().join("hello.wav");
    // A person who says hello and then listens (the call stays up until we hang up).
    make_caller_wav("Hello?", &hello, 60.0).unwrap();
    let trunk = Trunk {
        sipp: uas("uas_machine.xml", work.path())
            .caller_audio(&hello)
            .spawn(),
    };
    let mut daemon = start_daemon(trunk.addr(), "");
    write_campaign(
        &daemon,
        "crash",
        "[pacing]\nmax_concurrent = 1\ncalls_per_second = 1",
        &[("k1", "+15551230006"), ("k2", "+15551230007")],
    );
    let (ok, out) = cli(&daemon, &["campaign", "start", "crash"]);
    assert!(ok, "{out}");
    // Wait for the first call to be answered and the reminder to be playing.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = report(&daemon, "crash");
        if rows.iter().any(|r| !r["answered_at"].is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "first call never answered: {rows:?}\n{}",
            daemon.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    daemon.kill9_and_restart();

    // After the restart: k1's attempt is closed as interrupted (it counts as a contact), k2 is
    // dialled, k1 is not dialled again.
    let deadline = Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let rows = report(&daemon, "crash");
        let k2 = rows.iter().any(|r| r["customer_id"] == "k2");
        if k2 {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "k2 never dialled: {rows:?}\n{}",
            daemon.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let k1: Vec<_> = rows.iter().filter(|r| r["customer_id"] == "k1").collect();
    assert_eq!(k1.len(), 1, "k1 dialled twice: {rows:?}");
    assert_eq!(k1[0]["outcome"], "interrupted", "{rows:?}");
    assert_eq!(k1[0]["counted_as_contact"], "yes");
    std::thread::sleep(Duration::from_secs(2));
    let rows = report(&daemon, "crash");
    assert_eq!(
        rows.iter().filter(|r| r["customer_id"] == "k1").count(),
        1,
        "k1 redialled after the restart: {rows:?}"
    );
}

#[test]
fn pause_resume_stop_and_bad_campaigns_on_the_command_line() {
    let work = tempfile::tempdir().unwrap();
    let trunk = Trunk {
        sipp: uas("uas_busy.xml", work.path()).spawn(),
    };
    let daemon = start_daemon(trunk.addr(), "");
    // Never started: clear errors.
    let (ok, out) = cli(&daemon, &["campaign", "pause", "ghost"]);
    assert!(!ok && out.contains("never started"), "{out}");
    // A campaign naming an unknown trunk does not start.
    write_campaign(&daemon, "bad", "", &[("x1", "+15551230008")]);
    let p = daemon.dir().join("campaigns/bad.toml");
    let text = fs::read_to_string(&p)
        .unwrap()
        .replace("trunk = \"main\"", "trunk = \"backup\"");
    fs::write(&p, text).unwrap();
    let (ok, out) = cli(&daemon, &["campaign", "start", "bad"]);
    assert!(
        !ok && out.contains("trunk 'backup' is not configured"),
        "{out}"
    );

    // A bad CSV row is reported with its line; the rest import; pause stops new calls.
    write_campaign(
        &daemon,
        "ctl",
        "[pacing]\nmax_concurrent = 1\ncalls_per_second = 0.5",
        &[
            ("p1", "+15551230009"),
            ("p2", "not-a-number"),
            ("p3", "+15551230010"),
            ("p4", "+15551230011"),
            ("p5", "+15551230012"),
            ("p6", "+15551230013"),
        ],
    );
    let (ok, out) = cli(&daemon, &["campaign", "start", "ctl"]);
    assert!(ok, "{out}");
    assert!(out.contains("ctl.csv:line 3: phone"), "{out}");
    assert!(out.contains("5 new contact(s) imported"), "{out}");
    wait_ended(&daemon, "ctl", 1, Duration::from_secs(20));
    let (ok, out) = cli(&daemon, &["campaign", "pause", "ctl"]);
    assert!(ok, "{out}");
    std::thread::sleep(Duration::from_secs(2));
    let paused = report(&daemon, "ctl").len();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(report(&daemon, "ctl").len(), paused, "calls while paused");
    let (ok, out) = cli(&daemon, &["campaign", "resume", "ctl"]);
    assert!(ok, "{out}");
    wait_ended(&daemon, "ctl", paused + 1, Duration::from_secs(20));
    let (ok, out) = cli(&daemon, &["campaign", "stop", "ctl"]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&daemon, &["campaign", "resume", "ctl"]);
    assert!(!ok && out.contains("is stopped"), "{out}");
    let s = status_json(&daemon, "ctl");
    assert_eq!(s["campaign"]["status"], "stopped");
}

#[test]
fn two_nodes_on_one_postgres_never_both_contact_a_customer() {
    let schema = format!("wl_two_nodes_{}", std::process::id());
    let Some(url) = fresh_pg_url(&schema, "two-node PostgreSQL test") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let hello = work.path().join("hello.wav");
    make_caller_wav("Hello?", &hello, 8.0).unwrap();
    let trunk = Trunk {
        sipp: uas("uas_hello_bye.xml", work.path())
            .caller_audio(&hello)
            .spawn(),
    };
    let storage = format!("[storage]\nurl = \"{url}\"\n");
    let node = |name: &str| {
        Daemon::start(DaemonOpts {
            extra_toml: format!("{}\n{storage}", node_toml(trunk.addr(), "", name)),
            ..DaemonOpts::default()
        })
    };
    let a = node("node-a");
    let b = node("node-b");
    // Two campaigns with the same 12 customers, planned by both nodes at once: 4 planners
    // race for every customer; the ledger's claim must let exactly one call through each.
    let customers: Vec<(String, String)> = (1..=12)
        .map(|i| (format!("cust{i:02}"), format!("+1555124{i:04}")))
        .collect();
    let refs: Vec<(&str, &str)> = customers
        .iter()
        .map(|(c, p)| (c.as_str(), p.as_str()))
        .collect();
    for name in ["promo-x", "promo-y"] {
        write_campaign(
            &a,
            name,
            "[pacing]\nmax_concurrent = 6\ncalls_per_second = 20",
            &refs,
        );
        // Node b reads the campaign file from the path stored in the database (a's folder).
        let (ok, out) = cli(&a, &["campaign", "start", name]);
        assert!(ok, "{out}");
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    let all = loop {
        let mut rows = report(&a, "promo-x");
        rows.extend(report(&a, "promo-y"));
        let ended = rows
            .iter()
            .filter(|r| r["outcome"] != "in-progress")
            .count();
        if ended >= 12 && rows.len() == ended {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "{ended} calls ended: {rows:?}\nnode a:\n{}\nnode b:\n{}",
            a.log_tail(40),
            b.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    // Let both planners look again: every other contact must now wait for fatigue.
    std::thread::sleep(Duration::from_secs(3));
    let mut rows = report(&a, "promo-x");
    rows.extend(report(&a, "promo-y"));
    assert_eq!(
        rows.len(),
        all.len(),
        "calls after the first round: {rows:?}"
    );
    let mut per_customer: HashMap<&str, usize> = HashMap::new();
    for r in &rows {
        assert_eq!(r["outcome"], "answered_person", "{r:?}");
        *per_customer.entry(r["customer_id"].as_str()).or_default() += 1;
    }
    let twice: Vec<_> = per_customer.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "fatigue violated for {twice:?}: {rows:?}");
    assert_eq!(per_customer.len(), 12, "{rows:?}");
    let nodes: std::collections::BTreeSet<&str> = rows.iter().map(|r| r["node"].as_str()).collect();
    eprintln!(
        "calls per node: {nodes:?}; {} calls for 12 customers",
        rows.len()
    );
    // Every contact is settled: 12 done, 12 waiting out the fatigue window.
    let sx = status_json(&a, "promo-x");
    let sy = status_json(&a, "promo-y");
    let state =
        |s: &serde_json::Value, k: &str| s["counts"]["contacts_by_state"][k].as_i64().unwrap_or(0);
    assert_eq!(state(&sx, "done") + state(&sy, "done"), 12, "{sx}\n{sy}");
    assert_eq!(
        state(&sx, "pending") + state(&sy, "pending"),
        12,
        "{sx}\n{sy}"
    );
}
