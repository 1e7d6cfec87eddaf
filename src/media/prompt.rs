//! Voice prompts: WAV loading with conversion to 8 kHz mono, a named prompt store with an
//! optional on-disk cache of converted audio, and a frame-by-frame player.
use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};

use crate::media::codec::{FRAME_SAMPLES, SAMPLE_RATE};
use crate::media::error::MediaError;

/// Longest prompt accepted, to bound memory (an hour of audio).
const MAX_SECONDS: u64 = 3600;
/// Input sample rates accepted (below 4 kHz there is no telephone-band speech to keep).
const MIN_RATE: u32 = 4000;
const MAX_RATE: u32 = 384_000;
/// Resampler chunk size in input frames.
const RESAMPLE_CHUNK: usize = 1024;
/// Directory nesting followed below the prompt root.
const MAX_DEPTH: usize = 16;
/// Bumped whenever conversion changes, so stale cache entries are not reused.
const CACHE_FORMAT: u32 = 1;

fn audio_err(path: &Path, reason: impl Into<String>) -> MediaError {
    MediaError::Audio {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> MediaError + '_ {
    move |source| MediaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Loads a WAV file (any rate, any channel count, 8/16/24/32-bit integer or 32-bit float),
/// downmixes to mono and resamples to 8 kHz with a band-limited FFT resampler.
pub fn load_wav(path: &Path) -> Result<Vec<i16>, MediaError> {
    let wav_err = |source| MediaError::Wav {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = hound::WavReader::open(path).map_err(wav_err)?;
    let spec = reader.spec();
    let channels = usize::from(spec.channels);
    if channels == 0 {
        return Err(audio_err(path, "WAV header declares 0 channels"));
    }
    if !(MIN_RATE..=MAX_RATE).contains(&spec.sample_rate) {
        return Err(audio_err(
            path,
            format!(
                "unsupported sample rate {} Hz ({MIN_RATE}..={MAX_RATE})",
                spec.sample_rate
            ),
        ));
    }
    let frames = u64::from(reader.duration());
    if frames > MAX_SECONDS * u64::from(spec.sample_rate) {
        return Err(audio_err(
            path,
            format!("{frames} frames is longer than the {MAX_SECONDS} s limit"),
        ));
    }
    let interleaved: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Int, bits @ (8 | 16 | 24 | 32)) => {
            let scale = 1.0 / (1u64 << (bits - 1)) as f64;
            reader
                .samples::<i32>()
                .map(|s| s.map(|v| (f64::from(v) * scale) as f32))
                .collect::<Result<_, _>>()
                .map_err(wav_err)?
        }
        (hound::SampleFormat::Float, 32) => reader
            .samples::<f32>()
            .map(|s| s.map(|v| if v.is_finite() { v } else { 0.0 }))
            .collect::<Result<_, _>>()
            .map_err(wav_err)?,
        (format, bits) => {
            return Err(audio_err(
                path,
                format!("unsupported sample format: {bits}-bit {format:?} (use 8/16/24/32-bit int or 32-bit float)"),
            ))
        }
    };
    if interleaved.is_empty() {
        return Err(audio_err(path, "contains no audio samples"));
    }
    let mono: Vec<f32> = interleaved
        .chunks(channels)
        .map(|frame| frame.iter().sum::<f32>() / frame.len() as f32)
        .collect();
    let resampled = if spec.sample_rate == SAMPLE_RATE {
        mono
    } else {
        resample(&mono, spec.sample_rate).map_err(|reason| audio_err(path, reason))?
    };
    Ok(resampled
        .iter()
        .map(|&s| (f64::from(s) * 32768.0).round().clamp(-32768.0, 32767.0) as i16)
        .collect())
}

fn resample(mono: &[f32], rate_in: u32) -> Result<Vec<f32>, String> {
    let rate_in = usize::try_from(rate_in).map_err(|e| e.to_string())?;
    let rate_out = usize::try_from(SAMPLE_RATE).map_err(|e| e.to_string())?;
    let mut resampler = Fft::<f32>::new(rate_in, rate_out, RESAMPLE_CHUNK, 1, FixedSync::Input)
        .map_err(|e| format!("cannot resample from {rate_in} Hz: {e}"))?;
    let input =
        InterleavedSlice::new(mono, 1, mono.len()).map_err(|e| format!("resampler input: {e}"))?;
    let output = resampler
        .process_all(&input, mono.len(), None)
        .map_err(|e| format!("resampling from {rate_in} Hz failed: {e}"))?;
    Ok(output.take_data())
}

/// All prompts below a directory, converted once at load time.
#[derive(Debug, Default, Clone)]
pub struct PromptStore {
    prompts: BTreeMap<String, Arc<[i16]>>,
}

impl PromptStore {
    /// Loads every `*.wav` below `dir`; a prompt's name is its path relative to `dir` without
    /// the extension, with '/' separators ("welcome", "en/welcome").
    pub fn load_dir(dir: &Path) -> Result<Self, MediaError> {
        Self::load(dir, None)
    }

    /// Like [`PromptStore::load_dir`], but keeps converted audio in `cache_dir` keyed by
    /// (file path, size, modification time), so restarts skip the resampling. Cache problems
    /// are logged and fall back to converting.
    pub fn load_dir_cached(dir: &Path, cache_dir: &Path) -> Result<Self, MediaError> {
        Self::load(dir, Some(cache_dir))
    }

    fn load(dir: &Path, cache_dir: Option<&Path>) -> Result<Self, MediaError> {
        let mut files = Vec::new();
        collect_wavs(dir, dir, 0, &mut files)?;
        files.sort();
        let mut prompts: BTreeMap<String, Arc<[i16]>> = BTreeMap::new();
        let mut origins: BTreeMap<String, PathBuf> = BTreeMap::new();
        for (name, path) in files {
            if let Some(other) = origins.get(&name) {
                return Err(audio_err(
                    &path,
                    format!(
                        "prompt name {name:?} is already used by {}",
                        other.display()
                    ),
                ));
            }
            let samples = match cache_dir {
                Some(cache) => load_cached(&path, cache)?,
                None => load_wav(&path)?,
            };
            prompts.insert(name.clone(), Arc::from(samples));
            origins.insert(name, path);
        }
        Ok(PromptStore { prompts })
    }

    pub fn get(&self, name: &str) -> Option<Arc<[i16]>> {
        self.prompts.get(name).cloned()
    }

    /// Prompt names in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.prompts.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.prompts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prompts.is_empty()
    }
}

fn collect_wavs(
    root: &Path,
    dir: &Path,
    depth: usize,
    out: &mut Vec<(String, PathBuf)>,
) -> Result<(), MediaError> {
    if depth > MAX_DEPTH {
        return Err(audio_err(
            dir,
            format!("prompt directories nested deeper than {MAX_DEPTH}"),
        ));
    }
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        // `metadata` follows symlinks, so linked prompt files work.
        let meta = fs::metadata(&path).map_err(io_err(&path))?;
        if meta.is_dir() {
            collect_wavs(root, &path, depth + 1, out)?;
            continue;
        }
        let is_wav = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("wav"));
        if !meta.is_file() || !is_wav {
            continue;
        }
        let relative = path.strip_prefix(root).unwrap_or(&path).with_extension("");
        let parts: Option<Vec<&str>> = relative
            .components()
            .map(|c| c.as_os_str().to_str())
            .collect();
        let name = parts
            .map(|p| p.join("/"))
            .ok_or_else(|| audio_err(&path, "prompt file name is not valid UTF-8"))?;
        out.push((name, path));
    }
    Ok(())
}

/// FNV-1a, a stable hash for cache file names (std's `DefaultHasher` may change between
/// Rust releases).
fn fnv1a(bytes: &[u8], mut hash: u64) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
    }
    hash
}

fn cache_file(path: &Path, cache_dir: &Path) -> Result<PathBuf, MediaError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let absolute = fs::canonicalize(path).map_err(io_err(path))?;
    let mut hash = 0xCBF2_9CE4_8422_2325;
    hash = fnv1a(absolute.to_string_lossy().as_bytes(), hash);
    hash = fnv1a(&meta.len().to_le_bytes(), hash);
    hash = fnv1a(&mtime.to_le_bytes(), hash);
    hash = fnv1a(&CACHE_FORMAT.to_le_bytes(), hash);
    hash = fnv1a(&SAMPLE_RATE.to_le_bytes(), hash);
    Ok(cache_dir.join(format!("{hash:016x}.s16le")))
}

fn load_cached(path: &Path, cache_dir: &Path) -> Result<Vec<i16>, MediaError> {
    let cached = cache_file(path, cache_dir)?;
    if let Ok(bytes) = fs::read(&cached) {
        if !bytes.is_empty() && bytes.len() % 2 == 0 {
            return Ok(bytes
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect());
        }
        tracing::warn!(cache = %cached.display(), "ignoring corrupt prompt cache entry");
    }
    let samples = load_wav(path)?;
    if let Err(e) = store_cache(&cached, &samples) {
        tracing::warn!(cache = %cached.display(), error = %e, "cannot write prompt cache");
    }
    Ok(samples)
}

/// Writes through a temporary file and renames, so a crash never leaves a partial entry.
fn store_cache(cached: &Path, samples: &[i16]) -> std::io::Result<()> {
    if let Some(dir) = cached.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = cached.with_extension(format!("tmp{}", std::process::id()));
    let mut file = fs::File::create(&tmp)?;
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    file.write_all(&bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, cached)
}

/// Converts mono samples at `rate` to 8 kHz (band-limited, like prompt files).
pub fn to_8k(samples: &[i16], rate: u32) -> Result<Vec<i16>, String> {
    if rate == SAMPLE_RATE {
        return Ok(samples.to_vec());
    }
    if !(MIN_RATE..=MAX_RATE).contains(&rate) {
        return Err(format!("unsupported sample rate {rate} Hz"));
    }
    let mono: Vec<f32> = samples.iter().map(|&s| f32::from(s) / 32768.0).collect();
    Ok(resample(&mono, rate)?
        .iter()
        .map(|&s| (f64::from(s) * 32768.0).round().clamp(-32768.0, 32767.0) as i16)
        .collect())
}

/// Plays clips back to back in 20 ms frames. A streaming player (`open`) gets more clips while
/// it plays (text-to-speech sentence by sentence): until it is closed, running out of audio
/// plays silence instead of ending.
#[derive(Debug, Clone)]
pub struct Player {
    clips: Vec<Arc<[i16]>>,
    clip: usize,
    pos: usize,
    open: bool,
}

impl Player {
    pub fn new(clips: Vec<Arc<[i16]>>) -> Self {
        Player {
            clips,
            clip: 0,
            pos: 0,
            open: false,
        }
    }

    /// A player whose clips arrive while it plays ([`Player::push`], then [`Player::close`]).
    pub fn streaming() -> Self {
        Player {
            open: true,
            ..Player::new(Vec::new())
        }
    }

    pub fn push(&mut self, clip: Arc<[i16]>) {
        self.clips.push(clip);
    }

    /// No more clips: the player ends once what it has is played.
    pub fn close(&mut self) {
        self.open = false;
    }

    /// The next 160 samples. Clips follow each other without a gap; only the very last
    /// frame is zero-padded. `None` once everything has been played.
    pub fn next_frame(&mut self) -> Option<[i16; FRAME_SAMPLES]> {
        let mut frame = [0i16; FRAME_SAMPLES];
        let mut filled = 0;
        while filled < FRAME_SAMPLES {
            let Some(clip) = self.clips.get(self.clip) else {
                break;
            };
            let available = clip.get(self.pos..).unwrap_or(&[]);
            if available.is_empty() {
                self.clip += 1;
                self.pos = 0;
                continue;
            }
            let n = available.len().min(FRAME_SAMPLES - filled);
            if let (Some(dst), Some(src)) = (frame.get_mut(filled..filled + n), available.get(..n))
            {
                dst.copy_from_slice(src);
            }
            filled += n;
            self.pos += n;
        }
        // Waiting for the next sentence of a stream: silence, not the end.
        (filled > 0 || self.open).then_some(frame)
    }

    pub fn is_done(&self) -> bool {
        !self.open
            && self
                .clips
                .get(self.clip..)
                .unwrap_or(&[])
                .iter()
                .enumerate()
                .all(|(i, c)| {
                    if i == 0 {
                        self.pos >= c.len()
                    } else {
                        c.is_empty()
                    }
                })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_wav(path: &Path, rate: u32, channels: u16, seconds: f64, freq: f64, format: &str) {
        let (bits, sample_format) = match format {
            "i8" => (8, hound::SampleFormat::Int),
            "i16" => (16, hound::SampleFormat::Int),
            "i24" => (24, hound::SampleFormat::Int),
            "i32" => (32, hound::SampleFormat::Int),
            _ => (32, hound::SampleFormat::Float),
        };
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: bits,
            sample_format,
        };
        let mut w = hound::WavWriter::create(path, spec).expect("create wav");
        let frames = (f64::from(rate) * seconds) as u32;
        for n in 0..frames {
            let v =
                0.5 * (2.0 * std::f64::consts::PI * freq * f64::from(n) / f64::from(rate)).sin();
            for _ in 0..channels {
                match sample_format {
                    hound::SampleFormat::Float => w.write_sample(v as f32).expect("write"),
                    hound::SampleFormat::Int => {
                        let max = f64::from((1u32 << (bits - 1)) - 1);
                        w.write_sample((v * max) as i32).expect("write")
                    }
                }
            }
        }
        w.finalize().expect("finalize");
    }

    /// Estimated frequency from zero crossings, ignoring the edges.
    fn frequency(samples: &[i16]) -> f64 {
        let body = &samples[400..samples.len() - 400];
        let crossings = body.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
        crossings as f64 / 2.0 / (body.len() as f64 / f64::from(SAMPLE_RATE))
    }

    fn peak(samples: &[i16]) -> i16 {
        samples[400..samples.len() - 400]
            .iter()
            .map(|s| s.saturating_abs())
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn streaming_player_plays_silence_until_closed_then_ends() {
        let mut p = Player::streaming();
        assert!(!p.is_done());
        // Nothing yet: silence frames, not the end.
        assert_eq!(p.next_frame(), Some([0i16; FRAME_SAMPLES]));
        p.push(Arc::from(vec![7i16; 200]));
        let f = p.next_frame().unwrap();
        assert!(f.iter().all(|&s| s == 7));
        let f = p.next_frame().unwrap();
        assert_eq!(&f[..40], &[7i16; 40][..]);
        assert!(f[40..].iter().all(|&s| s == 0));
        assert_eq!(p.next_frame(), Some([0i16; FRAME_SAMPLES]), "still open");
        p.push(Arc::from(vec![3i16; 160]));
        p.close();
        assert!(!p.is_done());
        assert!(p.next_frame().unwrap().iter().all(|&s| s == 3));
        assert!(p.is_done());
        assert_eq!(p.next_frame(), None);
    }

    #[test]
    fn to_8k_resamples_and_keeps_length_proportional() {
        let tone: Vec<i16> = (0..22_050)
            .map(|i| {
                ((i as f32 * 2.0 * std::f32::consts::PI * 440.0 / 22_050.0).sin() * 8000.0) as i16
            })
            .collect();
        let out = to_8k(&tone, 22_050).unwrap();
        assert!((7_900..=8_100).contains(&out.len()), "{}", out.len());
        assert!(out.iter().map(|s| s.unsigned_abs()).max().unwrap() > 6000);
        assert_eq!(to_8k(&tone[..100], 8000).unwrap().len(), 100);
        assert!(to_8k(&tone, 1).is_err());
    }

    #[test]
    fn converts_common_formats_to_8khz_keeping_a_1khz_tone() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (rate, channels, format) in [
            (44_100, 2, "i16"),
            (16_000, 1, "i16"),
            (8_000, 1, "i16"),
            (48_000, 1, "f32"),
            (22_050, 1, "i8"),
            (32_000, 2, "i24"),
            (11_025, 1, "i32"),
        ] {
            let path = dir
                .path()
                .join(format!("tone-{rate}-{channels}-{format}.wav"));
            write_wav(&path, rate, channels, 1.0, 1000.0, format);
            let pcm = load_wav(&path).expect("load");
            let case = format!("{rate} Hz {channels} ch {format}");
            assert!(
                pcm.len().abs_diff(8000) <= FRAME_SAMPLES,
                "{case}: {} samples",
                pcm.len()
            );
            let f = frequency(&pcm);
            assert!((f - 1000.0).abs() < 10.0, "{case}: {f:.1} Hz");
            // Amplitude 0.5 of full scale survives conversion.
            let p = peak(&pcm);
            assert!((14_500..=18_500).contains(&p), "{case}: peak {p}");
        }
    }

    #[test]
    fn resampling_removes_content_above_4khz() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hf.wav");
        // 6 kHz would alias to 2 kHz with naive decimation; it must be filtered out instead.
        write_wav(&path, 44_100, 1, 0.5, 6000.0, "i16");
        let pcm = load_wav(&path).expect("load");
        assert!(peak(&pcm) < 500, "peak {}", peak(&pcm));
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.wav");
        let msg = load_wav(&missing).expect_err("missing file").to_string();
        assert!(msg.contains("missing.wav"), "{msg}");
        let garbage = dir.path().join("garbage.wav");
        fs::write(&garbage, b"RIFF\x10\0\0\0WAVEjunkjunk").expect("write");
        let msg = load_wav(&garbage).expect_err("garbage").to_string();
        assert!(msg.contains("garbage.wav") && msg.contains("WAV"), "{msg}");
        let empty = dir.path().join("empty.wav");
        write_wav(&empty, 8000, 1, 0.0, 1000.0, "i16");
        let msg = load_wav(&empty).expect_err("empty").to_string();
        assert!(
            msg.contains("empty.wav") && msg.contains("no audio"),
            "{msg}"
        );
    }

    #[test]
    fn store_names_prompts_by_relative_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("en/menus")).expect("mkdir");
        write_wav(&dir.path().join("welcome.wav"), 8000, 1, 0.1, 440.0, "i16");
        write_wav(
            &dir.path().join("en/welcome.WAV"),
            16_000,
            1,
            0.2,
            440.0,
            "i16",
        );
        write_wav(
            &dir.path().join("en/menus/main.wav"),
            8000,
            1,
            0.3,
            440.0,
            "i16",
        );
        fs::write(dir.path().join("notes.txt"), b"not audio").expect("write");
        let store = PromptStore::load_dir(dir.path()).expect("load");
        assert_eq!(store.len(), 3);
        assert_eq!(
            store.names().collect::<Vec<_>>(),
            ["en/menus/main", "en/welcome", "welcome"]
        );
        assert_eq!(store.get("welcome").expect("welcome").len(), 800);
        assert!(store.get("en/welcome").expect("en").len().abs_diff(1600) <= FRAME_SAMPLES);
        assert!(store.get("nope").is_none());
    }

    #[test]
    fn store_rejects_two_files_with_one_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_wav(&dir.path().join("a.wav"), 8000, 1, 0.1, 440.0, "i16");
        write_wav(&dir.path().join("a.WAV"), 8000, 1, 0.1, 440.0, "i16");
        let msg = PromptStore::load_dir(dir.path())
            .expect_err("clash")
            .to_string();
        assert!(msg.contains("\"a\""), "{msg}");
    }

    #[test]
    fn cache_is_used_and_invalidated_by_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = dir.path().join("cache");
        let prompts = dir.path().join("prompts");
        fs::create_dir_all(&prompts).expect("mkdir");
        let wav = prompts.join("hello.wav");
        write_wav(&wav, 16_000, 1, 0.5, 500.0, "i16");
        let first = PromptStore::load_dir_cached(&prompts, &cache).expect("first load");
        let entries: Vec<_> = fs::read_dir(&cache).expect("cache dir").collect();
        assert_eq!(entries.len(), 1);
        // Tamper with the cache entry: a second load must serve it as-is (no reconversion).
        let entry = entries
            .into_iter()
            .next()
            .expect("entry")
            .expect("entry")
            .path();
        fs::write(&entry, [1u8, 0, 2, 0]).expect("tamper");
        let second = PromptStore::load_dir_cached(&prompts, &cache).expect("second load");
        assert_eq!(&*second.get("hello").expect("hello"), &[1i16, 2][..]);
        // Rewriting the WAV with a different length changes the key and reconverts.
        write_wav(&wav, 16_000, 1, 0.25, 500.0, "i16");
        let third = PromptStore::load_dir_cached(&prompts, &cache).expect("third load");
        let n = third.get("hello").expect("hello").len();
        assert!(n.abs_diff(2000) <= FRAME_SAMPLES, "{n}");
        assert_ne!(n, first.get("hello").expect("hello").len());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        #[test]
        fn damaged_wav_files_give_errors_not_panics(
            tag in proptest::sample::select(vec![1u16, 3, 0xFFFE, 7]),
            channels in 0u16..4,
            rate in proptest::sample::select(vec![0u32, 1, 8000, 44_100, u32::MAX]),
            block_align in 0u16..9,
            bits in proptest::sample::select(vec![0u16, 8, 12, 16, 24, 32, 64]),
            data_len in proptest::num::u32::ANY,
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let mut bytes = b"RIFF\0\0\0\0WAVEfmt \x10\0\0\0".to_vec();
            bytes.extend_from_slice(&tag.to_le_bytes());
            bytes.extend_from_slice(&channels.to_le_bytes());
            bytes.extend_from_slice(&rate.to_le_bytes());
            bytes.extend_from_slice(&rate.wrapping_mul(u32::from(block_align)).to_le_bytes());
            bytes.extend_from_slice(&block_align.to_le_bytes());
            bytes.extend_from_slice(&bits.to_le_bytes());
            bytes.extend_from_slice(b"data");
            bytes.extend_from_slice(&data_len.to_le_bytes());
            bytes.extend_from_slice(&data);
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("fuzz.wav");
            fs::write(&path, &bytes).expect("write");
            let _ = load_wav(&path);
        }
    }

    #[test]
    fn player_concatenates_and_pads_the_last_frame() {
        let a: Arc<[i16]> = (1..=200).collect::<Vec<i16>>().into();
        let b: Arc<[i16]> = vec![7i16; 50].into();
        let empty: Arc<[i16]> = Vec::new().into();
        let mut p = Player::new(vec![a, empty, b]);
        assert!(!p.is_done());
        let f1 = p.next_frame().expect("frame 1");
        assert_eq!((f1[0], f1[159]), (1, 160));
        let f2 = p.next_frame().expect("frame 2");
        assert_eq!(
            (f2[0], f2[39], f2[40], f2[89], f2[90], f2[159]),
            (161, 200, 7, 7, 0, 0)
        );
        assert!(p.is_done());
        assert!(p.next_frame().is_none());
        assert!(Player::new(Vec::new()).next_frame().is_none());
        assert!(Player::new(Vec::new()).is_done());
    }
}
