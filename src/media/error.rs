//! Errors of the media layer.
use std::path::PathBuf;

use crate::media::codec::CodecKind;

/// Everything in `media` that can fail. File errors name the file; codec errors name
/// the codec and the operation.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// libopus refused to create a codec or to process a frame.
    #[error("{codec:?} {operation} failed: {source}")]
    Codec {
        codec: CodecKind,
        operation: &'static str,
        #[source]
        source: opus::Error,
    },
    /// A payload could not be decoded by a codec that has no error source of its own.
    #[error("{codec:?} cannot decode a {len}-byte payload: {reason}")]
    BadPayload {
        codec: CodecKind,
        len: usize,
        reason: &'static str,
    },
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a WAV file hound can read (bad header, truncated data, ...).
    #[error("{}: not a readable WAV file: {source}", path.display())]
    Wav {
        path: PathBuf,
        #[source]
        source: hound::Error,
    },
    /// The WAV file is readable but its content cannot be used (format, rate, length).
    #[error("{}: {reason}", path.display())]
    Audio { path: PathBuf, reason: String },
    /// A media configuration value is unusable (e.g. a payload type above 127).
    #[error("invalid media configuration: {0}")]
    Config(String),
}
