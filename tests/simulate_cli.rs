//! `warmline simulate`: a call against a dialplan with audio files and keys, no phone.
//!
//! The CLI tests run the built binary on `tests/data/ko-bank.toml` with the Korean Vosk model
//! (scripts/setup-vosk.sh) and caller audio spoken by espeak-ng's Korean voice.
//!
//! The `#[ignore]`d `bench_*` tests are the speech benchmarks behind `scripts/bench-speech.sh`
//! (release build, real-time pacing, minutes): recogniser capacity per core, end-of-speech →
//! action latency, Piper real-time factor and time to first audio, TTS cache hits under call
//! load. They print `bench:` lines.
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn model_dir() -> PathBuf {
    let dir = repo().join(".cache/speech/models/vosk-model-small-ko");
    assert!(
        dir.join("am/final.mdl").is_file(),
        "simulate tests need the Korean Vosk model at {}: run scripts/setup-vosk.sh",
        dir.display()
    );
    dir
}

fn require_tool(tool: &str) {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "{tool} is needed to make caller audio (Debian: apt-get install espeak-ng sox)"
    );
}

/// `text` spoken by espeak-ng (`voice`), 8 kHz mono 16-bit, with `before`/`after` seconds of
/// silence around it.
fn spoken_wav(path: &Path, voice: &str, text: &str, before: f32, after: f32) {
    require_tool("espeak-ng");
    require_tool("sox");
    let raw = path.with_extension("raw.wav");
    let ok = Command::new("espeak-ng")
        .args(["-v", voice, "-w"])
        .arg(&raw)
        .arg("--")
        .arg(text)
        .stdin(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "espeak-ng could not write {}", raw.display());
    let ok = Command::new("sox")
        .arg("-D")
        .arg(&raw)
        .args(["-r", "8000", "-c", "1", "-b", "16", "-e", "signed-integer"])
        .arg(path)
        .args(["pad", &before.to_string(), &after.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "sox could not write {}", path.display());
}

/// A temporary folder with a config that has the Korean model and no voice.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

fn setup(with_model: bool) -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let models = if with_model {
        format!("{{ ko = {:?} }}", model_dir().display().to_string())
    } else {
        "{}".to_string()
    };
    let config = dir.path().join("warmline.toml");
    let text = format!(
        "[paths]\nprompts = {:?}\nstate_dir = {:?}\n\n[speech]\nmodels = {models}\nvoices = {{}}\n",
        repo().join("voice-prompts").display().to_string(),
        dir.path().join("state").display().to_string(),
    );
    std::fs::write(&config, text).expect("write config");
    Setup { dir, config }
}

fn simulate(s: &Setup, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warmline"))
        .arg("--config")
        .arg(&s.config)
        .arg("simulate")
        .args(args)
        .current_dir(s.dir.path())
        .env_remove("WARMLINE_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run warmline simulate")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn json(o: &Output) -> Value {
    assert_eq!(o.status.code(), Some(0), "{}", text(o));
    match serde_json::from_slice(&o.stdout) {
        Ok(v) => v,
        Err(e) => panic!("not JSON ({e}):\n{}", text(o)),
    }
}

fn ko_bank() -> String {
    repo().join("tests/data/ko-bank.toml").display().to_string()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_phrase_said_over_the_greeting_selects_its_option() {
    let s = setup(true);
    let wav = s.dir.path().join("caller.wav");
    spoken_wav(&wav, "ko", "보험 가입", 0.5, 1.0);
    let o = simulate(&s, &[&ko_bank(), "--say", wav.to_str().unwrap(), "--json"]);
    let v = json(&o);
    let path = strings(&v["path"]);
    assert!(
        path.iter().any(|p| p == "main(voice:보험 가입)"),
        "path {path:?}\n{}",
        text(&o)
    );
    let said = v["transcripts"].as_array().cloned().unwrap_or_default();
    assert!(
        said.iter().any(|t| t["matched"] == "main:1"),
        "transcripts {said:?}"
    );
    assert_eq!(v["digits"], "");
    // It was barge-in: the greeting stopped when the caller started talking.
    let timeline = v["timeline"].as_array().cloned().unwrap_or_default();
    assert!(
        timeline
            .iter()
            .any(|e| e["event"] == "speech started (barge-in)"),
        "{timeline:?}"
    );
    // The recogniser's decode time after the end of speech is reported.
    assert_eq!(
        v["end_of_speech_to_action_ms"].as_array().map(Vec::len),
        Some(1)
    );
}

#[test]
fn the_timeline_and_summary_are_readable() {
    let s = setup(true);
    let wav = s.dir.path().join("caller.wav");
    spoken_wav(&wav, "ko", "환전 신청", 0.5, 1.0);
    let o = simulate(&s, &[&ko_bank(), "--say", wav.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("t=   0.00s  play greeting"), "{out}");
    // Vosk hears "환전" (the grammar's first word) for espeak-ng's "환전 신청": still option 2.
    assert!(
        out.lines()
            .any(|l| l.contains("heard \"환전") && l.ends_with("-> main:2")),
        "{out}"
    );
    assert!(out.contains("play card-blocked"), "{out}");
    assert!(out.contains("end of speech -> action:"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("path") && l.contains("greeting > main(voice:환전 신청)")),
        "{out}"
    );
}

#[test]
fn a_key_alone_selects_by_key() {
    let s = setup(true);
    let o = simulate(&s, &[&ko_bank(), "--press", "2", "--json"]);
    let v = json(&o);
    assert_eq!(v["digits"], "2");
    assert_eq!(
        strings(&v["path"]).get(..2),
        Some(&["greeting".to_string(), "main".to_string()][..])
    );
    assert_eq!(v["transcripts"], serde_json::json!([]));
    let events: Vec<String> = v["timeline"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["event"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let key = events
        .iter()
        .position(|e| e == "key 2")
        .expect("key 2 in the timeline");
    assert!(
        events
            .get(key + 1)
            .is_some_and(|e| e.starts_with("play card-blocked")),
        "{events:?}"
    );
}

#[test]
fn a_language_without_a_model_is_named_and_speech_is_silence() {
    let s = setup(false);
    let wav = s.dir.path().join("caller.wav");
    spoken_wav(&wav, "ko", "보험 가입", 0.5, 1.0);
    let o = simulate(&s, &[&ko_bank(), "--say", wav.to_str().unwrap(), "--json"]);
    let v = json(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("no speech recognition model for language 'ko'"),
        "{stderr}"
    );
    assert_eq!(v["transcripts"], serde_json::json!([]));
    assert!(!v["path"].to_string().contains("voice:"), "{}", v["path"]);
}

#[test]
fn a_missing_wav_is_exit_1_naming_the_file() {
    let s = setup(true);
    let missing = s.dir.path().join("nowhere.wav");
    let o = simulate(&s, &[&ko_bank(), "--say", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(missing.to_str().unwrap()),
        "{}",
        text(&o)
    );
}

#[test]
fn a_broken_dialplan_is_exit_1_with_file_line_column() {
    let s = setup(true);
    let plan = std::fs::read_to_string(ko_bank()).unwrap();
    let broken = plan.replace("next = \"main\"", "next = \"mian\"");
    assert_ne!(broken, plan, "ko-bank.toml changed: update this test");
    let file = s.dir.path().join("broken.toml");
    std::fs::write(&file, &broken).unwrap();
    let o = simulate(&s, &[file.to_str().unwrap(), "--press", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let line = broken.lines().position(|l| l.contains("mian")).unwrap() + 1;
    let want = format!("{}:{line}:", file.display());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(&want) && l.contains("mian")),
        "no {want}... in:\n{stderr}"
    );
}

#[test]
fn usage_errors_are_exit_2() {
    let s = setup(false);
    let o = simulate(&s, &[&ko_bank(), "--press", "x"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = simulate(&s, &[&ko_bank(), "--language", "fr"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

// ---------------------------------------------------------------------------------------------
// Benchmarks (scripts/bench-speech.sh)
// ---------------------------------------------------------------------------------------------

mod bench {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use warmline::config::Config;
    use warmline::ivr::dialplan::{AnyPrompt, Dialplan};
    use warmline::speech::asr::{AsrModel, AsrPool, AsrStream};
    use warmline::speech::normalize::{normalize, Lang};
    use warmline::speech::tts::{TtsCache, TtsWorkers, Voice, VoiceSettings};

    const FRAME: Duration = Duration::from_millis(20);
    const GRAMMAR: [&str; 3] = ["보험 가입", "환전 신청", "상담원 연결"];

    fn seconds(name: &str, default: u64) -> Duration {
        Duration::from_secs(
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default),
        )
    }

    fn pct(sorted: &[Duration], p: f64) -> Duration {
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[i.min(sorted.len() - 1)]
    }

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1000.0
    }

    /// One caller's utterance as the recogniser of a live call gets it: 300 ms preroll, the
    /// phrase, and the endpointer's 600 ms end_silence.
    fn utterance(dir: &Path, text: &str) -> Vec<[i16; 160]> {
        let wav = dir.join("utterance.wav");
        spoken_wav(&wav, "ko", text, 0.3, 0.6);
        let pcm = warmline::media::prompt::load_wav(&wav).expect("load utterance");
        pcm.chunks(160)
            .map(|c| {
                let mut f = [0i16; 160];
                f[..c.len()].copy_from_slice(c);
                f
            })
            .collect()
    }

    struct Load {
        n: usize,
        latencies: Vec<Duration>,
        right: usize,
        /// Worker time per second of audio (`Transcript::decode_time` / audio).
        rtf: f64,
        /// How late the feeding loop itself ran at worst (it must stay near 0).
        feeder_late: Duration,
        unfinished: usize,
    }

    impl Load {
        fn keeps_up(&self) -> bool {
            let mut l = self.latencies.clone();
            l.sort();
            self.unfinished == 0 && !l.is_empty() && pct(&l, 0.95) <= Duration::from_secs(1)
        }
    }

    /// `n` callers each speaking `frames` again and again at real-time pace (one 20 ms frame
    /// per caller every 20 ms, callers staggered), all on one recogniser thread, for `span`.
    fn run_load(model: &Arc<AsrModel>, frames: &[[i16; 160]], n: usize, span: Duration) -> Load {
        let pool = AsrPool::new(1);
        let grammar: Vec<String> = GRAMMAR.iter().map(|s| s.to_string()).collect();
        let len = frames.len();
        struct Caller {
            stream: Option<AsrStream>,
            pos: usize,
            offset: usize,
        }
        let mut callers: Vec<Caller> = (0..n)
            .map(|i| Caller {
                stream: None,
                pos: 0,
                offset: i * len / n.max(1),
            })
            .collect();
        let mut waiting: Vec<(AsrStream, Instant)> = Vec::new();
        let mut latencies = Vec::new();
        let (mut right, mut decode, mut audio) = (0usize, Duration::ZERO, Duration::ZERO);
        let mut collect = |waiting: &mut Vec<(AsrStream, Instant)>, now: Instant| {
            waiting.retain(|(s, finished)| match s.try_result() {
                Some(r) => {
                    latencies.push(now.saturating_duration_since(*finished));
                    if let Ok(t) = r {
                        right += usize::from(t.text == GRAMMAR[0]);
                        decode += t.decode_time;
                        audio += t.audio;
                    }
                    false
                }
                None => true,
            });
        };
        let ticks = (span.as_millis() / FRAME.as_millis()) as usize;
        let start = Instant::now();
        let mut feeder_late = Duration::ZERO;
        for tick in 0..ticks {
            let due = start + FRAME * tick as u32;
            feeder_late = feeder_late.max(Instant::now().saturating_duration_since(due));
            for c in callers.iter_mut() {
                if tick < c.offset {
                    continue;
                }
                if c.stream.is_none() {
                    c.stream = Some(
                        pool.start(model.clone(), Some(grammar.clone()), 8000)
                            .expect("start"),
                    );
                }
                if let Some(s) = &c.stream {
                    s.push(&frames[c.pos]);
                }
                c.pos += 1;
                if c.pos == len {
                    c.pos = 0;
                    if let Some(s) = c.stream.take() {
                        s.finish();
                        waiting.push((s, Instant::now()));
                    }
                }
            }
            let next = start + FRAME * (tick as u32 + 1);
            loop {
                let now = Instant::now();
                collect(&mut waiting, now);
                if now >= next {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1).min(next - now));
            }
        }
        // Results still due: a worker that kept up has them within a fraction of a second.
        let drain = Instant::now() + Duration::from_secs(30);
        while !waiting.is_empty() && Instant::now() < drain {
            collect(&mut waiting, Instant::now());
            std::thread::sleep(Duration::from_millis(1));
        }
        let unfinished = waiting.len();
        Load {
            n,
            latencies,
            right,
            rtf: if audio.is_zero() {
                0.0
            } else {
                decode.as_secs_f64() / audio.as_secs_f64()
            },
            feeder_late,
            unfinished,
        }
    }

    fn print_load(l: &Load) {
        let mut s = l.latencies.clone();
        s.sort();
        println!(
            "bench: asr n={:<3} utterances={:<4} correct={:<4} latency_ms p50={:.0} p95={:.0} max={:.0} worker_rtf={:.3} feeder_late_ms={:.1} unfinished={} keeps_up={}",
            l.n,
            s.len(),
            l.right,
            ms(pct(&s, 0.5)),
            ms(pct(&s, 0.95)),
            ms(s.last().copied().unwrap_or_default()),
            l.rtf,
            ms(l.feeder_late),
            l.unfinished,
            l.keeps_up()
        );
    }

    /// (a) live recognitions per core, (b) end-of-speech → action latency.
    #[test]
    #[ignore = "benchmark: scripts/bench-speech.sh (release, about 5 minutes)"]
    fn bench_asr_capacity_and_latency() {
        let dir = tempfile::tempdir().unwrap();
        let frames = utterance(dir.path(), GRAMMAR[0]);
        let model = AsrModel::load(&model_dir()).expect("load model");
        let span = seconds("BENCH_ASR_SECONDS", 20);
        println!(
            "bench: asr model=vosk-model-small-ko grammar={GRAMMAR:?} utterance_s={:.2} (0.3 s preroll + phrase + 0.6 s end_silence) run_s={} one worker thread",
            frames.len() as f64 * 0.02,
            span.as_secs()
        );
        // (b) at idle: one caller.
        let idle = run_load(&model, &frames, 1, span);
        print_load(&idle);
        // (a) double until it falls behind, then bisect.
        let mut good = 1usize;
        let mut bad = None;
        let mut n = 2usize;
        let mut results = vec![idle];
        while bad.is_none() && n <= 512 {
            let l = run_load(&model, &frames, n, span);
            print_load(&l);
            if l.keeps_up() {
                good = n;
                n *= 2;
            } else {
                bad = Some(n);
            }
            results.push(l);
        }
        if let Some(mut hi) = bad {
            while hi - good > (good / 8).max(1) {
                let mid = (good + hi) / 2;
                let l = run_load(&model, &frames, mid, span);
                print_load(&l);
                if l.keeps_up() {
                    good = mid;
                } else {
                    hi = mid;
                }
                results.push(l);
            }
        }
        println!("bench: asr max_realtime_streams_per_core={good} (keeps up: every result within 1 s at p95, none unfinished)");
        let within = results
            .iter()
            .filter(|l| {
                let mut s = l.latencies.clone();
                s.sort();
                l.keeps_up() && pct(&s, 0.95) <= Duration::from_millis(300)
            })
            .map(|l| l.n)
            .max()
            .unwrap_or(0);
        println!("bench: asr max_streams_per_core_with_p95_latency_le_300ms={within} (of the loads tried)");
        for l in results
            .iter()
            .filter(|l| l.n == good || l.n == 1 || l.n == within)
        {
            let mut s = l.latencies.clone();
            s.sort();
            println!(
                "bench: asr_latency n={} p50_ms={:.0} p95_ms={:.0} (decode after finish(); the 600 ms end_silence is before it and not included)",
                l.n,
                ms(pct(&s, 0.5)),
                ms(pct(&s, 0.95))
            );
        }
        assert!(good >= 1);
    }

    fn tts_config() -> Config {
        let mut cfg = Config::default();
        let base = repo();
        let s = &mut cfg.speech;
        for p in [&mut s.onnxruntime]
            .into_iter()
            .chain(s.voices.values_mut())
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        cfg
    }

    fn load_voice(cfg: &Config) -> Arc<Voice> {
        let onnx = cfg
            .speech
            .voices
            .get("en")
            .cloned()
            .expect("default English voice");
        assert!(
            onnx.is_file(),
            "the Piper voice {} is missing: run scripts/setup-piper.sh",
            onnx.display()
        );
        Voice::load(&onnx, &cfg.speech.espeak_data, &cfg.speech.onnxruntime).expect("load voice")
    }

    fn demo_texts() -> Vec<String> {
        let (plan, _) =
            Dialplan::load(&repo().join("dialplans/demo-bank.toml"), &AnyPrompt).expect("demo");
        plan.fixed_texts("en")
    }

    /// (c) Piper real-time factor and time to first audio for texts never rendered before.
    #[test]
    #[ignore = "benchmark: scripts/bench-speech.sh"]
    fn bench_piper_rtf_and_first_audio() {
        let cfg = tts_config();
        let started = Instant::now();
        let voice = load_voice(&cfg);
        println!(
            "bench: tts voice={} rate={} load_s={:.2}",
            voice.name(),
            voice.sample_rate(),
            started.elapsed().as_secs_f64()
        );
        let settings = VoiceSettings::default();
        let _ = voice.synthesize("Warm up.", &settings);
        // Long FAQ answers, made unique so nothing can have been rendered before.
        let answers: Vec<String> = demo_texts()
            .into_iter()
            .filter(|t| t.len() > 120)
            .take(8)
            .collect();
        let mut rtfs = Vec::new();
        for (i, text) in answers.iter().enumerate() {
            let text = normalize(&format!("Reference {}. {text}", i + 11), Lang::En);
            let t = Instant::now();
            let pcm = voice.synthesize(&text, &settings).expect("synthesise");
            let took = t.elapsed();
            let audio = pcm.len() as f64 / f64::from(voice.sample_rate());
            rtfs.push(took.as_secs_f64() / audio);
            println!(
                "bench: tts whole_text chars={} audio_s={:.2} render_s={:.2} rtf={:.3}",
                text.chars().count(),
                audio,
                took.as_secs_f64(),
                took.as_secs_f64() / audio
            );
        }
        rtfs.sort_by(f64::total_cmp);
        println!(
            "bench: tts rtf p50={:.3} max={:.3} (render time / audio time, one thread)",
            rtfs[rtfs.len() / 2],
            rtfs[rtfs.len() - 1]
        );
        let workers = TtsWorkers::new(1, voice.clone());
        let mut firsts = Vec::new();
        for (i, text) in answers.iter().enumerate() {
            let text = normalize(&format!("Case {}. {text}", i + 31), Lang::En);
            let mut stream = workers.stream(text, settings.clone());
            let mut chunks = 0;
            while let Some(c) = stream.blocking_next_chunk() {
                c.expect("chunk");
                chunks += 1;
            }
            let first = stream.timings()[0]
                .sent
                .saturating_duration_since(stream.created());
            let all = stream
                .timings()
                .last()
                .map(|t| t.sent.saturating_duration_since(stream.created()))
                .unwrap_or_default();
            firsts.push(first);
            println!(
                "bench: tts streamed sentences={chunks} first_audio_ms={:.0} whole_ms={:.0}",
                ms(first),
                ms(all)
            );
        }
        firsts.sort();
        println!(
            "bench: tts first_audio_ms p50={:.0} max={:.0} (sentence streaming, TtsWorkers)",
            ms(pct(&firsts, 0.5)),
            ms(pct(&firsts, 1.0))
        );
        // What a call waits today for a text never rendered before: ops::call renders the whole
        // text through Speech::render (Piper, disk cache write, resampling to 8 kHz).
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = cfg.clone();
        cfg.speech.models.clear();
        cfg.speech.voices.retain(|l, _| l == "en");
        cfg.speech.cache_dir = Some(dir.path().to_path_buf());
        let speech = warmline::ops::speech::Speech::load(&cfg);
        let mut waits = Vec::new();
        for (i, text) in answers.iter().enumerate() {
            let text = format!("Item {}. {text}", i + 51);
            let t = Instant::now();
            speech.render("en", &text).expect("render");
            waits.push(t.elapsed());
        }
        waits.sort();
        println!(
            "bench: tts call_shell_uncached_wait_ms p50={:.0} max={:.0} (Speech::render of a whole FAQ answer: the caller hears nothing until it is done)",
            ms(pct(&waits, 0.5)),
            ms(pct(&waits, 1.0))
        );
    }

    /// (d) TTS cache hits while 50 calls ask for the demo bank's FAQ answers after prerender.
    #[test]
    #[ignore = "benchmark: scripts/bench-speech.sh"]
    fn bench_tts_cache_under_call_load() {
        let mut cfg = tts_config();
        let dir = tempfile::tempdir().unwrap();
        let texts = demo_texts();
        // 1. First start-up: the disk cache is empty, every text is rendered by Piper.
        let voice = load_voice(&cfg);
        let settings = VoiceSettings::default();
        let cache = TtsCache::new(dir.path().to_path_buf());
        let t = Instant::now();
        for text in &texts {
            // As ops::speech::Speech::render does: the normalised text is rendered and keyed.
            cache
                .render(&voice, &settings, &normalize(text, Lang::En))
                .expect("render");
        }
        let (h, m) = cache.stats();
        println!(
            "bench: tts_cache first_start prerender texts={} disk_hits={h} rendered={m} took_s={:.1}",
            texts.len(),
            t.elapsed().as_secs_f64()
        );
        // 2. A restart: the live code path (Speech::load + prerender) reads the disk cache.
        cfg.speech.models.clear();
        cfg.speech.voices.retain(|l, _| l == "en");
        cfg.speech.cache_dir = Some(dir.path().to_path_buf());
        let speech = warmline::ops::speech::Speech::load(&cfg);
        let (plan, _) =
            Dialplan::load(&repo().join("dialplans/demo-bank.toml"), &AnyPrompt).expect("demo");
        let t = Instant::now();
        speech.prerender(&plan);
        println!(
            "bench: tts_cache restart prerender texts={} took_ms={:.0} (all from the disk cache)",
            texts.len(),
            ms(t.elapsed())
        );
        // 3. 50 calls, each asking two or three questions (deterministic picks) and hearing
        // "anything else?" after each answer, through the call shell's path: the memory clip,
        // else a render (disk cache or Piper).
        let anything_else = texts
            .iter()
            .position(|t| t.starts_with("Is there anything else"))
            .expect("the demo's anything_else_text");
        let (mut requests, mut hits, mut misses) = (0usize, 0usize, 0usize);
        let mut slowest = Duration::ZERO;
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _call in 0..50 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let asks = 2 + (seed % 2) as usize;
            for k in 0..asks {
                let pick = ((seed >> (8 * k)) as usize) % texts.len();
                for i in [pick, anything_else] {
                    requests += 1;
                    let t = Instant::now();
                    if speech.clip("en", &texts[i]).is_some() {
                        hits += 1;
                    } else {
                        misses += 1;
                        speech.render("en", &texts[i]).expect("render");
                    }
                    slowest = slowest.max(t.elapsed());
                }
            }
        }
        println!(
            "bench: tts_cache calls=50 requests={requests} hits={hits} misses={misses} hit_rate={:.1}% slowest_lookup_us={}",
            100.0 * hits as f64 / requests as f64,
            slowest.as_micros()
        );
        assert_eq!(misses, 0, "every demo text was prerendered");
    }
}
