//! Fingerprints this crate's source, so a registry image (registry/image.rs) written by one build
//! of tollgate is never adopted by another: images live in Envoy's shared data, which outlives a
//! module replaced by a live update, and the crate version alone does not change per build.
use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    collect(root, &mut files);
    files.sort();
    // FNV-1a over every file's path and contents: a fingerprint, not a defence.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for file in &files {
        let rel = file.strip_prefix(root).unwrap_or(file);
        let contents = std::fs::read(file).unwrap_or_default();
        for b in rel.to_string_lossy().bytes().chain([0]).chain(contents) {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    println!("cargo:rustc-env=TOLLGATE_CORE_SOURCE={hash:016x}");
    println!("cargo:rerun-if-changed={}", root.display());
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs" || e == "toml") {
            out.push(path);
        }
    }
}
