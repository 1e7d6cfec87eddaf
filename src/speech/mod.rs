//! Speech: voice activity detection, intent matching, text normalisation, recognition (Vosk)
//! and synthesis (Piper).
pub mod asr;
pub mod intent;
pub mod normalize;
pub mod speaker_eval;
pub mod tts;
pub mod vad;
pub mod voiceprint;
