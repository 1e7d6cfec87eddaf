#!/usr/bin/env python3
"""Write RTP pcaps carrying RFC 4733 DTMF for SIPp's play_pcap_audio (uac_dtmf*.xml, uas_answer_dtmf.xml).

The stream is what a desk phone sends: one SSRC, 20 ms PCMU frames (silence, a WAV, or none)
and telephone-event packets at chosen offsets (marker on the first, duration growing by 160 per
packet, three end packets).  Every digit has its own RTP timestamp, so pressing the same key
twice is two events (the pcaps shipped in /usr/share/sip-tester all reuse one SSRC/timestamp).

The output is byte-identical to DtmfPcap in tests/common/mod.rs for the same parameters.

  scripts/gen-dtmf-pcaps.py --out d.pcap --digit 3000:1 --digit 9000:9 [--audio caller.wav]
  scripts/gen-dtmf-pcaps.py --demo      # rewrites tests/sipp/dtmf_demo_*.pcap

Only the Python standard library is used.
"""
import argparse
import os
import struct
import sys
import wave

EVENTS = {**{str(d): d for d in range(10)}, "*": 10, "#": 11, "A": 12, "B": 13, "C": 14, "D": 15}
FRAME = 160  # samples per 20 ms at 8 kHz
SSRC = 0x5741524D  # "WARM"


def linear_to_ulaw(sample):
    """G.711 mu-law, bit-exact with ITU-T G.191 ulaw_compress."""
    sign = 0
    if sample < 0:
        sample = -sample - 1
        sign = 0x80
    s = min(sample, 32635) + 0x84
    exponent = (s >> 7).bit_length() - 1
    mantissa = (s >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa)) & 0xFF


def read_wav_ulaw(path):
    with wave.open(path, "rb") as w:
        if w.getframerate() != 8000 or w.getsampwidth() != 2:
            sys.exit(f"{path}: need 8 kHz 16-bit PCM (sox in.wav -r 8000 -c 1 -b 16 out.wav)")
        ch = w.getnchannels()
        raw = w.readframes(w.getnframes())
    samples = struct.unpack(f"<{len(raw) // 2}h", raw)
    mono = [int(sum(samples[i:i + ch]) / ch) for i in range(0, len(samples), ch)]
    return bytes(linear_to_ulaw(s) for s in mono)


def rtp(pt, marker, seq, ts, payload):
    return struct.pack("!BBHII", 0x80, (pt & 0x7F) | (0x80 if marker else 0), seq, ts, SSRC) + payload


def packets(digits, tone_ms=160, pt=101, audio=None, with_audio=True, tail_ms=1000):
    digits = sorted(digits)
    tone_frames = max(1, -(-tone_ms // 20))
    for (a, ka), (b, kb) in zip(digits, digits[1:]):
        if b < a + tone_frames * 20 + 60:
            sys.exit(f"digits {ka}@{a} and {kb}@{b} overlap (tone + end packets)")
    audio = audio if (with_audio and audio) else b""
    last_end = max((at + tone_frames * 20 + 60 for at, _ in digits), default=0)
    total_frames = -(-(max(last_end, len(audio) // 8) + tail_ms) // 20)
    events = []
    for at, key in digits:
        if key not in EVENTS:
            sys.exit(f"not a DTMF key: {key!r}")
        events.append((at // 20, EVENTS[key]))
    ts0, seq, out, first_audio = 8000, 1000, [], True
    for frame in range(total_frames):
        t_us = frame * 20000
        ts = (ts0 + frame * FRAME) & 0xFFFFFFFF
        # Without audio one silence packet still goes out at 0 ms: SIPp replays a pcap relative
        # to its first packet, so this keeps the digits' offsets from the ACK.
        if with_audio or frame == 0:
            chunk = audio[frame * FRAME:(frame + 1) * FRAME]
            payload = chunk + b"\xff" * (FRAME - len(chunk))
            out.append((t_us, rtp(0, first_audio, seq, ts, payload)))
            first_audio = False
            seq = (seq + 1) & 0xFFFF
        for start, code in events:
            if frame < start or frame >= start + tone_frames + 2:
                continue
            ev_ts = (ts0 + start * FRAME) & 0xFFFFFFFF
            k = frame - start
            end = k >= tone_frames
            dur = tone_frames * FRAME if end else (k + 1) * FRAME
            payload = struct.pack("!BBH", code, 10 | (0x80 if end else 0), min(dur, 0xFFFF))
            for _ in range(2 if k == tone_frames + 1 else 1):
                out.append((t_us + 1000, rtp(pt, k == 0, seq, ev_ts, payload)))
                seq = (seq + 1) & 0xFFFF
    return out


def ipv4_checksum(h):
    s = sum(struct.unpack(f"!{len(h) // 2}H", h))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def write_pcap(path, pkts):
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for ident, (t_us, payload) in enumerate(pkts):
            udp_len = 8 + len(payload)
            ip = bytearray(struct.pack("!BBHHBBBBH4s4s", 0x45, 0, udp_len + 20, ident & 0xFFFF,
                                       0x40, 0, 64, 17, 0, bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1])))
            ip[10:12] = struct.pack("!H", ipv4_checksum(bytes(ip)))
            frame = bytes(12) + b"\x08\x00" + bytes(ip) + struct.pack("!HHHH", 10000, 20000, udp_len, 0) + payload
            sec = 1_700_000_000 + t_us // 1_000_000
            f.write(struct.pack("<IIII", sec, t_us % 1_000_000, len(frame), len(frame)))
            f.write(frame)


# Small event-only pcaps for running the scenarios by hand (see docs/testing.md).
DEMOS = {
    "dtmf_demo_1_9.pcap": [(6000, "1"), (16000, "9")],
    "dtmf_demo_3_1_star_9.pcap": [(6000, "3"), (12000, "1"), (20000, "*"), (26000, "9")],
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="pcap to write")
    ap.add_argument("--digit", action="append", default=[], metavar="MS:KEY",
                    help="key pressed MS milliseconds after the first packet (repeatable)")
    ap.add_argument("--audio", help="8 kHz mono 16-bit WAV sent as PCMU (default: silence)")
    ap.add_argument("--no-audio", action="store_true",
                    help="events only (plus one silence packet at 0 ms that anchors the timing)")
    ap.add_argument("--pt", type=int, default=101, help="telephone-event payload type (default 101)")
    ap.add_argument("--tone-ms", type=int, default=160, help="how long each key is held (default 160)")
    ap.add_argument("--tail-ms", type=int, default=1000, help="stream length after the last digit")
    ap.add_argument("--demo", action="store_true", help="rewrite tests/sipp/dtmf_demo_*.pcap")
    a = ap.parse_args()
    if a.demo:
        here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "sipp")
        for name, digits in DEMOS.items():
            path = os.path.normpath(os.path.join(here, name))
            write_pcap(path, packets(digits, with_audio=False, tail_ms=10000))
            print(path)
        return
    if not a.out or not a.digit:
        ap.error("--out and at least one --digit are required (or --demo)")
    digits = []
    for d in a.digit:
        ms, _, key = d.partition(":")
        if not ms.isdigit() or len(key) != 1:
            ap.error(f"--digit wants MS:KEY, got {d!r}")
        digits.append((int(ms), key.upper()))
    audio = read_wav_ulaw(a.audio) if a.audio else None
    write_pcap(a.out, packets(digits, a.tone_ms, a.pt, audio, not a.no_audio, a.tail_ms))


if __name__ == "__main__":
    main()
