//! Measuring voiceprints: equal error rate, false acceptance at a fixed false rejection, a DET
//! table, over a folder of `<speaker>/<utterance>.wav` (`warmline voiceprint eval`), with and
//! without a simulated telephone channel (8 kHz, G.711 µ-law).
//!
//! The error-rate functions are pure: target (same speaker) and non-target scores in, rates out.
//! Convention: a trial is accepted when its score is at or above the threshold.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::media::g711;
use crate::speech::voiceprint::{
    read_wav, resample, Cohort, Embedding, SpeakerEmbedder, VoiceprintError,
};

/// FAR levels of the DET table.
pub const DET_FAR_LEVELS: [f64; 6] = [0.001, 0.01, 0.02, 0.05, 0.1, 0.2];
/// The false rejection rate at which the false acceptance rate is reported.
pub const FIXED_FRR: f64 = 0.05;

/// One operating point.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct OperatingPoint {
    pub threshold: f64,
    pub far: f64,
    pub frr: f64,
}

/// Share of `targets` below `t` (false rejections).
fn frr_at(targets: &[f64], t: f64) -> f64 {
    if targets.is_empty() {
        return 0.0;
    }
    targets.iter().filter(|&&s| s < t).count() as f64 / targets.len() as f64
}

/// Share of `nontargets` at or above `t` (false acceptances).
fn far_at(nontargets: &[f64], t: f64) -> f64 {
    if nontargets.is_empty() {
        return 0.0;
    }
    nontargets.iter().filter(|&&s| s >= t).count() as f64 / nontargets.len() as f64
}

/// The equal error rate and its threshold: where FAR and FRR cross as the threshold sweeps the
/// scores, interpolated linearly between the two operating points around the crossing. `None`
/// without both kinds of trials or with non-finite scores.
pub fn eer(targets: &[f64], nontargets: &[f64]) -> Option<OperatingPoint> {
    if targets.is_empty()
        || nontargets.is_empty()
        || targets.iter().chain(nontargets).any(|s| !s.is_finite())
    {
        return None;
    }
    let mut thresholds: Vec<f64> = targets.iter().chain(nontargets).copied().collect();
    thresholds.sort_by(f64::total_cmp);
    thresholds.dedup();
    // Above every score: nothing accepted.
    let top = thresholds.last().copied().unwrap_or(0.0);
    thresholds.push(top + 1.0);
    let point = |t: f64| OperatingPoint {
        threshold: t,
        far: far_at(nontargets, t),
        frr: frr_at(targets, t),
    };
    // FAR falls and FRR rises with the threshold; the lowest threshold accepts everything.
    let mut prev = point(thresholds.first().copied().unwrap_or(0.0));
    if prev.far <= prev.frr {
        return Some(OperatingPoint {
            far: (prev.far + prev.frr) / 2.0,
            frr: (prev.far + prev.frr) / 2.0,
            ..prev
        });
    }
    for &t in thresholds.iter().skip(1) {
        let cur = point(t);
        if cur.far <= cur.frr {
            let d0 = prev.far - prev.frr;
            let d1 = cur.far - cur.frr;
            let a = if d0 - d1 > 0.0 { d0 / (d0 - d1) } else { 0.0 };
            let rate = prev.far + a * (cur.far - prev.far);
            return Some(OperatingPoint {
                threshold: prev.threshold + a * (cur.threshold - prev.threshold),
                far: rate,
                frr: rate,
            });
        }
        prev = cur;
    }
    None
}

/// The operating point with the highest threshold whose FRR is at most `frr`: the FAR paid
/// for rejecting at most that share of genuine callers. `None` without both kinds of trials.
pub fn far_at_frr(targets: &[f64], nontargets: &[f64], frr: f64) -> Option<OperatingPoint> {
    if targets.is_empty() || nontargets.is_empty() {
        return None;
    }
    let mut sorted = targets.to_vec();
    sorted.sort_by(f64::total_cmp);
    // Rejecting the `k` lowest targets keeps FRR <= frr; the threshold is the next target score.
    let k = ((frr.clamp(0.0, 1.0) * sorted.len() as f64).floor() as usize).min(sorted.len() - 1);
    let t = *sorted.get(k)?;
    Some(OperatingPoint {
        threshold: t,
        far: far_at(nontargets, t),
        frr: frr_at(targets, t),
    })
}

/// The operating point with the lowest threshold whose FAR is at most `far`.
pub fn frr_at_far(targets: &[f64], nontargets: &[f64], far: f64) -> Option<OperatingPoint> {
    if targets.is_empty() || nontargets.is_empty() {
        return None;
    }
    let mut desc = nontargets.to_vec();
    desc.sort_by(|a, b| b.total_cmp(a));
    let allowed = (far.clamp(0.0, 1.0) * desc.len() as f64).floor() as usize;
    // Just above the (allowed+1)-th highest non-target score; everything when all may pass.
    let t = match desc.get(allowed) {
        Some(&s) => next_up(s),
        None => desc.last().copied().unwrap_or(0.0),
    };
    Some(OperatingPoint {
        threshold: t,
        far: far_at(nontargets, t),
        frr: frr_at(targets, t),
    })
}

/// The smallest f64 greater than `x` (for finite `x`).
fn next_up(x: f64) -> f64 {
    if !x.is_finite() {
        return x;
    }
    if x == 0.0 {
        return f64::from_bits(1);
    }
    let bits = x.to_bits();
    f64::from_bits(if x > 0.0 { bits + 1 } else { bits - 1 })
}

/// FRR at each of `DET_FAR_LEVELS`.
pub fn det_table(targets: &[f64], nontargets: &[f64]) -> Vec<OperatingPoint> {
    DET_FAR_LEVELS
        .iter()
        .filter_map(|&far| frr_at_far(targets, nontargets, far))
        .collect()
}

/// Error rates of one set of trials.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Rates {
    pub targets: usize,
    pub nontargets: usize,
    pub eer: Option<OperatingPoint>,
    pub far_at_frr5: Option<OperatingPoint>,
    pub det: Vec<OperatingPoint>,
}

impl Rates {
    pub fn of(targets: &[f64], nontargets: &[f64]) -> Rates {
        Rates {
            targets: targets.len(),
            nontargets: nontargets.len(),
            eer: eer(targets, nontargets),
            far_at_frr5: far_at_frr(targets, nontargets, FIXED_FRR),
            det: det_table(targets, nontargets),
        }
    }
}

/// One clip of the evaluation set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Utterance {
    pub speaker: String,
    pub path: PathBuf,
}

/// Every `<dir>/<speaker>/*.wav`, sorted by speaker then file name.
pub fn walk_dataset(dir: &Path) -> Result<Vec<Utterance>, std::io::Error> {
    let mut out = Vec::new();
    let mut speakers: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    speakers.sort();
    for sp in speakers {
        let Some(name) = sp.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
            continue;
        };
        let mut clips: Vec<PathBuf> = std::fs::read_dir(&sp)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .and_then(|x| x.to_str())
                    .is_some_and(|x| x.eq_ignore_ascii_case("wav"))
            })
            .collect();
        clips.sort();
        out.extend(clips.into_iter().map(|path| Utterance {
            speaker: name.clone(),
            path,
        }));
    }
    Ok(out)
}

/// How clips reach the embedder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// As recorded.
    Clean,
    /// A telephone line: resampled to 8 kHz, G.711 µ-law encoded and decoded.
    G711Ulaw,
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Channel::Clean => "clean",
            Channel::G711Ulaw => "8 kHz G.711 µ-law",
        })
    }
}

/// Passes `pcm` at `rate` through `channel`; answers the audio and its rate.
pub fn through_channel(
    pcm: &[i16],
    rate: u32,
    channel: Channel,
) -> Result<(Vec<i16>, u32), VoiceprintError> {
    match channel {
        Channel::Clean => Ok((pcm.to_vec(), rate)),
        Channel::G711Ulaw => {
            let narrow = resample(pcm, rate, 8_000)?;
            let line = narrow
                .iter()
                .map(|&s| g711::ulaw_to_linear(g711::linear_to_ulaw(s)))
                .collect();
            Ok((line, 8_000))
        }
    }
}

/// One evaluation run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalReport {
    pub channel: Channel,
    pub model: String,
    /// AS-norm cohort members per side; 0 is S-norm over the whole cohort.
    pub top_k: usize,
    pub speakers: usize,
    pub clips: usize,
    /// Clips that gave no embedding (no speech found).
    pub skipped: Vec<String>,
    pub mean_speech_s: f64,
    /// Every pair of clips, one clip against the other.
    pub pairs_raw: Rates,
    pub pairs_norm: Rates,
    /// Each clip against voiceprints enrolled from all other clips of each speaker
    /// (leave-one-out), as a customer enrolled from several calls would be checked.
    pub enrolled_raw: Rates,
    pub enrolled_norm: Rates,
    pub mean_target_cosine: f64,
    pub mean_nontarget_cosine: f64,
    /// Extraction time per second of audio.
    pub real_time_factor: f64,
}

/// Embeds every clip of `dir` after `channel` and scores both protocols, raw and AS-norm
/// normalised with `top_k` (cohort: the clips of every speaker not in the trial).
pub fn evaluate(
    embedder: &dyn SpeakerEmbedder,
    dir: &Path,
    channel: Channel,
    top_k: usize,
) -> Result<EvalReport, VoiceprintError> {
    let clips = walk_dataset(dir).map_err(|e| VoiceprintError::Wav {
        path: dir.to_path_buf(),
        detail: e.to_string(),
    })?;
    let mut embedded: Vec<(String, Embedding)> = Vec::new();
    let mut skipped = Vec::new();
    let mut busy = Duration::ZERO;
    let mut audio_s = 0.0f64;
    for u in &clips {
        let (pcm, rate) = read_wav(&u.path)?;
        let (pcm, rate) = through_channel(&pcm, rate, channel)?;
        audio_s += pcm.len() as f64 / f64::from(rate);
        let t0 = Instant::now();
        let got = embedder.embed(&pcm, rate);
        busy += t0.elapsed();
        match got {
            Ok(e) => embedded.push((u.speaker.clone(), e)),
            Err(VoiceprintError::NoSpeech { .. }) => skipped.push(u.path.display().to_string()),
            Err(e) => return Err(e),
        }
    }
    let mut speakers: Vec<&str> = embedded.iter().map(|(s, _)| s.as_str()).collect();
    speakers.sort_unstable();
    speakers.dedup();
    let cohort_without = |a: &str, b: &str| {
        Cohort::new(
            embedded
                .iter()
                .filter(|(s, _)| s != a && s != b)
                .map(|(_, e)| e.clone())
                .collect(),
        )
    };

    // Protocol 1: every pair of clips.
    let (mut t_raw, mut n_raw, mut t_norm, mut n_norm) = (vec![], vec![], vec![], vec![]);
    for (i, (sa, ea)) in embedded.iter().enumerate() {
        for (sb, eb) in embedded.iter().skip(i + 1) {
            let raw = f64::from(ea.cosine(eb));
            let norm = cohort_without(sa, sb)
                .normalise(ea, eb, top_k)
                .map(f64::from);
            let (raw_list, norm_list) = if sa == sb {
                (&mut t_raw, &mut t_norm)
            } else {
                (&mut n_raw, &mut n_norm)
            };
            raw_list.push(raw);
            norm_list.extend(norm);
        }
    }
    let mean = |v: &[f64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let mean_target_cosine = mean(&t_raw);
    let mean_nontarget_cosine = mean(&n_raw);
    let pairs_raw = Rates::of(&t_raw, &n_raw);
    let pairs_norm = Rates::of(&t_norm, &n_norm);

    // Protocol 2: leave-one-out enrolment.
    let (mut t_raw, mut n_raw, mut t_norm, mut n_norm) = (vec![], vec![], vec![], vec![]);
    for (i, (sa, _)) in embedded.iter().enumerate() {
        let rest: Vec<Embedding> = embedded
            .iter()
            .enumerate()
            .filter(|(j, (s, _))| *j != i && s == sa)
            .map(|(_, (_, e))| e.clone())
            .collect();
        let Some(model) = Embedding::combine(&rest) else {
            continue;
        };
        for (j, (sb, test)) in embedded.iter().enumerate() {
            // The model's own clips are not tests; the held-out one is the target trial.
            if sb == sa && j != i {
                continue;
            }
            let raw = f64::from(model.cosine(test));
            let norm = cohort_without(sa, sb)
                .normalise(&model, test, top_k)
                .map(f64::from);
            let (raw_list, norm_list) = if sa == sb {
                (&mut t_raw, &mut t_norm)
            } else {
                (&mut n_raw, &mut n_norm)
            };
            raw_list.push(raw);
            norm_list.extend(norm);
        }
    }
    let mean_speech_s = if embedded.is_empty() {
        0.0
    } else {
        embedded
            .iter()
            .map(|(_, e)| f64::from(e.speech_seconds()))
            .sum::<f64>()
            / embedded.len() as f64
    };
    Ok(EvalReport {
        channel,
        model: embedder.model_version().to_string(),
        top_k,
        speakers: speakers.len(),
        clips: clips.len(),
        skipped,
        mean_speech_s,
        pairs_raw,
        pairs_norm,
        enrolled_raw: Rates::of(&t_raw, &n_raw),
        enrolled_norm: Rates::of(&t_norm, &n_norm),
        mean_target_cosine,
        mean_nontarget_cosine,
        real_time_factor: if audio_s > 0.0 {
            busy.as_secs_f64() / audio_s
        } else {
            0.0
        },
    })
}

fn pct(p: Option<OperatingPoint>, f: impl Fn(&OperatingPoint) -> f64) -> String {
    p.map_or_else(|| "n/a".to_string(), |p| format!("{:.1} %", 100.0 * f(&p)))
}

fn thr(p: Option<OperatingPoint>) -> String {
    p.map_or_else(|| "n/a".to_string(), |p| format!("{:.3}", p.threshold))
}

impl std::fmt::Display for EvalReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "channel: {} | model {} | {} speakers, {} clips ({} without speech), mean net speech {:.1} s, extraction RTF {:.3}",
            self.channel,
            self.model,
            self.speakers,
            self.clips,
            self.skipped.len(),
            self.mean_speech_s,
            self.real_time_factor
        )?;
        writeln!(
            f,
            "  mean cosine: same speaker {:.3}, different {:.3}",
            self.mean_target_cosine, self.mean_nontarget_cosine
        )?;
        writeln!(
            f,
            "  {:<40} {:>7} {:>8} {:>8} {:>9} {:>13} {:>9}",
            "protocol", "targets", "non-tgt", "EER", "EER thr", "FAR@FRR=5 %", "thr"
        )?;
        let norm = if self.top_k == 0 {
            "S-norm".to_string()
        } else {
            format!("AS-norm top {}", self.top_k)
        };
        for (name, r) in [
            ("clip vs clip, raw cosine".to_string(), &self.pairs_raw),
            (format!("clip vs clip, {norm}"), &self.pairs_norm),
            (
                "enrolled (leave-one-out), raw".to_string(),
                &self.enrolled_raw,
            ),
            (
                format!("enrolled (leave-one-out), {norm}"),
                &self.enrolled_norm,
            ),
        ] {
            writeln!(
                f,
                "  {:<40} {:>7} {:>8} {:>8} {:>9} {:>13} {:>9}",
                name,
                r.targets,
                r.nontargets,
                pct(r.eer, |p| p.far),
                thr(r.eer),
                pct(r.far_at_frr5, |p| p.far),
                thr(r.far_at_frr5),
            )?;
        }
        for (name, r) in [
            ("enrolled, raw".to_string(), &self.enrolled_raw),
            (format!("enrolled, {norm}"), &self.enrolled_norm),
        ] {
            write!(f, "  DET {name:<26}")?;
            for p in &r.det {
                write!(
                    f,
                    " | FAR {:.1} %: FRR {:.1} % (thr {:.3})",
                    100.0 * p.far,
                    100.0 * p.frr,
                    p.threshold
                )?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn separable_scores_have_zero_eer() {
        let p = eer(&[0.8, 0.9, 0.7], &[0.1, 0.2, 0.3, 0.4]).expect("eer");
        assert!(close(p.far, 0.0) && close(p.frr, 0.0), "{p:?}");
        assert!(p.threshold > 0.4 && p.threshold <= 0.7, "{p:?}");
    }

    #[test]
    fn reversed_scores_have_full_eer() {
        let p = eer(&[0.1, 0.2], &[0.8, 0.9]).expect("eer");
        assert!(close(p.far, 1.0), "{p:?}");
    }

    #[test]
    fn eer_of_a_known_overlap() {
        // Targets 1..=10, non-targets 0..=9 (tenths): at threshold t the FRR is the share of
        // targets below t and the FAR the share of non-targets at or above it. They cross at
        // threshold 0.55..0.6 with 5 of 10 targets below 0.6 and 4 of 10 non-targets at or
        // above 0.6: between (t=0.5: FAR 0.5, FRR 0.4) and (t=0.6: FAR 0.4, FRR 0.5) -> 0.45.
        let targets: Vec<f64> = (1..=10).map(|i| f64::from(i) / 10.0).collect();
        let nontargets: Vec<f64> = (0..10).map(|i| f64::from(i) / 10.0).collect();
        let p = eer(&targets, &nontargets).expect("eer");
        assert!(close(p.far, 0.45), "{p:?}");
        assert!(close(p.threshold, 0.55), "{p:?}");
    }

    #[test]
    fn eer_needs_both_kinds_of_finite_scores() {
        assert!(eer(&[], &[0.1]).is_none());
        assert!(eer(&[0.1], &[]).is_none());
        assert!(eer(&[f64::NAN], &[0.1]).is_none());
    }

    #[test]
    fn far_at_fixed_frr() {
        // 20 targets 0.50..0.69; rejecting at most 5 % (1 of 20) sets the threshold at the
        // second-lowest target, 0.51. Non-targets: 0.0..0.99 step 0.01 -> 49 of 100 >= 0.51.
        let targets: Vec<f64> = (50..70).map(|i| f64::from(i) / 100.0).collect();
        let nontargets: Vec<f64> = (0..100).map(|i| f64::from(i) / 100.0).collect();
        let p = far_at_frr(&targets, &nontargets, 0.05).expect("point");
        assert!(close(p.threshold, 0.51), "{p:?}");
        assert!(close(p.frr, 0.05) && close(p.far, 0.49), "{p:?}");
        assert!(far_at_frr(&[], &nontargets, 0.05).is_none());
    }

    #[test]
    fn frr_at_fixed_far_and_det_table() {
        let targets: Vec<f64> = (0..100).map(|i| 0.3 + f64::from(i) / 200.0).collect();
        let nontargets: Vec<f64> = (0..1000).map(|i| f64::from(i) / 2000.0).collect();
        // FAR 1 %: 10 non-targets may pass -> threshold just above the 11th highest (0.4945).
        let p = frr_at_far(&targets, &nontargets, 0.01).expect("point");
        assert!(close(p.far, 0.01), "{p:?}");
        // Targets below 0.4945+: 0.300..0.490 step 0.005 -> 39 of 100.
        assert!(close(p.frr, 0.39), "{p:?}");
        let det = det_table(&targets, &nontargets);
        assert_eq!(det.len(), DET_FAR_LEVELS.len());
        for (p, level) in det.iter().zip(DET_FAR_LEVELS) {
            assert!(p.far <= level + 1e-12, "{p:?} at {level}");
        }
        // Looser FAR, lower FRR.
        assert!(det.windows(2).all(|w| w[1].frr <= w[0].frr), "{det:?}");
    }

    #[test]
    fn next_up_is_strictly_greater() {
        for x in [-1.0, -0.0, 0.0, 1e-300, 0.5, 1.0] {
            assert!(next_up(x) > x, "{x}");
        }
    }

    #[test]
    fn walker_finds_wav_clips_per_speaker() {
        let dir = tempfile::tempdir().expect("tmp");
        for (sp, f) in [
            ("b", "2.wav"),
            ("b", "1.WAV"),
            ("a", "x.wav"),
            ("a", "notes.txt"),
        ] {
            std::fs::create_dir_all(dir.path().join(sp)).expect("mkdir");
            std::fs::write(dir.path().join(sp).join(f), b"").expect("write");
        }
        std::fs::write(dir.path().join("stray.wav"), b"").expect("write");
        let got: Vec<(String, String)> = walk_dataset(dir.path())
            .expect("walk")
            .into_iter()
            .map(|u| {
                let name = u
                    .path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("")
                    .to_string();
                (u.speaker, name)
            })
            .collect();
        assert_eq!(
            got,
            [("a", "x.wav"), ("b", "1.WAV"), ("b", "2.wav")]
                .map(|(a, b)| (a.to_string(), b.to_string()))
        );
    }

    #[test]
    fn telephone_channel_is_8k_and_mu_law_quantised() {
        let tone: Vec<i16> = (0..16_000)
            .map(|n| {
                ((n as f32 * 2.0 * std::f32::consts::PI * 300.0 / 16_000.0).sin() * 12_000.0) as i16
            })
            .collect();
        let (line, rate) = through_channel(&tone, 16_000, Channel::G711Ulaw).expect("channel");
        assert_eq!(rate, 8_000);
        assert!((7_990..=8_010).contains(&line.len()), "{}", line.len());
        // Every sample is a µ-law code point.
        assert!(line
            .iter()
            .all(|&s| g711::ulaw_to_linear(g711::linear_to_ulaw(s)) == s));
        let (clean, r) = through_channel(&tone, 16_000, Channel::Clean).expect("clean");
        assert_eq!((clean, r), (tone, 16_000));
    }
}
