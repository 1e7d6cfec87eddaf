//! The contacts CSV importer: every row is either imported or reported bad, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use warmline::dialer::contacts::read_contacts;

fuzz_target!(|data: &[u8]| {
    let mut good = 0u64;
    let mut bad = 0u64;
    if let Ok(summary) = read_contacts(
        data,
        |_row| {
            good += 1;
            Ok::<(), std::convert::Infallible>(())
        },
        |_bad| bad += 1,
    ) {
        assert_eq!(summary.imported, good);
        assert!(summary.rows >= good);
    }
});
