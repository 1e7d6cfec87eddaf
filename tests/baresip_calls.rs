//! A real softphone (baresip, headless, driven over its ctrl_tcp socket) calls the daemon, presses
//! keys and records what it hears. We assert on the recording (the prompts were heard) and on the CDR.
mod common;

use std::thread::sleep;
use std::time::Duration;

use common::*;
use serde_json::Value;

const EVENT_WAIT: Duration = Duration::from_secs(15);
/// RMS (full scale = 1.0) above which a 20 ms window counts as speech; the line's silence is 0.
const SPEECH_RMS: f64 = 0.01;

struct Heard {
    seconds: f64,
    speech_seconds: f64,
    cdr: Value,
}

/// Dials the demo bank, waits `before_key`, presses `key` (if any), waits `after_key`, hangs up.
fn call_demo_bank(
    opts: BaresipOpts,
    before_key: Duration,
    key: Option<char>,
    after_key: Duration,
) -> Heard {
    let d = Daemon::start(DaemonOpts::default());
    let mut phone = Baresip::start_in(opts, Some(&d.run_dir("baresip")));
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
    sleep(after_key);
    phone.hangup();
    phone.expect_event("CALL_CLOSED", EVENT_WAIT);
    phone.stop();
    let heard = phone.heard_wav().expect("baresip recorded what it heard");
    let (seconds, _rms) = wav_stats(&heard).expect("readable recording");
    let speech_seconds = wav_active_seconds(&heard, SPEECH_RMS).expect("readable recording");
    let cdr = d.wait_cdr(&call_id, Duration::from_secs(30));
    eprintln!(
        "heard {seconds:.1} s, of which {speech_seconds:.1} s speech; codec {}",
        cdr["codec"]
    );
    Heard {
        seconds,
        speech_seconds,
        cdr,
    }
}

#[test]
fn baresip_hears_the_menu_and_presses_1_for_the_balance() {
    // Greeting (1.5 s) and the start of the main menu, then 1 stops the menu and the balance
    // answer (4.8 s) plays, then the main menu again.
    let h = call_demo_bank(
        BaresipOpts::default(),
        Duration::from_secs(4),
        Some('1'),
        Duration::from_secs(7),
    );
    let cdr = &h.cdr;
    assert_eq!(cdr["digits"], "1", "{cdr}");
    assert_eq!(
        cdr["path"],
        serde_json::json!(["greeting", "main", "main"]),
        "{cdr}"
    );
    assert_eq!(cdr["codec"], "PCMU", "{cdr}");
    assert_eq!(cdr["hangup_side"], "caller", "{cdr}");
    assert!(h.seconds >= 9.0, "recording too short: {:.1} s", h.seconds);
    // Speech almost all the time: greeting, menu, balance, menu (minus the pauses between words).
    assert!(
        h.speech_seconds >= 6.0,
        "heard only {:.1} s of speech in {:.1} s",
        h.speech_seconds,
        h.seconds
    );
    // Received RTP counters in the CDR: the phone's stream arrived.
    let stats: Value = serde_json::from_str(cdr["rtp_stats"].as_str().unwrap_or("{}")).unwrap();
    assert!(stats["received"].as_u64().unwrap_or(0) > 400, "{stats}");
}

#[test]
fn baresip_with_opus_hears_the_greeting() {
    let opts = BaresipOpts {
        extra_config: "module\t\t\topus.so\n".into(),
        account_params: ";audio_codecs=opus/48000/2".into(),
        ..BaresipOpts::default()
    };
    let h = call_demo_bank(opts, Duration::from_secs(5), None, Duration::from_secs(0));
    assert_eq!(h.cdr["codec"], "opus", "{}", h.cdr);
    assert!(
        h.speech_seconds >= 3.0,
        "heard only {:.1} s of speech over Opus in {:.1} s",
        h.speech_seconds,
        h.seconds
    );
}
