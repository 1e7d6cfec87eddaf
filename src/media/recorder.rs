//! Call recording: a stereo WAV file (left = caller, right = agent, 8 kHz 16-bit) written
//! frame by frame, plus file naming, crash repair and retention.
//!
//! One [`Recorder::write`] per 20 ms media tick takes both directions at once, a missing frame
//! being silence, so the channels can never drift apart. Samples stream through a 32 KiB
//! buffer; every [`RecordingConfig::checkpoint_secs`] the RIFF sizes are rewritten and the
//! buffer flushed, so after a crash the file plays up to the last checkpoint, and
//! [`repair`] recovers everything that reached the disk.
//!
//! File I/O blocks: run the recorder on a blocking thread fed by the media clock over a
//! channel, never on the media clock itself.
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use chrono::NaiveDate;

use crate::media::codec::{FRAME_SAMPLES, SAMPLE_RATE};
use crate::media::error::MediaError;

/// Bytes of one stereo 16-bit sample frame.
const BLOCK_ALIGN: u64 = 4;
/// Bytes of one 20 ms tick in the file.
const TICK_BYTES: u64 = FRAME_SAMPLES as u64 * BLOCK_ALIGN;
const TICK_MS: u128 = 20;
/// RIFF sizes are 32-bit: stop well before 4 GiB (about 37 hours).
const MAX_DATA_BYTES: u64 = (u32::MAX as u64 - 1024) / TICK_BYTES * TICK_BYTES;
const WRITE_BUFFER: usize = 32 * 1024;
/// Longest sanitised Call-ID kept in a file name (before the hash suffix).
const MAX_NAME: usize = 96;
/// Names tried after the first (`-2` .. `-N`) when a recording of that name exists.
const MAX_NAME_ATTEMPTS: u32 = 1000;
/// Chunks walked through in a header before giving up (a real file has three or four).
const MAX_CHUNKS: usize = 64;

/// The `[recording]` section of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingConfig {
    /// Record bridged calls.
    pub enabled: bool,
    /// Root directory; files go to `<dir>/<YYYY-MM-DD>/<call-id>.wav`.
    pub dir: PathBuf,
    /// Delete recordings older than this many days; 0 keeps them for ever.
    pub retention_days: u32,
    /// Seconds between header updates (what a crash can cost without [`repair`]).
    pub checkpoint_secs: u32,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig {
            enabled: false,
            dir: PathBuf::from("recordings"),
            retention_days: 90,
            checkpoint_secs: 1,
        }
    }
}

impl RecordingConfig {
    /// How long recordings are kept, `None` for ever.
    pub fn retention(&self) -> Option<Duration> {
        (self.retention_days > 0)
            .then(|| Duration::from_secs(u64::from(self.retention_days) * 86_400))
    }

    pub fn checkpoint(&self) -> Duration {
        Duration::from_secs(u64::from(self.checkpoint_secs.max(1)))
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> MediaError + '_ {
    move |source| MediaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn wav_err(path: &Path) -> impl FnOnce(hound::Error) -> MediaError + '_ {
    move |source| MediaError::Wav {
        path: path.to_path_buf(),
        source,
    }
}

fn audio_err(path: &Path, reason: impl Into<String>) -> MediaError {
    MediaError::Audio {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The WAV format of every recording.
pub fn recording_spec() -> hound::WavSpec {
    hound::WavSpec {
        channels: 2,
        sample_rate: SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    }
}

/// A recording being written. Dropping it without [`Recorder::finish`] still fixes the header
/// (errors unseen).
pub struct Recorder {
    path: PathBuf,
    writer: hound::WavWriter<BufWriter<File>>,
    /// Second handle on the file, to sync it once finished.
    file: File,
    ticks: u64,
    since_checkpoint: u64,
    checkpoint_ticks: u64,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("path", &self.path)
            .field("ticks", &self.ticks)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// Creates a new recording at `path` (parent directories too). Never overwrites: an
    /// existing file is an error.
    pub fn create(path: &Path, checkpoint: Duration) -> Result<Self, MediaError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io_err(path))?;
        Self::from_file(path, file, checkpoint)
    }

    /// Creates the recording of a call at [`recording_path`], or with `-2`, `-3`, ... appended
    /// when that name is taken (the same Call-ID bridged twice, or a crafted Call-ID).
    pub fn create_for_call(
        dir: &Path,
        call_id: &str,
        date: NaiveDate,
        checkpoint: Duration,
    ) -> Result<Self, MediaError> {
        let (path, file) = create_unique(dir, call_id, date)?;
        Self::from_file(&path, file, checkpoint)
    }

    fn from_file(path: &Path, file: File, checkpoint: Duration) -> Result<Self, MediaError> {
        let handle = file.try_clone().map_err(io_err(path))?;
        let mut writer = hound::WavWriter::new(
            BufWriter::with_capacity(WRITE_BUFFER, file),
            recording_spec(),
        )
        .map_err(wav_err(path))?;
        // A valid, empty WAV is on disk from the start.
        writer.flush().map_err(wav_err(path))?;
        Ok(Recorder {
            path: path.to_path_buf(),
            writer,
            file: handle,
            ticks: 0,
            since_checkpoint: 0,
            checkpoint_ticks: (checkpoint.as_millis() / TICK_MS).clamp(1, u128::from(u32::MAX))
                as u64,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Audio written so far.
    pub fn duration(&self) -> Duration {
        Duration::from_millis(self.ticks.saturating_mul(20))
    }

    /// Writes one 20 ms tick: the caller on the left, the agent on the right; `None` is
    /// silence. Fails (and writes nothing) once the file reaches the WAV size limit.
    pub fn write(
        &mut self,
        caller: Option<&[i16; FRAME_SAMPLES]>,
        agent: Option<&[i16; FRAME_SAMPLES]>,
    ) -> Result<(), MediaError> {
        const SILENCE: [i16; FRAME_SAMPLES] = [0; FRAME_SAMPLES];
        if self.ticks.saturating_add(1).saturating_mul(TICK_BYTES) > MAX_DATA_BYTES {
            return Err(audio_err(
                &self.path,
                "recording reached the 4 GiB WAV size limit (about 37 hours)",
            ));
        }
        let (left, right) = (caller.unwrap_or(&SILENCE), agent.unwrap_or(&SILENCE));
        // The whole tick goes to the buffer in one write, so a failed write cannot leave
        // one channel a sample ahead of the other.
        let mut tick = self.writer.get_i16_writer(2 * FRAME_SAMPLES as u32);
        for (&l, &r) in left.iter().zip(right) {
            tick.write_sample(l);
            tick.write_sample(r);
        }
        tick.flush().map_err(wav_err(&self.path))?;
        self.ticks += 1;
        self.since_checkpoint += 1;
        if self.since_checkpoint >= self.checkpoint_ticks {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Rewrites the RIFF sizes and flushes the buffer: the file is now valid as it stands.
    pub fn checkpoint(&mut self) -> Result<(), MediaError> {
        self.since_checkpoint = 0;
        self.writer.flush().map_err(wav_err(&self.path))
    }

    /// Completes the header, flushes and syncs the file; returns its path.
    pub fn finish(self) -> Result<PathBuf, MediaError> {
        let Recorder {
            path, writer, file, ..
        } = self;
        writer.finalize().map_err(wav_err(&path))?;
        file.sync_all().map_err(io_err(&path))?;
        Ok(path)
    }
}

/// Creates a new, empty file at [`recording_path`], or with `-2`, `-3`, ... appended when
/// that name is taken; never opens an existing file. For other recordings of a call
/// (voicemail) that must not overwrite each other either.
pub fn create_unique(
    dir: &Path,
    call_id: &str,
    date: NaiveDate,
) -> Result<(PathBuf, File), MediaError> {
    let first = recording_path(dir, call_id, date);
    let day_dir = first.parent().unwrap_or(dir).to_path_buf();
    fs::create_dir_all(&day_dir).map_err(io_err(&day_dir))?;
    let stem = sanitize_call_id(call_id);
    for attempt in 1..=MAX_NAME_ATTEMPTS {
        let path = if attempt == 1 {
            first.clone()
        } else {
            day_dir.join(format!("{stem}-{attempt}.wav"))
        };
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err(&path)(e)),
        }
    }
    Err(audio_err(
        &first,
        format!("{MAX_NAME_ATTEMPTS} recordings with this name exist already"),
    ))
}

/// What [`repair`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repaired {
    /// Sample frames (per channel) in the file now.
    pub frames: u64,
    /// Trailing bytes of an incomplete sample frame that were cut off.
    pub truncated_bytes: u64,
    /// Whether the header sizes were wrong.
    pub header_fixed: bool,
}

fn read_exact_at(file: &mut File, pos: u64, buf: &mut [u8]) -> io::Result<()> {
    file.seek(SeekFrom::Start(pos))?;
    file.read_exact(buf)
}

/// Makes a WAV file whose writer died readable again: sets the RIFF and `data` sizes from the
/// file length (the `data` chunk must be the last chunk, as in every recording) and cuts off
/// a trailing partial sample frame. Only for files no recorder is writing (at start-up).
pub fn repair(path: &Path) -> Result<Repaired, MediaError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    let mut riff = [0u8; 12];
    read_exact_at(&mut file, 0, &mut riff)
        .map_err(|_| audio_err(path, "shorter than a RIFF header"))?;
    if riff.get(0..4) != Some(b"RIFF") || riff.get(8..12) != Some(b"WAVE") {
        return Err(audio_err(path, "not a RIFF/WAVE file"));
    }
    let mut pos: u64 = 12;
    let mut block_align: Option<u64> = None;
    let mut data_start = None;
    for _ in 0..MAX_CHUNKS {
        let mut header = [0u8; 8];
        if read_exact_at(&mut file, pos, &mut header).is_err() {
            break;
        }
        let [i0, i1, i2, i3, s0, s1, s2, s3] = header;
        let size = u64::from(u32::from_le_bytes([s0, s1, s2, s3]));
        let body = pos.saturating_add(8);
        match &[i0, i1, i2, i3] {
            b"data" => {
                data_start = Some(body);
                break;
            }
            b"fmt " => {
                let mut fmt = [0u8; 16];
                read_exact_at(&mut file, body, &mut fmt)
                    .map_err(|_| audio_err(path, "truncated fmt chunk"))?;
                let [_, _, _, _, _, _, _, _, _, _, _, _, b0, b1, _, _] = fmt;
                block_align = Some(u64::from(u16::from_le_bytes([b0, b1])));
            }
            _ => {}
        }
        // Chunks are padded to an even length.
        pos = body.saturating_add(size).saturating_add(size & 1);
    }
    let data_start =
        data_start.ok_or_else(|| audio_err(path, "no data chunk within the first chunks"))?;
    let block_align = match block_align {
        Some(b) if b > 0 => b,
        Some(_) => return Err(audio_err(path, "fmt chunk declares a block size of 0")),
        None => return Err(audio_err(path, "no fmt chunk before the data chunk")),
    };
    let available = len.saturating_sub(data_start);
    let max_data = u64::from(u32::MAX).saturating_sub(data_start);
    let data_len = available.min(max_data) / block_align * block_align;
    let new_len = data_start.saturating_add(data_len);
    let mut sizes = [0u8; 8];
    read_exact_at(&mut file, 4, &mut sizes[..4]).map_err(io_err(path))?;
    read_exact_at(&mut file, data_start.saturating_sub(4), &mut sizes[4..])
        .map_err(io_err(path))?;
    let riff_size = u32::try_from(new_len.saturating_sub(8)).unwrap_or(u32::MAX);
    let data_size = u32::try_from(data_len).unwrap_or(u32::MAX);
    let mut wanted = [0u8; 8];
    wanted[..4].copy_from_slice(&riff_size.to_le_bytes());
    wanted[4..].copy_from_slice(&data_size.to_le_bytes());
    if new_len < len {
        file.set_len(new_len).map_err(io_err(path))?;
    }
    let header_fixed = sizes != wanted;
    if header_fixed {
        file.seek(SeekFrom::Start(4)).map_err(io_err(path))?;
        file.write_all(&wanted[..4]).map_err(io_err(path))?;
        file.seek(SeekFrom::Start(data_start.saturating_sub(4)))
            .map_err(io_err(path))?;
        file.write_all(&wanted[4..]).map_err(io_err(path))?;
    }
    file.sync_all().map_err(io_err(path))?;
    Ok(Repaired {
        frames: data_len / block_align,
        truncated_bytes: len.saturating_sub(new_len),
        header_fixed,
    })
}

/// FNV-1a: a stable hash for name suffixes (std's hasher may change between releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// A file-name stem for an attacker-controlled Call-ID: ASCII letters, digits and `-_.@`
/// only, never starting with a dot, at most 96 characters plus a suffix. When anything had
/// to change, a hash of the original is appended, so `a/b` and `a_b` stay apart.
pub fn sanitize_call_id(call_id: &str) -> String {
    let mut changed = false;
    let mut out = String::with_capacity(call_id.len().min(MAX_NAME) + 17);
    for (i, c) in call_id.chars().enumerate() {
        if out.len() >= MAX_NAME {
            changed = true;
            break;
        }
        let keep = c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '@' | '.');
        if keep && !(i == 0 && c == '.') {
            out.push(c);
        } else {
            out.push('_');
            changed = true;
        }
    }
    if out.is_empty() {
        return format!("call-{:016x}", fnv1a(call_id.as_bytes()));
    }
    if changed {
        out.push_str(&format!("-{:016x}", fnv1a(call_id.as_bytes())));
    }
    out
}

/// `<dir>/<YYYY-MM-DD>/<sanitised call id>.wav`; always a file two levels below `dir`.
pub fn recording_path(dir: &Path, call_id: &str, date: NaiveDate) -> PathBuf {
    dir.join(date.format("%Y-%m-%d").to_string())
        .join(format!("{}.wav", sanitize_call_id(call_id)))
}

/// The files among `files` (path, last modification) older than `retention` at `now`.
/// Files stamped in the future (clock changes) are kept.
pub fn expired(
    files: &[(PathBuf, SystemTime)],
    now: SystemTime,
    retention: Duration,
) -> Vec<PathBuf> {
    files
        .iter()
        .filter(|(_, modified)| {
            now.duration_since(*modified)
                .is_ok_and(|age| age > retention)
        })
        .map(|(path, _)| path.clone())
        .collect()
}

fn is_day_dir(name: &str) -> bool {
    NaiveDate::parse_from_str(name, "%Y-%m-%d").is_ok()
}

/// Every recording below `dir` (`<YYYY-MM-DD>/*.wav`, regular files only, symlinks not
/// followed) with its modification time, and the errors met on the way. Anything else in
/// `dir` is left out, so a misconfigured `dir` cannot make the sweep delete foreign files.
pub fn list_recordings(dir: &Path) -> (Vec<(PathBuf, SystemTime)>, Vec<MediaError>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    let days = match fs::read_dir(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return (files, errors),
        Err(e) => {
            errors.push(io_err(dir)(e));
            return (files, errors);
        }
    };
    let mut day_dirs: Vec<PathBuf> = Vec::new();
    for entry in days {
        match entry {
            Ok(e) => {
                let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
                if is_dir && e.file_name().to_str().is_some_and(is_day_dir) {
                    day_dirs.push(e.path());
                }
            }
            Err(e) => errors.push(io_err(dir)(e)),
        }
    }
    for day in day_dirs {
        let entries = match fs::read_dir(&day) {
            Ok(d) => d,
            Err(e) => {
                errors.push(io_err(&day)(e));
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    errors.push(io_err(&day)(e));
                    continue;
                }
            };
            let path = entry.path();
            let is_wav = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e.eq_ignore_ascii_case("wav"));
            if !is_wav {
                continue;
            }
            // `DirEntry::metadata` does not follow symlinks.
            match entry.metadata() {
                Ok(m) if m.is_file() => match m.modified() {
                    Ok(t) => files.push((path, t)),
                    Err(e) => errors.push(io_err(&path)(e)),
                },
                Ok(_) => {}
                Err(e) => errors.push(io_err(&path)(e)),
            }
        }
    }
    (files, errors)
}

/// What [`sweep`] did.
#[derive(Debug, Default)]
pub struct SweepReport {
    pub deleted: Vec<PathBuf>,
    /// One entry per file or directory that could not be listed or deleted.
    pub errors: Vec<MediaError>,
}

/// Deletes the recordings below `dir` older than `retention` at `now`, then the day
/// directories left empty. Problems are collected per file; the sweep goes on.
pub fn sweep(dir: &Path, now: SystemTime, retention: Duration) -> SweepReport {
    let (files, errors) = list_recordings(dir);
    let mut report = SweepReport {
        deleted: Vec::new(),
        errors,
    };
    let mut days: Vec<PathBuf> = Vec::new();
    for path in expired(&files, now, retention) {
        match fs::remove_file(&path) {
            Ok(()) => {
                if let Some(day) = path.parent() {
                    if !days.iter().any(|d| d == day) {
                        days.push(day.to_path_buf());
                    }
                }
                report.deleted.push(path);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => report.errors.push(io_err(&path)(e)),
        }
    }
    for day in days {
        // Fails while other recordings are left, which is the point.
        let _ = fs::remove_dir(&day);
    }
    report
}

/// True when `path` is `dir` followed only by normal components (no `..`, no root).
#[cfg(test)]
fn stays_below(dir: &Path, path: &Path) -> bool {
    path.strip_prefix(dir).is_ok_and(|rest| {
        rest.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(k: usize, base: i16) -> [i16; FRAME_SAMPLES] {
        let mut f = [0i16; FRAME_SAMPLES];
        for (i, s) in f.iter_mut().enumerate() {
            *s = base.wrapping_add((k * FRAME_SAMPLES + i) as i16);
        }
        f
    }

    fn read_back(path: &Path) -> (hound::WavSpec, Vec<i16>, Vec<i16>) {
        let mut r = hound::WavReader::open(path).expect("hound opens the recording");
        let spec = r.spec();
        let samples: Vec<i16> = r.samples::<i16>().map(|s| s.expect("sample")).collect();
        let left = samples.iter().step_by(2).copied().collect();
        let right = samples.iter().skip(1).step_by(2).copied().collect();
        (spec, left, right)
    }

    fn date() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 22).expect("date")
    }

    #[test]
    fn stereo_recording_reads_back_with_each_side_on_its_channel() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut rec =
            Recorder::create_for_call(dir.path(), "abc@host", date(), Duration::from_secs(1))
                .expect("create");
        assert_eq!(rec.path(), dir.path().join("2026-11-22/abc@host.wav"));
        for k in 0..120 {
            let caller = tick(k, 1000);
            let agent = tick(k, -20000);
            // The agent's frame 7 never arrived, the caller's 9 neither: silence there.
            rec.write((k != 9).then_some(&caller), (k != 7).then_some(&agent))
                .expect("write");
        }
        assert_eq!(rec.duration(), Duration::from_millis(2400));
        let path = rec.finish().expect("finish");
        let (spec, left, right) = read_back(&path);
        assert_eq!(spec, recording_spec());
        assert_eq!((left.len(), right.len()), (120 * 160, 120 * 160));
        for k in 0..120 {
            let l = &left[k * 160..(k + 1) * 160];
            let r = &right[k * 160..(k + 1) * 160];
            let want_l = if k == 9 { [0; 160] } else { tick(k, 1000) };
            let want_r = if k == 7 { [0; 160] } else { tick(k, -20000) };
            assert_eq!(l, &want_l[..], "left tick {k}");
            assert_eq!(r, &want_r[..], "right tick {k}");
        }
    }

    #[test]
    fn checkpoints_keep_the_file_valid_while_it_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("live.wav");
        let mut rec = Recorder::create(&path, Duration::from_secs(1)).expect("create");
        assert_eq!(
            read_back(&path).1.len(),
            0,
            "valid and empty from the start"
        );
        for k in 0..75 {
            rec.write(Some(&tick(k, 1)), None).expect("write");
        }
        // 1.5 s written, the checkpoint at 1 s made the first second readable.
        assert_eq!(read_back(&path).1.len(), 50 * 160);
        // The process "dies" here: nothing more is flushed (forget skips the destructor).
        std::mem::forget(rec);
        assert!(
            Recorder::create(&path, Duration::from_secs(1)).is_err(),
            "never overwrites"
        );
    }

    #[test]
    fn repair_recovers_a_file_with_a_zeroed_header_and_a_torn_frame() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("crashed.wav");
        let mut rec = Recorder::create(&path, Duration::from_secs(3600)).expect("create");
        for k in 0..30 {
            rec.write(Some(&tick(k, 5)), Some(&tick(k, -5)))
                .expect("write");
        }
        rec.finish().expect("finish");
        // Simulate a crash before any header update: sizes zero, and half a sample frame
        // at the end.
        let mut bytes = fs::read(&path).expect("read");
        bytes[4..8].copy_from_slice(&[0; 4]);
        bytes[40..44].copy_from_slice(&[0; 4]);
        bytes.extend_from_slice(&[0x11, 0x22]);
        fs::write(&path, &bytes).expect("write");
        assert_eq!(
            read_back(&path).1.len(),
            0,
            "hound sees nothing before repair"
        );

        let repaired = repair(&path).expect("repair");
        assert_eq!(
            repaired,
            Repaired {
                frames: 30 * 160,
                truncated_bytes: 2,
                header_fixed: true
            }
        );
        let (_, left, right) = read_back(&path);
        assert_eq!(&left[..160], &tick(0, 5)[..]);
        assert_eq!(&right[29 * 160..], &tick(29, -5)[..]);
        // A sound file is left alone.
        let again = repair(&path).expect("repair again");
        assert!(!again.header_fixed && again.truncated_bytes == 0);
    }

    #[test]
    fn repair_rejects_what_is_not_a_wav_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases: [(&str, &[u8]); 4] = [
            ("empty", b""),
            ("text", b"hello, this is not a wave file at all"),
            ("no-fmt", b"RIFF\0\0\0\0WAVEdata\0\0\0\0\x01\x02"),
            ("huge-chunk", b"RIFF\0\0\0\0WAVEjunk\xff\xff\xff\xff"),
        ];
        for (name, bytes) in cases {
            let path = dir.path().join(name);
            fs::write(&path, bytes).expect("write");
            assert!(
                matches!(repair(&path), Err(MediaError::Audio { .. })),
                "{name}"
            );
        }
        assert!(matches!(
            repair(&dir.path().join("missing")),
            Err(MediaError::Io { .. })
        ));
    }

    #[test]
    fn taken_names_get_a_number_and_crafted_ids_stay_apart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cp = Duration::from_secs(1);
        let a = Recorder::create_for_call(dir.path(), "x@y", date(), cp).expect("first");
        let b = Recorder::create_for_call(dir.path(), "x@y", date(), cp).expect("second");
        assert_eq!(b.path(), dir.path().join("2026-11-22/x@y-2.wav"));
        assert_ne!(a.path(), b.path());
        let (third, _) = create_unique(dir.path(), "x@y", date()).expect("third");
        assert_eq!(third, dir.path().join("2026-11-22/x@y-3.wav"));
        assert_ne!(sanitize_call_id("a/b"), sanitize_call_id("a_b"));
        assert_eq!(
            sanitize_call_id("a84b4c76e66710@pc33.atlanta.com"),
            "a84b4c76e66710@pc33.atlanta.com"
        );
        for evil in [
            "..",
            ".",
            "../../etc/passwd",
            "/abs",
            "a\0b",
            "",
            "ünïcødé",
            "..\\..\\x",
        ] {
            let p = recording_path(dir.path(), evil, date());
            assert!(stays_below(dir.path(), &p), "{evil:?} -> {}", p.display());
            assert_eq!(p.parent(), Some(dir.path().join("2026-11-22").as_path()));
        }
    }

    #[test]
    fn expired_picks_files_older_than_the_retention() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100 * 86_400);
        let day = Duration::from_secs(86_400);
        let files = vec![
            (PathBuf::from("old"), now - 31 * day),
            (PathBuf::from("edge"), now - 30 * day),
            (PathBuf::from("new"), now - day),
            (PathBuf::from("future"), now + day),
        ];
        assert_eq!(expired(&files, now, 30 * day), vec![PathBuf::from("old")]);
        assert_eq!(
            expired(&files, now, Duration::ZERO),
            vec![
                PathBuf::from("old"),
                PathBuf::from("edge"),
                PathBuf::from("new")
            ]
        );
        assert!(expired(&[], now, day).is_empty());
    }

    #[test]
    fn sweep_deletes_old_recordings_only_and_reports_per_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let old_day = root.join("2026-01-01");
        let new_day = root.join("2026-11-22");
        let foreign = root.join("not-a-day");
        for d in [&old_day, &new_day, &foreign] {
            fs::create_dir_all(d).expect("mkdir");
        }
        for p in [
            old_day.join("a.wav"),
            old_day.join("notes.txt"),
            new_day.join("b.wav"),
            foreign.join("c.wav"),
        ] {
            fs::write(&p, b"x").expect("write");
        }
        let (files, errors) = list_recordings(root);
        assert!(errors.is_empty());
        assert_eq!(files.len(), 2, "only <day>/*.wav: {files:?}");
        let old_mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        File::options()
            .write(true)
            .open(old_day.join("a.wav"))
            .and_then(|f| f.set_modified(old_mtime))
            .expect("set mtime");
        let report = sweep(root, SystemTime::now(), Duration::from_secs(86_400));
        assert_eq!(report.deleted, vec![old_day.join("a.wav")]);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert!(old_day.join("notes.txt").exists(), "non-recordings stay");
        assert!(old_day.exists(), "a day directory with other files stays");
        assert!(new_day.join("b.wav").exists());
        assert!(foreign.join("c.wav").exists());
        // Nothing to list is not an error.
        let gone = sweep(&root.join("missing"), SystemTime::now(), Duration::ZERO);
        assert!(gone.deleted.is_empty() && gone.errors.is_empty());
        // Emptied day directories are removed.
        let report = sweep(
            root,
            SystemTime::now() + Duration::from_secs(7 * 86_400),
            Duration::from_secs(86_400),
        );
        assert_eq!(report.deleted, vec![new_day.join("b.wav")]);
        assert!(!new_day.exists());
    }

    #[test]
    fn config_parses_and_defaults() {
        let cfg: RecordingConfig =
            toml::from_str("enabled = true\ndir = \"/var/lib/warmline/rec\"\nretention_days = 0")
                .expect("parse");
        assert!(cfg.enabled);
        assert_eq!(cfg.retention(), None);
        assert_eq!(cfg.checkpoint(), Duration::from_secs(1));
        assert_eq!(
            RecordingConfig::default().retention(),
            Some(Duration::from_secs(90 * 86_400))
        );
        assert!(toml::from_str::<RecordingConfig>("retention = 3").is_err());
    }

    proptest::proptest! {
        #[test]
        fn sanitised_names_never_escape_the_directory(id in ".{0,300}") {
            let dir = Path::new("/srv/rec");
            let name = sanitize_call_id(&id);
            proptest::prop_assert!(!name.is_empty() && name.len() <= MAX_NAME + 17);
            proptest::prop_assert!(!name.starts_with('.'));
            proptest::prop_assert!(name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '@' | '.')));
            let path = recording_path(dir, &id, NaiveDate::from_ymd_opt(2026, 1, 2).expect("date"));
            proptest::prop_assert!(stays_below(dir, &path));
            proptest::prop_assert_eq!(path.parent(), Some(Path::new("/srv/rec/2026-01-02")));
        }

        #[test]
        fn repair_never_panics_on_garbage(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200), riff in proptest::bool::ANY) {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("g.wav");
            let mut data = bytes;
            if riff && data.len() >= 12 {
                data[..4].copy_from_slice(b"RIFF");
                data[8..12].copy_from_slice(b"WAVE");
            }
            fs::write(&path, &data).expect("write");
            let _ = repair(&path);
        }
    }
}
