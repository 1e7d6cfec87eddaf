//! Two appliances sharing one PostgreSQL behind Kamailio (examples/kamailio/kamailio.cfg):
//! calls are spread over both, and after `kill -9` of one, new calls complete through the other.
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Kamailio in the foreground with the example configuration; killed on drop.
struct Kamailio {
    addr: SocketAddr,
    child: Child,
    log: std::path::PathBuf,
}

impl Kamailio {
    fn start(dir: &Path, appliances: &[SocketAddr]) -> Kamailio {
        require_tool("kamailio");
        let addr = SocketAddr::from((LOOPBACK, free_port()));
        let list = dir.join("dispatcher.list");
        let lines: String = appliances
            .iter()
            .map(|a| format!("1 sip:{a} 0 0\n"))
            .collect();
        std::fs::write(&list, lines).unwrap();
        let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kamailio/kamailio.cfg");
        let run = dir.join("kamailio-run");
        std::fs::create_dir_all(&run).unwrap();
        let log = dir.join("kamailio.log");
        let out = std::fs::File::create(&log).unwrap();
        use std::os::unix::process::CommandExt;
        let child = Command::new("kamailio")
            // Its own process group: Kamailio forks workers, and the drop kills them all.
            .process_group(0)
            .arg("-f")
            .arg(&cfg)
            .args(["-DD", "-E", "-n", "2", "-m", "64", "-M", "8"])
            .arg("-Y")
            .arg(&run)
            .arg("-A")
            .arg(format!("WL_LISTEN=udp:{addr}"))
            .arg("-A")
            .arg(format!("WL_DISPATCHER_LIST=\"{}\"", list.display()))
            .arg("-A")
            .arg("WL_FAILOVER_MS=1500")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start kamailio: {e}"));
        let mut k = Kamailio { addr, child, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = k.child.try_wait() {
                panic!("kamailio exited ({status}):\n{}", k.log_tail());
            }
            if sip_options_ping(addr, Duration::from_millis(300)).is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "kamailio did not answer OPTIONS:\n{}",
                k.log_tail()
            );
        }
        k
    }

    fn log_tail(&self) -> String {
        file_tail(&self.log, 40)
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

fn calls_through(k: &Kamailio, d: &Daemon, n: u32, what: &str) -> Vec<String> {
    let sipp = Sipp::new("uac_basic.xml")
        .target(k.addr)
        .work_dir(&d.run_dir(what))
        .set("hold_ms", 500)
        .calls(n)
        .rate(5.0)
        .timeout(Duration::from_secs(60));
    let ids: Vec<String> = (1..=n).map(|i| sipp.call_id(i)).collect();
    let r = sipp.run();
    assert!(r.ok(), "{}\nkamailio:\n{}", r.report(), k.log_tail());
    ids
}

#[test]
fn kamailio_spreads_calls_and_fails_over_after_kill_9() {
    let schema = format!("wl_kamailio_{}", std::process::id());
    let Some(url) = fresh_pg_url(&schema, "Kamailio two-node test") else {
        return;
    };
    let node = |name: &str| {
        Daemon::start(DaemonOpts {
            extra_toml: format!("[storage]\nurl = \"{url}\"\n[dialer]\nnode = \"{name}\"\n"),
            ..DaemonOpts::default()
        })
    };
    let mut a = node("node-a");
    let b = node("node-b");
    let work = tempfile::tempdir().unwrap();
    let k = Kamailio::start(work.path(), &[a.sip_addr, b.sip_addr]);

    // Round robin: six calls, some on each appliance (each logs the calls it took).
    let first = calls_through(&k, &b, 6, "rr");
    let on = |d: &Daemon, ids: &[String]| -> usize {
        let log = d.log();
        ids.iter()
            .filter(|id| log.contains(&format!("call_id={id} ")))
            .count()
    };
    let (on_a, on_b) = (on(&a, &first), on(&b, &first));
    eprintln!("round robin: {on_a} calls on node a, {on_b} on node b");
    assert_eq!(on_a + on_b, 6, "a {on_a}, b {on_b}\n{}", k.log_tail());
    assert!(on_a >= 2 && on_b >= 2, "not spread: a {on_a}, b {on_b}");
    // Both wrote to the one database: every call has its CDR, whichever node took it.
    for id in &first {
        let cdr = b
            .wait_cdr_where(
                |c| c["call_id"] == id.as_str() && !c["ended_at"].is_null(),
                Duration::from_secs(30),
            )
            .unwrap_or_else(|| panic!("no CDR for {id} in the shared database"));
        assert_eq!(cdr["dialplan"], "demo-bank", "{cdr}");
    }

    // kill -9 node a: new calls still complete, all through b.
    let pid = a.pid().unwrap();
    let killed = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(killed);
    let _ = a.is_running();
    let after = calls_through(&k, &b, 4, "failover");
    assert_eq!(on(&b, &after), 4, "{}", k.log_tail());
    for id in &after {
        b.wait_cdr_where(
            |c| c["call_id"] == id.as_str() && !c["ended_at"].is_null(),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|| panic!("no CDR for {id} after the failover"));
    }
    assert!(
        std::fs::read_to_string(&k.log)
            .unwrap_or_default()
            .contains("marking it inactive"),
        "no failover seen:\n{}",
        k.log_tail()
    );
}
