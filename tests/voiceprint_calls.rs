//! Voiceprints in live calls, end to end: a real softphone (baresip) calls the demo bank and
//! speaks with the recorded voice of a real speaker (tortoise-tts clips, resampled to 8 kHz and
//! sent as the phone's microphone). The customer is enrolled with `warmline voiceprint enroll`
//! into the daemon's own store; the CDR's `routing` JSON must show the voice decision, the
//! watchlist hit and the branch the call took.
//!
//! Speakers: A = "daniel" (enrolled from clips 1-3, speaks the held-out clip 4 in the call),
//! B = "halle" (an impostor for A's account; on the watchlist from clips 1-2, speaks the
//! held-out clip 3 in the call). Measured with `warmline voiceprint verify` on the 10 s the
//! call checks (raw cosine, threshold 0.5, watchlist 0.65): A's clip 4 against A 0.80, B's
//! clip 3 against A 0.19 and against B's entry 0.80, A's clip 4 against B's entry 0.17.
//! ("freeman", the impostor of tests/voiceprint_cli.rs, scores 0.47-0.53 against daniel on
//! such excerpts: too close to the threshold for a test that must not flake.)
//!
//! The call shell keeps only the *first* utterance of a capture-only turn (its endpointer is
//! never reset after `SpeechEnd`), and it counts speech by the endpointer while the voiceprint
//! service counts the recogniser's net speech (about half of it): so the callers here speak
//! without long pauses (pauses shortened to 0.3 s), one utterance that the endpointer cuts at
//! its 10 s limit. See the report of this test for the bug.
//!
//! Needs `scripts/setup-voiceprint.sh` (models and voices) and the Piper voice
//! (`scripts/setup-piper.sh`); a missing cache fails the test with that instruction. The tests
//! run one at a time (each daemon loads ~500 MB of models and extraction takes a core), and
//! wait on log lines and CDRs rather than on fixed delays wherever they can.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// One daemon with models at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const SPEAKER_A: &str = "daniel";
const SPEAKER_B: &str = "halle";
/// The customer's phone: baresip's user part, and the number in the customers CSV.
const CUSTOMER_NUMBER: &str = "15550100042";
const CUSTOMER_ID: &str = "C2042";
/// A number the customers CSV does not know.
const UNKNOWN_NUMBER: &str = "15550109999";
const WATCHLIST_LABEL: &str = "fraud-7";
/// Net speech a decision (and the watchlist check) needs in these calls.
const MIN_VERIFY_SPEECH_S: f32 = 3.0;

const EVENT_WAIT: Duration = Duration::from_secs(20);
/// From the call's answer to the voiceprint decision on a loaded 2-core box: greeting, keys,
/// the passphrase prompt (TTS), the speech, and an extraction that may queue behind others.
const DECISION_WAIT: Duration = Duration::from_secs(45);
const CDR_WAIT: Duration = Duration::from_secs(30);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn model(name: &str, check: &str) -> PathBuf {
    let dir = speech_cache().join("models").join(name);
    assert!(
        dir.join(check).is_file(),
        "{} missing: run scripts/setup-voiceprint.sh",
        dir.join(check).display()
    );
    dir
}

fn toml_path(p: &Path) -> String {
    Value::String(p.display().to_string()).to_string()
}

/// The demo bank with voiceprints on and the customers CSV of these tests.
fn start_daemon() -> Daemon {
    let speaker = model("vosk-model-spk-0.4", "final.ext.raw");
    let speech = model("vosk-model-small-ko", "am/final.mdl");
    let customers = repo().join("tests/data/voiceprint/customers.csv");
    // The passphrase is read by the Piper voice (English has no recogniser: menus by keys,
    // speech only collected for voiceprints); rendered texts are shared between test runs.
    let speech_dir = speech_cache();
    for f in [
        "voices/en_US-joe-medium.onnx",
        "onnxruntime/libonnxruntime.so.1.24.4",
    ] {
        assert!(
            speech_dir.join(f).is_file(),
            "{} missing: run scripts/setup-piper.sh",
            speech_dir.join(f).display()
        );
    }
    let extra_toml = format!(
        "[voiceprint]\nenabled = true\nspeaker_model = {}\nspeech_model = {}\n\
         min_verify_speech_s = {MIN_VERIFY_SPEECH_S:.1}\n\n[customers]\ncsv = {}\n\n\
         [speech]\nmodels = {{}}\nvoices = {{ en = {} }}\nonnxruntime = {}\ncache_dir = {}\n",
        toml_path(&speaker),
        toml_path(&speech),
        toml_path(&customers),
        toml_path(&speech_dir.join("voices/en_US-joe-medium.onnx")),
        toml_path(&speech_dir.join("onnxruntime/libonnxruntime.so.1.24.4")),
        toml_path(&speech_dir.join("tts-cache-tests")),
    );
    Daemon::start(DaemonOpts {
        extra_toml,
        // Model loading (two Vosk models), and on a fresh clone the first Piper rendering of
        // every prompt into the shared TTS cache, while other test daemons run (as the other
        // Piper tests allow).
        ready_timeout: Duration::from_secs(240),
        ..DaemonOpts::default()
    })
}

/// `warmline --config <the daemon's> voiceprint <args>`: the same store the daemon uses.
fn voiceprint_cli(d: &Daemon, args: &[&str]) -> String {
    let o = Command::new(warmline_bin())
        .arg("--config")
        .arg(&d.config_path)
        .arg("voiceprint")
        .args(args)
        .current_dir(repo())
        .env_remove("WARMLINE_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run warmline voiceprint");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "warmline voiceprint {args:?}:\n{text}");
    text
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Enrols speaker A (clips 1-3, ~20 s of net speech) as the customer.
fn enrol_a(d: &Daemon) {
    let clips = [clip(SPEAKER_A, 1), clip(SPEAKER_A, 2), clip(SPEAKER_A, 3)];
    let mut args = vec!["enroll", CUSTOMER_ID];
    args.extend(clips.iter().map(|p| path_str(p)));
    args.extend(["--min-speech-s", "10"]);
    let out = voiceprint_cli(d, &args);
    assert!(out.contains(&format!("enrolled {CUSTOMER_ID}")), "{out}");
}

/// Puts speaker B (clips 1-2) on the fraud watchlist.
fn watchlist_b(d: &Daemon) {
    let (c1, c2) = (clip(SPEAKER_B, 1), clip(SPEAKER_B, 2));
    let out = voiceprint_cli(
        d,
        &[
            "watchlist",
            "add",
            WATCHLIST_LABEL,
            path_str(&c1),
            path_str(&c2),
            "--note",
            "test",
        ],
    );
    assert!(out.contains(&format!("added {WATCHLIST_LABEL}")), "{out}");
}

/// A clip as 8 kHz mono 16-bit samples (sox resamples, as a phone line would), with its pauses
/// shortened to 0.3 s: the call shell keeps only the first utterance of a capture turn (see
/// the module comment), so the speech is made one utterance the endpointer cuts at its
/// 10 s limit.
fn clip_8k(src: &Path, work: &Path) -> Vec<i16> {
    require_tool("sox");
    let name = src
        .strip_prefix(speech_cache())
        .unwrap_or(src)
        .display()
        .to_string()
        .replace('/', "_");
    let out = work.join(format!("8k-{name}"));
    let st = Command::new("sox")
        .arg(src)
        .args(["-r", "8000", "-c", "1", "-b", "16", "-e", "signed-integer"])
        .arg(&out)
        .args(["silence", "-l", "1", "0.05", "1%", "-1", "0.3", "1%"])
        .stdin(Stdio::null())
        .output()
        .expect("run sox");
    assert!(
        st.status.success(),
        "sox {}: {}",
        src.display(),
        String::from_utf8_lossy(&st.stderr)
    );
    let (rate, samples) = read_wav_mono_i16(&out).expect("read resampled clip");
    assert_eq!(rate, 8000, "{}", out.display());
    samples
}

/// The phone's microphone: `lead_s` of silence (greeting, menus, keys), the clips with 0.3 s
/// pauses between them, then `tail_s` of silence (baresip hangs up
/// when the file ends; the test hangs up first).
fn microphone(work: &Path, name: &str, lead_s: f32, clips: &[PathBuf], tail_s: f32) -> PathBuf {
    let secs = |s: f32| vec![0i16; (s * 8000.0) as usize];
    let mut pcm = secs(lead_s);
    for c in clips {
        pcm.extend(clip_8k(c, work));
        pcm.extend(secs(0.3));
    }
    pcm.extend(secs(tail_s));
    let path = work.join(format!("{name}.wav"));
    write_wav_mono_i16(&path, 8000, &pcm).expect("write microphone WAV");
    path
}

/// Polls the daemon's log until `needle` appears after byte `from`; the log from there on.
fn wait_log(d: &Daemon, from: usize, needle: &str, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let log = d.log();
        let tail = log.get(from..).unwrap_or_default();
        if tail.contains(needle) {
            return Some(tail.to_string());
        }
        if Instant::now() >= deadline {
            return None;
        }
        sleep(Duration::from_millis(250));
    }
}

fn expect_log(d: &Daemon, from: usize, needle: &str, timeout: Duration) -> String {
    wait_log(d, from, needle, timeout).unwrap_or_else(|| {
        panic!(
            "no `{needle}` in the daemon log within {timeout:?}; log tail:\n{}",
            d.log_tail(80)
        )
    })
}

/// The call's `routing` JSON (stored as text in the CDR).
fn routing(cdr: &Value) -> Value {
    match &cdr["routing"] {
        Value::String(s) => serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {cdr}")),
        other => other.clone(),
    }
}

struct Call {
    phone: Baresip,
    call_id: String,
}

/// Dials the demo bank from `user` with `mic` as the microphone and waits for the answer.
fn dial(d: &Daemon, user: &str, mic: &Path) -> Call {
    let mut phone = Baresip::start_in(
        BaresipOpts {
            user: user.into(),
            audio_source: Some(mic.to_path_buf()),
            ..BaresipOpts::default()
        },
        Some(&d.run_dir("baresip")),
    );
    phone.dial(&format!("sip:1000@{}", d.sip_addr));
    let est = phone.expect_event("CALL_ESTABLISHED", EVENT_WAIT);
    let call_id = est["id"]
        .as_str()
        .expect("event carries the Call-ID")
        .to_string();
    Call { phone, call_id }
}

impl Call {
    fn hang_up(mut self, d: &Daemon) -> Value {
        self.phone.hangup();
        self.phone.expect_event("CALL_CLOSED", EVENT_WAIT);
        self.phone.stop();
        let cdr = d.wait_cdr(&self.call_id, CDR_WAIT);
        eprintln!("CDR: {cdr}");
        cdr
    }
}

/// The customer calls, presses 3 (credit card services) during the greeting and 2 (limit
/// increase: a voice check) during the credit menu, and then speaks as `speaker` (held-out
/// clip `n`, three times) while and after the passphrase prompt plays. Returns the call once the
/// daemon logged its decision, and the log since the call started.
fn limit_increase_call(d: &Daemon, work: &Path, speaker: &str, n: u32) -> (Call, String) {
    let speech = vec![clip(speaker, n), clip(speaker, n), clip(speaker, n)];
    // Keys at 2.5 s and 4.5 s; the speech starts at 7 s, after both keys (so none of it falls
    // in the menus) and lasts long enough to cover a slow passphrase prompt.
    let mic = microphone(work, &format!("{speaker}-{n}"), 7.0, &speech, 40.0);
    let from = d.log().len();
    let mut call = dial(d, CUSTOMER_NUMBER, &mic);
    sleep(Duration::from_millis(2500));
    call.phone.send_digit('3');
    sleep(Duration::from_secs(2));
    call.phone.send_digit('2');
    let log = expect_log(d, from, "voiceprint: checked", DECISION_WAIT);
    (call, log)
}

#[test]
fn the_customer_speaking_is_accepted_for_a_limit_increase() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let d = start_daemon();
    enrol_a(&d);
    let work = d.run_dir("audio");
    let (call, log) = limit_increase_call(&d, &work, SPEAKER_A, 4);
    assert!(log.contains("decision=Accepted"), "{log}");
    // The accept branch: "limit-increase" plays, then the credit menu again.
    sleep(Duration::from_secs(6));
    let cdr = call.hang_up(&d);
    let r = routing(&cdr);
    assert_eq!(r["lookup"], "found", "{r}");
    assert_eq!(r["caller"]["customer_id"], CUSTOMER_ID, "{r}");
    assert_eq!(r["voice"]["decision"], "accepted", "{r}");
    let score = r["voice"]["score"].as_f64().unwrap_or(f64::NAN);
    assert!((0.5..=1.0).contains(&score), "score {score}: {r}");
    assert_eq!(r["queues"], serde_json::json!([]), "{r}");
    assert_eq!(r["watchlist"], serde_json::json!([]), "{r}");
    assert!(!r["reasons"].to_string().contains("voice_rejected"), "{r}");
    assert_eq!(cdr["digits"], "32", "{cdr}");
    // Entered the credit menu, and re-entered it after the limit-increase answer.
    let path: Vec<&str> = cdr["path"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(path.ends_with(&["credit", "credit"]), "{cdr}");
    assert_eq!(cdr["outcome"], "abandoned", "{cdr}");
}

#[test]
fn another_speaker_on_the_customers_phone_is_rejected_and_sent_to_the_risk_desk() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let d = start_daemon();
    enrol_a(&d);
    let work = d.run_dir("audio");
    let from = d.log().len();
    let (call, log) = limit_increase_call(&d, &work, SPEAKER_B, 3);
    assert!(log.contains("decision=Rejected"), "{log}");
    // on_reject: "please hold", the risk queue; no agent is configured, so the queue's
    // `unavailable` fallback takes a voicemail.
    expect_log(
        &d,
        from,
        "call: recording voicemail",
        Duration::from_secs(40),
    );
    sleep(Duration::from_secs(2));
    let cdr = call.hang_up(&d);
    let r = routing(&cdr);
    assert_eq!(r["caller"]["customer_id"], CUSTOMER_ID, "{r}");
    assert_eq!(r["voice"]["decision"], "rejected", "{r}");
    let score = r["voice"]["score"].as_f64().unwrap_or(f64::NAN);
    assert!(score < 0.5, "score {score}: {r}");
    assert!(r["reasons"].to_string().contains("voice_rejected"), "{r}");
    assert_eq!(r["queues"], serde_json::json!(["risk"]), "{r}");
    assert_eq!(cdr["digits"], "32", "{cdr}");
    assert_eq!(cdr["outcome"], "voicemail", "{cdr}");
}

#[test]
fn a_watchlisted_voice_is_caught_in_the_main_menu_and_sent_to_the_risk_desk() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let d = start_daemon();
    watchlist_b(&d);
    let work = d.run_dir("audio");

    // An unknown caller speaking as B from the greeting on: no key, no recogniser for English,
    // yet the speech is collected and checked against the watchlist.
    let mic = microphone(
        &work,
        "b-3",
        3.0,
        &[clip(SPEAKER_B, 3), clip(SPEAKER_B, 3)],
        40.0,
    );
    let from = d.log().len();
    let call = dial(&d, UNKNOWN_NUMBER, &mic);
    let log = expect_log(&d, from, "voiceprint: WATCHLIST MATCH", DECISION_WAIT);
    assert!(log.contains(WATCHLIST_LABEL), "{log}");
    // [fraud] on_hit: the risk queue (its fallback takes a voicemail: no agents).
    expect_log(
        &d,
        from,
        "call: recording voicemail",
        Duration::from_secs(40),
    );
    sleep(Duration::from_secs(2));
    let cdr = call.hang_up(&d);
    let r = routing(&cdr);
    assert_eq!(r["watchlist"][0]["entry"], WATCHLIST_LABEL, "{r}");
    let score = r["watchlist"][0]["score"].as_f64().unwrap_or(f64::NAN);
    assert!(score >= 0.65, "score {score}: {r}");
    assert!(r["reasons"].to_string().contains("watchlist"), "{r}");
    assert_eq!(r["queues"], serde_json::json!(["risk"]), "{r}");
    assert!(r["voice"].is_null(), "{r}");
    assert_eq!(cdr["digits"], "", "{cdr}");
    assert_eq!(cdr["outcome"], "voicemail", "{cdr}");

    // A caller speaking as A: checked against the same watchlist, not flagged.
    let a4 = clip(SPEAKER_A, 4);
    let mic = microphone(&work, "a-4", 3.0, &[a4.clone(), a4.clone(), a4], 40.0);
    let from = d.log().len();
    let call = dial(&d, UNKNOWN_NUMBER, &mic);
    let log = expect_log(&d, from, "voiceprint: no watchlist match", DECISION_WAIT);
    assert!(!log.contains("WATCHLIST MATCH"), "{log}");
    let cdr = call.hang_up(&d);
    let r = routing(&cdr);
    assert_eq!(r["watchlist"], serde_json::json!([]), "{r}");
    assert_eq!(r["queues"], serde_json::json!([]), "{r}");
    assert!(!r["reasons"].to_string().contains("watchlist"), "{r}");
}

/// A caller who says a few words, pauses for breath, and then talks: what they say after the
/// pause must count too. Fails today: a capture-only turn (a menu without a recogniser, or the
/// passphrase) keeps only its first utterance, because the endpointer is never reset after
/// `SpeechEnd` (`Call::on_caller_audio` / `Call::capture_ended`, src/ops/call.rs and
/// src/ops/call/voice.rs), so the 1.5 s before the pause is all the call ever collects.
#[test]
fn speech_after_a_pause_still_reaches_the_watchlist_check() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let d = start_daemon();
    watchlist_b(&d);
    let work = d.run_dir("audio");
    let b = clip_8k(&clip(SPEAKER_B, 3), &work);
    let secs = |s: f32| vec![0i16; (s * 8000.0) as usize];
    // In the main menu: 1.5 s of words, 1.5 s of silence, 10 s of talk, then silence (so the
    // menu's re-prompt turns hear nothing).
    let mut pcm = secs(3.0);
    pcm.extend_from_slice(b.get(..12_000).unwrap_or(&b));
    pcm.extend(secs(1.5));
    pcm.extend_from_slice(b.get(12_000..92_000).unwrap_or_default());
    pcm.extend(secs(40.0));
    let mic = work.join("b-3-pause.wav");
    write_wav_mono_i16(&mic, 8000, &pcm).expect("write microphone WAV");
    let from = d.log().len();
    let call = dial(&d, UNKNOWN_NUMBER, &mic);
    let log = expect_log(&d, from, "voiceprint: WATCHLIST MATCH", DECISION_WAIT);
    assert!(log.contains(WATCHLIST_LABEL), "{log}");
    let cdr = call.hang_up(&d);
    assert_eq!(
        routing(&cdr)["watchlist"][0]["entry"],
        WATCHLIST_LABEL,
        "{cdr}"
    );
}
