//! `warmline voiceprint ...` end to end with the real models and real speakers: enrol a speaker
//! from WAV files, accept their held-out clip, reject another speaker, catch a watchlisted
//! voice, forget the customer. Needs `scripts/setup-voiceprint.sh` (the test setup runs it); a
//! missing cache fails the test with that instruction.
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod common;
use common::{clip, speech_cache};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

struct Env {
    _dir: tempfile::TempDir,
    config: PathBuf,
}

fn env() -> Env {
    let models = speech_cache().join("models");
    for m in [
        "vosk-model-spk-0.4/final.ext.raw",
        "vosk-model-small-ko/am/final.mdl",
    ] {
        assert!(
            models.join(m).is_file(),
            "{} missing: run scripts/setup-voiceprint.sh",
            models.join(m).display()
        );
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("warmline.toml");
    std::fs::write(
        &config,
        format!(
            "[paths]\nstate_dir = \"{}\"\n\n[voiceprint]\nspeaker_model = \"{}\"\nspeech_model = \"{}\"\n",
            dir.path().join("state").display(),
            models.join("vosk-model-spk-0.4").display(),
            models.join("vosk-model-small-ko").display()
        ),
    )
    .expect("write config");
    Env { _dir: dir, config }
}

fn warmline(env: &Env, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warmline"))
        .arg("--config")
        .arg(&env.config)
        .arg("voiceprint")
        .args(args)
        .current_dir(repo())
        .env_remove("WARMLINE_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run warmline")
}

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(env: &Env, args: &[&str]) -> String {
    let o = warmline(env, args);
    assert!(
        o.status.success(),
        "warmline voiceprint {args:?}:\n{}",
        out(&o)
    );
    out(&o)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Standard output of a successful command (Vosk logs to standard error).
fn stdout(env: &Env, args: &[&str]) -> String {
    let o = warmline(env, args);
    assert!(
        o.status.success(),
        "warmline voiceprint {args:?}:\n{}",
        out(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn verify_json(env: &Env, customer: &str, file: &Path) -> serde_json::Value {
    let o = stdout(env, &["verify", customer, path(file), "--phone", "--json"]);
    serde_json::from_str(&o).unwrap_or_else(|e| panic!("{e}: {o}"))
}

#[test]
fn enrol_verify_watchlist_and_forget_a_real_speaker() {
    let env = env();
    // daniel has four clips: three enrol (about 20 s of net speech), the fourth tests.
    let (a, b, c) = (clip("daniel", 1), clip("daniel", 2), clip("daniel", 3));
    let enrolled = ok(
        &env,
        &[
            "enroll",
            "cust-42",
            path(&a),
            path(&b),
            path(&c),
            "--min-speech-s",
            "10",
        ],
    );
    assert!(enrolled.contains("enrolled cust-42"), "{enrolled}");
    assert!(enrolled.contains("3 utterance(s)"), "{enrolled}");

    let list = stdout(&env, &["list", "--json"]);
    let rows: serde_json::Value =
        serde_json::from_str(&list).unwrap_or_else(|e| panic!("{e}: {list}"));
    assert_eq!(rows[0]["customer_id"], "cust-42", "{list}");
    assert_eq!(rows[0]["utterances"], 3, "{list}");
    assert!(
        rows[0]["speech_ms"].as_i64().unwrap_or(0) >= 10_000,
        "{list}"
    );

    // The held-out clip, through a telephone line, is accepted; another speaker is rejected.
    let same = verify_json(&env, "cust-42", &clip("daniel", 4));
    assert_eq!(same["result"]["decision"], "accept", "{same}");
    let other = verify_json(&env, "cust-42", &clip("freeman", 1));
    assert_eq!(other["result"]["decision"], "reject", "{other}");
    assert!(
        other["result"]["cosine"].as_f64() < same["result"]["cosine"].as_f64(),
        "{same} {other}"
    );

    // A fraudster on the watchlist is caught in the verification of another customer's call.
    let added = ok(
        &env,
        &[
            "watchlist",
            "add",
            "fraud-7",
            path(&clip("freeman", 1)),
            path(&clip("freeman", 2)),
            "--note",
            "case 7",
        ],
    );
    assert!(added.contains("added fraud-7"), "{added}");
    let caught = verify_json(&env, "cust-42", &clip("freeman", 3));
    assert_eq!(caught["watchlist"]["label"], "fraud-7", "{caught}");
    assert_eq!(caught["result"]["decision"], "reject", "{caught}");
    let clean = verify_json(&env, "cust-42", &clip("daniel", 4));
    assert!(clean["watchlist"].is_null(), "{clean}");
    assert!(ok(&env, &["watchlist", "list"]).contains("fraud-7"));
    assert!(ok(&env, &["watchlist", "remove", "fraud-7"]).contains("removed fraud-7"));

    // Right to be forgotten: gone, and verifying now fails with a clear message.
    assert!(ok(&env, &["delete", "cust-42"]).contains("deleted the voiceprint of cust-42"));
    assert!(ok(&env, &["delete", "cust-42"]).contains("had no voiceprint"));
    let o = warmline(&env, &["verify", "cust-42", path(&clip("daniel", 4))]);
    assert!(!o.status.success(), "{}", out(&o));
    assert!(
        out(&o).contains("no voiceprint is enrolled for customer cust-42"),
        "{}",
        out(&o)
    );
}

#[test]
fn enrolment_with_too_little_speech_is_refused() {
    let env = env();
    let o = warmline(&env, &["enroll", "cust-1", path(&clip("lj", 1))]);
    assert!(!o.status.success(), "{}", out(&o));
    assert!(out(&o).contains("min_enrol_speech_s"), "{}", out(&o));
    assert_eq!(stdout(&env, &["list", "--json"]).trim(), "[]");
}
