//! Reading the TOML files people write (dialplans, campaigns) with positions kept, so every
//! problem is reported at `file:line:column`. Each file's checker supplies `error`; the readers
//! of common value shapes are shared here.
use std::ops::Range;

use toml::de::{DeString, DeTable, DeValue};
use toml::Spanned;

use crate::ivr::dialplan::{did_you_mean, printable};

pub(crate) type Span = Range<usize>;
pub(crate) type Key<'i> = Spanned<DeString<'i>>;
pub(crate) type Item<'i> = Spanned<DeValue<'i>>;

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
