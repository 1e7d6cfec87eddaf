//! Shared harness for warmline's integration tests (see docs/testing.md).
//!
//! * [`Daemon`] starts `warmline serve` on free loopback ports with a generated config, waits until
//!   it answers OPTIONS, reads CDRs back through `warmline cdr --json`, and stops it on drop.
//! * [`Sipp`] / [`run_sipp`] run the SIPp scenarios under `tests/sipp/` as callers (UAC) or as
//!   answering peers (UAS, [`Sipp::spawn`]) with bounded time and per-run logs.
//! * [`DtmfPcap`] writes the RTP pcap (PCMU + RFC 4733 events) that `uac_dtmf*.xml` plays.
//! * [`Baresip`] runs a headless baresip driven through its JSON ctrl_tcp socket and records what
//!   it heard.
//! * [`SipProbe`] sends hand-made (also malformed) SIP over UDP.
//! * Audio helpers: [`wav_stats`], [`make_caller_wav`], WAV read/write, µ-law.
//!
//! Only std, tempfile and serde_json.  Every wait has a deadline; a failure panics with the
//! relevant log tail.  Set `WARMLINE_KEEP_TEST_DIRS=1` to keep the temporary directories.
#![allow(dead_code)]

use std::collections::{HashSet, VecDeque};
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

pub mod impair;

pub const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// How often polling loops look again.
const POLL: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------------

// Ports handed out in this process are never handed out twice.  Signalling/control ports come
// from 10000..20000 and RTP blocks from 20000..32000: both below Linux's ephemeral range
// (32768..60999), so ports the OS picks for other sockets never land in them.  The start offset
// depends on the pid so that test binaries running at the same time start apart.
const SIGNAL_PORTS: (u16, u16) = (10_000, 20_000);
const RTP_PORTS: (u16, u16) = (20_000, 32_000);

fn taken() -> &'static Mutex<HashSet<u16>> {
    static TAKEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    TAKEN.get_or_init(|| Mutex::new(HashSet::new()))
}

fn udp_free(port: u16) -> bool {
    UdpSocket::bind((LOOPBACK, port)).is_ok()
}

fn tcp_free(port: u16) -> bool {
    TcpListener::bind((LOOPBACK, port)).is_ok()
}

/// Claims ports `start..end` for this process across every test process running at once
/// (cargo-nextest runs each test in its own process, and a daemon restarted after `kill -9`
/// leaves its port unbound for a moment): an exclusive `flock` on one file per port, held until
/// the process exits, when the kernel drops it.
fn lock_ports(start: u16, end: u16) -> bool {
    use std::os::fd::AsRawFd;
    static HELD: Mutex<Vec<fs::File>> = Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("warmline-test-ports");
    if fs::create_dir_all(&dir).is_err() {
        return true; // no shared directory: fall back to the bind check alone
    }
    let mut claimed = Vec::new();
    for port in start..end {
        let Ok(file) = fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
        else {
            return false;
        };
        // SAFETY: flock only reads the descriptor, which `file` owns and keeps open; LOCK_NB
        // makes a port another process holds fail at once.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return false; // `claimed` drops here, releasing what this call took
        }
        claimed.push(file);
    }
    HELD.lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(claimed);
    true
}

/// Reserves `count` consecutive ports starting at a multiple of `align`, all free for UDP and
/// TCP on 127.0.0.1 right now (bind-and-release: another process may still race us).
fn reserve_ports(range: (u16, u16), count: u16, align: u16) -> u16 {
    static CURSOR: AtomicU32 = AtomicU32::new(0);
    let span = u32::from(range.1 - range.0);
    let slots = span / u32::from(align.max(1));
    let seed = (std::process::id().wrapping_mul(7919)) % slots.max(1);
    for _ in 0..slots {
        let slot = (seed + CURSOR.fetch_add(1, Ordering::Relaxed)) % slots;
        let Ok(start) = u16::try_from(u32::from(range.0) + slot * u32::from(align.max(1))) else {
            continue;
        };
        let Some(end) = start.checked_add(count) else {
            continue;
        };
        if end > range.1 {
            continue;
        }
        let mut set = taken().lock().unwrap_or_else(|e| e.into_inner());
        if (start..end).any(|p| set.contains(&p)) {
            continue;
        }
        if (start..end).all(|p| udp_free(p) && tcp_free(p)) && lock_ports(start, end) {
            set.extend(start..end);
            return start;
        }
    }
    panic!("no {count} free consecutive ports in {range:?}");
}

/// Whether something listens on 127.0.0.1:`port` (UDP bound, or TCP in LISTEN), read from
/// /proc/net so that checking never takes the port away from the process starting up.
pub fn port_bound(port: u16, tcp: bool) -> bool {
    let table = if tcp {
        "/proc/net/tcp"
    } else {
        "/proc/net/udp"
    };
    let want = [
        format!("0100007F:{port:04X}"),
        format!("00000000:{port:04X}"),
    ];
    read_lossy(Path::new(table)).lines().skip(1).any(|l| {
        let mut f = l.split_whitespace();
        let local = f.nth(1).unwrap_or_default();
        let state = f.nth(1).unwrap_or_default();
        want.iter().any(|w| w == local) && (!tcp || state == "0A")
    })
}

/// One port free for both UDP and TCP on 127.0.0.1 (SIP listens on both).
pub fn free_port() -> u16 {
    reserve_ports(SIGNAL_PORTS, 1, 1)
}

/// `count` consecutive free ports (e.g. baresip needs SIP port P and TLS port P+1).
pub fn free_ports(count: u16) -> u16 {
    reserve_ports(SIGNAL_PORTS, count, 1)
}

/// A free RTP range `(min, max)` of `len` ports starting on an even port, private to one test.
pub fn free_rtp_range(len: u16) -> (u16, u16) {
    let len = len.max(2);
    let start = reserve_ports(RTP_PORTS, len, 2);
    (start, start + len - 1)
}

// ---------------------------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------------------------

fn keep_dirs() -> bool {
    std::env::var_os("WARMLINE_KEEP_TEST_DIRS").is_some_and(|v| !v.is_empty() && v != "0")
}

fn new_tempdir(prefix: &str) -> TempDir {
    let mut dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
    if keep_dirs() {
        dir.disable_cleanup(true);
        eprintln!("[harness] keeping {}", dir.path().display());
    }
    dir
}

/// The last `lines` lines of a text file ("" if it cannot be read).
pub fn file_tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Waits for `child` until `deadline`; `None` if it is still running then.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(_) => return None,
        }
    }
}

/// SIGTERM, up to `grace` to exit, then SIGKILL.  Returns the exit status.
fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    // std has no way to send SIGTERM; the `kill` utility is in every base system.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Some(status) = wait_until(child, Instant::now() + grace) {
        return Some(status);
    }
    let _ = child.kill();
    child.wait().ok()
}

/// `path` must exist as an executable on PATH (used to fail early with a useful message).
pub fn require_tool(name: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{name}` is not installed: run scripts/setup-test-peers.sh (see docs/testing.md)"
    );
}

/// True when this process may open raw sockets (SIPp's play_pcap_audio and play_dtmf need it).
pub fn can_send_raw_rtp() -> bool {
    // Effective uid 0 is enough here; with CAP_NET_RAW given to sipp by setcap this is
    // conservative.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------------------------
// Daemon
// ---------------------------------------------------------------------------------------------

/// Options for [`Daemon::start`].
#[derive(Debug, Clone)]
pub struct DaemonOpts {
    /// `[ivr] dialplan`.
    pub dialplan: String,
    /// `[paths] dialplans` (default: `<repo>/dialplans`).
    pub dialplans_dir: PathBuf,
    /// `[paths] prompts` (default: `<repo>/voice-prompts`).
    pub prompts_dir: PathBuf,
    /// Appended verbatim to the generated warmline.toml (extra sections such as `[dialer]`).
    pub extra_toml: String,
    /// Extra lines for the generated `[rtp]` table (which `extra_toml` cannot reopen).
    pub rtp_toml: String,
    /// `RUST_LOG` for the daemon.
    pub rust_log: String,
    /// Extra environment variables for the daemon.
    pub env: Vec<(String, String)>,
    /// How many RTP ports the daemon gets.
    pub rtp_ports: u16,
    /// Deadline for the first answered OPTIONS.
    pub ready_timeout: Duration,
    /// `[ivr] answer_after_ms`: ring this long before answering (CANCEL tests).
    pub answer_after_ms: u64,
}

impl Default for DaemonOpts {
    fn default() -> Self {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        DaemonOpts {
            dialplan: "demo-bank".into(),
            dialplans_dir: repo.join("dialplans"),
            prompts_dir: repo.join("voice-prompts"),
            extra_toml: String::new(),
            rtp_toml: String::new(),
            rust_log: "info,warmline=debug".into(),
            env: Vec::new(),
            rtp_ports: 100,
            ready_timeout: Duration::from_secs(20),
            answer_after_ms: 0,
        }
    }
}

/// The text of warmline.toml for these addresses (the format documented in docs/testing.md).
pub fn config_toml(
    opts: &DaemonOpts,
    sip: SocketAddr,
    rtp: (u16, u16),
    state_dir: &Path,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "[sip]\nlisten = \"{sip}\"\n");
    let _ = writeln!(
        s,
        "[rtp]\nport_min = {}\nport_max = {}\n{}\n",
        rtp.0, rtp.1, opts.rtp_toml
    );
    let _ = writeln!(
        s,
        "[paths]\nstate_dir = {}\ndialplans = {}\nprompts = {}\n",
        toml_str(&state_dir.display().to_string()),
        toml_str(&opts.dialplans_dir.display().to_string()),
        toml_str(&opts.prompts_dir.display().to_string()),
    );
    let _ = writeln!(
        s,
        "[ivr]\ndialplan = {}\nanswer_after_ms = {}",
        toml_str(&opts.dialplan),
        opts.answer_after_ms
    );
    if !opts.extra_toml.is_empty() {
        let _ = writeln!(s, "\n{}", opts.extra_toml);
    }
    s
}

/// A TOML basic string (JSON string escapes are valid TOML escapes).
fn toml_str(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// The git-ignored download cache of models, voices and speech clips (`scripts/setup-*.sh`).
pub fn speech_cache() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/speech")
}

/// Clip `n` of a real recorded speaker (tortoise-tts voices, `scripts/setup-voiceprint.sh`).
pub fn clip(speaker: &str, n: u32) -> PathBuf {
    let p = speech_cache().join(format!("tortoise-voices/{speaker}/{n}.wav"));
    assert!(
        p.is_file(),
        "{} missing: run scripts/setup-voiceprint.sh",
        p.display()
    );
    p
}

/// Path of the binary under test (built by cargo for integration tests).
pub fn warmline_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_warmline"))
}

/// A running `warmline serve`; stopped (SIGTERM, then SIGKILL) on drop.
pub struct Daemon {
    pub sip_addr: SocketAddr,
    pub rtp_range: (u16, u16),
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub state_dir: PathBuf,
    child: Option<Child>,
    runs: AtomicU32,
    dir: TempDir,
    opts: DaemonOpts,
}

/// Starts `warmline serve` with its output appended to `log_path`.
fn spawn_serve(opts: &DaemonOpts, config_path: &Path, log_path: &Path, cwd: &Path) -> Child {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .unwrap_or_else(|e| panic!("open log {}: {e}", log_path.display()));
    let log2 = log.try_clone().unwrap_or_else(|e| panic!("clone log: {e}"));
    Command::new(warmline_bin())
        .arg("serve")
        .arg("--config")
        .arg(config_path)
        .env("RUST_LOG", &opts.rust_log)
        .env("NO_COLOR", "1")
        .envs(opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", warmline_bin().display()))
}

impl Daemon {
    /// Starts the daemon and waits until it answers an OPTIONS over UDP.
    pub fn start(opts: DaemonOpts) -> Daemon {
        let dir = new_tempdir("warmline-test-");
        let sip_addr = SocketAddr::from((LOOPBACK, free_port()));
        let rtp_range = free_rtp_range(opts.rtp_ports);
        let state_dir = dir.path().join("state");
        fs::create_dir_all(&state_dir).unwrap_or_else(|e| panic!("mkdir state: {e}"));
        let config_path = dir.path().join("warmline.toml");
        fs::write(
            &config_path,
            config_toml(&opts, sip_addr, rtp_range, &state_dir),
        )
        .unwrap_or_else(|e| panic!("write {}: {e}", config_path.display()));
        let log_path = dir.path().join("warmline.log");
        let child = spawn_serve(&opts, &config_path, &log_path, dir.path());
        let mut daemon = Daemon {
            sip_addr,
            rtp_range,
            config_path,
            log_path,
            state_dir,
            child: Some(child),
            runs: AtomicU32::new(0),
            dir,
            opts: opts.clone(),
        };
        daemon.wait_ready(opts.ready_timeout);
        daemon
    }

    /// `kill -9` the daemon (no chance to finish anything), then start it again on the same
    /// config, state and ports, and wait until it answers.
    pub fn kill9_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.child = Some(spawn_serve(
            &self.opts,
            &self.config_path,
            &self.log_path,
            self.dir.path(),
        ));
        self.wait_ready(self.opts.ready_timeout);
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let probe = SipProbe::new(self.sip_addr);
        let mut n = 0u32;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "warmline exited during start-up ({status}); log tail:\n{}",
                        self.log_tail(60)
                    );
                }
            }
            n += 1;
            let call_id = format!("ready-{}-{n}", std::process::id());
            probe.send(&probe.options_request(&call_id));
            if probe
                .recv_matching(Duration::from_millis(300), |m| {
                    status_code(m).is_some() && header(m, "Call-ID") == Some(call_id.as_str())
                })
                .is_some()
            {
                return;
            }
        }
        panic!(
            "warmline did not answer OPTIONS on {} within {timeout:?}; log tail:\n{}",
            self.sip_addr,
            self.log_tail(60)
        );
    }

    /// The test's temporary directory (config, log, state, SIPp run directories).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A fresh directory under [`Daemon::dir`] for one peer run.
    pub fn run_dir(&self, what: &str) -> PathBuf {
        let n = self.runs.fetch_add(1, Ordering::Relaxed);
        let p = self.dir.path().join(format!("{what}-{n}"));
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        p
    }

    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.log_path, lines)
    }

    /// Process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM, 5 s grace, SIGKILL; returns how it exited.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        terminate(&mut child, Duration::from_secs(5))
    }

    /// Arguments of the CDR query (kept in one place in case the CLI changes).
    fn cdr_args(&self, limit: usize) -> Vec<String> {
        vec![
            "cdr".into(),
            "--config".into(),
            self.config_path.display().to_string(),
            "--json".into(),
            "--limit".into(),
            limit.to_string(),
        ]
    }

    /// The global opt-out list, from `warmline opt-outs --json`.
    pub fn opt_outs(&self) -> Vec<Value> {
        let out = Command::new(warmline_bin())
            .args(["opt-outs", "--config"])
            .arg(&self.config_path)
            .arg("--json")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run warmline opt-outs: {e}"));
        assert!(
            out.status.success(),
            "warmline opt-outs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        match serde_json::from_slice::<Value>(&out.stdout) {
            Ok(Value::Array(rows)) => rows,
            other => panic!("warmline opt-outs printed no JSON array: {other:?}"),
        }
    }

    /// The newest `limit` CDR rows, from `warmline cdr --json`.
    pub fn cdrs_limit(&self, limit: usize) -> Vec<Value> {
        let out = Command::new(warmline_bin())
            .args(self.cdr_args(limit))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run warmline cdr: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "warmline cdr failed ({}): {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            stdout
        );
        match serde_json::from_str::<Value>(stdout.trim()) {
            Ok(Value::Array(rows)) => rows,
            Ok(other) => panic!("warmline cdr --json printed a non-array: {other}"),
            Err(e) => panic!("warmline cdr --json printed invalid JSON ({e}):\n{stdout}"),
        }
    }

    pub fn cdrs(&self) -> Vec<Value> {
        self.cdrs_limit(1000)
    }

    /// Polls until a CDR with this Call-ID has `ended_at`, or panics after `timeout`.
    pub fn wait_cdr(&self, call_id: &str, timeout: Duration) -> Value {
        self.wait_cdr_where(|row| row["call_id"] == call_id, timeout)
            .unwrap_or_else(|| {
                panic!(
                    "no finished CDR for Call-ID {call_id} within {timeout:?}; rows: {}\nlog tail:\n{}",
                    Value::Array(self.cdrs()),
                    self.log_tail(40)
                )
            })
    }

    /// Polls until a finished CDR (non-null `ended_at`) matches `pred`.
    pub fn wait_cdr_where(
        &self,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(row) = self
                .cdrs()
                .into_iter()
                .find(|r| pred(r) && !r["ended_at"].is_null())
            {
                return Some(row);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let status = self.stop();
        if thread::panicking() {
            eprintln!(
                "[harness] warmline ({}) exited {status:?}; dir {}; log tail:\n{}",
                self.sip_addr,
                self.dir.path().display(),
                self.log_tail(80)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SIP probe (hand-made messages over UDP)
// ---------------------------------------------------------------------------------------------

/// Status code of a SIP response, `None` for requests and garbage.
pub fn status_code(msg: &str) -> Option<u16> {
    let line = msg.lines().next()?;
    let rest = line.strip_prefix("SIP/2.0 ")?;
    rest.get(..3)?.parse().ok()
}

/// First value of a header (case-insensitive name, compact forms not expanded), trimmed.
pub fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
}

/// The `tag` parameter of a From/To header value.
pub fn tag_of(header_value: &str) -> Option<&str> {
    header_value
        .split(';')
        .skip(1)
        .find_map(|p| p.trim().strip_prefix("tag="))
}

/// A UDP socket on 127.0.0.1 that talks SIP by hand to one target.
pub struct SipProbe {
    pub sock: UdpSocket,
    pub local: SocketAddr,
    pub target: SocketAddr,
}

impl SipProbe {
    pub fn new(target: SocketAddr) -> SipProbe {
        let sock = UdpSocket::bind((LOOPBACK, 0)).unwrap_or_else(|e| panic!("bind probe: {e}"));
        let local = sock
            .local_addr()
            .unwrap_or_else(|e| panic!("probe addr: {e}"));
        SipProbe {
            sock,
            local,
            target,
        }
    }

    pub fn send(&self, msg: &str) {
        self.send_bytes(msg.as_bytes());
    }

    pub fn send_bytes(&self, bytes: &[u8]) {
        self.sock
            .send_to(bytes, self.target)
            .unwrap_or_else(|e| panic!("send to {}: {e}", self.target));
    }

    /// Next datagram within `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<String> {
        self.recv_matching(timeout, |_| true)
    }

    /// Next datagram within `timeout` for which `pred` holds (others are dropped).
    pub fn recv_matching(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65_535];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            if left.is_zero() {
                return None;
            }
            let _ = self.sock.set_read_timeout(Some(left));
            match self.sock.recv_from(&mut buf) {
                Ok((n, _)) => {
                    let msg =
                        String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned();
                    if pred(&msg) {
                        return Some(msg);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    if Instant::now() >= deadline {
                        return None;
                    }
                }
                Err(e) => panic!("probe recv: {e}"),
            }
        }
    }

    /// Everything that arrives until nothing has come for `quiet` (at most `max` in total).
    pub fn recv_all(&self, quiet: Duration, max: Duration) -> Vec<String> {
        let deadline = Instant::now() + max;
        let mut out = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.recv(quiet.min(left)) {
                Some(m) => out.push(m),
                None => break,
            }
        }
        out
    }

    fn via(&self, branch: &str) -> String {
        format!("SIP/2.0/UDP {};branch={branch};rport", self.local)
    }

    /// An out-of-dialog OPTIONS.
    pub fn options_request(&self, call_id: &str) -> String {
        format!(
            "OPTIONS sip:ping@{t} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n\
             From: <sip:probe@{l}>;tag=p{n}\r\nTo: <sip:ping@{t}>\r\nCall-ID: {call_id}\r\n\
             CSeq: 1 OPTIONS\r\nContact: <sip:probe@{l}>\r\nAccept: application/sdp\r\n\
             Content-Length: 0\r\n\r\n",
            t = self.target,
            l = self.local,
            via = self.via(&format!("z9hG4bK-o-{call_id}")),
            n = std::process::id(),
        )
    }

    /// An INVITE offering PCMU/PCMA/telephone-event 101 with media at `rtp_port`.
    pub fn invite_request(
        &self,
        call_id: &str,
        branch: &str,
        caller: &str,
        rtp_port: u16,
    ) -> String {
        let sdp = format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {rtp_port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
        );
        format!(
            "INVITE sip:service@{t} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n\
             From: <sip:{caller}@{l}>;tag=f-{call_id}\r\nTo: <sip:service@{t}>\r\n\
             Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:{caller}@{l}>\r\n\
             Content-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{sdp}",
            t = self.target,
            l = self.local,
            via = self.via(branch),
            len = sdp.len(),
        )
    }

    /// An in-dialog request (ACK for a 2xx, BYE, ...) for the dialog a 2xx `answer` created to
    /// a request built by [`SipProbe::invite_request`].
    pub fn in_dialog_request(&self, method: &str, answer: &str, cseq: u32) -> String {
        let to = header(answer, "To").unwrap_or_default();
        let from = header(answer, "From").unwrap_or_default();
        let call_id = header(answer, "Call-ID").unwrap_or_default();
        let target = header(answer, "Contact")
            .and_then(|c| {
                let start = c.find('<')? + 1;
                let end = c[start..].find('>')? + start;
                c.get(start..end).map(str::to_owned)
            })
            .unwrap_or_else(|| format!("sip:service@{}", self.target));
        let branch = format!("z9hG4bK-{method}-{cseq}-{call_id}").to_lowercase();
        format!(
            "{method} {target} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {from}\r\n\
             To: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
            via = self.via(&branch),
        )
    }
}

/// One OPTIONS → the response (any status) or `None` after `timeout`.
pub fn sip_options_ping(target: SocketAddr, timeout: Duration) -> Option<String> {
    let probe = SipProbe::new(target);
    let call_id = format!("ping-{}-{}", std::process::id(), free_call_counter());
    probe.send(&probe.options_request(&call_id));
    probe.recv_matching(timeout, |m| header(m, "Call-ID") == Some(call_id.as_str()))
}

fn free_call_counter() -> u32 {
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------------
// SIPp
// ---------------------------------------------------------------------------------------------

/// Directory of the SIPp scenarios (`tests/sipp`).
pub fn sipp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sipp")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// A SIPp run, built step by step.  `Sipp::new("uac_basic.xml").target(addr).run()`.
#[derive(Debug, Clone)]
pub struct Sipp {
    scenario: PathBuf,
    target: Option<SocketAddr>,
    local_port: Option<u16>,
    service: String,
    caller: String,
    keys: Vec<(String, String)>,
    sets: Vec<(String, String)>,
    args: Vec<String>,
    calls: u32,
    rate: Option<f64>,
    transport: Transport,
    timeout: Duration,
    trace_msg: bool,
    work_dir: Option<PathBuf>,
    caller_audio: Option<PathBuf>,
    call_id_prefix: String,
}

/// What a finished SIPp run left behind.
#[derive(Debug)]
pub struct SippResult {
    /// Exit code (0 all calls succeeded, 1 some failed, 97/99 see `sipp -h`, -1/255 fatal or
    /// global timeout, -2/254 could not bind); `None` when killed by signal.
    pub status: Option<i32>,
    pub successful: u64,
    pub failed: u64,
    /// The harness had to kill SIPp (it outlived its own `-timeout` by 15 s).
    pub killed: bool,
    pub stdout: String,
    pub stderr: String,
    /// `-trace_err` log: unexpected messages and why calls failed.
    pub errors: String,
    /// `-trace_msg` log: every message sent and received.
    pub messages: String,
    /// The Call-IDs SIPp used (UAC runs: `<prefix>-1 ..= <prefix>-N`).
    pub call_ids: Vec<String>,
    pub work_dir: PathBuf,
    _tmp: Option<TempDir>,
}

impl SippResult {
    pub fn ok(&self) -> bool {
        self.status == Some(0) && self.failed == 0 && !self.killed
    }

    /// Panics with the error log and output tails unless every call succeeded.
    pub fn assert_ok(&self) {
        assert!(self.ok(), "SIPp run failed:\n{}", self.report());
    }

    /// A readable summary for assertion messages.
    pub fn report(&self) -> String {
        let tail = |s: &str, n: usize| {
            let l: Vec<&str> = s.lines().collect();
            l[l.len().saturating_sub(n)..].join("\n")
        };
        format!(
            "status {:?}, successful {}, failed {}, killed {}, dir {}\n--- errors ---\n{}\n--- stderr ---\n{}\n--- stdout (tail) ---\n{}\n--- messages (tail) ---\n{}",
            self.status,
            self.successful,
            self.failed,
            self.killed,
            self.work_dir.display(),
            tail(&self.errors, 40),
            tail(&self.stderr, 20),
            tail(&self.stdout, 40),
            tail(&self.messages, 60),
        )
    }

    /// Messages SIPp received, in order (from the `-trace_msg` log).
    pub fn received(&self) -> Vec<String> {
        trace_blocks(&self.messages, "message received")
    }

    /// Messages SIPp sent, in order.
    pub fn sent(&self) -> Vec<String> {
        trace_blocks(&self.messages, "message sent")
    }

    /// Received responses with this status code.
    pub fn received_responses(&self, code: u16) -> Vec<String> {
        self.received()
            .into_iter()
            .filter(|m| status_code(m) == Some(code))
            .collect()
    }
}

/// Splits a SIPp `-trace_msg` log into the message bodies whose header line contains `kind`.
fn trace_blocks(log: &str, kind: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    let mut in_wanted = false;
    for line in log.lines() {
        if line.starts_with("----------------------------------------------- ") {
            if let Some(m) = current.take() {
                out.push(m.trim().to_owned());
            }
            in_wanted = false;
            continue;
        }
        if current.is_none() && !in_wanted {
            if line.contains(kind) {
                in_wanted = true;
                current = Some(String::new());
            }
            continue;
        }
        if let Some(m) = current.as_mut() {
            m.push_str(line);
            m.push_str("\r\n");
        }
    }
    if let Some(m) = current {
        out.push(m.trim().to_owned());
    }
    out
}

/// Last cumulative value of a SIPp statistics row such as "Successful call".
fn sipp_counter(stdout: &str, row: &str) -> Option<u64> {
    stdout
        .lines()
        .rev()
        .filter(|l| l.trim_start().starts_with(row))
        .find_map(|l| l.rsplit('|').next()?.trim().parse().ok())
}

impl Sipp {
    /// `scenario` is a file name under `tests/sipp/` or a path.
    pub fn new(scenario: &str) -> Sipp {
        let p = Path::new(scenario);
        let scenario = if p.is_absolute() || p.exists() {
            p.to_path_buf()
        } else {
            sipp_dir().join(scenario)
        };
        assert!(
            scenario.is_file(),
            "no SIPp scenario {}",
            scenario.display()
        );
        static RUN: AtomicU32 = AtomicU32::new(0);
        Sipp {
            scenario,
            target: None,
            local_port: None,
            service: "service".into(),
            caller: "1000".into(),
            keys: Vec::new(),
            sets: Vec::new(),
            args: Vec::new(),
            calls: 1,
            rate: None,
            transport: Transport::Udp,
            timeout: Duration::from_secs(30),
            trace_msg: true,
            work_dir: None,
            caller_audio: None,
            call_id_prefix: format!(
                "wl{}r{}",
                std::process::id(),
                RUN.fetch_add(1, Ordering::Relaxed)
            ),
        }
    }

    /// Remote host (UAC).  UAS runs leave it unset.
    pub fn target(mut self, addr: SocketAddr) -> Self {
        self.target = Some(addr);
        self
    }
    /// Local SIP port (default: a free one).
    pub fn local_port(mut self, port: u16) -> Self {
        self.local_port = Some(port);
        self
    }
    /// `-s`: Request-URI user.
    pub fn service(mut self, s: &str) -> Self {
        self.service = s.into();
        self
    }
    /// `-key caller`: user part of From (the CDR caller_number).  Default "1000".
    pub fn caller(mut self, number: &str) -> Self {
        self.caller = number.into();
        self
    }
    /// `-key name value` (text substituted as `[name]`).
    pub fn key(mut self, name: &str, value: &str) -> Self {
        self.keys.push((name.into(), value.into()));
        self
    }
    /// `-set name value` (global variable; the scenarios read pause lengths from these).
    pub fn set(mut self, name: &str, value: impl ToString) -> Self {
        self.sets.push((name.into(), value.to_string()));
        self
    }
    /// Any other SIPp argument.
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.into());
        self
    }
    /// `-m`: number of calls (default 1).
    pub fn calls(mut self, n: u32) -> Self {
        self.calls = n;
        self
    }
    /// `-r`: calls per second.
    pub fn rate(mut self, cps: f64) -> Self {
        self.rate = Some(cps);
        self
    }
    pub fn transport(mut self, t: Transport) -> Self {
        self.transport = t;
        self
    }
    /// SIPp's own `-timeout` (with `-timeout_error`); the harness kills it 15 s later.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    /// Turn off `-trace_msg` (high-rate runs).
    pub fn no_trace_msg(mut self) -> Self {
        self.trace_msg = false;
        self
    }
    /// Where logs go and relative files (caller.ulaw, pcaps) are looked up.
    pub fn work_dir(mut self, dir: &Path) -> Self {
        self.work_dir = Some(dir.to_path_buf());
        self
    }
    /// WAV (8 kHz mono S16) converted to `caller.ulaw` for scenarios using `rtp_stream`.
    pub fn caller_audio(mut self, wav: &Path) -> Self {
        self.caller_audio = Some(wav.to_path_buf());
        self
    }
    /// Prefix of the Call-IDs (`-cid_str <prefix>-%u`); default unique per run.
    pub fn call_id_prefix(mut self, p: &str) -> Self {
        self.call_id_prefix = p.into();
        self
    }
    /// The Call-ID of call `n` (1-based) of this run.
    pub fn call_id(&self, n: u32) -> String {
        format!("{}-{n}", self.call_id_prefix)
    }

    fn prepare(&self) -> (PathBuf, Option<TempDir>, Vec<String>, u16) {
        let (dir, tmp) = match &self.work_dir {
            Some(d) => {
                fs::create_dir_all(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
                (d.clone(), None)
            }
            None => {
                let t = new_tempdir("warmline-sipp-");
                (t.path().to_path_buf(), Some(t))
            }
        };
        let ulaw = dir.join("caller.ulaw");
        match &self.caller_audio {
            Some(wav) => {
                let (rate, samples) = read_wav_mono_i16(wav)
                    .unwrap_or_else(|e| panic!("caller audio {}: {e}", wav.display()));
                assert_eq!(rate, 8000, "caller audio must be 8 kHz: {}", wav.display());
                let bytes: Vec<u8> = samples.iter().map(|&s| linear_to_ulaw(s)).collect();
                fs::write(&ulaw, bytes).unwrap_or_else(|e| panic!("write caller.ulaw: {e}"));
            }
            // rtp_stream scenarios refuse to load without the file: one second of silence.
            None if !ulaw.exists() => {
                fs::write(&ulaw, vec![0xFFu8; 8000])
                    .unwrap_or_else(|e| panic!("write caller.ulaw: {e}"));
            }
            None => {}
        }
        let port = self.local_port.unwrap_or_else(free_port);
        let media = reserve_ports(RTP_PORTS, 4, 2);
        let name = self
            .scenario
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "sipp".into());
        fn add(a: &mut Vec<String>, items: &[&str]) {
            a.extend(items.iter().map(|s| (*s).to_owned()));
        }
        let mut a: Vec<String> = Vec::new();
        if let Some(t) = self.target {
            a.push(t.to_string());
        }
        let err_log = dir.join(format!("{name}.err.log")).display().to_string();
        let msg_log = dir.join(format!("{name}.msg.log")).display().to_string();
        add(
            &mut a,
            &[
                "-sf",
                &self.scenario.display().to_string(),
                "-i",
                "127.0.0.1",
                "-mi",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                // SIPp binds media_port and media_port+2 (its echo sockets)
                "-mp",
                &media.to_string(),
                "-cp",
                &free_port().to_string(),
                "-s",
                &self.service,
                "-m",
                &self.calls.to_string(),
                "-timeout",
                &format!("{}s", self.timeout.as_secs().max(1)),
                // without -timeout_error a call stuck in <recv> keeps SIPp alive past -timeout
                "-timeout_error",
                "-cid_str",
                &format!("{}-%u", self.call_id_prefix),
                "-watchdog_minor_threshold",
                "2000",
                "-watchdog_major_threshold",
                "10000",
                "-nostdin",
                "-trace_err",
                "-error_file",
                &err_log,
                "-message_file",
                &msg_log,
            ],
        );
        if self.trace_msg {
            add(&mut a, &["-trace_msg"]);
        }
        if self.transport == Transport::Tcp {
            // Without -reconnect_close false a peer closing its TCP connection fails the calls
            // still in <timewait>.
            add(&mut a, &["-t", "t1", "-reconnect_close", "false"]);
        }
        if let Some(r) = self.rate {
            add(&mut a, &["-r", &r.to_string()]);
        }
        // SIPp keeps the first -key of a name: let a raw "-key caller X" in args win.
        if !self
            .args
            .windows(2)
            .any(|w| w[0] == "-key" && w[1] == "caller")
        {
            add(&mut a, &["-key", "caller", &self.caller]);
        }
        for (k, v) in &self.keys {
            add(&mut a, &["-key", k, v]);
        }
        for (k, v) in &self.sets {
            add(&mut a, &["-set", k, v]);
        }
        a.extend(self.args.iter().cloned());
        (dir, tmp, a, port)
    }

    fn spawn_child(&self, dir: &Path, args: &[String]) -> Child {
        require_tool("sipp");
        let out = fs::File::create(dir.join("sipp.stdout"))
            .unwrap_or_else(|e| panic!("create sipp.stdout: {e}"));
        let err = fs::File::create(dir.join("sipp.stderr"))
            .unwrap_or_else(|e| panic!("create sipp.stderr: {e}"));
        fs::write(dir.join("sipp.cmd"), format!("sipp {}\n", args.join(" ")))
            .unwrap_or_else(|e| panic!("write sipp.cmd: {e}"));
        Command::new("sipp")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start sipp: {e}"))
    }

    fn collect(
        &self,
        mut child: Child,
        dir: PathBuf,
        tmp: Option<TempDir>,
        deadline: Instant,
    ) -> SippResult {
        let (status, killed) = match wait_until(&mut child, deadline) {
            Some(s) => (s.code(), false),
            None => (
                terminate(&mut child, Duration::from_secs(2)).and_then(|s| s.code()),
                true,
            ),
        };
        let name = self
            .scenario
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "sipp".into());
        let stdout = read_lossy(&dir.join("sipp.stdout"));
        let successful = sipp_counter(&stdout, "Successful call").unwrap_or(0);
        let failed = sipp_counter(&stdout, "Failed call").unwrap_or(0);
        SippResult {
            status,
            successful,
            failed,
            killed,
            stderr: read_lossy(&dir.join("sipp.stderr")),
            errors: read_lossy(&dir.join(format!("{name}.err.log"))),
            messages: read_lossy(&dir.join(format!("{name}.msg.log"))),
            stdout,
            call_ids: if self.target.is_some() {
                (1..=self.calls).map(|n| self.call_id(n)).collect()
            } else {
                Vec::new()
            },
            work_dir: dir,
            _tmp: tmp,
        }
    }

    /// Runs to completion (UAC).  Never blocks longer than the timeout + 15 s.
    pub fn run(self) -> SippResult {
        let (dir, tmp, args, _) = self.prepare();
        let child = self.spawn_child(&dir, &args);
        let deadline = Instant::now() + self.timeout + Duration::from_secs(15);
        self.collect(child, dir, tmp, deadline)
    }

    /// Starts in the background (UAS); returns once the SIP port is bound.
    pub fn spawn(self) -> SippServer {
        let (dir, tmp, args, port) = self.prepare();
        let child = self.spawn_child(&dir, &args);
        let addr = SocketAddr::from((LOOPBACK, port));
        let started = Instant::now();
        let mut server = SippServer {
            addr,
            started,
            sipp: self,
            child: Some(child),
            dir,
            tmp,
        };
        server.wait_bound(Duration::from_secs(5));
        server
    }
}

/// A SIPp instance running in the background (usually a UAS scenario).
pub struct SippServer {
    pub addr: SocketAddr,
    started: Instant,
    sipp: Sipp,
    child: Option<Child>,
    dir: PathBuf,
    tmp: Option<TempDir>,
}

impl SippServer {
    fn wait_bound(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let tcp = self.sipp.transport == Transport::Tcp;
        while Instant::now() < deadline {
            if port_bound(self.addr.port(), tcp) {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "SIPp UAS exited at start ({status}):\n{}",
                    read_lossy(&self.dir.join("sipp.stdout"))
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("SIPp UAS did not bind {} within {timeout:?}", self.addr);
    }

    /// Waits for SIPp to finish its `-m` calls (bounded by its timeout + 15 s).
    pub fn wait(mut self) -> SippResult {
        let child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("SIPp server already collected"));
        let deadline = self.started + self.sipp.timeout + Duration::from_secs(15);
        let dir = self.dir.clone();
        let tmp = self.tmp.take();
        self.sipp.collect(child, dir, tmp, deadline)
    }

    /// Stops it now (SIGTERM, then SIGKILL) and collects what it logged.
    pub fn stop(mut self) -> SippResult {
        if let Some(c) = self.child.as_mut() {
            terminate(c, Duration::from_secs(2));
        }
        let child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("SIPp server already collected"));
        let dir = self.dir.clone();
        let tmp = self.tmp.take();
        self.sipp.collect(child, dir, tmp, Instant::now())
    }
}

impl Drop for SippServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(2));
            if thread::panicking() {
                eprintln!(
                    "[harness] SIPp UAS {} log tail:\n{}",
                    self.addr,
                    file_tail(&self.dir.join("sipp.stdout"), 40)
                );
            }
        }
    }
}

/// Runs `scenario` as a caller against the daemon; `extra_args` are raw SIPp arguments.
/// Logs go to a fresh directory under the daemon's test directory.
pub fn run_sipp(scenario: &str, daemon: &Daemon, extra_args: &[&str]) -> SippResult {
    let mut s = Sipp::new(scenario)
        .target(daemon.sip_addr)
        .work_dir(&daemon.run_dir("sipp"));
    for a in extra_args {
        s = s.arg(a);
    }
    s.run()
}

// ---------------------------------------------------------------------------------------------
// RTP pcap with DTMF (what uac_dtmf*.xml / uas_answer_dtmf.xml play)
// ---------------------------------------------------------------------------------------------

/// RFC 4733 event code of a DTMF key.
pub fn dtmf_event(c: char) -> Option<u8> {
    match c {
        '0'..='9' => Some(c as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => Some(c as u8 - b'A' + 12),
        'a'..='d' => Some(c as u8 - b'a' + 12),
        _ => None,
    }
}

/// A caller's RTP stream as a pcap: one SSRC, 20 ms PCMU frames (silence or a WAV) and RFC 4733
/// telephone-event packets at chosen offsets, as a desk phone sends them.  SIPp replays it with
/// the pcap's own timing and headers (only the UDP ports are rewritten), so each digit gets
/// its own timestamp even when the same key is pressed twice.
#[derive(Debug, Clone)]
pub struct DtmfPcap {
    /// (offset from the first packet in ms, key).
    pub digits: Vec<(u32, char)>,
    /// How long each key is held (default 160 ms).
    pub tone_ms: u32,
    /// Telephone-event payload type (default 101, what the uac_dtmf*.xml offers).
    pub payload_type: u8,
    /// PCMU audio sent alongside (8 kHz mono S16 WAV); `None` sends µ-law silence.
    pub audio: Option<PathBuf>,
    /// Send audio packets (default true).  When false only one silence packet at 0 ms anchors
    /// the timeline, then just the events.
    pub with_audio: bool,
    /// Keep streaming this long after the last digit ends (default 1000 ms).
    pub tail_ms: u32,
    pub ssrc: u32,
}

impl DtmfPcap {
    /// Digits at offsets in ms, e.g. `&[(3000, '1'), (9000, '9')]`.
    pub fn new(digits: &[(u32, char)]) -> DtmfPcap {
        DtmfPcap {
            digits: digits.to_vec(),
            tone_ms: 160,
            payload_type: 101,
            audio: None,
            with_audio: true,
            tail_ms: 1000,
            ssrc: 0x5741_524d, // "WARM"
        }
    }

    pub fn audio(mut self, wav: &Path) -> Self {
        self.audio = Some(wav.to_path_buf());
        self
    }
    pub fn without_audio(mut self) -> Self {
        self.with_audio = false;
        self
    }
    pub fn tone_ms(mut self, ms: u32) -> Self {
        self.tone_ms = ms;
        self
    }
    pub fn payload_type(mut self, pt: u8) -> Self {
        self.payload_type = pt;
        self
    }
    pub fn tail_ms(mut self, ms: u32) -> Self {
        self.tail_ms = ms;
        self
    }

    /// The RTP packets as (offset µs, RTP bytes).
    pub fn packets(&self) -> io::Result<Vec<(u64, Vec<u8>)>> {
        const FRAME: u32 = 160; // samples per 20 ms at 8 kHz
        let audio: Vec<u8> = match (&self.audio, self.with_audio) {
            (Some(wav), true) => {
                let (rate, s) = read_wav_mono_i16(wav)?;
                if rate != 8000 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: {rate} Hz, need 8000", wav.display()),
                    ));
                }
                s.iter().map(|&x| linear_to_ulaw(x)).collect()
            }
            _ => Vec::new(),
        };
        let mut digits = self.digits.clone();
        digits.sort_by_key(|d| d.0);
        let tone_frames = self.tone_ms.div_ceil(20).max(1);
        let last_end_ms = digits
            .iter()
            .map(|d| d.0 + tone_frames * 20 + 60)
            .max()
            .unwrap_or(0);
        let audio_ms = u32::try_from(audio.len() / 8).unwrap_or(u32::MAX);
        let total_frames = (last_end_ms.max(audio_ms) + self.tail_ms).div_ceil(20);
        if let Some(w) = digits
            .windows(2)
            .find(|w| w[1].0 < w[0].0 + tone_frames * 20 + 60)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "digits {:?} and {:?} overlap (tone + end packets)",
                    w[0], w[1]
                ),
            ));
        }
        let mut events: Vec<(u32, u8)> = Vec::new(); // (start frame, event code)
        for (at, key) in &digits {
            let code = dtmf_event(*key).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("not a DTMF key: {key:?}"),
                )
            })?;
            events.push((at / 20, code));
        }
        let ts0: u32 = 8000;
        let mut seq: u16 = 1000;
        let mut out = Vec::new();
        let mut first_audio = true;
        for frame in 0..total_frames {
            let t_us = u64::from(frame) * 20_000;
            let ts = ts0.wrapping_add(frame.wrapping_mul(FRAME));
            // Without audio one silence packet still goes out at 0 ms: SIPp replays a pcap
            // relative to its first packet, so this keeps the digits' offsets from the ACK.
            if self.with_audio || frame == 0 {
                let start = frame as usize * FRAME as usize;
                let mut payload = vec![0xFFu8; FRAME as usize];
                if let Some(chunk) = audio.get(start..) {
                    let n = chunk.len().min(FRAME as usize);
                    payload[..n].copy_from_slice(&chunk[..n]);
                }
                out.push((
                    t_us,
                    rtp_packet(0, first_audio, seq, ts, self.ssrc, &payload),
                ));
                first_audio = false;
                seq = seq.wrapping_add(1);
            }
            for &(start, code) in &events {
                if frame < start || frame >= start + tone_frames + 2 {
                    continue;
                }
                let ev_ts = ts0.wrapping_add(start.wrapping_mul(FRAME));
                let k = frame - start; // 0-based packet index within the event
                let (end, dur) = if k < tone_frames {
                    (false, (k + 1) * FRAME)
                } else {
                    (true, tone_frames * FRAME)
                };
                let dur = u16::try_from(dur).unwrap_or(u16::MAX);
                let mut payload = vec![code, 10, 0, 0]; // volume 10 (-10 dBm0)
                if end {
                    payload[1] |= 0x80;
                }
                payload[2..4].copy_from_slice(&dur.to_be_bytes());
                // RFC 4733: the final packet is sent three times (here: two extra copies
                // in the last frame, with their own sequence numbers).
                let copies = if k == tone_frames + 1 { 2 } else { 1 };
                for _ in 0..copies {
                    out.push((
                        t_us + 1000,
                        rtp_packet(self.payload_type, k == 0, seq, ev_ts, self.ssrc, &payload),
                    ));
                    seq = seq.wrapping_add(1);
                }
            }
        }
        Ok(out)
    }

    /// Writes the pcap (Ethernet/IPv4/UDP 127.0.0.1:10000 → 127.0.0.1:20000).
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let packets = self.packets()?;
        write_rtp_pcap(path, &packets)
    }
}

/// Shorthand: the default stream (silence + digits at the given offsets) written to `path`.
pub fn write_dtmf_pcap(path: &Path, digits: &[(u32, char)]) -> io::Result<()> {
    DtmfPcap::new(digits).write(path)
}

fn rtp_packet(pt: u8, marker: bool, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + payload.len());
    p.push(0x80);
    p.push((pt & 0x7f) | if marker { 0x80 } else { 0 });
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// Writes RTP payloads as a libpcap file of Ethernet/IPv4/UDP frames.
pub fn write_rtp_pcap(path: &Path, packets: &[(u64, Vec<u8>)]) -> io::Result<()> {
    let mut f = io::BufWriter::new(fs::File::create(path)?);
    // global header: magic, v2.4, tz 0, sigfigs 0, snaplen 65535, linktype 1 (Ethernet)
    f.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
    f.write_all(&2u16.to_le_bytes())?;
    f.write_all(&4u16.to_le_bytes())?;
    f.write_all(&0i32.to_le_bytes())?;
    f.write_all(&0u32.to_le_bytes())?;
    f.write_all(&65_535u32.to_le_bytes())?;
    f.write_all(&1u32.to_le_bytes())?;
    let base_sec: u64 = 1_700_000_000;
    for (id, (t_us, rtp)) in packets.iter().enumerate() {
        let udp_len = u16::try_from(8 + rtp.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "RTP packet too large"))?;
        let ip_len = udp_len + 20;
        let mut ip = vec![0x45, 0, 0, 0];
        ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
        ip.extend_from_slice(&(id as u16).to_be_bytes());
        ip.extend_from_slice(&[0x40, 0, 64, 17, 0, 0]); // DF, TTL 64, UDP, checksum later
        ip.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1]);
        let csum = ipv4_checksum(&ip);
        ip[10..12].copy_from_slice(&csum.to_be_bytes());
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&10_000u16.to_be_bytes());
        frame.extend_from_slice(&20_000u16.to_be_bytes());
        frame.extend_from_slice(&udp_len.to_be_bytes());
        frame.extend_from_slice(&0u16.to_be_bytes()); // no UDP checksum (allowed on IPv4)
        frame.extend_from_slice(rtp);
        let sec = u32::try_from(base_sec + t_us / 1_000_000).unwrap_or(u32::MAX);
        let usec = (t_us % 1_000_000) as u32;
        let len = frame.len() as u32;
        f.write_all(&sec.to_le_bytes())?;
        f.write_all(&usec.to_le_bytes())?;
        f.write_all(&len.to_le_bytes())?;
        f.write_all(&len.to_le_bytes())?;
        f.write_all(&frame)?;
    }
    f.flush()
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

// ---------------------------------------------------------------------------------------------
// Audio
// ---------------------------------------------------------------------------------------------

/// G.711 µ-law encoding of one linear sample, bit-exact with ITU-T G.191 `ulaw_compress`
/// (negative inputs use the one's complement magnitude, as the reference does).
pub fn linear_to_ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32_635;
    let mut s = i32::from(sample);
    let sign: u8 = if s < 0 {
        s = -s - 1;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS; // 0x84..=0x7FFF, so s >> 7 is 1..=255
    let exponent = 31 - ((s >> 7) as u32).leading_zeros(); // 0..=7
    let mantissa = ((s >> (exponent + 3)) & 0x0f) as u8;
    !(sign | ((exponent as u8) << 4) | mantissa)
}

/// Reads a PCM WAV (8/16-bit, any channel count) as 16-bit mono (channels averaged).
/// Tolerates a data chunk size of 0 or 0xFFFFFFFF (files still being written).
pub fn read_wav_mono_i16(path: &Path) -> io::Result<(u32, Vec<i16>)> {
    let bad = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {what}", path.display()),
        )
    };
    let mut bytes = Vec::new();
    fs::File::open(path)?.read_to_end(&mut bytes)?;
    if bytes.get(0..4) != Some(b"RIFF") || bytes.get(8..12) != Some(b"WAVE") {
        return Err(bad("not a RIFF/WAVE file"));
    }
    let mut pos = 12usize;
    let mut fmt: Option<(u16, u16, u32, u16)> = None;
    while let Some(head) = pos.checked_add(8).and_then(|end| bytes.get(pos..end)) {
        let id = &head[0..4];
        let size = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        let body_start = pos + 8;
        if id == b"fmt " {
            let b = bytes
                .get(body_start..body_start.saturating_add(16))
                .filter(|b| b.len() == 16)
                .ok_or_else(|| bad("short fmt chunk"))?;
            fmt = Some((
                u16::from_le_bytes([b[0], b[1]]),
                u16::from_le_bytes([b[2], b[3]]),
                u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
                u16::from_le_bytes([b[14], b[15]]),
            ));
        } else if id == b"data" {
            let (format, channels, rate, bits) = fmt.ok_or_else(|| bad("data before fmt"))?;
            // 1 = PCM, 0xFFFE = WAVE_FORMAT_EXTENSIBLE (PCM assumed)
            if format != 1 && format != 0xFFFE {
                return Err(bad("not PCM"));
            }
            let avail = bytes.len() - body_start;
            let len = if size == 0 || size > avail {
                avail
            } else {
                size
            };
            let data = &bytes[body_start..body_start + len];
            let ch = usize::from(channels.max(1));
            let samples: Vec<i16> = match bits {
                16 => data
                    .chunks_exact(2 * ch)
                    .map(|f| {
                        let sum: i32 = f
                            .chunks_exact(2)
                            .map(|s| i32::from(i16::from_le_bytes([s[0], s[1]])))
                            .sum();
                        (sum / ch as i32) as i16
                    })
                    .collect(),
                8 => data
                    .chunks_exact(ch)
                    .map(|f| {
                        let sum: i32 = f.iter().map(|&s| (i32::from(s) - 128) << 8).sum();
                        (sum / ch as i32) as i16
                    })
                    .collect(),
                _ => return Err(bad("only 8/16-bit PCM")),
            };
            return Ok((rate, samples));
        }
        pos = body_start.saturating_add(size).saturating_add(size & 1);
    }
    Err(bad("no data chunk"))
}

/// Writes a 16-bit mono PCM WAV.
pub fn write_wav_mono_i16(path: &Path, rate: u32, samples: &[i16]) -> io::Result<()> {
    let data_len = u32::try_from(samples.len() * 2)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "WAV too long"))?;
    let mut f = io::BufWriter::new(fs::File::create(path)?);
    f.write_all(b"RIFF")?;
    f.write_all(&(36 + data_len).to_le_bytes())?;
    f.write_all(b"WAVEfmt ")?;
    f.write_all(&16u32.to_le_bytes())?;
    f.write_all(&1u16.to_le_bytes())?;
    f.write_all(&1u16.to_le_bytes())?;
    f.write_all(&rate.to_le_bytes())?;
    f.write_all(&(rate * 2).to_le_bytes())?;
    f.write_all(&2u16.to_le_bytes())?;
    f.write_all(&16u16.to_le_bytes())?;
    f.write_all(b"data")?;
    f.write_all(&data_len.to_le_bytes())?;
    for s in samples {
        f.write_all(&s.to_le_bytes())?;
    }
    f.flush()
}

/// `secs` of 8 kHz mono silence.
pub fn make_silence_wav(path: &Path, secs: f32) -> io::Result<()> {
    let n = (secs.max(0.0) * 8000.0) as usize;
    write_wav_mono_i16(path, 8000, &vec![0i16; n])
}

/// (duration in seconds, RMS relative to full scale 0.0..=1.0).
pub fn wav_stats(path: &Path) -> io::Result<(f64, f64)> {
    let (rate, s) = read_wav_mono_i16(path)?;
    if rate == 0 {
        return Ok((0.0, 0.0));
    }
    let dur = s.len() as f64 / f64::from(rate);
    let rms = if s.is_empty() {
        0.0
    } else {
        (s.iter()
            .map(|&x| (f64::from(x) / 32768.0).powi(2))
            .sum::<f64>()
            / s.len() as f64)
            .sqrt()
    };
    Ok((dur, rms))
}

/// Seconds of 20 ms windows whose RMS exceeds `threshold` (0..1): "how much was heard".
pub fn wav_active_seconds(path: &Path, threshold: f64) -> io::Result<f64> {
    let (rate, s) = read_wav_mono_i16(path)?;
    let win = (rate / 50).max(1) as usize;
    let active = s
        .chunks(win)
        .filter(|w| {
            let e = w
                .iter()
                .map(|&x| (f64::from(x) / 32768.0).powi(2))
                .sum::<f64>()
                / w.len() as f64;
            e.sqrt() > threshold
        })
        .count();
    Ok(active as f64 * 0.02)
}

/// Speaks `text` with espeak-ng into an 8 kHz mono S16 WAV with 0.3 s of silence before and
/// `pad_after_s` after (baresip's aufile source hangs up at end of file).
pub fn make_caller_wav(text: &str, path: &Path, pad_after_s: f32) -> io::Result<()> {
    require_tool("espeak-ng");
    require_tool("sox");
    let raw = path.with_extension("espeak.wav");
    let st = Command::new("espeak-ng")
        .arg("-w")
        .arg(&raw)
        .arg("--")
        .arg(text)
        .stdin(Stdio::null())
        .output()?;
    if !st.status.success() {
        return Err(io::Error::other(format!(
            "espeak-ng failed: {}",
            String::from_utf8_lossy(&st.stderr)
        )));
    }
    // -D: no dither, so the padding is exact digital silence
    let st = Command::new("sox")
        .arg("-D")
        .arg(&raw)
        .args(["-r", "8000", "-c", "1", "-b", "16", "-e", "signed-integer"])
        .arg(path)
        .args(["pad", "0.3", &format!("{:.3}", pad_after_s.max(0.0))])
        .stdin(Stdio::null())
        .output()?;
    let _ = fs::remove_file(&raw);
    if !st.status.success() {
        return Err(io::Error::other(format!(
            "sox failed: {}",
            String::from_utf8_lossy(&st.stderr)
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// baresip
// ---------------------------------------------------------------------------------------------

/// Options for [`Baresip::start`].
#[derive(Debug, Clone)]
pub struct BaresipOpts {
    /// User part of the account AOR (`sip:<user>@127.0.0.1`).
    pub user: String,
    /// 8 kHz mono S16 WAV sent as the microphone; `None` = 10 minutes of silence.  baresip hangs
    /// up when the file ends, so pad it (see [`make_caller_wav`]).
    pub audio_source: Option<PathBuf>,
    /// Answer incoming calls at once (`;answermode=auto`), for dialer tests.
    pub auto_answer: bool,
    /// Extra lines appended to the config file.
    pub extra_config: String,
    /// Extra account parameters, e.g. `;audio_codecs=opus/48000/2`.
    pub account_params: String,
    /// Deadline for the control socket to come up.
    pub ready_timeout: Duration,
    /// Register to this registrar (e.g. warmline's SIP address) with this digest password:
    /// the account becomes `<sip:USER@ADDR>;auth_pass=PW;regint=60`. `None`: no REGISTER.
    pub register: Option<(SocketAddr, String)>,
    /// Start with `-s`: every SIP message sent and received goes to baresip.log (to read the
    /// headers of an INVITE it got).
    pub sip_trace: bool,
}

impl Default for BaresipOpts {
    fn default() -> Self {
        BaresipOpts {
            user: "alice".into(),
            audio_source: None,
            auto_answer: false,
            extra_config: String::new(),
            account_params: String::new(),
            ready_timeout: Duration::from_secs(10),
            register: None,
            sip_trace: false,
        }
    }
}

/// A headless baresip (G.711 only) driven through ctrl_tcp (JSON in netstrings).  Commands are
/// the menu's long commands (`dial`, `hangup`, `sndcode`, `accept`, `quit`, ...); events arrive on
/// the same socket (CALL_ESTABLISHED, CALL_DTMF_START, CALL_CLOSED, ...).
pub struct Baresip {
    /// Where it listens for SIP (UDP and TCP; TLS takes port+1).
    pub sip_addr: SocketAddr,
    pub ctrl_port: u16,
    pub rtp_range: (u16, u16),
    pub dir: PathBuf,
    child: Option<Child>,
    ctrl: TcpStream,
    buf: Vec<u8>,
    pending: VecDeque<Value>,
    /// Every event seen so far (also the consumed ones).
    pub history: Vec<Value>,
    token: u32,
    _tmp: Option<TempDir>,
}

impl Baresip {
    pub fn start(opts: BaresipOpts) -> Baresip {
        Self::start_in(opts, None)
    }

    /// Like [`Baresip::start`] with its files under `dir` (e.g. a [`Daemon::run_dir`]).
    pub fn start_in(opts: BaresipOpts, dir: Option<&Path>) -> Baresip {
        require_tool("baresip");
        let (dir, tmp) = match dir {
            Some(d) => (d.to_path_buf(), None),
            None => {
                let t = new_tempdir("warmline-baresip-");
                (t.path().to_path_buf(), Some(t))
            }
        };
        let rec = dir.join("rec");
        fs::create_dir_all(&rec).unwrap_or_else(|e| panic!("mkdir {}: {e}", rec.display()));
        let source = match &opts.audio_source {
            Some(p) => p.clone(),
            None => {
                let p = dir.join("silence.wav");
                make_silence_wav(&p, 600.0).unwrap_or_else(|e| panic!("silence.wav: {e}"));
                p
            }
        };
        let sip_port = free_ports(2); // SIP on P (UDP+TCP), TLS on P+1
        let ctrl_port = free_port();
        let rtp_range = free_rtp_range(20);
        let config = format!(
            "poll_method\t\tepoll\n\
             sip_listen\t\t127.0.0.1:{sip_port}\n\
             net_interface\t\t127.0.0.1\n\
             rtp_ports\t\t{}-{}\n\
             audio_player\t\talsa,null\n\
             audio_alert\t\talsa,null\n\
             audio_source\t\taufile,{}\n\
             ausrc_srate\t\t8000\n\
             ausrc_channels\t\t1\n\
             call_local_timeout\t120\n\
             module_path\t\t/usr/lib/baresip/modules\n\
             module\t\t\tg711.so\n\
             module\t\t\taufile.so\n\
             module\t\t\talsa.so\n\
             module\t\t\tsndfile.so\n\
             module_tmp\t\taccount.so\n\
             module_app\t\tmenu.so\n\
             module_app\t\tctrl_tcp.so\n\
             ctrl_tcp_listen\t\t127.0.0.1:{ctrl_port}\n\
             snd_path\t\t{}\n{}\n",
            rtp_range.0,
            rtp_range.1,
            source.display(),
            rec.display(),
            opts.extra_config,
        );
        fs::write(dir.join("config"), config).unwrap_or_else(|e| panic!("baresip config: {e}"));
        let answer = if opts.auto_answer {
            ";answermode=auto"
        } else {
            ""
        };
        let account = match &opts.register {
            None => format!(
                "<sip:{}@127.0.0.1>;regint=0{answer}{}\n",
                opts.user, opts.account_params
            ),
            Some((registrar, password)) => format!(
                "<sip:{}@{registrar}>;auth_pass={password};regint=60{answer}{}\n",
                opts.user, opts.account_params
            ),
        };
        fs::write(dir.join("accounts"), account)
            .unwrap_or_else(|e| panic!("baresip accounts: {e}"));
        fs::write(dir.join("contacts"), "").unwrap_or_else(|e| panic!("baresip contacts: {e}"));
        let log = fs::File::create(dir.join("baresip.log"))
            .unwrap_or_else(|e| panic!("baresip.log: {e}"));
        let log2 = log
            .try_clone()
            .unwrap_or_else(|e| panic!("baresip.log: {e}"));
        let mut child = Command::new("baresip")
            .args(opts.sip_trace.then_some("-s"))
            .arg("-f")
            .arg(&dir)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start baresip: {e}"));
        let deadline = Instant::now() + opts.ready_timeout;
        let ctrl = loop {
            if let Ok(s) = TcpStream::connect((LOOPBACK, ctrl_port)) {
                break s;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "baresip exited at start ({status}):\n{}",
                    file_tail(&dir.join("baresip.log"), 40)
                );
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!(
                    "baresip control socket 127.0.0.1:{ctrl_port} not up within {:?}:\n{}",
                    opts.ready_timeout,
                    file_tail(&dir.join("baresip.log"), 40)
                );
            }
            thread::sleep(Duration::from_millis(50));
        };
        let _ = ctrl.set_nodelay(true);
        Baresip {
            sip_addr: SocketAddr::from((LOOPBACK, sip_port)),
            ctrl_port,
            rtp_range,
            dir,
            child: Some(child),
            ctrl,
            buf: Vec::new(),
            pending: VecDeque::new(),
            history: Vec::new(),
            token: 0,
            _tmp: tmp,
        }
    }

    pub fn log(&self) -> String {
        read_lossy(&self.dir.join("baresip.log"))
    }

    /// Reads whatever arrives until `deadline`; sorts events into `pending`/`history` and returns
    /// the first response whose token is `want` (if any).
    fn pump(&mut self, deadline: Instant, want: Option<&str>) -> Option<Value> {
        loop {
            // Decode complete netstrings already buffered: "<len>:<json>,".
            while let Some(colon) = self.buf.iter().position(|&b| b == b':') {
                let Some(len) = std::str::from_utf8(&self.buf[..colon])
                    .ok()
                    .and_then(|s| s.parse::<usize>().ok())
                else {
                    panic!(
                        "baresip ctrl_tcp sent a bad netstring: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    );
                };
                let end = colon + 1 + len;
                if self.buf.len() < end + 1 {
                    break;
                }
                let json: Value = serde_json::from_slice(&self.buf[colon + 1..end])
                    .unwrap_or_else(|e| panic!("baresip ctrl_tcp sent bad JSON: {e}"));
                self.buf.drain(..=end);
                if json["event"] == true {
                    self.history.push(json.clone());
                    self.pending.push_back(json);
                } else if json["response"] == true && want.is_some_and(|w| json["token"] == w) {
                    return Some(json);
                }
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            if left.is_zero() {
                return None;
            }
            let _ = self.ctrl.set_read_timeout(Some(left.min(POLL)));
            let mut chunk = [0u8; 8192];
            match self.ctrl.read(&mut chunk) {
                Ok(0) => panic!(
                    "baresip closed its control socket; log tail:\n{}",
                    file_tail(&self.dir.join("baresip.log"), 30)
                ),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("baresip ctrl_tcp read: {e}"),
            }
        }
    }

    /// Sends one command and waits (5 s) for its response: `Ok(data)` or `Err(data)`.
    pub fn command(&mut self, command: &str, params: &str) -> Result<String, String> {
        self.token += 1;
        let token = format!("t{}", self.token);
        let msg =
            serde_json::json!({"command": command, "params": params, "token": token}).to_string();
        let frame = format!("{}:{msg},", msg.len());
        self.ctrl
            .write_all(frame.as_bytes())
            .unwrap_or_else(|e| panic!("baresip ctrl_tcp write: {e}"));
        let resp = self
            .pump(Instant::now() + Duration::from_secs(5), Some(&token))
            .unwrap_or_else(|| panic!("baresip did not answer `{command} {params}` within 5 s"));
        let data = resp["data"].as_str().unwrap_or_default().to_owned();
        if resp["ok"] == true {
            Ok(data)
        } else {
            Err(data)
        }
    }

    /// Places a call (`dial <uri>`); follow with `wait_event("CALL_ESTABLISHED", ..)`.
    pub fn dial(&mut self, uri: &str) {
        self.command("dial", uri)
            .unwrap_or_else(|e| panic!("baresip dial {uri}: {e}"));
    }

    /// Sends one DTMF key as RFC 4733 events on the negotiated telephone-event PT
    /// (`sndcode`; ~180 ms tone, 3 end packets).
    pub fn send_digit(&mut self, key: char) {
        self.command("sndcode", &key.to_string())
            .unwrap_or_else(|e| panic!("baresip sndcode {key}: {e}"));
    }

    /// Answers a ringing incoming call.
    pub fn accept(&mut self) {
        self.command("accept", "")
            .unwrap_or_else(|e| panic!("baresip accept: {e}"));
    }

    pub fn hangup(&mut self) {
        self.command("hangup", "")
            .unwrap_or_else(|e| panic!("baresip hangup: {e}"));
    }

    /// Waits for the next not yet consumed event of this type (e.g. "CALL_ESTABLISHED",
    /// "CALL_CLOSED", "CALL_DTMF_START", "CALL_INCOMING") and consumes it.
    pub fn wait_event(&mut self, kind: &str, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.pending.iter().position(|e| e["type"] == kind) {
                return self.pending.remove(i);
            }
            self.pump(deadline.min(Instant::now() + POLL), None);
            if Instant::now() >= deadline {
                return self
                    .pending
                    .iter()
                    .position(|e| e["type"] == kind)
                    .and_then(|i| self.pending.remove(i));
            }
        }
    }

    /// Like [`Baresip::wait_event`] but panics with the event history and log on timeout.
    pub fn expect_event(&mut self, kind: &str, timeout: Duration) -> Value {
        match self.wait_event(kind, timeout) {
            Some(e) => e,
            None => panic!(
                "baresip: no {kind} within {timeout:?}; events: {}\nlog tail:\n{}",
                Value::Array(self.history.clone()),
                file_tail(&self.dir.join("baresip.log"), 30)
            ),
        }
    }

    fn recordings(&self, suffix: &str) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(self.dir.join("rec"))
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.to_string_lossy().ends_with(suffix))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// WAV files of what baresip heard (decoded), oldest first — one per call, named by
    /// start second (two calls in one second share a file name: use one instance per call).
    pub fn heard_recordings(&self) -> Vec<PathBuf> {
        self.recordings("-dec.wav")
    }

    /// The newest recording of what baresip heard.
    pub fn heard_wav(&self) -> Option<PathBuf> {
        self.heard_recordings().pop()
    }

    /// The newest recording of what baresip sent.
    pub fn sent_wav(&self) -> Option<PathBuf> {
        self.recordings("-enc.wav").pop()
    }

    /// `quit`, then SIGTERM/SIGKILL if it lingers.  Recordings are complete afterwards.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let msg = r#"{"command":"quit","params":"","token":"quit"}"#;
        let _ = self
            .ctrl
            .write_all(format!("{}:{msg},", msg.len()).as_bytes());
        if wait_until(&mut child, Instant::now() + Duration::from_secs(3)).is_none() {
            terminate(&mut child, Duration::from_secs(2));
        }
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            eprintln!(
                "[harness] baresip {} events: {}\nlog tail:\n{}",
                self.sip_addr,
                Value::Array(self.history.clone()),
                file_tail(&self.dir.join("baresip.log"), 40)
            );
        }
    }
}

/// A fresh schema on the test PostgreSQL server; `None` when no server is configured (outside
/// `make test`), after saying which test (`what`) is skipped. Under CI the server is required.
pub fn fresh_pg_url(name: &str, what: &str) -> Option<String> {
    let Ok(base) = std::env::var("WARMLINE_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "WARMLINE_TEST_POSTGRES_URL is not set under CI (scripts/test.sh starts PostgreSQL)"
        );
        eprintln!("WARMLINE_TEST_POSTGRES_URL not set; {what} skipped");
        return None;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let pool = sqlx::PgPool::connect(&base)
            .await
            .expect("connect to PostgreSQL");
        let sql = format!("DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .expect("create schema");
        pool.close().await;
    });
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}options[search_path]={name}"))
}
