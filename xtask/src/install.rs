//! Installs what a fresh Debian 12 machine lacks to build and test the project: Debian
//! packages, the nightly `rust-src` component and bpf-linker built against LLVM 22.
use anyhow::{Context, bail};
use std::path::PathBuf;
use std::process::Command;

/// Packages to build (a C compiler for ring and the fuzz targets; bpf-linker needs LLVM 22;
/// gcc is `cc`, rustc's linker and the compiler of tests/exec.rs's C programs).
pub const BUILD_PACKAGES: &[&str] = &[
    "gcc",
    "clang",
    "llvm",
    "pkg-config",
    "libelf-dev",
    "zlib1g-dev",
    "llvm-22-dev",
];
/// The real peers and tools of the test world.
pub const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "nftables",
    "ethtool",
    "nginx-light",
    "dnsmasq",
    "iperf3",
    "curl",
    "wrk",
    "tshark",
    "python3",
    "iputils-ping",
    "socat",
    "hyperfine",
    // The https tests' CA and server certificate (world.rs `make_test_ca`).
    "openssl",
    // `script`, for the binary-to-terminal test of curl.
    "bsdutils",
    // The public suffix list curl's cookie jar checks Domain= against (libpsl's too).
    "publicsuffix",
    // The HTTP proxy of curl's proxy tests (CONNECT for https).
    "tinyproxy",
    // Unmodified programs under `userspace exec` (tests/exec.rs); python3 too.
    "wget",
    "redis-server",
    "redis-tools",
    "memcached",
];

pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn missing_packages(packages: &[&str]) -> Vec<String> {
    packages
        .iter()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .map(|p| p.to_string())
        .collect()
}

pub fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    let missing = missing_packages(packages);
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    let sudo = |c: &str| {
        let mut cmd = if is_root() {
            Command::new(c)
        } else {
            Command::new("sudo").tap_arg(c)
        };
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    run(sudo("apt-get").args(["update", "-qq"]))?;
    run(sudo("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing))
}

trait TapArg {
    fn tap_arg(self, arg: &str) -> Self;
}
impl TapArg for Command {
    fn tap_arg(mut self, arg: &str) -> Self {
        self.arg(arg);
        self
    }
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn cargo_home_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        });
    home.join("bin").join(name)
}

/// The nightly toolchain with `rust-src`, and bpf-linker for LLVM 22.
pub fn ebpf_toolchain() -> anyhow::Result<()> {
    apt_install(BUILD_PACKAGES)?;
    let has_nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_nightly {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let components = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()?;
    if !String::from_utf8_lossy(&components.stdout).contains("rust-src") {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    let linker = cargo_home_bin("bpf-linker");
    let linker_ok = Command::new(&linker)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        || Command::new("bpf-linker")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !linker_ok {
        eprintln!("xtask: building bpf-linker against LLVM 22 (a few minutes, once)");
        let path = format!(
            "/usr/lib/llvm-22/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        run(Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("PATH", path))?;
    }
    Ok(())
}

/// cargo-fuzz, for the fuzz targets (they build with the nightly toolchain).
pub fn cargo_fuzz() -> anyhow::Result<()> {
    let present = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        eprintln!("xtask: installing cargo-fuzz");
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}
