//! Operations: the systemd unit, sd_notify (READY / WATCHDOG / STATUS), SIGHUP reload, the
//! SIGTERM drain, the metrics endpoint and `warmline status`, against the real daemon.
mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const CDR_WAIT: Duration = Duration::from_secs(40);

/// A caller that stays on the line until the appliance hangs up (BYE), then answers 200.
const UAC_WAIT_BYE: &str = r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="warmline uac waits for BYE">
  <send retrans="500">
    <![CDATA[

      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: "[caller]" <sip:[caller]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:[caller]@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=- [pid][call_number] 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
      a=sendrecv

    ]]>
  </send>
  <recv response="100" optional="true" />
  <recv response="180" optional="true" />
  <recv response="200" rtd="true" rrs="true" />
  <send>
    <![CDATA[

      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: "[caller]" <sip:[caller]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      [routes]
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv request="BYE" timeout="60000" />
  <send>
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
</scenario>
"#;

fn wait_bye_scenario(dir: &Path) -> PathBuf {
    let p = dir.join("uac_wait_bye.xml");
    std::fs::write(&p, UAC_WAIT_BYE).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    p
}

/// Polls `f` every 100 ms until it returns `Some`, or panics with `what` after `timeout`.
fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn send_signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill {sig} {pid} failed");
}

/// `warmline <args> --config <cfg>`: (exit code, stdout, stderr).
fn cli(cfg: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(warmline_bin())
        .args(args)
        .arg("--config")
        .arg(cfg)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run warmline {args:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn status_json(d: &Daemon) -> Value {
    let (code, out, err) = cli(&d.config_path, &["status", "--json"]);
    assert_eq!(code, 0, "warmline status failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status is not JSON ({e}): {out}"))
}

/// Waits until `warmline status` shows the call answered.
fn wait_call_up(d: &Daemon, call_id: &str) -> Value {
    wait_for(
        Duration::from_secs(20),
        "the call up in `warmline status`",
        || {
            let s = status_json(d);
            let up = s["calls"]
                .as_array()?
                .iter()
                .any(|c| c["call_id"] == call_id && c["state"] == "up");
            up.then_some(s)
        },
    )
}

fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr)
        .unwrap_or_else(|e| panic!("connect to metrics {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The value of an unlabelled sample (or one with exactly these labels) in exposition text.
fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn unit_file_passes_systemd_analyze_verify() {
    require_tool("systemd-analyze");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(repo.join("systemd/warmline.service")).unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="));
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    // Point ExecStart at the binary under test: the installed path does not exist here.
    let unit = unit.replace(
        "/usr/local/bin/warmline",
        &warmline_bin().display().to_string(),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warmline.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Only warnings about other units on this host (not ours) are tolerated.
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("warmline")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}

#[test]
fn notify_ready_only_when_sip_answers_then_watchdog_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&sock_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let sip = SocketAddr::from((LOOPBACK, free_port()));
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let opts = DaemonOpts::default();
    let cfg = dir.path().join("warmline.toml");
    std::fs::write(&cfg, config_toml(&opts, sip, free_rtp_range(20), &state)).unwrap();
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let child = Command::new(warmline_bin())
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &sock_path)
        // 2 s watchdog: pings every second.
        .env("WATCHDOG_USEC", "2000000")
        .env("NO_COLOR", "1")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    // Killed on any panic below.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Kill(child);
    let log_tail = || file_tail(&dir.path().join("log"), 40);

    let mut before_ready = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 4096];
    loop {
        assert!(
            Instant::now() < deadline,
            "no READY=1; log:\n{}",
            log_tail()
        );
        let Ok(n) = notify.recv(&mut buf) else {
            continue;
        };
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg.lines().any(|l| l == "READY=1") {
            // At READY the SIP port must already answer.
            let answer = sip_options_ping(sip, Duration::from_secs(2));
            assert!(
                answer.as_deref().and_then(status_code) == Some(200),
                "READY=1 sent but OPTIONS not answered: {answer:?}"
            );
            assert!(
                msg.contains("STATUS=0 active calls"),
                "READY without STATUS: {msg}"
            );
            break;
        }
        before_ready.push(msg);
    }
    assert!(
        before_ready
            .iter()
            .any(|m| m.starts_with("STATUS=starting")),
        "{before_ready:?}"
    );
    // Watchdog pings keep coming (two within the 2 s watchdog period plus slack).
    let mut pings = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while pings < 2 && Instant::now() < deadline {
        if let Ok(n) = notify.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "WATCHDOG=1")
            {
                pings += 1;
            }
        }
    }
    assert_eq!(pings, 2, "WATCHDOG=1 pings missing; log:\n{}", log_tail());
    // SIGTERM: STOPPING=1, exit 0.
    send_signal(child.0.id(), "-TERM");
    let mut stopping = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stopping && Instant::now() < deadline {
        if let Ok(n) = notify.recv(&mut buf) {
            stopping = String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1");
        }
    }
    assert!(stopping, "no STOPPING=1; log:\n{}", log_tail());
    let status = wait_for(Duration::from_secs(15), "exit after SIGTERM", || {
        child.0.try_wait().ok().flatten()
    });
    assert!(status.success(), "{status}; log:\n{}", log_tail());
}

#[test]
fn sighup_applies_a_new_dialplan_to_new_calls_and_keeps_calls_up() {
    let work = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let plans = work.path().join("dialplans");
    std::fs::create_dir_all(&plans).unwrap();
    let original = std::fs::read_to_string(repo.join("dialplans/demo-bank.toml")).unwrap();
    let plan = plans.join("demo-bank.toml");
    std::fs::write(&plan, &original).unwrap();
    let d = Daemon::start(DaemonOpts {
        dialplans_dir: plans.clone(),
        ..DaemonOpts::default()
    });
    let pid = d.pid().unwrap();

    // A call held up across both reloads.
    let held = Sipp::new("uac_basic.xml")
        .target(d.sip_addr)
        .work_dir(&d.run_dir("held"))
        .set("hold_ms", 15_000)
        .timeout(Duration::from_secs(40));
    let held_id = held.call_id(1);
    let held = held.spawn();
    wait_call_up(&d, &held_id);

    // 1. A valid new dialplan (renamed): new calls get it.
    let renamed = original.replacen("name = \"demo-bank\"", "name = \"demo-bank-v2\"", 1);
    assert_ne!(renamed, original);
    std::fs::write(&plan, &renamed).unwrap();
    send_signal(pid, "-HUP");
    wait_for(Duration::from_secs(30), "reload: applied", || {
        d.log().contains("reload: applied").then_some(())
    });
    let after = Sipp::new("uac_basic.xml")
        .target(d.sip_addr)
        .work_dir(&d.run_dir("after"));
    let after_id = after.call_id(1);
    after.run().assert_ok();
    let cdr = d
        .wait_cdr_where(
            |c| c["call_id"] == after_id.as_str() && !c["ended_at"].is_null(),
            CDR_WAIT,
        )
        .unwrap_or_else(|| panic!("no CDR for {}", after_id));
    assert_eq!(cdr["dialplan"], "demo-bank-v2", "{cdr}");

    // 2. A broken file: rejected with file:line, the running dialplan kept.
    let broken = renamed.replacen("entry = \"greeting\"", "entry = ", 1);
    assert_ne!(broken, renamed);
    let line = broken
        .lines()
        .position(|l| l == "entry = ")
        .map(|i| i + 1)
        .unwrap();
    std::fs::write(&plan, &broken).unwrap();
    send_signal(pid, "-HUP");
    let needle = format!("demo-bank.toml:{line}:");
    wait_for(Duration::from_secs(30), "reload rejected", || {
        let log = d.log();
        (log.contains("reload rejected") && log.contains(&needle)).then_some(())
    });
    // The CLI says the same and exits 1.
    let (code, _, err) = cli(&d.config_path, &["reload"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&needle), "{err}");
    let kept = Sipp::new("uac_basic.xml")
        .target(d.sip_addr)
        .work_dir(&d.run_dir("kept"));
    let kept_id = kept.call_id(1);
    kept.run().assert_ok();
    let cdr = d
        .wait_cdr_where(
            |c| c["call_id"] == kept_id.as_str() && !c["ended_at"].is_null(),
            CDR_WAIT,
        )
        .unwrap_or_else(|| panic!("no CDR for {}", kept_id));
    assert_eq!(cdr["dialplan"], "demo-bank-v2", "{cdr}");

    // The held call went on with the dialplan it started with, and ended normally.
    held.wait().assert_ok();
    let cdr = d
        .wait_cdr_where(
            |c| c["call_id"] == held_id.as_str() && !c["ended_at"].is_null(),
            CDR_WAIT,
        )
        .unwrap_or_else(|| panic!("no CDR for {}", held_id));
    assert_eq!(cdr["dialplan"], "demo-bank", "{cdr}");
    assert_eq!(cdr["hangup_side"], "caller", "{cdr}");
}

#[test]
fn sigterm_drains_refuses_new_calls_hangs_up_at_timeout_and_exits_0() {
    let mut d = Daemon::start(DaemonOpts {
        extra_toml: "[service]\ndrain_timeout = \"3s\"\n".into(),
        ..DaemonOpts::default()
    });
    let scenario = wait_bye_scenario(d.dir());
    let up = Sipp::new(&scenario.display().to_string())
        .target(d.sip_addr)
        .work_dir(&d.run_dir("up"))
        .timeout(Duration::from_secs(60));
    let up_id = up.call_id(1);
    let up = up.spawn();

    // `warmline status` shows the call, answered.
    let status = wait_call_up(&d, &up_id);
    assert_eq!(status["draining"], false, "{status}");
    let (code, text, _) = cli(&d.config_path, &["status"]);
    assert_eq!(code, 0);
    assert!(text.contains(&up_id) && text.contains(" up "), "{text}");

    let t0 = Instant::now();
    send_signal(d.pid().unwrap(), "-TERM");
    // A new call during the drain is refused with 503.
    let probe = SipProbe::new(d.sip_addr);
    let refused = wait_for(Duration::from_secs(5), "503 to a new call", || {
        let id = format!("drain-{}", t0.elapsed().as_nanos());
        probe.send(&probe.invite_request(&id, &format!("z9hG4bK-{id}"), "1009", 40000));
        probe
            .recv_matching(Duration::from_millis(500), |m| {
                header(m, "Call-ID") == Some(id.as_str())
                    && status_code(m).is_some_and(|c| c >= 200)
            })
            .and_then(|m| status_code(&m))
            .filter(|&c| c == 503)
    });
    assert_eq!(refused, 503);
    // A load balancer's OPTIONS probe sees the node unavailable too, so it fails over before
    // sending INVITEs here.
    let probe_reply = sip_options_ping(d.sip_addr, Duration::from_secs(2)).unwrap_or_default();
    assert_eq!(status_code(&probe_reply), Some(503), "{probe_reply}");
    // The call up gets BYE once the 3 s drain is over, and SIPp answers it.
    let r = up.wait();
    r.assert_ok();
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(2_500),
        "BYE came before the drain timeout ({waited:?})"
    );
    wait_for(Duration::from_secs(15), "exit", || {
        (!d.is_running()).then_some(())
    });
    let status = d.stop().expect("exit status");
    assert!(status.success(), "{status}; log:\n{}", d.log_tail(40));
    assert!(d.log().contains("drain timeout"), "{}", d.log_tail(40));
    let cdr = d.wait_cdr(&up_id, CDR_WAIT);
    assert_eq!(
        (cdr["hangup_cause"].as_str(), cdr["hangup_side"].as_str()),
        (Some("shutdown"), Some("warmline")),
        "{cdr}"
    );
}

#[test]
fn metrics_endpoint_counts_calls() {
    let port = free_port();
    let addr = SocketAddr::from((LOOPBACK, port));
    let d = Daemon::start(DaemonOpts {
        extra_toml: format!("[metrics]\nlisten = \"{addr}\"\n"),
        ..DaemonOpts::default()
    });
    let (code, before) = http_get(addr, "/metrics");
    assert_eq!(code, 200, "{before}");
    assert_eq!(
        metric(&before, "warmline_calls_total"),
        Some(0.0),
        "{before}"
    );
    let sipp = Sipp::new("uac_basic.xml")
        .target(d.sip_addr)
        .work_dir(&d.run_dir("m"))
        .calls(2);
    sipp.run().assert_ok();
    let after = wait_for(Duration::from_secs(20), "calls in metrics", || {
        let (_, body) = http_get(addr, "/metrics");
        (metric(&body, "warmline_calls_total") == Some(2.0)
            && metric(&body, "warmline_calls_active") == Some(0.0))
        .then_some(body)
    });
    assert!(
        metric(&after, "warmline_rtp_frames_sent_total").is_some_and(|v| v > 0.0),
        "{after}"
    );
    assert_eq!(
        metric(&after, "warmline_calls_rejected_total{reason=\"limit\"}"),
        Some(0.0)
    );
    assert!(after.contains("# TYPE warmline_asr_latency_seconds histogram"));
    let (code, _) = http_get(addr, "/nope");
    assert_eq!(code, 404);
}
