//! Embeds the XDP program built by `cargo xtask build-ebpf` (or the object named by
//! `XDP_EBPF_OBJECT`). Inside this project's workspace a missing object is embedded
//! empty, so that unit tests and clippy run before the eBPF build, and the binary says
//! which command builds it. A program that depends on the library (from git, a registry
//! or a path) fails to build instead, with the one line saying what to run, as does a
//! `XDP_EBPF_OBJECT` that names no file.
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let named = std::env::var_os("XDP_EBPF_OBJECT").map(PathBuf::from);
    let workspace_target = manifest.join("../target");
    let object = named
        .clone()
        .unwrap_or_else(|| workspace_target.join("bpfel-unknown-none/release/xdp-ebpf"));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let out = out_dir.join("xdp-ebpf.o");
    println!("cargo::rerun-if-env-changed=XDP_EBPF_OBJECT");
    println!("cargo::rerun-if-changed={}", object.display());
    let bytes = match std::fs::read(&object) {
        Ok(bytes) => bytes,
        Err(_) if named.is_none() && inside(&out_dir, &workspace_target) => Vec::new(),
        Err(_) => {
            let repository = manifest.parent().unwrap_or(&manifest);
            println!(
                "cargo::error=the XDP program {} is not built: run `cargo xtask build-ebpf` in {} (nightly and bpf-linker, see its README), or set XDP_EBPF_OBJECT to the built object",
                object.display(),
                repository.display()
            );
            return;
        }
    };
    std::fs::write(&out, bytes).expect("write OUT_DIR/xdp-ebpf.o");
}

/// Whether `dir` lies under `root` (this workspace's own target directory).
fn inside(dir: &Path, root: &Path) -> bool {
    match (dir.canonicalize(), root.canonicalize()) {
        (Ok(dir), Ok(root)) => dir.starts_with(root),
        _ => false,
    }
}
