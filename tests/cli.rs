//! The operator's offline commands: `warmline check` reports file:line:column problems and exits 1,
//! a bad config names its line, the bundled configuration checks clean.
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn warmline(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warmline"))
        .args(args)
        .current_dir(cwd)
        .env_remove("WARMLINE_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run warmline")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn bundled_defaults_check_clean() {
    let o = warmline(&["check"], repo());
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("0 error(s)"), "{}", text(&o));
}

/// A copy of the demo with two mistakes; `check` names both with their positions.
#[test]
fn broken_dialplan_is_reported_with_file_line_column() {
    let dir = tempfile::tempdir().unwrap();
    let demo = std::fs::read_to_string(repo().join("dialplans/demo-bank.toml")).unwrap();
    let broken = demo
        .replace("3 = { goto = \"credit\"", "3 = { goto = \"credti\"")
        .replace(
            "prompt = \"credit-menu\"",
            "prompt = \"credit-menu-missing\"",
        );
    assert_ne!(broken, demo, "the demo changed: update this test");
    let file = dir.path().join("broken.toml");
    std::fs::write(&file, &broken).unwrap();
    let o = warmline(&["check", file.to_str().unwrap()], repo());
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    let goto_line = broken.lines().position(|l| l.contains("credti")).unwrap() + 1;
    let want = format!("{}:{goto_line}:", file.display());
    assert!(
        out.lines()
            .any(|l| l.starts_with(&want) && l.contains("error") && l.contains("credti")),
        "no error at {want} for the unknown menu:\n{out}"
    );
    assert!(out.contains("did you mean 'credit'"), "{out}");
    assert!(out.contains("credit-menu-missing"), "{out}");
    // Only the file asked about is reported: the configured demo dialplan exists.
    assert_eq!(out.matches(": error:").count(), 2, "{out}");
}

#[test]
fn duplicate_key_is_an_error_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dup.toml");
    std::fs::write(
        &file,
        "entry = \"main\"\n\n[menus.main]\nprompt = \"main-menu\"\n\n[menus.main.options]\n\
         1 = { play = \"balance\" }\n1 = { play = \"card-blocked\" }\n",
    )
    .unwrap();
    let o = warmline(&["check", file.to_str().unwrap()], repo());
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains(&format!("{}:8:", file.display())), "{out}");
}

#[test]
fn bad_config_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("warmline.toml");
    std::fs::write(
        &cfg,
        "[sip]\nlisten = \"127.0.0.1:5060\"\n\n[rtp]\nport_mni = 20000\n",
    )
    .unwrap();
    let o = warmline(&["check", "--config", cfg.to_str().unwrap()], repo());
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(out.contains(&format!("{}:5:1:", cfg.display())), "{out}");
    assert!(out.contains("port_mni"), "{out}");
}

#[test]
fn serve_refuses_a_missing_dialplan_and_says_which() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("warmline.toml");
    std::fs::write(
        &cfg,
        format!(
            "[sip]\nlisten = \"127.0.0.1:0\"\n[paths]\nstate_dir = \"{}\"\ndialplans = \"{}\"\nprompts = \"{}\"\n[ivr]\ndialplan = \"nope\"\n",
            dir.path().join("state").display(),
            repo().join("dialplans").display(),
            repo().join("voice-prompts").display()
        ),
    )
    .unwrap();
    let o = warmline(&["serve", "--config", cfg.to_str().unwrap()], repo());
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("nope.toml"), "{out}");
}

#[test]
fn campaign_check_reports_bad_contact_rows_by_line() {
    let o = warmline(&["campaign", "check", "coupon-expiry"], repo());
    let out = text(&o);
    // The example CSV carries two deliberate mistakes (documented in docs/campaigns.md).
    assert!(o.status.success(), "{out}");
    assert!(out.contains("coupon-expiry.csv:line 5: phone:"), "{out}");
    assert!(out.contains("coupon-expiry.csv:line 9: timezone:"), "{out}");
    assert!(out.contains("8 usable, 2 bad"), "{out}");
}

#[test]
fn campaign_check_fails_on_a_looser_fatigue_rule() {
    let dir = tempfile::tempdir().unwrap();
    let src = std::fs::read_to_string(repo().join("campaigns/coupon-expiry.toml")).unwrap();
    let file = dir.path().join("loose.toml");
    std::fs::write(
        &file,
        format!("{src}\n[fatigue]\nmax_contacts = 3\n").replace(
            "contacts = \"coupon-expiry.csv\"",
            &format!(
                "contacts = \"{}\"",
                repo().join("campaigns/coupon-expiry.csv").display()
            ),
        ),
    )
    .unwrap();
    let o = warmline(&["campaign", "check", file.to_str().unwrap()], repo());
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("allows more contacts than the global limit"),
        "{out}"
    );
}
