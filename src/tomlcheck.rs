//! Reading the TOML files people write (dialplans, campaigns) with positions kept, so every
//! problem is reported at `file:line:column`. Each file's checker supplies `error`; the readers
//! of common value shapes are shared here.
use std::ops::Range;
use std::path::Path;

use toml::de::{DeString, DeTable, DeValue};
use toml::Spanned;

use crate::ivr::dialplan::{did_you_mean, printable, Diagnostic, Severity};

pub(crate) type Span = Range<usize>;
pub(crate) type Key<'i> = Spanned<DeString<'i>>;
pub(crate) type Item<'i> = Spanned<DeValue<'i>>;

/// The problems found in one file, each placed at its 1-based line and column (in characters).
pub(crate) struct Diagnostics<'a> {
    file: &'a Path,
    text: &'a str,
    /// Byte offset where each line starts.
    line_starts: Vec<usize>,
    pub(crate) list: Vec<Diagnostic>,
}

impl<'a> Diagnostics<'a> {
    pub(crate) fn new(file: &'a Path, text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i.saturating_add(1)))
            .collect();
        Diagnostics {
            file,
            text,
            line_starts,
            list: Vec::new(),
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while offset > 0 && !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self
            .line_starts
            .get(line.saturating_sub(1))
            .copied()
            .unwrap_or(0)
            .min(offset);
        let column = self
            .text
            .get(start..offset)
            .map_or(0, |s| s.chars().count());
        (line.max(1), column.saturating_add(1))
    }

    pub(crate) fn push(&mut self, span: Span, severity: Severity, message: String) {
        let (line, column) = self.position(span.start);
        self.list.push(Diagnostic {
            file: self.file.to_path_buf(),
            line,
            column,
            severity,
            message,
        });
    }

    pub(crate) fn warning(&mut self, span: Span, message: String) {
        self.push(span, Severity::Warning, message);
    }

    pub(crate) fn has_errors(&self) -> bool {
        self.list.iter().any(|d| d.severity == Severity::Error)
    }
}

pub(crate) trait ValueReader {
    /// Records an error at `span` (byte offsets into the file).
    fn error(&mut self, span: Span, message: String);

    fn unknown_field(&mut self, key: &Key<'_>, allowed: &[&str], place: &str) {
        let name = key.get_ref().as_ref();
        let hint = match did_you_mean(name, allowed.iter().copied()) {
            Some(s) => format!(" (did you mean '{s}'?)"),
            None => format!("; expected one of: {}", allowed.join(", ")),
        };
        self.error(
            key.span(),
            format!("unknown field '{}' in {place}{hint}", printable(name)),
        );
    }

    fn type_error(&mut self, value: &Item<'_>, field: &str, expected: &str) {
        self.error(
            value.span(),
            format!(
                "'{field}' must be {expected}, found {}",
                value.get_ref().type_str()
            ),
        );
    }

    fn string(&mut self, value: &Item<'_>, field: &str) -> Option<String> {
        match value.get_ref().as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                self.type_error(value, field, "a string");
                None
            }
        }
    }

    fn boolean(&mut self, value: &Item<'_>, field: &str) -> Option<bool> {
        match value.get_ref().as_bool() {
            Some(b) => Some(b),
            None => {
                self.type_error(value, field, "true or false");
                None
            }
        }
    }

    fn table<'v, 'i>(&mut self, value: &'v Item<'i>, field: &str) -> Option<&'v DeTable<'i>> {
        match value.get_ref().as_table() {
            Some(t) => Some(t),
            None => {
                self.type_error(value, field, "a table");
                None
            }
        }
    }
}
