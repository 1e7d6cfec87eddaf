//! End-to-end calls against the real daemon on loopback, placed by SIPp (and raw UDP for the
//! malformed cases). Each test starts its own `warmline serve` and asserts on what the daemon stored.
mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::Value;

const CDR_WAIT: Duration = Duration::from_secs(40);

/// SIPp replays RTP pcaps through a raw socket: root (or CAP_NET_RAW on sipp) is needed.
fn require_raw_rtp() {
    assert!(
        can_send_raw_rtp(),
        "SIPp needs a raw socket to replay DTMF pcaps: run the suite as root (CI does) or \
         `setcap cap_net_raw+ep $(command -v sipp)`"
    );
}

fn dtmf_pcap(d: &Daemon, name: &str, digits: &[(u32, char)]) -> PathBuf {
    let p = d.run_dir("pcap").join(name);
    DtmfPcap::new(digits)
        .write(&p)
        .unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    p
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn field<'a>(cdr: &'a Value, name: &str) -> &'a str {
    cdr[name].as_str().unwrap_or("")
}

#[test]
fn rfc4733_menu_balance_then_opt_out() {
    require_raw_rtp();
    let d = Daemon::start(DaemonOpts::default());
    // 1 during the main menu (barge-in) -> balance answer -> main again; 9 -> opt-out, goodbye, BYE.
    let pcap = dtmf_pcap(&d, "1_9.pcap", &[(3_000, '1'), (10_000, '9')]);
    let sipp = Sipp::new("uac_dtmf.xml")
        .target(d.sip_addr)
        .work_dir(&d.run_dir("sipp"))
        .caller("+15550100001")
        .key("dtmf_pcap", &pcap.display().to_string())
        .timeout(Duration::from_secs(60));
    let call_id = sipp.call_id(1);
    let r = sipp.run();
    r.assert_ok();
    let cdr = d.wait_cdr(&call_id, CDR_WAIT);
    assert_eq!(strings(&cdr["path"]), ["greeting", "main", "main"], "{cdr}");
    assert_eq!(field(&cdr, "digits"), "19", "{cdr}");
    assert_eq!(field(&cdr, "outcome"), "opted-out", "{cdr}");
    assert_eq!(field(&cdr, "hangup_side"), "warmline", "{cdr}");
    assert_eq!(field(&cdr, "codec"), "PCMU", "{cdr}");
    assert!(cdr["duration_ms"].as_i64().unwrap_or(0) >= 10_000, "{cdr}");
    let opt_outs = d.opt_outs();
    assert!(
        opt_outs.iter().any(|o| o["number"] == "+15550100001"),
        "opt-out not stored: {opt_outs:?}"
    );
}

#[test]
fn rfc4733_credit_submenu_and_back() {
    require_raw_rtp();
    let d = Daemon::start(DaemonOpts::default());
    // 3 -> credit menu; 1 -> repayment date answer, back to credit; * -> main; 9 -> opt out.
    let pcap = dtmf_pcap(
        &d,
        "3_1_star_9.pcap",
        &[(3_000, '3'), (5_000, '1'), (11_000, '*'), (13_000, '9')],
    );
    let sipp = Sipp::new("uac_dtmf.xml")
        .target(d.sip_addr)
        .work_dir(&d.run_dir("sipp"))
        .caller("1002")
        .key("dtmf_pcap", &pcap.display().to_string())
        .timeout(Duration::from_secs(60));
    let call_id = sipp.call_id(1);
    sipp.run().assert_ok();
    let cdr = d.wait_cdr(&call_id, CDR_WAIT);
    assert_eq!(
        strings(&cdr["path"]),
        ["greeting", "main", "credit", "credit", "main"],
        "{cdr}"
    );
    assert_eq!(field(&cdr, "digits"), "31*9", "{cdr}");
    assert_eq!(field(&cdr, "outcome"), "opted-out", "{cdr}");
}

#[test]
fn caller_hangs_up_mid_menu() {
    require_raw_rtp();
    let d = Daemon::start(DaemonOpts::default());
    let pcap = dtmf_pcap(&d, "2.pcap", &[(3_000, '2')]);
    let sipp = Sipp::new("uac_dtmf_caller_bye.xml")
        .target(d.sip_addr)
        .work_dir(&d.run_dir("sipp"))
        .caller("1003")
        .key("dtmf_pcap", &pcap.display().to_string())
        .set("hangup_after_ms", 6_000)
        .timeout(Duration::from_secs(40));
    let call_id = sipp.call_id(1);
    sipp.run().assert_ok();
    let cdr = d.wait_cdr(&call_id, CDR_WAIT);
    assert_eq!(field(&cdr, "digits"), "2", "{cdr}");
    assert_eq!(field(&cdr, "outcome"), "abandoned", "{cdr}");
    assert_eq!(field(&cdr, "hangup_side"), "caller", "{cdr}");
    assert_eq!(field(&cdr, "hangup_cause"), "bye", "{cdr}");
    assert!(d.opt_outs().is_empty());
}

#[test]
fn sip_info_dtmf_fallback() {
    let d = Daemon::start(DaemonOpts::default());
    let sipp = Sipp::new("uac_info_dtmf.xml")
        .target(d.sip_addr)
        .work_dir(&d.run_dir("sipp"))
        .caller("1004")
        .key("digit1", "1")
        .key("digit2", "9")
        .set("greet_ms", 3_000)
        .set("gap_ms", 7_000)
        .timeout(Duration::from_secs(40));
    let call_id = sipp.call_id(1);
    sipp.run().assert_ok();
    let cdr = d.wait_cdr(&call_id, CDR_WAIT);
    assert_eq!(field(&cdr, "digits"), "19", "{cdr}");
    assert_eq!(field(&cdr, "outcome"), "opted-out", "{cdr}");
}

#[test]
fn cancel_while_ringing_gets_487() {
    let d = Daemon::start(DaemonOpts {
        answer_after_ms: 3_000,
        ..DaemonOpts::default()
    });
    let sipp = Sipp::new("uac_cancel.xml")
        .target(d.sip_addr)
        .work_dir(&d.run_dir("sipp"))
        .caller("1005")
        .set("cancel_after_ms", 500)
        .timeout(Duration::from_secs(20));
    let call_id = sipp.call_id(1);
    let r = sipp.run();
    r.assert_ok();
    assert_eq!(r.received_responses(487).len(), 1, "{}", r.report());
    let cdr = d.wait_cdr(&call_id, CDR_WAIT);
    assert_eq!(field(&cdr, "hangup_cause"), "cancel", "{cdr}");
    assert_eq!(field(&cdr, "hangup_side"), "caller", "{cdr}");
    assert!(cdr["answered_at"].is_null(), "{cdr}");
}

#[test]
fn reinvite_hold_and_resume_keeps_the_call() {
    let d = Daemon::start(DaemonOpts::default());
    let sipp = Sipp::new("uac_reinvite.xml")
        .target(d.sip_addr)
        .work_dir(&d.run_dir("sipp"))
        .caller("1006")
        .set("hold_ms", 1_000)
        .timeout(Duration::from_secs(30));
    let call_id = sipp.call_id(1);
    let r = sipp.run();
    r.assert_ok();
    // INVITE, hold re-INVITE, resume re-INVITE and BYE each got their 200.
    assert!(r.received_responses(200).len() >= 4, "{}", r.report());
    let cdr = d.wait_cdr(&call_id, CDR_WAIT);
    assert_eq!(field(&cdr, "hangup_side"), "caller", "{cdr}");
    assert!(cdr["duration_ms"].as_i64().unwrap_or(0) >= 2_000, "{cdr}");
}

#[test]
fn late_offer_is_answered_in_ack() {
    let d = Daemon::start(DaemonOpts::default());
    let sipp = Sipp::new("uac_late_offer.xml")
        .target(d.sip_addr)
        .work_dir(&d.run_dir("sipp"))
        .caller("1007")
        .timeout(Duration::from_secs(20));
    let call_id = sipp.call_id(1);
    sipp.run().assert_ok();
    let cdr = d.wait_cdr(&call_id, CDR_WAIT);
    assert_eq!(field(&cdr, "codec"), "PCMU", "{cdr}");
    assert!(!cdr["answered_at"].is_null(), "{cdr}");
}

#[test]
fn retransmitted_invite_makes_one_call() {
    let d = Daemon::start(DaemonOpts::default());
    let sipp = Sipp::new("uac_retrans.xml")
        .target(d.sip_addr)
        .work_dir(&d.run_dir("sipp"))
        .caller("1008")
        .timeout(Duration::from_secs(20));
    let call_id = sipp.call_id(1);
    sipp.run().assert_ok();
    d.wait_cdr(&call_id, CDR_WAIT);
    let rows: Vec<Value> = d
        .cdrs()
        .into_iter()
        .filter(|c| c["call_id"] == call_id.as_str())
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
}

#[test]
fn options_keepalive_over_udp_and_tcp() {
    let d = Daemon::start(DaemonOpts::default());
    for t in [Transport::Udp, Transport::Tcp] {
        let r = Sipp::new("uac_options.xml")
            .target(d.sip_addr)
            .work_dir(&d.run_dir("sipp"))
            .caller("ops")
            .transport(t)
            .timeout(Duration::from_secs(10))
            .run();
        r.assert_ok();
        let ok = r.received_responses(200);
        assert_eq!(ok.len(), 1, "{}", r.report());
        let allow = header(&ok[0], "Allow").unwrap_or("");
        for m in ["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO"] {
            assert!(allow.contains(m), "Allow lacks {m}: {allow}");
        }
        assert!(header(&ok[0], "Accept").is_some_and(|a| a.contains("application/sdp")));
    }
}

#[test]
fn call_over_tcp() {
    let d = Daemon::start(DaemonOpts::default());
    let sipp = Sipp::new("uac_basic.xml")
        .target(d.sip_addr)
        .work_dir(&d.run_dir("sipp"))
        .caller("1009")
        .transport(Transport::Tcp)
        // The greeting lasts 1.5 s: hang up once the main menu has started.
        .set("hold_ms", 3_000)
        .timeout(Duration::from_secs(20));
    let call_id = sipp.call_id(1);
    sipp.run().assert_ok();
    let cdr = d.wait_cdr(&call_id, CDR_WAIT);
    assert_eq!(field(&cdr, "transport"), "tcp", "{cdr}");
    assert_eq!(field(&cdr, "hangup_side"), "caller", "{cdr}");
    assert_eq!(strings(&cdr["path"]), ["greeting", "main"], "{cdr}");
}

#[test]
fn many_calls_in_parallel_all_get_records() {
    let d = Daemon::start(DaemonOpts::default());
    let r = Sipp::new("uac_basic.xml")
        .target(d.sip_addr)
        .work_dir(&d.run_dir("sipp"))
        .caller("2000")
        .calls(40)
        .rate(20.0)
        .set("hold_ms", 1_000)
        .no_trace_msg()
        .timeout(Duration::from_secs(40))
        .run();
    r.assert_ok();
    assert_eq!(r.successful, 40, "{}", r.report());
    let deadline = std::time::Instant::now() + CDR_WAIT;
    let finished = |d: &Daemon| {
        d.cdrs_limit(500)
            .iter()
            .filter(|c| c["caller_number"] == "2000" && !c["ended_at"].is_null())
            .count()
    };
    while finished(&d) < 40 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(finished(&d), 40, "every call leaves a finished CDR");
}

#[test]
fn no_common_codec_is_488() {
    let d = Daemon::start(DaemonOpts::default());
    let probe = SipProbe::new(d.sip_addr);
    let invite = probe
        .invite_request("nocodec-1", "z9hG4bK-nocodec-1", "1010", 40_000)
        .replace("RTP/AVP 0 8 101", "RTP/AVP 18")
        .replace(
            "a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n",
            "a=rtpmap:18 G729/8000\r\n",
        );
    // The SDP shrank: fix Content-Length.
    let (head, body) = invite.split_once("\r\n\r\n").expect("message has a body");
    let head: String = head
        .lines()
        .map(|l| {
            if l.starts_with("Content-Length") {
                format!("Content-Length: {}", body.len())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n");
    probe.send(&format!("{head}\r\n\r\n{body}"));
    let resp = probe
        .recv_matching(Duration::from_secs(5), |m| {
            status_code(m).is_some_and(|c| c >= 200)
        })
        .expect("a final response");
    assert_eq!(status_code(&resp), Some(488), "{resp}");
    let cdr = d.wait_cdr("nocodec-1", CDR_WAIT);
    assert_eq!(field(&cdr, "outcome"), "rejected", "{cdr}");
}

#[test]
fn malformed_messages_get_400_or_are_dropped_and_service_continues() {
    let d = Daemon::start(DaemonOpts::default());
    let probe = SipProbe::new(d.sip_addr);
    // Garbage: no answer.
    probe.send_bytes(b"\x00\x01\x02 this is not SIP \xff\xfe\r\n\r\n");
    assert!(probe.recv(Duration::from_millis(500)).is_none());
    // A request without Call-ID: 400.
    let bad = probe
        .options_request("will-be-removed")
        .lines()
        .filter(|l| !l.starts_with("Call-ID"))
        .collect::<Vec<_>>()
        .join("\r\n");
    probe.send(&format!("{bad}\r\n"));
    let resp = probe
        .recv(Duration::from_secs(3))
        .expect("a 400 for a request without Call-ID");
    assert_eq!(status_code(&resp), Some(400), "{resp}");
    // A bad CSeq: 400.
    let bad = probe
        .options_request("bad-cseq-1")
        .replace("CSeq: 1 OPTIONS", "CSeq: one OPTIONS");
    probe.send(&bad);
    let resp = probe
        .recv(Duration::from_secs(3))
        .expect("a 400 for a bad CSeq");
    assert_eq!(status_code(&resp), Some(400), "{resp}");
    // Oversized datagram: dropped.
    let huge = format!(
        "{}X-Pad: {}\r\n\r\n",
        probe
            .options_request("huge-1")
            .trim_end_matches("\r\n\r\n")
            .to_string()
            + "\r\n",
        "a".repeat(60_000)
    );
    probe.send(&huge);
    assert!(probe.recv(Duration::from_millis(500)).is_none());
    // Still serving.
    let pong =
        sip_options_ping(d.sip_addr, Duration::from_secs(3)).expect("OPTIONS still answered");
    assert_eq!(status_code(&pong), Some(200));
    assert!(
        d.log().contains("malformed"),
        "one log line per malformed message expected"
    );
}

#[test]
fn call_interrupted_by_kill_9_leaves_a_closed_record() {
    let mut d = Daemon::start(DaemonOpts::default());
    // A long call in the background; the daemon dies under it.
    let caller = Sipp::new("uac_basic.xml")
        .target(d.sip_addr)
        .work_dir(&d.run_dir("sipp"))
        .caller("1011")
        .set("hold_ms", 4_000)
        .timeout(Duration::from_secs(15));
    let call_id = caller.call_id(1);
    let sipp = std::thread::spawn(move || caller.run());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !d
        .log()
        .contains(&format!("call: answered call_id={call_id}"))
    {
        assert!(std::time::Instant::now() < deadline, "call never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    d.kill9_and_restart();
    let _ = sipp.join();
    let cdr = d.wait_cdr(&call_id, CDR_WAIT);
    assert_eq!(field(&cdr, "outcome"), "interrupted", "{cdr}");
    assert!(
        !cdr["answered_at"].is_null(),
        "the answer time written before the crash survives: {cdr}"
    );
    // The path so far is kept only if written before the crash; the row itself always is.
    assert!(
        d.log().contains("closed CDRs of calls interrupted"),
        "restart reports it"
    );
}
