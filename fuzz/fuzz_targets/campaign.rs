//! The campaign file loader on arbitrary text. Relative `contacts`/`holidays` paths resolve
//! under a directory that does not exist, so nothing on disk is read.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use warmline::dialer::campaign::Campaign;
use warmline::dialer::policy::FatigueRule;

fuzz_target!(|text: &str| {
    // Absolute paths would make the loader read real files (e.g. /dev/zero): not the parser.
    if text.contains("\"/") || text.contains("'/") {
        return;
    }
    let _ = Campaign::parse_str(
        Path::new("/nonexistent-warmline-fuzz/c.toml"),
        text,
        &FatigueRule::default(),
    );
});
