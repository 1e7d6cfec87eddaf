//! Speech menus end to end: a SIPp caller speaks a phrase (espeak-ng's Korean voice, 8 kHz,
//! streamed as PCMU while the menu prompt plays), warmline's endpointer and Vosk recogniser
//! (the Korean model from PyPI, fetched by scripts/setup-vosk.sh) pick the option, and the CDR
//! shows the path and the transcript.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn model_dir() -> PathBuf {
    let dir = repo().join(".cache/speech/models/vosk-model-small-ko");
    assert!(
        dir.join("am/final.mdl").is_file(),
        "speech tests need the Vosk model at {}: run scripts/setup-vosk.sh",
        dir.display()
    );
    dir
}

fn speech_daemon() -> Daemon {
    let extra = format!(
        "[speech]\nmodels = {{ ko = {:?} }}\nvoices = {{}}\n",
        model_dir().display().to_string()
    );
    Daemon::start(DaemonOpts {
        dialplan: "ko-bank".into(),
        dialplans_dir: repo().join("tests/data"),
        extra_toml: extra,
        ready_timeout: Duration::from_secs(60),
        ..DaemonOpts::default()
    })
}

/// How a test caller sounds: an espeak-ng voice and speed, optionally over line noise.
#[derive(Clone, Copy, Debug)]
struct Speaker {
    voice: &'static str,
    speed: u32,
    /// White noise mixed under the speech (sox `vol`), e.g. 0.01; 0 for none.
    noise: f32,
}

const PLAIN: Speaker = Speaker {
    voice: "ko",
    speed: 160,
    noise: 0.0,
};

/// `before_s` of silence, then `text` spoken by espeak-ng, or white noise for `text = None`,
/// then `after_s` of silence; 8 kHz mono 16-bit.
fn caller_wav(path: &Path, who: Speaker, text: Option<&str>, before_s: f32, after_s: f32) {
    require_tool("espeak-ng");
    require_tool("sox");
    let raw = path.with_extension("raw.wav");
    let ok = match text {
        Some(t) => Command::new("espeak-ng")
            .args(["-v", who.voice, "-s", &who.speed.to_string(), "-w"])
            .arg(&raw)
            .arg("--")
            .arg(t)
            .stdin(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false),
        None => Command::new("sox")
            .args(["-n", "-r", "8000", "-c", "1", "-b", "16"])
            .arg(&raw)
            .args(["synth", "2.0", "whitenoise", "vol", "0.02"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false),
    };
    assert!(ok, "cannot make caller audio {}", raw.display());
    let ok = Command::new("sox")
        .arg("-D")
        .arg(&raw)
        .args(["-r", "8000", "-c", "1", "-b", "16", "-e", "signed-integer"])
        .arg(path)
        .args(["pad", &before_s.to_string(), &after_s.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "sox failed for {}", path.display());
    if who.noise > 0.0 && text.is_some() {
        // Line noise under the whole call audio, not only the speech.
        let clean = path.with_extension("clean.wav");
        std::fs::rename(path, &clean).unwrap();
        let len = read_wav_mono_i16(&clean).map(|(_, s)| s.len()).unwrap_or(0) as f32 / 8000.0;
        let noise = path.with_extension("noise.wav");
        let ok = Command::new("sox")
            .args(["-n", "-r", "8000", "-c", "1", "-b", "16"])
            .arg(&noise)
            .args([
                "synth",
                &format!("{len:.3}"),
                "whitenoise",
                "vol",
                &who.noise.to_string(),
            ])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
            && Command::new("sox")
                .arg("-m")
                .arg(&clean)
                .arg(&noise)
                .arg(path)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
        assert!(ok, "cannot mix noise into {}", path.display());
    }
}

/// One call that says `text` 2.5 s after the answer (over the menu prompt); returns its CDR.
fn call_saying(daemon: &Daemon, text: Option<&str>, hold_ms: u32) -> Value {
    call_saying_as(daemon, PLAIN, text, hold_ms)
}

fn call_saying_as(daemon: &Daemon, who: Speaker, text: Option<&str>, hold_ms: u32) -> Value {
    let dir = daemon.run_dir("say");
    let wav = dir.join("caller.wav");
    caller_wav(&wav, who, text, 2.5, 6.0);
    let sipp = Sipp::new("uac_say.xml")
        .target(daemon.sip_addr)
        .work_dir(&dir)
        .caller_audio(&wav)
        .set("hold_ms", hold_ms)
        .timeout(Duration::from_secs(40));
    let call_id = sipp.call_id(1);
    let res = sipp.run();
    res.assert_ok();
    daemon.wait_cdr(&call_id, Duration::from_secs(20))
}

fn transcripts(cdr: &Value) -> Vec<Value> {
    cdr["transcripts"]
        .as_str()
        .and_then(|t| serde_json::from_str::<Vec<Value>>(t).ok())
        .unwrap_or_default()
}

#[test]
fn caller_says_a_phrase_over_the_menu_and_lands_on_that_option() {
    let daemon = speech_daemon();
    let cdr = call_saying(&daemon, Some("보험 가입"), 9000);
    let path: Vec<&str> = cdr["path"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let said = transcripts(&cdr);
    assert!(
        said.iter().any(|t| t["matched"] == "main:1"),
        "transcripts {said:?}, path {path:?}\n{}",
        daemon.log_tail(40)
    );
    assert!(
        path.iter().any(|p| p.contains("(voice:보험 가입)")),
        "path {path:?}"
    );
    assert_eq!(cdr["digits"], "", "chosen by voice, not keys");
    // Barge-in: the caller spoke over the menu prompt, which stopped at once.
    let log = daemon.log();
    assert!(log.contains("speech: heard"), "{}", daemon.log_tail(40));
}

#[test]
fn recognition_accuracy_per_phrase_and_noise_never_selects() {
    let daemon = speech_daemon();
    let phrases = [
        ("보험 가입", "main:1"),
        ("환전 신청", "main:2"),
        ("상담원 연결", "main:0"),
    ];
    // Several speakers (espeak-ng voice variants), speeds, and line noise at about 20 dB SNR.
    let speakers = [
        PLAIN,
        Speaker {
            voice: "ko+f3",
            speed: 160,
            noise: 0.0,
        },
        Speaker {
            voice: "ko+m4",
            speed: 130,
            noise: 0.0,
        },
        Speaker {
            voice: "ko",
            speed: 190,
            noise: 0.0,
        },
        Speaker {
            voice: "ko",
            speed: 160,
            noise: 0.01,
        },
        Speaker {
            voice: "ko+f3",
            speed: 160,
            noise: 0.01,
        },
    ];
    let cases: Vec<(Speaker, &str, &str)> = speakers
        .iter()
        .flat_map(|&who| phrases.iter().map(move |&(t, e)| (who, t, e)))
        .collect();
    // Calls in parallel, a few at a time, like a real load.
    let results: Vec<(Speaker, &str, String, String)> = std::thread::scope(|scope| {
        cases
            .chunks(6)
            .flat_map(|chunk| {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|&(who, text, expected)| {
                        let daemon = &daemon;
                        scope.spawn(move || {
                            let cdr = call_saying_as(daemon, who, Some(text), 7000);
                            let said = transcripts(&cdr);
                            let heard = said
                                .first()
                                .and_then(|t| t["text"].as_str())
                                .unwrap_or("")
                                .to_string();
                            let matched = said
                                .iter()
                                .find_map(|t| t["matched"].as_str().map(str::to_string))
                                .unwrap_or_default();
                            (
                                who,
                                text,
                                heard,
                                if matched == expected {
                                    "ok".into()
                                } else {
                                    matched
                                },
                            )
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    });
    let right = results.iter().filter(|r| r.3 == "ok").count();
    let mut report = Vec::new();
    for (who, text, heard, verdict) in &results {
        report.push(format!(
            "{:<6} {:>3} wpm noise {:<5} {text}: heard {heard:?} -> {verdict}",
            who.voice, who.speed, who.noise
        ));
    }
    for &(t, _) in &phrases {
        let n = results.iter().filter(|r| r.1 == t).count();
        let ok = results.iter().filter(|r| r.1 == t && r.3 == "ok").count();
        report.push(format!("accuracy for {t}: {ok}/{n}"));
    }
    eprintln!(
        "speech accuracy (espeak-ng ko variants, 8 kHz PCMU, Vosk small-ko, menu grammar): {right}/{}\n{}",
        results.len(),
        report.join("\n")
    );
    // Synthetic Korean is far from real speech; the bar is "most calls land right".
    assert!(
        right * 3 >= results.len() * 2,
        "accuracy {right}/{}:\n{}",
        results.len(),
        report.join("\n")
    );

    // White noise over the prompt is not speech: nothing is selected, no barge-in.
    let cdr = call_saying(&daemon, None, 6000);
    let said = transcripts(&cdr);
    assert!(
        said.iter().all(|t| t["matched"].is_null()),
        "noise selected something: {said:?}"
    );
    let path = cdr["path"].to_string();
    assert!(!path.contains("(voice:"), "{path}");
}
