//! Calls reach people, end to end: real softphones (baresip) call the demo bank, are routed by
//! who they are (tests/data/routing/customers.csv) into the ACD, and are answered by agents
//! that are baresip phones too. Every test proves what happened from the outside: the tones
//! each side heard, which phone rang and in which order, the SIP headers the agent's phone got,
//! the stereo recording and the call record (`warmline cdr --json`).
mod common;

use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const EVENT_WAIT: Duration = Duration::from_secs(20);
/// What the caller's microphone sends.
const CALLER_HZ: f64 = 1000.0;
/// What an agent's microphone sends.
const AGENT_HZ: f64 = 1500.0;
/// Numbers of tests/data/routing/customers.csv: a VIP aged 45 (no fast lane, so the VIP
/// route is the first that matches) and a standard customer aged 81 (offered the fast lane).
const VIP: &str = "+15550200001";
const ELDERLY: &str = "+15550200002";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A number the customer table does not know.
fn unknown(n: u32) -> String {
    format!("555030{n:04}")
}

/// `[speech]`: keys only (no recogniser, so a tone on the line never counts as speech), and
/// the Piper voice for the demo's text prompts when it is installed, rendered into the render
/// cache the other test files share.
fn speech_toml(voice: bool) -> String {
    let path = repo().join(".cache/speech/voices/en_US-joe-medium.onnx");
    if !voice {
        // Keys only and no voice: the daemon starts in seconds.
        return "[speech]\nmodels = {}\nvoices = {}\n".into();
    }
    let voice = path;
    if !voice.is_file() {
        eprintln!("no Piper voice (scripts/setup-piper.sh): text prompts stay silent");
        return "[speech]\nmodels = {}\nvoices = {}\n".into();
    }
    format!(
        "[speech]\nmodels = {{}}\nvoices = {{ en = {} }}\nonnxruntime = {}\ncache_dir = {}\n",
        toml_path(&voice),
        toml_path(&repo().join(".cache/speech/onnxruntime/libonnxruntime.so.1.24.4")),
        toml_path(&repo().join(".cache/speech/tts-cache-tests")),
    )
}

fn toml_path(p: &Path) -> String {
    Value::String(p.display().to_string()).to_string()
}

fn toml_list(items: &[&str]) -> String {
    Value::from(items.to_vec()).to_string()
}

/// `[agents.<name>]` for a phone at a fixed address.
fn static_agent(name: &str, phone: &Baresip, queues: &[&str]) -> String {
    format!(
        "[agents.{name}]\naddress = \"sip:{name}@{}\"\nqueues = {}\n",
        phone.sip_addr,
        toml_list(queues)
    )
}

/// The demo bank with the customer table, these `[queues.*]` and `[agents.*]` sections and
/// `extra` (e.g. `[recording]`).
fn start_daemon(
    queues: &str,
    agents: &[String],
    extra: &str,
    env: Vec<(String, String)>,
) -> Daemon {
    start_daemon_speaking(false, queues, agents, extra, env)
}

/// Like [`start_daemon`]; with `voice`, text prompts (whispers, fallback texts) are spoken.
fn start_daemon_speaking(
    voice: bool,
    queues: &str,
    agents: &[String],
    extra: &str,
    env: Vec<(String, String)>,
) -> Daemon {
    let toml = format!(
        "[customers]\ncsv = {}\n\n{queues}\n{}\n{extra}\n{}",
        toml_path(&repo().join("tests/data/routing/customers.csv")),
        agents.join("\n"),
        speech_toml(voice),
    );
    Daemon::start(DaemonOpts {
        extra_toml: toml,
        env,
        // The first start on a machine renders the demo's texts into the shared cache.
        ready_timeout: Duration::from_secs(240),
        ..DaemonOpts::default()
    })
}

/// Like [`start_daemon`], with `[rtp] srtp = "required"`.
fn start_daemon_srtp_required(queues: &str, agents: &[String]) -> Daemon {
    let toml = format!(
        "[customers]\ncsv = {}\n\n{queues}\n{}\n{}",
        toml_path(&repo().join("tests/data/routing/customers.csv")),
        agents.join("\n"),
        speech_toml(false),
    );
    Daemon::start(DaemonOpts {
        extra_toml: toml,
        rtp_toml: "srtp = \"required\"".into(),
        ready_timeout: Duration::from_secs(240),
        ..DaemonOpts::default()
    })
}

/// A WAV of `secs` of a sine at `hz` (8 kHz mono, peak 30 % of full scale).
fn tone_wav(path: &Path, hz: f64, secs: f64) -> PathBuf {
    let n = (secs * 8000.0) as usize;
    let samples: Vec<i16> = (0..n)
        .map(|i| {
            let t = i as f64 / 8000.0;
            (0.3 * 32767.0 * (std::f64::consts::TAU * hz * t).sin()) as i16
        })
        .collect();
    write_wav_mono_i16(path, 8000, &samples).expect("write tone WAV");
    path.to_path_buf()
}

/// An agent's phone at a fixed address (its files under `work`): answers at once when `auto_answer`, sends `tone_hz`
/// (silence when `None`), and traces SIP into its log so the INVITE's headers can be read.
fn agent_phone(work: &Path, name: &str, auto_answer: bool, tone_hz: Option<f64>) -> Baresip {
    let dir = work.join(name);
    std::fs::create_dir_all(&dir).expect("agent phone folder");
    let audio_source = tone_hz.map(|hz| tone_wav(&dir.join("mic.wav"), hz, 120.0));
    Baresip::start_in(
        BaresipOpts {
            user: name.into(),
            audio_source,
            auto_answer,
            sip_trace: true,
            ..BaresipOpts::default()
        },
        Some(&dir),
    )
}

/// A caller's phone with this number (the From user), under the daemon's folder.
fn caller_phone(d: &Daemon, number: &str, tone_hz: Option<f64>) -> Baresip {
    let dir = d.run_dir("caller");
    let audio_source = tone_hz.map(|hz| tone_wav(&dir.join("mic.wav"), hz, 120.0));
    Baresip::start_in(
        BaresipOpts {
            user: number.into(),
            audio_source,
            ..BaresipOpts::default()
        },
        Some(&dir),
    )
}

/// Dials the demo bank and, `before_key` after the answer, presses `key`; the Call-ID.
fn call_and_press(
    phone: &mut Baresip,
    d: &Daemon,
    before_key: Duration,
    key: Option<char>,
) -> String {
    phone.dial(&format!("sip:1000@{}", d.sip_addr));
    let est = phone.expect_event("CALL_ESTABLISHED", EVENT_WAIT);
    let call_id = est["id"]
        .as_str()
        .expect("event carries the Call-ID")
        .to_string();
    sleep(before_key);
    if let Some(k) = key {
        phone.send_digit(k);
    }
    call_id
}

/// Waits until the daemon's log holds `what` at least `count` times.
fn wait_log(d: &Daemon, what: &str, count: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while d.log().matches(what).count() < count {
        assert!(
            Instant::now() < deadline,
            "log does not show {count} x {what:?} within {timeout:?}; tail:\n{}",
            d.log_tail(60)
        );
        sleep(Duration::from_millis(100));
    }
}

/// Waits until a phone's log (with `sip_trace`, its SIP trace) holds `what`.
fn wait_phone_log(phone: &Baresip, what: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !phone.log().contains(what) {
        assert!(
            Instant::now() < deadline,
            "baresip log shows no {what:?} within {timeout:?}:\n{}",
            phone.log()
        );
        sleep(Duration::from_millis(100));
    }
}

/// The `routing` column of a CDR, parsed.
fn routing(cdr: &Value) -> Value {
    let text = cdr["routing"]
        .as_str()
        .unwrap_or_else(|| panic!("CDR without routing: {cdr}"));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("routing is not JSON ({e}): {text}"))
}

fn contains(list: &Value, item: &str) -> bool {
    list.as_array().is_some_and(|a| {
        a.iter()
            .any(|v| v == item || v["queue"] == item || v["name"] == item)
    })
}

/// Power share of `hz` in `s` (Goertzel): about 1 for a pure tone at `hz`, near 0 otherwise.
fn tone_fraction(s: &[i16], rate: u32, hz: f64) -> f64 {
    let mean_square = s.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / s.len().max(1) as f64;
    if mean_square < 1.0 {
        return 0.0;
    }
    let coeff = 2.0 * (std::f64::consts::TAU * hz / f64::from(rate)).cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in s {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let n = s.len() as f64;
    let power = (s1 * s1 + s2 * s2 - coeff * s1 * s2).max(0.0) * 4.0 / (n * n);
    power / (2.0 * mean_square)
}

/// Seconds of 100 ms windows that are clearly a tone at `hz` (loud enough, most energy there).
fn tone_seconds(samples: &[i16], rate: u32, hz: f64) -> f64 {
    let win = (rate / 10).max(1) as usize;
    samples
        .chunks_exact(win)
        .filter(|w| {
            let rms =
                (w.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
            rms > 0.02 * 32768.0 && tone_fraction(w, rate, hz) > 0.6
        })
        .count() as f64
        * 0.1
}

fn heard_tone_seconds(phone: &Baresip, hz: f64) -> f64 {
    let wav = phone
        .heard_wav()
        .unwrap_or_else(|| panic!("baresip {} recorded nothing", phone.sip_addr));
    let (rate, samples) = read_wav_mono_i16(&wav).expect("readable recording");
    tone_seconds(&samples, rate, hz)
}

/// The peer URI (the From of an incoming call) of a baresip event.
fn peer(ev: &Value) -> String {
    ev["peeruri"].as_str().unwrap_or_default().to_string()
}

/// The SIP messages baresip traced, from the log (`-s`).
fn traced_invites(phone: &Baresip) -> Vec<String> {
    phone
        .log()
        .split("INVITE sip:")
        .skip(1)
        .map(|m| m.chars().take(3000).collect())
        .collect()
}

/// The value of header `name` in a traced message.
fn traced_header(msg: &str, name: &str) -> Option<String> {
    msg.lines().map(str::trim).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// The finished recording of a CDR: waits for the writer thread to close it.
fn recording_of(d: &Daemon, cdr: &Value) -> PathBuf {
    let path = cdr["recording"]
        .as_str()
        .unwrap_or_else(|| panic!("CDR has no recording: {cdr}"));
    let path = if Path::new(path).is_absolute() {
        PathBuf::from(path)
    } else {
        d.dir().join(path)
    };
    wait_log(d, "call: recording saved", 1, Duration::from_secs(10));
    assert!(path.is_file(), "recording {} missing", path.display());
    path
}

/// A stereo recording: (rate, left, right).
fn read_stereo(path: &Path) -> (u32, Vec<i16>, Vec<i16>) {
    let mut r = hound::WavReader::open(path)
        .unwrap_or_else(|e| panic!("{}: not a WAV: {e}", path.display()));
    let spec = r.spec();
    assert_eq!(
        spec.channels,
        2,
        "{} is not stereo: {spec:?}",
        path.display()
    );
    let all: Vec<i16> = r.samples::<i16>().map(|s| s.expect("sample")).collect();
    let left = all.iter().step_by(2).copied().collect();
    let right = all.iter().skip(1).step_by(2).copied().collect();
    (spec.sample_rate, left, right)
}

// ---------------------------------------------------------------------------------------------

/// Key 0 → queue `agents` → alice's phone rings with the screen-pop headers → both hear each
/// other through the bridge → the stereo recording holds the caller left and alice right.
#[test]
fn caller_and_agent_hear_each_other_and_the_call_is_recorded_in_stereo() {
    let work = tempfile::tempdir().expect("tempdir");
    let mut alice = agent_phone(work.path(), "alice", true, Some(AGENT_HZ));
    let d = start_daemon_speaking(
        true,
        "[queues.agents]\nwrap_up_s = 0\n",
        &[static_agent("alice", &alice, &["agents"])],
        "[recording]\nenabled = true\ndir = \"recordings\"\n",
        Vec::new(),
    );
    let number = unknown(1);
    let mut caller = caller_phone(&d, &number, Some(CALLER_HZ));
    let call_id = call_and_press(&mut caller, &d, Duration::from_secs(1), Some('0'));

    let est = alice.expect_event("CALL_ESTABLISHED", EVENT_WAIT);
    assert!(
        peer(&est).contains(&number),
        "alice's phone shows the caller: {est}"
    );
    // Whisper ("agent", the option's label) and then both sides talk.
    sleep(Duration::from_secs(6));
    caller.hangup();
    caller.expect_event("CALL_CLOSED", EVENT_WAIT);
    alice.expect_event("CALL_CLOSED", EVENT_WAIT);
    caller.stop();
    alice.stop();

    // Screen-pop: what the machine knows travels with the INVITE.
    let invites = traced_invites(&alice);
    let invite = invites
        .iter()
        .find(|m| m.contains("X-Warmline-Queue"))
        .unwrap_or_else(|| {
            panic!(
                "alice got no INVITE with X-Warmline headers:\n{}",
                alice.log()
            )
        });
    assert_eq!(
        traced_header(invite, "X-Warmline-Queue").as_deref(),
        Some("agents"),
        "{invite}"
    );
    assert_eq!(
        traced_header(invite, "X-Warmline-Caller").as_deref(),
        Some(number.as_str()),
        "{invite}"
    );
    assert_eq!(
        traced_header(invite, "X-Warmline-Whisper").as_deref(),
        Some("agent"),
        "{invite}"
    );

    // Audio both ways, and no echo of one's own voice.
    let caller_heard_agent = heard_tone_seconds(&caller, AGENT_HZ);
    let agent_heard_caller = heard_tone_seconds(&alice, CALLER_HZ);
    let caller_heard_self = heard_tone_seconds(&caller, CALLER_HZ);
    let agent_heard_self = heard_tone_seconds(&alice, AGENT_HZ);
    eprintln!(
        "caller heard agent {caller_heard_agent:.1} s (self {caller_heard_self:.1} s); \
         agent heard caller {agent_heard_caller:.1} s (self {agent_heard_self:.1} s)"
    );
    assert!(
        caller_heard_agent >= 3.0,
        "caller heard the agent's tone only {caller_heard_agent:.1} s"
    );
    assert!(
        agent_heard_caller >= 3.0,
        "agent heard the caller's tone only {agent_heard_caller:.1} s"
    );
    assert!(
        caller_heard_self < 0.5 && agent_heard_self < 0.5,
        "echo through the bridge"
    );

    let cdr = d.wait_cdr(&call_id, Duration::from_secs(20));
    assert_eq!(cdr["outcome"], "agent", "{cdr}");
    let r = routing(&cdr);
    assert_eq!(r["agent"], "alice", "{r}");
    assert!(contains(&r["queues"], "agents"), "{r}");
    assert!(r["wait_ms"].as_u64().is_some(), "{r}");

    // Stereo recording: the caller on the left, the agent on the right.
    let rec = recording_of(&d, &cdr);
    let (rate, left, right) = read_stereo(&rec);
    let (l_caller, l_agent) = (
        tone_seconds(&left, rate, CALLER_HZ),
        tone_seconds(&left, rate, AGENT_HZ),
    );
    let (r_agent, r_caller) = (
        tone_seconds(&right, rate, AGENT_HZ),
        tone_seconds(&right, rate, CALLER_HZ),
    );
    eprintln!(
        "recording {}: {:.1} s; left {l_caller:.1} s caller / {l_agent:.1} s agent; right {r_agent:.1} s agent / {r_caller:.1} s caller",
        rec.display(),
        left.len() as f64 / f64::from(rate)
    );
    assert!(l_caller >= 3.0 && r_agent >= 3.0, "both voices recorded");
    assert!(l_agent < 0.5 && r_caller < 0.5, "channels kept apart");
}

/// One agent, busy with A; B (normal) waits; then C, 81 and so offered the fast lane, presses 0
/// and waits behind B. When A ends, the agent gets C first, then B.
#[test]
fn fast_lane_caller_is_answered_before_a_caller_who_waited_longer() {
    let work = tempfile::tempdir().expect("tempdir");
    let mut alice = agent_phone(work.path(), "alice", true, None);
    let d = start_daemon(
        "[queues.agents]\nwrap_up_s = 0\nring_timeout_s = 20\n",
        &[static_agent("alice", &alice, &["agents"])],
        "",
        Vec::new(),
    );
    let (num_a, num_b) = (unknown(11), unknown(12));
    let mut a = caller_phone(&d, &num_a, None);
    let id_a = call_and_press(&mut a, &d, Duration::from_secs(1), Some('0'));
    let first = alice.expect_event("CALL_ESTABLISHED", EVENT_WAIT);
    assert!(peer(&first).contains(&num_a), "alice took A first: {first}");

    let mut b = caller_phone(&d, &num_b, None);
    let id_b = call_and_press(&mut b, &d, Duration::from_secs(1), Some('0'));
    wait_log(&d, "acd: queued", 2, EVENT_WAIT);
    let mut c = caller_phone(&d, ELDERLY, None);
    let id_c = call_and_press(&mut c, &d, Duration::from_secs(1), Some('0'));
    wait_log(&d, "acd: queued", 3, EVENT_WAIT);
    sleep(Duration::from_millis(500));

    a.hangup();
    a.expect_event("CALL_CLOSED", EVENT_WAIT);
    alice.expect_event("CALL_CLOSED", EVENT_WAIT);
    let second = alice.expect_event("CALL_ESTABLISHED", EVENT_WAIT);
    assert!(
        peer(&second).contains(ELDERLY),
        "after A the agent must get the fast-lane caller C ({ELDERLY}), got {second}"
    );
    sleep(Duration::from_secs(1));
    c.hangup();
    c.expect_event("CALL_CLOSED", EVENT_WAIT);
    alice.expect_event("CALL_CLOSED", EVENT_WAIT);
    let third = alice.expect_event("CALL_ESTABLISHED", EVENT_WAIT);
    assert!(peer(&third).contains(&num_b), "then B: {third}");
    sleep(Duration::from_secs(1));
    b.hangup();
    b.expect_event("CALL_CLOSED", EVENT_WAIT);

    // The fast lane's whisper reached the agent's phone with C's call.
    let invites = traced_invites(&alice);
    let c_invite = invites
        .iter()
        .find(|m| traced_header(m, "X-Warmline-Caller").as_deref() == Some(ELDERLY))
        .unwrap_or_else(|| panic!("no INVITE for C in alice's trace"));
    let whisper = traced_header(c_invite, "X-Warmline-Whisper").unwrap_or_default();
    assert!(
        whisper.contains("elderly caller"),
        "whisper for C: {whisper:?}"
    );

    let cdr_a = d.wait_cdr(&id_a, EVENT_WAIT);
    let cdr_b = d.wait_cdr(&id_b, EVENT_WAIT);
    let cdr_c = d.wait_cdr(&id_c, EVENT_WAIT);
    for cdr in [&cdr_a, &cdr_b, &cdr_c] {
        assert_eq!(cdr["outcome"], "agent", "{cdr}");
        assert_eq!(routing(cdr)["agent"], "alice", "{cdr}");
    }
    let (rb, rc) = (routing(&cdr_b), routing(&cdr_c));
    assert_eq!(cdr_c["customer_id"], "R2002", "{cdr_c}");
    assert!(contains(&rc["reasons"], "elderly"), "{rc}");
    // B entered the queue before C and was connected after C: B waited longer.
    let (wait_b, wait_c) = (
        rb["wait_ms"].as_u64().unwrap_or(0),
        rc["wait_ms"].as_u64().unwrap_or(0),
    );
    assert!(
        wait_b > wait_c,
        "B waited {wait_b} ms, C {wait_c} ms: {rb} {rc}"
    );
}

/// A VIP customer goes straight to `experts` (no key) and is answered by the expert, not by
/// the agent of the `agents` queue.
#[test]
fn vip_customer_is_routed_to_the_expert_desk() {
    let work = tempfile::tempdir().expect("tempdir");
    let mut alice = agent_phone(work.path(), "alice", true, None);
    let mut erin = agent_phone(work.path(), "erin", true, Some(AGENT_HZ));
    let d = start_daemon(
        "[queues.agents]\nwrap_up_s = 0\n\n[queues.experts]\nwrap_up_s = 0\n",
        &[
            static_agent("alice", &alice, &["agents"]),
            static_agent("erin", &erin, &["experts"]),
        ],
        "",
        Vec::new(),
    );
    let mut vip = caller_phone(&d, VIP, None);
    let call_id = call_and_press(&mut vip, &d, Duration::ZERO, None);
    let est = erin.expect_event("CALL_ESTABLISHED", EVENT_WAIT);
    assert!(peer(&est).contains(VIP), "{est}");
    sleep(Duration::from_secs(4));
    vip.hangup();
    vip.expect_event("CALL_CLOSED", EVENT_WAIT);
    erin.expect_event("CALL_CLOSED", EVENT_WAIT);
    assert!(
        alice
            .wait_event("CALL_INCOMING", Duration::from_millis(500))
            .is_none()
            && !alice
                .history
                .iter()
                .any(|e| e["type"] == "CALL_ESTABLISHED"),
        "the agents-queue phone must not ring: {:?}",
        alice.history
    );
    vip.stop();
    let heard = heard_tone_seconds(&vip, AGENT_HZ);
    assert!(heard >= 1.5, "the VIP heard the expert only {heard:.1} s");

    let cdr = d.wait_cdr(&call_id, EVENT_WAIT);
    assert_eq!(cdr["outcome"], "agent", "{cdr}");
    assert_eq!(cdr["customer_id"], "R2001", "{cdr}");
    let r = routing(&cdr);
    assert_eq!(r["agent"], "erin", "{r}");
    assert!(
        contains(&r["queues"], "experts") && !contains(&r["queues"], "agents"),
        "{r}"
    );
    assert!(contains(&r["reasons"], "vip"), "{r}");
    let invite = traced_invites(&erin)
        .into_iter()
        .find(|m| m.contains("X-Warmline-Queue"));
    let invite = invite.unwrap_or_else(|| panic!("erin's INVITE not traced"));
    assert_eq!(
        traced_header(&invite, "X-Warmline-Queue").as_deref(),
        Some("experts")
    );
    assert!(
        traced_header(&invite, "X-Warmline-Whisper").is_some_and(|w| w.contains("VIP customer")),
        "{invite}"
    );
}

/// The agents queue is closed today (a holiday): key 0 gets the after-hours announcement and a
/// hang-up; no agent's phone rings.
#[test]
fn closed_queue_plays_the_after_hours_message_and_rings_nobody() {
    let work = tempfile::tempdir().expect("tempdir");
    let mut alice = agent_phone(work.path(), "alice", true, None);
    let today = chrono::Utc::now().date_naive();
    // Yesterday and tomorrow too, so a run across midnight UTC still finds the queue closed.
    let days: Vec<String> = [-1i64, 0, 1]
        .iter()
        .map(|d| {
            (today + chrono::Duration::days(*d))
                .format("%Y-%m-%d")
                .to_string()
        })
        .collect();
    let days: Vec<&str> = days.iter().map(String::as_str).collect();
    let d = start_daemon_speaking(
        true,
        &format!("[queues.agents]\nholidays = {}\n", toml_list(&days)),
        &[static_agent("alice", &alice, &["agents"])],
        "",
        Vec::new(),
    );
    let mut caller = caller_phone(&d, &unknown(41), None);
    let call_id = call_and_press(&mut caller, &d, Duration::from_secs(1), Some('0'));
    let pressed = Instant::now();
    // Warmline hangs up after the message.
    caller.expect_event("CALL_CLOSED", Duration::from_secs(40));
    let after_key = pressed.elapsed();
    caller.stop();
    assert!(
        alice
            .wait_event("CALL_INCOMING", Duration::from_millis(500))
            .is_none(),
        "no agent may ring for a closed queue: {:?}",
        alice.history
    );

    let cdr = d.wait_cdr(&call_id, EVENT_WAIT);
    assert_eq!(cdr["outcome"], "queue-unavailable", "{cdr}");
    assert_eq!(cdr["hangup_side"], "warmline", "{cdr}");
    assert!(
        d.log().contains("reason=after_hours"),
        "the ACD refused for the hours: {}",
        d.log_tail(40)
    );
    // "Please hold" and the long after-hours text (about 9 s) were played before the hang-up;
    // without the message the call would end about 2 s after the key.
    let wav = caller.heard_wav().expect("caller recording");
    let (rate, samples) = read_wav_mono_i16(&wav).expect("readable");
    let tail = samples.len().saturating_sub(rate as usize * 4);
    let tail_path = d.dir().join("after-hours-tail.wav");
    write_wav_mono_i16(&tail_path, rate, samples.get(tail..).unwrap_or_default()).expect("write");
    let tail_speech = wav_active_seconds(&tail_path, 0.01).expect("readable");
    eprintln!("after the key: {after_key:?}; speech in the last 4 s: {tail_speech:.1} s");
    if speech_toml(true).contains("onnx") {
        assert!(
            after_key >= Duration::from_secs(6),
            "hung up {after_key:?} after the key"
        );
        assert!(
            tail_speech >= 1.5,
            "the message was not heard up to the hang-up"
        );
    }
}

/// alice's phone rings but nobody answers; after ring_timeout_s = 3 the call goes to bob.
#[test]
fn unanswered_agent_is_skipped_and_the_next_agent_takes_the_call() {
    let work = tempfile::tempdir().expect("tempdir");
    let mut alice = agent_phone(work.path(), "alice", false, None);
    let mut bob = agent_phone(work.path(), "bob", true, Some(AGENT_HZ));
    let d = start_daemon(
        "[queues.agents]\nwrap_up_s = 0\nring_timeout_s = 3\n",
        &[
            static_agent("alice", &alice, &["agents"]),
            static_agent("bob", &bob, &["agents"]),
        ],
        "",
        Vec::new(),
    );
    let number = unknown(51);
    let mut caller = caller_phone(&d, &number, None);
    let call_id = call_and_press(&mut caller, &d, Duration::from_secs(1), Some('0'));
    let ring = alice.expect_event("CALL_INCOMING", EVENT_WAIT);
    assert!(peer(&ring).contains(&number), "{ring}");
    let rang = Instant::now();
    alice.expect_event("CALL_CLOSED", Duration::from_secs(10));
    let rang_for = rang.elapsed();
    bob.expect_event("CALL_ESTABLISHED", Duration::from_secs(10));
    assert!(
        (Duration::from_millis(2000)..Duration::from_millis(6000)).contains(&rang_for),
        "alice rang {rang_for:?}, configured 3 s"
    );
    sleep(Duration::from_secs(3));
    caller.hangup();
    caller.expect_event("CALL_CLOSED", EVENT_WAIT);
    bob.expect_event("CALL_CLOSED", EVENT_WAIT);
    caller.stop();
    let heard = heard_tone_seconds(&caller, AGENT_HZ);
    assert!(heard >= 1.5, "the caller heard bob only {heard:.1} s");

    let cdr = d.wait_cdr(&call_id, EVENT_WAIT);
    assert_eq!(cdr["outcome"], "agent", "{cdr}");
    let r = routing(&cdr);
    assert_eq!(r["agent"], "bob", "{r}");
    assert!(r["wait_ms"].as_u64().unwrap_or(0) >= 2500, "{r}");
}

/// The caller hangs up while alice's phone rings: the CDR says queue-abandoned and the ringing
/// stops (CANCEL) at once.
#[test]
fn caller_hanging_up_while_queued_cancels_the_ringing_agent() {
    let work = tempfile::tempdir().expect("tempdir");
    let mut alice = agent_phone(work.path(), "alice", false, None);
    let d = start_daemon(
        "[queues.agents]\nring_timeout_s = 30\n",
        &[static_agent("alice", &alice, &["agents"])],
        "",
        Vec::new(),
    );
    let mut caller = caller_phone(&d, &unknown(61), None);
    let call_id = call_and_press(&mut caller, &d, Duration::from_secs(1), Some('0'));
    alice.expect_event("CALL_INCOMING", EVENT_WAIT);
    sleep(Duration::from_secs(2));
    caller.hangup();
    let hung_up = Instant::now();
    caller.expect_event("CALL_CLOSED", EVENT_WAIT);
    alice.expect_event("CALL_CLOSED", Duration::from_secs(5));
    assert!(
        hung_up.elapsed() < Duration::from_secs(5),
        "ringing outlived the caller"
    );
    assert!(
        alice.log().contains("CANCEL sip:"),
        "the agent's INVITE was cancelled"
    );

    let cdr = d.wait_cdr(&call_id, EVENT_WAIT);
    assert_eq!(cdr["outcome"], "queue-abandoned", "{cdr}");
    assert_eq!(cdr["hangup_side"], "caller", "{cdr}");
    let r = routing(&cdr);
    assert!(contains(&r["queues"], "agents"), "{r}");
    assert!(r["agent"].is_null(), "{r}");
}

/// carol's phone registers to warmline with digest authentication (`[agents.carol]
/// username` + `password_env`), then takes a queued call at its registered contact.
#[test]
fn registered_agent_takes_a_queued_call() {
    const PW: &str = "carol-s3cret";
    let d = start_daemon(
        "[queues.agents]\nwrap_up_s = 0\n",
        &["[agents.carol]\nusername = \"carol\"\npassword_env = \"WARMLINE_TEST_CAROL_PW\"\nqueues = [\"agents\"]\n".into()],
        "",
        vec![("WARMLINE_TEST_CAROL_PW".into(), PW.into())],
    );
    let dir = d.run_dir("carol");
    let mut carol = Baresip::start_in(
        BaresipOpts {
            user: "carol".into(),
            audio_source: Some(tone_wav(&dir.join("mic.wav"), AGENT_HZ, 120.0)),
            auto_answer: true,
            register: Some((d.sip_addr, PW.into())),
            sip_trace: true,
            ..BaresipOpts::default()
        },
        Some(&dir),
    );
    // baresip may register before its control socket is connected, so its REGISTER_OK event
    // can be missed: the 200 to the REGISTER shows in its trace and the ACD logs the agent in.
    wait_log(&d, "acd: agent registered", 1, EVENT_WAIT);
    wait_phone_log(&carol, "200 OK (warmline", EVENT_WAIT);

    let number = unknown(71);
    let mut caller = caller_phone(&d, &number, None);
    let call_id = call_and_press(&mut caller, &d, Duration::from_secs(1), Some('0'));
    let est = carol.expect_event("CALL_ESTABLISHED", EVENT_WAIT);
    assert!(peer(&est).contains(&number), "{est}");
    sleep(Duration::from_secs(4));
    caller.hangup();
    caller.expect_event("CALL_CLOSED", EVENT_WAIT);
    carol.expect_event("CALL_CLOSED", EVENT_WAIT);
    caller.stop();
    let heard = heard_tone_seconds(&caller, AGENT_HZ);
    assert!(heard >= 1.5, "the caller heard carol only {heard:.1} s");

    let cdr = d.wait_cdr(&call_id, EVENT_WAIT);
    assert_eq!(cdr["outcome"], "agent", "{cdr}");
    assert_eq!(routing(&cdr)["agent"], "carol", "{cdr}");
}

/// The digest check is real: warmline challenges the REGISTER, a wrong password is refused
/// and the agent stays logged out.
#[test]
fn agent_with_a_wrong_password_is_not_registered() {
    let d = start_daemon(
        "[queues.agents]\nwrap_up_s = 0\n",
        &["[agents.carol]\nusername = \"carol\"\npassword_env = \"WARMLINE_TEST_CAROL_PW\"\nqueues = [\"agents\"]\n".into()],
        "",
        vec![("WARMLINE_TEST_CAROL_PW".into(), "right-one".into())],
    );
    let carol = Baresip::start_in(
        BaresipOpts {
            user: "carol".into(),
            auto_answer: true,
            register: Some((d.sip_addr, "wrong-one".into())),
            sip_trace: true,
            ..BaresipOpts::default()
        },
        Some(&d.run_dir("carol")),
    );
    // As above, the REGISTER_FAIL event may come before the control socket: read the trace.
    wait_phone_log(&carol, "403 Forbidden (warmline", EVENT_WAIT);
    wait_log(&d, "digest authentication failed", 1, EVENT_WAIT);
    let log = carol.log();
    // Refused after a digest challenge, not because REGISTER is not served at all (405).
    assert!(
        log.contains("WWW-Authenticate:"),
        "no digest challenge:\n{log}"
    );
    assert!(
        log.contains("Authorization: Digest"),
        "baresip never answered the challenge"
    );
    assert!(
        !d.log().contains("acd: agent registered"),
        "a wrong password registered the agent: {}",
        d.log_tail(30)
    );
}

/// dave's phone is reached over TLS (`address = "sips:dave@…"`): warmline opens a TLS
/// connection to it, checks its certificate against `[sip.tls] ca`, and the whole agent leg
/// (INVITE, ACK, our BYE) uses that one connection.
#[test]
fn agent_with_a_sips_address_is_called_over_tls_and_its_certificate_checked() {
    let work = tempfile::tempdir().expect("tempdir");
    let write_identity = |name: &str| {
        let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("rcgen");
        let (cert, key) = (c.cert.pem(), c.signing_key.serialize_pem());
        let (cp, kp) = (
            work.path().join(format!("{name}-cert.pem")),
            work.path().join(format!("{name}-key.pem")),
        );
        std::fs::write(&cp, &cert).expect("write cert");
        std::fs::write(&kp, &key).expect("write key");
        // baresip reads its certificate and key from one file.
        let both = work.path().join(format!("{name}.pem"));
        std::fs::write(&both, format!("{cert}{key}")).expect("write pem");
        (cp, kp, both)
    };
    let (phone_cert, _, phone_pem) = write_identity("dave");
    let (our_cert, our_key, _) = write_identity("warmline");
    let dir = work.path().join("dave");
    std::fs::create_dir_all(&dir).expect("agent phone folder");
    let mut dave = Baresip::start_in(
        BaresipOpts {
            user: "dave".into(),
            audio_source: Some(tone_wav(&dir.join("mic.wav"), AGENT_HZ, 120.0)),
            auto_answer: true,
            sip_trace: true,
            extra_config: format!("sip_certificate\t{}\n", phone_pem.display()),
            ..BaresipOpts::default()
        },
        Some(&dir),
    );
    // baresip listens for TLS one port above its UDP/TCP port.
    let phone_tls = std::net::SocketAddr::new(dave.sip_addr.ip(), dave.sip_addr.port() + 1);
    let tls_listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let d = start_daemon(
        "[queues.agents]\nwrap_up_s = 0\n",
        &[format!(
            "[agents.dave]\naddress = \"sips:dave@{phone_tls}\"\nqueues = [\"agents\"]\n"
        )],
        &format!(
            "[sip.tls]\nlisten = \"{tls_listen}\"\ncert = {}\nkey = {}\nca = {}\n",
            toml_path(&our_cert),
            toml_path(&our_key),
            toml_path(&phone_cert)
        ),
        Vec::new(),
    );
    let number = unknown(77);
    let mut caller = caller_phone(&d, &number, None);
    let call_id = call_and_press(&mut caller, &d, Duration::from_secs(1), Some('0'));
    let est = dave.expect_event("CALL_ESTABLISHED", EVENT_WAIT);
    assert!(peer(&est).contains(&number), "{est}");
    sleep(Duration::from_secs(3));
    caller.hangup();
    caller.expect_event("CALL_CLOSED", EVENT_WAIT);
    let closed = dave.expect_event("CALL_CLOSED", EVENT_WAIT);
    assert_eq!(
        closed["param"], "Connection reset by peer",
        "our BYE: {closed}"
    );
    caller.stop();
    let heard = heard_tone_seconds(&caller, AGENT_HZ);
    assert!(heard >= 1.5, "the caller heard dave only {heard:.1} s");
    let cdr = d.wait_cdr(&call_id, EVENT_WAIT);
    assert_eq!(cdr["outcome"], "agent", "{cdr}");
    assert_eq!(routing(&cdr)["agent"], "dave", "{cdr}");

    let log = dave.log();
    assert!(
        log.contains(&format!("INVITE sips:dave@{phone_tls} SIP/2.0")),
        "{log}"
    );
    assert!(
        log.contains(&format!("Via: SIP/2.0/TLS {tls_listen};")),
        "our requests name our TLS address: {log}"
    );
    let daemon = d.log();
    assert_eq!(
        daemon.matches("opening a stream connection").count(),
        1,
        "one TLS connection for INVITE, ACK and BYE:\n{daemon}"
    );
}

/// `[rtp] srtp = "required"`: the caller's leg is SRTP (its RTP/SAVP offer answered) and so
/// is the agent's (our RTP/SAVP offer, answered by the agent's phone); the bridge decrypts each
/// leg with its own keys and both hear each other.
#[test]
fn srtp_required_encrypts_the_caller_leg_and_the_agent_leg() {
    let work = tempfile::tempdir().expect("tempdir");
    let srtp_phone = |user: &str, dir: &Path, hz: f64, auto_answer: bool| {
        std::fs::create_dir_all(dir).expect("phone folder");
        Baresip::start_in(
            BaresipOpts {
                user: user.into(),
                audio_source: Some(tone_wav(&dir.join("mic.wav"), hz, 120.0)),
                auto_answer,
                sip_trace: true,
                extra_config: "module\t\t\tsrtp.so\n".into(),
                account_params: ";mediaenc=srtp-mand".into(),
                ..BaresipOpts::default()
            },
            Some(dir),
        )
    };
    let mut alice = srtp_phone("alice", &work.path().join("alice"), AGENT_HZ, true);
    let d = start_daemon_srtp_required(
        "[queues.agents]\nwrap_up_s = 0\n",
        &[static_agent("alice", &alice, &["agents"])],
    );
    let number = unknown(81);
    let mut caller = srtp_phone(&number, &d.run_dir("caller"), CALLER_HZ, false);
    let call_id = call_and_press(&mut caller, &d, Duration::from_secs(1), Some('0'));
    alice.expect_event("CALL_ESTABLISHED", EVENT_WAIT);
    sleep(Duration::from_secs(5));
    caller.hangup();
    caller.expect_event("CALL_CLOSED", EVENT_WAIT);
    alice.expect_event("CALL_CLOSED", EVENT_WAIT);
    caller.stop();
    alice.stop();

    // Our offer to the agent: RTP/SAVP with our two suites.
    let invites = traced_invites(&alice);
    let invite = invites
        .iter()
        .find(|m| m.contains("X-Warmline-Queue"))
        .unwrap_or_else(|| panic!("alice got no INVITE from the queue:\n{}", alice.log()));
    assert!(
        invite.contains("RTP/SAVP")
            && invite.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"),
        "{invite}"
    );
    let caller_heard_agent = heard_tone_seconds(&caller, AGENT_HZ);
    let agent_heard_caller = heard_tone_seconds(&alice, CALLER_HZ);
    assert!(
        caller_heard_agent >= 2.0 && agent_heard_caller >= 2.0,
        "caller heard the agent {caller_heard_agent:.1} s, the agent the caller {agent_heard_caller:.1} s"
    );
    let cdr = d.wait_cdr(&call_id, Duration::from_secs(20));
    assert_eq!(cdr["outcome"], "agent", "{cdr}");
    let stats: serde_json::Value =
        serde_json::from_str(cdr["rtp_stats"].as_str().unwrap_or("{}")).unwrap_or_default();
    assert!(stats["srtp"].is_string(), "{stats}");
    assert!(
        d.log().contains("acd: SRTP"),
        "the agent leg's SRTP is logged: {}",
        d.log_tail(30)
    );
}
