//! Embeds the web console (`console/dist`, built by `scripts/build-console.sh`) in the binary:
//! writes `console_assets.rs`, a table of `(path, include_bytes!(...))`. Written by hand rather
//! than with an embedding crate because Vite's output changes names on every build (content
//! hashes), and `rerun-if-changed` on the directory is what makes cargo notice new files.
//! Without a built console the table is empty and `/` says how to build it.

use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let dist = root.join("console").join("dist");
    println!("cargo:rerun-if-changed=console/dist");
    println!("cargo:rerun-if-changed=build.rs");
    let mut all = Vec::new();
    files(&dist, &mut all);
    all.sort();
    let mut code = String::from("/// The console's files: path under `/`, bytes.\npub static ASSETS: &[(&str, &[u8])] = &[\n");
    for f in &all {
        let rel = f
            .strip_prefix(&dist)
            .expect("under dist")
            .to_string_lossy()
            .replace('\\', "/");
        code.push_str(&format!(
            "    ({rel:?}, include_bytes!({:?})),\n",
            f.display().to_string()
        ));
    }
    code.push_str("];\n");
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it")).join("console_assets.rs");
    std::fs::write(out, code).expect("OUT_DIR is writable");
}
