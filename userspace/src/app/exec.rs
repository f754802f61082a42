//! `userspace exec [STACK FLAGS] -- PROGRAM [ARGS...]`: runs an unmodified program with
//! the preload library (`libuserspace_preload.so`, built beside this binary), which
//! puts its TCP over IPv4 on the stack. The flags become the `USERSPACE_*` variables
//! the library reads (`userspace::net::exec_env`).
use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use userspace::net::exec_env;

/// The library's file name, as cargo builds it.
pub const LIBRARY: &str = "libuserspace_preload.so";
/// Names the library's path instead of looking beside the binary.
pub const LIBRARY_ENV: &str = "USERSPACE_PRELOAD";

#[derive(clap::Args, Debug, Clone)]
pub struct ExecArgs {
    /// Interface to attach to (default: the default route's)
    #[arg(long, value_name = "IF")]
    pub iface: Option<String>,
    /// Own this IPv4 address on the link (owned-IP mode) instead of sharing the interface's
    #[arg(long, value_name = "ADDR")]
    pub ip: Option<Ipv4Addr>,
    /// Next hop for every destination
    #[arg(long, value_name = "ADDR")]
    pub gateway: Option<Ipv4Addr>,
    /// Pin the poll loop to this CPU
    #[arg(long, value_name = "N")]
    pub cpu: Option<usize>,
    /// Bind only this RX queue
    #[arg(long, value_name = "N")]
    pub queue: Option<u32>,
    /// XDP attach mode
    #[arg(long, value_name = "MODE", value_parser = ["native", "skb"])]
    pub xdp_mode: Option<String>,
    /// Turn Nagle's algorithm off on every connection
    #[arg(long)]
    pub nodelay: bool,
    /// Bytes buffered between a socket and the stack each way
    #[arg(long, value_name = "BYTES")]
    pub buffer: Option<usize>,
    /// Let the poll loop sleep at once when idle
    #[arg(long)]
    pub no_busy_poll: bool,
    /// Say, for each socket, whether it went to the stack or the kernel, and why
    #[arg(short, long)]
    pub verbose: bool,
    /// The program and its arguments (after `--`)
    #[arg(required = true, trailing_var_arg = true, value_name = "PROGRAM")]
    pub command: Vec<OsString>,
}

/// Where the library is: `$USERSPACE_PRELOAD`, else beside this binary (or one
/// directory up, for a test binary in `target/*/deps`).
pub fn library() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(LIBRARY_ENV) {
        let path = PathBuf::from(path);
        // ld.so would skip a missing library with a warning and run on the kernel.
        return match path.is_file() {
            true => Ok(path),
            false => Err(format!("{LIBRARY_ENV}={}: no such file", path.display())),
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    [dir.join(LIBRARY), dir.join("..").join(LIBRARY)]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "{LIBRARY} is not beside {} (build it with `cargo build --release`, or name it with {LIBRARY_ENV}=PATH)",
                exe.display()
            )
        })
}

/// The environment for the program: LD_PRELOAD first in line, and the stack's flags.
pub fn environment(args: &ExecArgs, library: &Path) -> Vec<(&'static str, OsString)> {
    let mut preload = library.as_os_str().to_owned();
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        preload.push(":");
        preload.push(old);
    }
    let mut env = vec![("LD_PRELOAD", preload)];
    let mut set = |name: &'static str, value: Option<String>| {
        if let Some(v) = value {
            env.push((name, v.into()));
        }
    };
    set(exec_env::IFACE, args.iface.clone());
    set(exec_env::IP, args.ip.map(|a| a.to_string()));
    set(exec_env::GATEWAY, args.gateway.map(|a| a.to_string()));
    set(exec_env::CPU, args.cpu.map(|c| c.to_string()));
    set(exec_env::QUEUE, args.queue.map(|q| q.to_string()));
    set(exec_env::XDP_MODE, args.xdp_mode.clone());
    set(exec_env::NODELAY, args.nodelay.then(|| "1".into()));
    set(exec_env::BUFFER, args.buffer.map(|b| b.to_string()));
    set(
        exec_env::NO_BUSY_POLL,
        args.no_busy_poll.then(|| "1".into()),
    );
    set(exec_env::VERBOSE, args.verbose.then(|| "1".into()));
    env
}

/// Replaces this process with the program; returns only if that failed, with the
/// shell's exit code (127: not found, 126: not runnable) and the reason.
pub fn run(args: &ExecArgs) -> (u8, String) {
    let library = match library() {
        Ok(l) => l,
        Err(e) => return (2, e),
    };
    let (program, rest) = args.command.split_first().expect("clap requires PROGRAM");
    let mut command = std::process::Command::new(program);
    command.args(rest).envs(environment(args, &library));
    let e = command.exec();
    let code = if e.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    };
    (code, format!("{}: {e}", program.to_string_lossy()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        exec: ExecArgs,
    }

    #[test]
    fn flags_become_the_librarys_variables_and_the_program_keeps_its_own() {
        let cli = Cli::parse_from([
            "x",
            "--iface",
            "veth0",
            "-v",
            "--",
            "curl",
            "-v",
            "http://a/",
        ]);
        assert_eq!(cli.exec.command, ["curl", "-v", "http://a/"]);
        let env = environment(&cli.exec, Path::new("/lib/p.so"));
        assert!(env.contains(&(exec_env::IFACE, "veth0".into())));
        assert!(env.contains(&(exec_env::VERBOSE, "1".into())));
        assert!(
            env.iter()
                .any(|(k, v)| *k == "LD_PRELOAD" && v.to_string_lossy().starts_with("/lib/p.so"))
        );
        assert!(!env.iter().any(|(k, _)| *k == exec_env::IP));
    }
}
