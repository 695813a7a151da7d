//! Build script: the exact versions of the crates `engine_info` reports, read from Cargo.lock
//! (so `mipo engine-info` says what was compiled in, not what Cargo.toml allows).

use std::env;
use std::fs;
use std::path::Path;

/// Crates whose resolved version `engine_info` reports, with the env var each lands in.
const REPORTED: &[(&str, &str)] = &[
    ("tokenizers", "MIPO_TOKENIZERS_VERSION"),
    ("minijinja", "MIPO_MINIJINJA_VERSION"),
];

fn main() {
    let manifest_dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let lock_path = Path::new(&manifest_dir).join("Cargo.lock");
    println!("cargo:rerun-if-changed=Cargo.lock");
    println!("cargo:rerun-if-changed=build.rs");
    let lock = fs::read_to_string(&lock_path).unwrap_or_default();
    for (name, var) in REPORTED {
        let version = locked_version(&lock, name).unwrap_or_else(|| {
            println!(
                "cargo:warning={name} is not in {}: engine_info reports it as unknown",
                lock_path.display()
            );
            "unknown".to_string()
        });
        println!("cargo:rustc-env={var}={version}");
    }
}

/// The version of the one `[[package]]` named `name` in a Cargo.lock (None when absent).
fn locked_version(lock: &str, name: &str) -> Option<String> {
    let wanted = format!("name = \"{name}\"");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == wanted {
            for next in lines.by_ref() {
                let next = next.trim();
                if let Some(rest) = next.strip_prefix("version = ") {
                    return Some(rest.trim_matches('"').to_string());
                }
                if next.is_empty() || next.starts_with("[[") {
                    break;
                }
            }
        }
    }
    None
}
