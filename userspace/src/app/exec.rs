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
    /// Let the poll loop sleep at once when idle (and a wait on stack sockets park the
    /// loop without spinning first)
    #[arg(long)]
    pub no_busy_poll: bool,
    /// Run the stack's poll loop on a thread of its own, which the program's threads
    /// hand every call to. Default: the program's threads turn the loop themselves when
    /// they call into a stack socket or wait (after a short spin), and a background
    /// thread turns it while none does (the program sleeps in another wait, or computes)
    #[arg(long)]
    pub loop_thread: bool,
    /// Share the interface with other programs: go through its switch (started by the
    /// first program run with --share, gone after the last), which owns the XDP program
    /// and the queues; several programs, and the children a server forks, each get their
    /// own connections
    #[arg(long)]
    pub share: bool,
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
    set(exec_env::LOOP_THREAD, args.loop_thread.then(|| "1".into()));
    set(exec_env::VERBOSE, args.verbose.then(|| "1".into()));
    set(exec_env::SWITCH, args.share.then(|| "1".into()));
    env
}

/// Why `--share --ip` is refused: every process's stack would need the owned address's
/// ARP (and ICMP) answered once, by the switch, and the switch steers only the
/// interface's own address today.
pub const SHARE_WITH_IP: &str = "--share with --ip is not supported: the switch serves the interface's own address only (an owned address needs its ARP answered by the switch, not by each process's stack); leave out --ip, or --share to run one program on the owned address";

/// Replaces this process with the program; returns only if that failed, with the
/// shell's exit code (127: not found, 126: not runnable) and the reason.
pub fn run(args: &ExecArgs) -> (u8, String) {
    if args.share && args.ip.is_some() {
        return (2, SHARE_WITH_IP.into());
    }
    let library = match library() {
        Ok(l) => l,
        Err(e) => return (2, e),
    };
    let (program, rest) = args.command.split_first().expect("clap requires PROGRAM");
    let mut command = std::process::Command::new(program);
    command.args(rest).envs(environment(args, &library));
    // The program inherits a keep-alive connection to the switch, which stays until
    // the program (and its children) end, even before their first socket.
    let _hold = match args.share {
        true => match join_switch(args) {
            Ok(conn) => Some(conn),
            Err(e) => return (2, format!("--share: {e}")),
        },
        false => None,
    };
    // Without the switch, a guard resets the peers of a program that dies with
    // connections open (the switch does that for its clients).
    if !args.share {
        match start_exit_guard(args.verbose) {
            Ok(table) => {
                command.env(exec_env::PEER_TABLE, table);
            }
            Err(e) => return (2, format!("starting the exit guard: {e}")),
        }
    }
    let e = command.exec();
    let code = if e.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    };
    (code, format!("{}: {e}", program.to_string_lossy()))
}

/// Makes the exit guard's table (a memfd the program inherits) and starts the guard,
/// which watches this process (the program, once it is exec'd); returns the table's
/// path for the program's stack. See [`userspace::device::exit_guard`].
fn start_exit_guard(verbose: bool) -> std::io::Result<String> {
    use userspace::device::exit_guard::{GUARD_ARG, new_table};
    // Not close-on-exec: the guard and the program both inherit it.
    // The fd stays open in the program, never closed: it is the table's name there.
    let fd = std::os::fd::IntoRawFd::into_raw_fd(new_table()?);
    let path = format!("/proc/self/fd/{fd}");
    let mut guard = std::process::Command::new(std::env::current_exe()?);
    guard
        .arg(DETACH_ARG)
        .arg(GUARD_ARG)
        .arg(std::process::id().to_string())
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        // Its own process group: a Ctrl-C or a signal to the program's group does not
        // end the guard before it can do its work.
        .process_group(0);
    if !verbose {
        guard.stderr(std::process::Stdio::null());
    }
    detached(&mut guard)?;
    Ok(path)
}

/// The hidden argument of a process that starts the rest of its arguments as a new
/// process and exits at once: what `exec` starts beside the program (the switch, the
/// exit guard) is then nobody's child but init's, so the program, which replaces
/// `exec`, never sees it among its children (a shell's `wait` would wait for it).
pub const DETACH_ARG: &str = "__detach";

/// Runs `command` (`userspace __detach ...`): returns once the process it starts is on
/// its way.
fn detached(command: &mut std::process::Command) -> std::io::Result<()> {
    let status = command.status()?;
    if !status.success() {
        return Err(std::io::Error::other(format!("{status}")));
    }
    Ok(())
}

/// `userspace __detach ARGS...`: starts this binary with `ARGS` (the fds, stdio and
/// process group inherited) and exits without waiting for it.
pub fn run_detached(args: &[std::ffi::OsString]) -> u8 {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("userspace: {e}");
            return 1;
        }
    };
    match std::process::Command::new(exe).args(args).spawn() {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("userspace: {e}");
            1
        }
    }
}

/// `userspace __exit-guard PID TABLE`: the guard's process.
pub fn run_exit_guard(args: &[String]) -> u8 {
    let (Some(pid), Some(path)) = (args.first().and_then(|p| p.parse().ok()), args.get(1)) else {
        eprintln!("userspace: exit guard: expected PID TABLE");
        return 2;
    };
    let say = |line: &str| eprintln!("userspace exec: {line}");
    let table = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(t) => t,
        Err(e) => {
            say(&format!("exit guard: {path}: {e}"));
            return 1;
        }
    };
    match userspace::device::exit_guard::watch(pid, table, &say) {
        Ok(()) => 0,
        Err(e) => {
            say(&format!("exit guard: {e}"));
            1
        }
    }
}

/// Connects to the switch of the interface, starting it when none runs: the
/// connection, left open across exec.
fn join_switch(args: &ExecArgs) -> Result<std::os::unix::net::UnixStream, String> {
    use std::io::{BufRead, Write};
    use std::os::unix::net::UnixStream;
    use userspace::device::switch::{SWITCH_ARG, address};
    let outbound = userspace::device::netinfo::outbound(args.iface.as_deref(), None)
        .map_err(|e| format!("{e:#}"))?;
    let ifindex = userspace::device::netinfo::interface(&outbound.iface)
        .map_err(|e| format!("{e:#}"))?
        .ifindex;
    let hold = || -> Option<UnixStream> {
        let conn = UnixStream::connect_addr(&address(ifindex).ok()?).ok()?;
        (&conn)
            .write_all(format!("HOLD {}\n", std::process::id()).as_bytes())
            .ok()?;
        conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .ok()?;
        let mut reply = String::new();
        std::io::BufReader::new(&conn).read_line(&mut reply).ok()?;
        if !reply.starts_with("OK") {
            return None;
        }
        // Inherited by the program: cleared close-on-exec.
        rustix::io::fcntl_setfd(&conn, rustix::io::FdFlags::empty()).ok()?;
        Some(conn)
    };
    if let Some(conn) = hold() {
        return Ok(conn);
    }
    let exe = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
    let (ours, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
    let mut env = vec![(exec_env::IFACE, std::ffi::OsString::from(&outbound.iface))];
    env.extend(
        args.xdp_mode
            .clone()
            .map(|m| (exec_env::XDP_MODE, m.into())),
    );
    env.extend(args.ip.map(|a| (exec_env::IP, a.to_string().into())));
    let mut switch = std::process::Command::new(exe);
    switch
        .arg(DETACH_ARG)
        .arg(SWITCH_ARG)
        .envs(env)
        .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
            theirs,
        )))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    detached(&mut switch).map_err(|e| format!("starting the switch: {e}"))?;
    ours.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    let _ = std::io::BufReader::new(&ours).read_line(&mut reply);
    // Started, or another program's switch won the race for the interface.
    if let Some(conn) = hold() {
        return Ok(conn);
    }
    match reply.trim().strip_prefix("ERR ") {
        Some(why) => Err(format!("the switch did not start: {why}")),
        None => Err("the switch did not start".into()),
    }
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
        assert!(!env.iter().any(|(k, _)| *k == exec_env::SWITCH));
        let shared = Cli::parse_from(["x", "--share", "--", "nginx"]);
        let env = environment(&shared.exec, Path::new("/lib/p.so"));
        assert!(env.contains(&(exec_env::SWITCH, "1".into())));
    }
}
