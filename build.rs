// sqlx::migrate! embeds migrations at compile time; a new migration file must trigger a rebuild.
// libvosk.so comes from the PyPI wheel (scripts/setup-vosk.sh): the vosk crate links `-l vosk`
// without a search path, so we add one and an rpath. espeak-ng (built by espeak-rs) needs
// Debian's static libsonic.
fn main() {
    println!("cargo:rerun-if-changed=migrations");

    let dir = std::env::var("VOSK_LIB_DIR")
        .unwrap_or_else(|_| format!("{}/.cache/speech/vosk/lib", env!("CARGO_MANIFEST_DIR")));
    println!("cargo:rerun-if-env-changed=VOSK_LIB_DIR");
    println!("cargo:rerun-if-changed={dir}/libvosk.so");
    if !std::path::Path::new(&dir).join("libvosk.so").is_file() {
        println!(
            "cargo:warning=libvosk.so not found in {dir}: run scripts/setup-vosk.sh (or set VOSK_LIB_DIR)"
        );
    }
    println!("cargo:rustc-link-search=native={dir}");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");

    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    println!("cargo:rustc-link-search=native=/usr/lib/{arch}-linux-gnu");
    println!("cargo:rustc-link-lib=static=sonic");
}
