//! The dialplan loader on arbitrary text (prompts assumed to exist).
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use warmline::ivr::dialplan::{AnyPrompt, Dialplan};

fuzz_target!(|text: &str| {
    let _ = Dialplan::parse_str(Path::new("fuzz.toml"), text, &AnyPrompt);
});
