//! Speech menu intents: the phrases that pick each option of a menu, the grammar given to the
//! recogniser, and matching a transcript back to an option.
//!
//! Phrases and transcripts go through the same normalisation (lower case, punctuation dropped,
//! whitespace collapsed; apostrophes inside words kept, since recogniser vocabularies have
//! "don't"). Matching compares content words: filler words and "[unk]" are ignored.

use thiserror::Error;

/// Words that carry no menu meaning ("I want to check my balance please").
const FILLERS: &[&str] = &[
    "um", "umm", "uh", "uhm", "er", "erm", "ah", "hmm", "please", "i", "i'd", "i'm", "want",
    "wanna", "to", "my", "the", "a", "an", "would", "like", "need", "me", "can", "you",
];
/// The recogniser's token for speech outside the grammar.
const UNK: &str = "[unk]";
/// Below this word overlap a transcript matches nothing.
const MIN_OVERLAP: f32 = 0.3;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum IntentError {
    #[error("menu option id is empty (for phrase {phrase:?})")]
    EmptyOption { phrase: String },
    #[error("phrase {phrase:?} of option {option:?} has no words once punctuation is removed")]
    EmptyPhrase { option: String, phrase: String },
    #[error("phrase {phrase:?} is given to both option {existing:?} and option {option:?}")]
    Conflict {
        phrase: String,
        existing: String,
        option: String,
    },
}

/// Menu options and the phrases that select them, in the order they were added.
#[derive(Debug, Clone, Default)]
pub struct PhraseSet {
    options: Vec<(String, Vec<String>)>,
}

/// The option a transcript selects.
#[derive(Debug, Clone, PartialEq)]
pub struct IntentMatch {
    pub option: String,
    /// The normalised phrase that matched.
    pub phrase: String,
    /// 0..1: word overlap between phrase and transcript times the mean recogniser confidence
    /// of the words they share.
    pub score: f32,
}

/// Lower-cased words of `text` without punctuation; "[unk]" tokens are dropped.
fn words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .filter(|t| !t.eq_ignore_ascii_case(UNK))
        .flat_map(|token| {
            let chars: Vec<char> = token.to_lowercase().chars().collect();
            let mut cleaned = String::new();
            for (i, c) in chars.iter().enumerate() {
                let inner_apostrophe = matches!(c, '\'' | '’')
                    && i > 0
                    && chars.get(i - 1).is_some_and(|p| p.is_alphanumeric())
                    && chars.get(i + 1).is_some_and(|n| n.is_alphanumeric());
                if c.is_alphanumeric() {
                    cleaned.push(*c);
                } else if inner_apostrophe {
                    cleaned.push('\'');
                } else {
                    // "check-balance" or "card." become separate words / nothing.
                    cleaned.push(' ');
                }
            }
            cleaned
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Content words in order, without repeats; all words when every one is a filler.
fn content(words: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in words {
        if !FILLERS.contains(&w.as_str()) && !out.contains(w) {
            out.push(w.clone());
        }
    }
    if out.is_empty() {
        for w in words {
            if !out.contains(w) {
                out.push(w.clone());
            }
        }
    }
    out
}

/// Whether `needle` occurs as a contiguous run in `hay`.
fn contains_run(hay: &[String], needle: &[String]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// One phrase's standing against a transcript; compared to pick the best.
struct Candidate<'a> {
    option: &'a str,
    phrase: &'a str,
    exact: bool,
    score: f32,
    words: usize,
}

impl Candidate<'_> {
    /// Exact beats partial, then the higher score, then the longer phrase.
    fn beats(&self, other: &Candidate<'_>) -> bool {
        (self.exact, self.score, self.words, self.phrase.len())
            .partial_cmp(&(other.exact, other.score, other.words, other.phrase.len()))
            .is_some_and(|o| o.is_gt())
    }
}

impl PhraseSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `phrase` for `option`. A phrase repeated for the same option is kept once; the same
    /// phrase for two options is an error, since a caller saying it could mean either.
    pub fn add(&mut self, option: &str, phrase: &str) -> Result<(), IntentError> {
        let option = option.trim();
        if option.is_empty() {
            return Err(IntentError::EmptyOption {
                phrase: phrase.to_string(),
            });
        }
        let normalised = words(phrase).join(" ");
        if normalised.is_empty() {
            return Err(IntentError::EmptyPhrase {
                option: option.to_string(),
                phrase: phrase.to_string(),
            });
        }
        if let Some((existing, _)) = self
            .options
            .iter()
            .find(|(o, ps)| o != option && ps.contains(&normalised))
        {
            return Err(IntentError::Conflict {
                phrase: normalised,
                existing: existing.clone(),
                option: option.to_string(),
            });
        }
        match self.options.iter_mut().find(|(o, _)| o == option) {
            Some((_, phrases)) => {
                if !phrases.contains(&normalised) {
                    phrases.push(normalised);
                }
            }
            None => self.options.push((option.to_string(), vec![normalised])),
        }
        Ok(())
    }

    /// The grammar for a recogniser whose vocabulary is `known_word`: every phrase reduced to
    /// the words the model knows (phrases left empty are dropped, duplicates kept once), then
    /// "[unk]" last so out-of-grammar speech is not forced onto a phrase. The second list holds
    /// the dropped words, once each, for a warning.
    pub fn grammar(&self, known_word: impl Fn(&str) -> bool) -> (Vec<String>, Vec<String>) {
        let mut phrases: Vec<String> = Vec::new();
        let mut dropped: Vec<String> = Vec::new();
        for phrase in self.options.iter().flat_map(|(_, ps)| ps) {
            let mut kept = Vec::new();
            for w in phrase.split(' ') {
                if known_word(w) {
                    kept.push(w);
                } else if !dropped.iter().any(|d| d == w) {
                    dropped.push(w.to_string());
                }
            }
            let reduced = kept.join(" ");
            if !reduced.is_empty() && !phrases.contains(&reduced) {
                phrases.push(reduced);
            }
        }
        phrases.push(UNK.to_string());
        (phrases, dropped)
    }

    /// The option `text` selects, if any. `word_confs` are the recogniser's per-word
    /// confidences (missing ones count as the mean of the others, or 1 when none are given);
    /// when `text` is blank its words are taken from `word_confs`.
    pub fn match_transcript(
        &self,
        text: &str,
        word_confs: &[(String, f32)],
    ) -> Option<IntentMatch> {
        let mut heard = words(text);
        if heard.is_empty() {
            heard = word_confs.iter().flat_map(|(w, _)| words(w)).collect();
        }
        let heard = content(&heard);
        if heard.is_empty() {
            return None;
        }
        let confs: Vec<(String, f32)> = word_confs
            .iter()
            .flat_map(|(w, c)| {
                let c = if c.is_nan() { 0.0 } else { c.clamp(0.0, 1.0) };
                words(w).into_iter().map(move |w| (w, c))
            })
            .collect();
        let fallback = if confs.is_empty() {
            1.0
        } else {
            confs.iter().map(|(_, c)| c).sum::<f32>() / confs.len() as f32
        };
        let conf_of = |w: &str| {
            confs
                .iter()
                .filter(|(k, _)| k == w)
                .map(|(_, c)| *c)
                .fold(None, |best: Option<f32>, c| {
                    Some(best.map_or(c, |b| b.max(c)))
                })
                .unwrap_or(fallback)
        };

        let mut best: Option<Candidate<'_>> = None;
        for (option, phrases) in &self.options {
            for phrase in phrases {
                let all: Vec<String> = phrase.split(' ').map(str::to_string).collect();
                let wanted = content(&all);
                let shared: Vec<&String> = wanted.iter().filter(|w| heard.contains(w)).collect();
                if shared.is_empty() {
                    continue;
                }
                // F1 of the two word sets.
                let overlap = 2.0 * shared.len() as f32 / (wanted.len() + heard.len()) as f32;
                if overlap < MIN_OVERLAP {
                    continue;
                }
                let conf = shared.iter().map(|w| conf_of(w)).sum::<f32>() / shared.len() as f32;
                let candidate = Candidate {
                    option,
                    phrase,
                    exact: contains_run(&heard, &wanted),
                    score: (overlap * conf).clamp(0.0, 1.0),
                    words: all.len(),
                };
                if best.as_ref().is_none_or(|b| candidate.beats(b)) {
                    best = Some(candidate);
                }
            }
        }
        best.map(|b| IntentMatch {
            option: b.option.to_string(),
            phrase: b.phrase.to_string(),
            score: b.score,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn menu() -> PhraseSet {
        let mut set = PhraseSet::new();
        for (option, phrase) in [
            ("lost_card", "lost card"),
            ("lost_card", "stolen card"),
            ("block_card", "block my card"),
            ("balance", "check balance"),
            ("agent", "speak to an agent"),
        ] {
            set.add(option, phrase).expect("valid phrase");
        }
        set
    }

    fn confs(pairs: &[(&str, f32)]) -> Vec<(String, f32)> {
        pairs.iter().map(|(w, c)| (w.to_string(), *c)).collect()
    }

    #[test]
    fn i_lost_my_card_selects_lost_card() {
        let m = menu()
            .match_transcript("I lost my card", &[])
            .expect("a match");
        assert_eq!(m.option, "lost_card");
        assert_eq!(m.phrase, "lost card");
        assert!((m.score - 1.0).abs() < 1e-6, "{m:?}");
        let m = menu()
            .match_transcript("um someone has stolen my card", &[])
            .expect("a match");
        assert_eq!(m.option, "lost_card");
        assert_eq!(m.phrase, "stolen card");
    }

    #[test]
    fn one_word_matches_a_longer_phrase_partially() {
        let m = menu().match_transcript("balance", &[]).expect("a match");
        assert_eq!(m.option, "balance");
        assert!((m.score - 2.0 / 3.0).abs() < 1e-6, "{m:?}");
    }

    #[test]
    fn exact_phrase_beats_partial_one() {
        let mut set = PhraseSet::new();
        set.add("report", "stolen").unwrap();
        set.add("credit", "stolen credit card").unwrap();
        // "stolen credit card" shares more words, but only "stolen" was said in full.
        let m = set.match_transcript("card stolen yesterday", &[]).unwrap();
        assert_eq!(m.option, "report");
        let m = set.match_transcript("stolen credit card", &[]).unwrap();
        assert_eq!(m.option, "credit");
    }

    #[test]
    fn ties_go_to_the_longest_phrase() {
        let mut set = PhraseSet::new();
        set.add("short", "check balance").unwrap();
        set.add("long", "check my balance").unwrap();
        let m = set.match_transcript("check balance", &[]).unwrap();
        assert_eq!(m.option, "long");
        assert_eq!(m.phrase, "check my balance");
    }

    #[test]
    fn empty_or_unrelated_transcripts_match_nothing() {
        let set = menu();
        for text in [
            "",
            "   ",
            "[unk]",
            "[unk] [unk]",
            "um uh please",
            "pizza delivery",
            "?!",
        ] {
            assert_eq!(set.match_transcript(text, &[]), None, "{text:?}");
        }
        // One shared word among many is below the overlap threshold.
        assert_eq!(
            set.match_transcript("the weather card is nice today in paris", &[]),
            None
        );
    }

    #[test]
    fn fillers_and_unk_are_ignored() {
        let m = menu()
            .match_transcript("[unk] um I want to uh check my balance please", &[])
            .unwrap();
        assert_eq!(m.option, "balance");
        assert!((m.score - 1.0).abs() < 1e-6, "{m:?}");
    }

    #[test]
    fn word_confidence_scales_the_score() {
        let set = menu();
        let sure = set
            .match_transcript("lost card", &confs(&[("lost", 0.9), ("card", 0.9)]))
            .unwrap();
        let unsure = set
            .match_transcript("lost card", &confs(&[("lost", 0.4), ("card", 0.6)]))
            .unwrap();
        assert!((sure.score - 0.9).abs() < 1e-6, "{sure:?}");
        assert!((unsure.score - 0.5).abs() < 1e-6, "{unsure:?}");
        // Words without a confidence take the mean of the others.
        let partial = set
            .match_transcript("lost card", &confs(&[("lost", 0.2)]))
            .unwrap();
        assert!((partial.score - 0.2).abs() < 1e-6, "{partial:?}");
        // Confidences out of range or NaN are clamped, never propagate.
        let odd = set
            .match_transcript("lost card", &confs(&[("lost", f32::NAN), ("card", 7.0)]))
            .unwrap();
        assert!((odd.score - 0.5).abs() < 1e-6, "{odd:?}");
    }

    #[test]
    fn words_are_taken_from_confidences_when_text_is_blank() {
        let m = menu()
            .match_transcript("", &confs(&[("lost", 0.8), ("card", 0.8)]))
            .unwrap();
        assert_eq!(m.option, "lost_card");
        assert!((m.score - 0.8).abs() < 1e-6);
    }

    #[test]
    fn add_normalises_and_checks_phrases() {
        let mut set = PhraseSet::new();
        set.add("lost", "  Lost   CARD! ").unwrap();
        set.add("lost", "lost card").unwrap();
        set.add("help", "I don't know").unwrap();
        set.add("help", "check-in").unwrap();
        let (phrases, dropped) = set.grammar(|_| true);
        assert_eq!(phrases, ["lost card", "i don't know", "check in", "[unk]"]);
        assert!(dropped.is_empty());
        assert_eq!(
            set.add("other", "LOST card"),
            Err(IntentError::Conflict {
                phrase: "lost card".into(),
                existing: "lost".into(),
                option: "other".into(),
            })
        );
        assert!(matches!(
            set.add("x", " ?! "),
            Err(IntentError::EmptyPhrase { .. })
        ));
        assert!(matches!(
            set.add(" ", "hello"),
            Err(IntentError::EmptyOption { .. })
        ));
    }

    #[test]
    fn grammar_reports_words_the_model_does_not_know() {
        let mut set = menu();
        set.add("agent", "operator").unwrap();
        let vocab = [
            "lost", "card", "stolen", "my", "check", "balance", "speak", "to", "an",
        ];
        let (phrases, dropped) = set.grammar(|w| vocab.contains(&w));
        assert_eq!(
            phrases,
            [
                "lost card",
                "stolen card",
                "my card",
                "check balance",
                "speak to an",
                "[unk]"
            ]
        );
        assert_eq!(dropped, ["block", "agent", "operator"]);
        let empty = PhraseSet::new().grammar(|_| true);
        assert_eq!(empty, (vec!["[unk]".to_string()], vec![]));
    }

    #[test]
    fn chinese_phrases_match_by_word() {
        let mut set = PhraseSet::new();
        set.add("lost_card", "挂失 银行卡").unwrap();
        set.add("balance", "查询 余额").unwrap();
        let m = set.match_transcript("我 要 挂失 银行卡", &[]).unwrap();
        assert_eq!(m.option, "lost_card");
        assert_eq!(set.match_transcript("你好", &[]), None);
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_transcript_is_handled(
                text in any::<String>(),
                confs in proptest::collection::vec((any::<String>(), any::<f32>()), 0..6),
                phrase in any::<String>(),
            ) {
                let mut set = menu();
                let _ = set.add("free", &phrase);
                let _ = set.grammar(|w| w.len() % 2 == 0);
                if let Some(m) = set.match_transcript(&text, &confs) {
                    prop_assert!((0.0..=1.0).contains(&m.score), "{m:?}");
                }
            }
        }
    }
}
