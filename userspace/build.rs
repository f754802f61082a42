//! Embeds the XDP program built by `cargo xtask build-ebpf`. When it has not been built,
//! an empty object is embedded and the binary says which command builds it.
use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let object = std::env::var_os("XDP_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target/bpfel-unknown-none/release/xdp-ebpf"));
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("xdp-ebpf.o");
    println!("cargo:rerun-if-env-changed=XDP_EBPF_OBJECT");
    println!("cargo:rerun-if-changed={}", object.display());
    let bytes = std::fs::read(&object).unwrap_or_default();
    std::fs::write(&out, bytes).expect("write OUT_DIR/xdp-ebpf.o");
}
