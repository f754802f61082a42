//! `cargo xtask`: build the eBPF program, set up the test world, run the demo and tests.
use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::Command;
use xtask::install::{self, run};
use xtask::world::{self, World, WorldOptions};

#[derive(Parser)]
#[command(name = "xtask", about = "Project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the XDP program (installs nightly rust-src, bpf-linker and Debian packages first)
    BuildEbpf,
    /// Install every Debian package, toolchain component and tool the project needs
    InstallDeps,
    /// Create or remove a test world of network namespaces
    Netns {
        #[command(subcommand)]
        action: NetnsAction,
    },
    /// Build everything, fetch http://example.com/ through the stack inside a namespace world, tear down
    Demo,
    /// End-to-end benchmark, side by side with the kernel and the AF_XDP ceiling (root)
    Bench {
        /// Run only these sections (comma-separated): process, bulk, rr, cps, serve,
        /// idle, queues, exec, ipv6. The charts in docs/ are drawn only by a full run.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Measure this `userspace` binary instead of the one built here (an A/B
        /// against another commit's build, in the same world)
        #[arg(long)]
        binary: Option<PathBuf>,
    },
    /// Run each fuzz target for a bounded time from the committed seed corpus
    Fuzz {
        /// Seconds per target
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// The full check: fmt, clippy, unit and property tests, namespace integration tests (root)
    Test {
        /// Skip the namespace tests (no root needed)
        #[arg(long)]
        unit_only: bool,
    },
}

#[derive(Subcommand)]
enum NetnsAction {
    /// Create a world with nginx and dnsmasq and leave it running; prints its id
    Up {
        /// Random loss on the router, percent
        #[arg(long, default_value_t = 0)]
        loss: u32,
        /// RX/TX queues of the host link
        #[arg(long)]
        queues: Option<u32>,
        /// Address families: ipv4, dual (IPv4 and IPv6) or ipv6 (IPv6 only)
        #[arg(long, default_value = "ipv4", value_parser = parse_family)]
        family: world::Family,
        /// With IPv6: no IPv6 route on the host beyond its link
        #[arg(long)]
        no_host_ipv6_route: bool,
    },
    /// Remove the world with this id
    Down { id: String },
}

fn parse_family(name: &str) -> Result<world::Family, String> {
    world::Family::from_name(name).ok_or_else(|| format!("{name}: ipv4, dual or ipv6"))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

fn build_ebpf() -> anyhow::Result<()> {
    install::ebpf_toolchain()?;
    let root = workspace_root();
    let mut cmd = Command::new("rustup");
    cmd.current_dir(root.join("xdp-ebpf"))
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .args([
            "--bin",
            "xdp-ebpf",
            "--config",
            "profile.release.panic=\"abort\"",
        ])
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO");
    // bpf-linker may have been installed in this very run: make sure cargo finds it.
    let cargo_bin = PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo/bin");
    cmd.env(
        "PATH",
        format!(
            "{}:{}",
            cargo_bin.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    );
    run(&mut cmd).context("building the XDP program")?;
    let object = root.join("target/bpfel-unknown-none/release/xdp-ebpf");
    if !object.exists() {
        bail!("the build did not produce {}", object.display());
    }
    eprintln!("xtask: built {}", object.display());
    Ok(())
}

fn require_root(what: &str) -> anyhow::Result<()> {
    if !install::is_root() {
        bail!("{what} needs root (network namespaces, XDP): run it with sudo");
    }
    Ok(())
}

fn demo() -> anyhow::Result<()> {
    require_root("the demo")?;
    install::apt_install(install::TEST_PACKAGES)?;
    build_ebpf()?;
    run(cargo().args(["build", "--release", "-p", "userspace"]))?;
    let binary = workspace_root().join("target/release/userspace");
    let world = World::up(&WorldOptions {
        nginx: true,
        dnsmasq: true,
        ..Default::default()
    })?;
    eprintln!(
        "xtask: namespaces {} / {} / {}; running the stack's curl in {}",
        world.host, world.router, world.server, world.host
    );
    let status = world
        .exec(&world.host)
        .arg(&binary)
        .args(["curl", "-v", "--stats", "http://example.com/"])
        .status()?;
    drop(world);
    if !status.success() {
        bail!("curl through the stack failed: {status}");
    }
    eprintln!("xtask: demo done, namespaces removed");
    Ok(())
}

fn test(unit_only: bool) -> anyhow::Result<()> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))
        .context("cargo fmt --check: run `cargo fmt --all`")?;
    if !unit_only {
        require_root("the namespace tests")?;
        install::apt_install(install::TEST_PACKAGES)?;
        build_ebpf()?;
    }
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The library alone, and with its async sockets.
    for features in [&["--no-default-features"][..], &["--features", "tokio"]] {
        run(cargo()
            .args(["clippy", "-p", "userspace", "--all-targets"])
            .args(features)
            .args(["--", "-D", "warnings"]))?;
    }
    run(cargo()
        .args(["doc", "--no-deps", "-p", "userspace", "--features", "tokio"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    run(cargo().args(["test", "--workspace"]))?;
    run(cargo().args(["test", "-p", "userspace", "--features", "tokio", "--doc"]))?;
    if !unit_only {
        for suite in ["netns", "curl_diff", "library", "exec", "ipv6"] {
            run(cargo().args([
                "test",
                "--release",
                "-p",
                "userspace",
                "--features",
                "netns-tests",
                "--test",
                suite,
                "--",
                "--test-threads=1",
            ]))?;
        }
        fuzz(30)?;
    }
    Ok(())
}

pub const FUZZ_TARGETS: &[&str] = &["receive_path", "connection"];

/// Each fuzz target for `seconds`; new inputs go to target/fuzz-corpus, not the repo.
fn fuzz(seconds: u64) -> anyhow::Result<()> {
    install::ebpf_toolchain()?; // the nightly toolchain
    install::cargo_fuzz()?;
    let root = workspace_root();
    for target in FUZZ_TARGETS {
        let scratch = root.join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&scratch)?;
        let seeds = root.join("fuzz/corpus").join(target);
        run(Command::new("rustup")
            .current_dir(root.join("fuzz"))
            .args(["run", "nightly", "cargo", "fuzz", "run", target])
            .arg(&scratch)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO"))
        .with_context(|| format!("fuzz target {target} found a crash (see fuzz/artifacts)"))?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::BuildEbpf => build_ebpf(),
        Task::InstallDeps => {
            install::apt_install(install::TEST_PACKAGES)?;
            install::ebpf_toolchain()?;
            install::cargo_fuzz()
        }
        Task::Netns {
            action:
                NetnsAction::Up {
                    loss,
                    queues,
                    family,
                    no_host_ipv6_route,
                },
        } => {
            require_root("netns up")?;
            let world = World::up(&WorldOptions {
                nginx: true,
                dnsmasq: true,
                big_file: Some(64 << 20),
                queues,
                family,
                no_host_ipv6_route,
                ..Default::default()
            })?;
            world.set_loss(loss)?;
            println!("{}", world.host);
            println!("{}", world.router);
            println!("{}", world.server);
            let id = world.keep();
            eprintln!("xtask: world {id} is up; remove it with `cargo xtask netns down {id}`");
            Ok(())
        }
        Task::Netns {
            action: NetnsAction::Down { id },
        } => {
            world::destroy(&id);
            Ok(())
        }
        Task::Demo => demo(),
        Task::Test { unit_only } => test(unit_only),
        Task::Fuzz { seconds } => fuzz(seconds),
        Task::Bench { only, binary } => {
            require_root("the benchmark")?;
            xtask::bench::check_sections(&only)?;
            install::apt_install(install::TEST_PACKAGES)?;
            build_ebpf()?;
            // The preload library for the exec rows sits beside the binary.
            run(cargo().args([
                "build",
                "--release",
                "-p",
                "userspace",
                "-p",
                "userspace-preload",
            ]))?;
            xtask::bench::bench(
                &workspace_root(),
                &binary.unwrap_or_else(|| workspace_root().join("target/release/userspace")),
                &only,
            )
        }
    }
}
