//! The `userspace` command: curl, serve and run on the kernel-bypass stack.
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::process::ExitCode;
mod app;

use app::{bench, curl, exec, run, serve};
use userspace::device::holder;

#[derive(Parser, Debug)]
#[command(
    name = "userspace",
    version,
    about = "A kernel-bypass TCP/IP stack on AF_XDP"
)]
struct Cli {
    /// Log level for the stack's own diagnostics (error, warn, info, debug, trace)
    #[arg(long, global = true, default_value = "warn", value_name = "LEVEL")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Fetch a URL over the stack, like curl
    Curl(Box<curl::CurlArgs>),
    /// Serve files over HTTP/1.1 (or echo bytes back) on the stack
    Serve(serve::ServeArgs),
    /// Run the stack alone: answer ARP, ping (owned-IP mode) and closed ports
    Run(run::RunArgs),
    /// Run an unmodified program with its TCP over IPv4 on the stack (a preload library)
    Exec(exec::ExecArgs),
    /// Measure a workload on the stack or, with --kernel, on kernel sockets
    Bench(bench::BenchArgs),
    /// Count and recycle received frames without a stack: the AF_XDP ceiling
    Sink(bench::SinkArgs),
    /// Transmit UDP frames through AF_XDP at full rate (a source for the sink)
    Blast(bench::BlastArgs),
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("userspace: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    userspace::device::startup::begin();
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == holder::HOLDER_ARG)
    {
        return ExitCode::from(holder::run() as u8);
    }
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == userspace::device::switch::SWITCH_ARG)
    {
        let config = userspace::net::switch::config_from_env();
        return ExitCode::from(userspace::net::switch::run(&config) as u8);
    }
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == exec::DETACH_ARG)
    {
        let rest: Vec<std::ffi::OsString> = std::env::args_os().skip(2).collect();
        return ExitCode::from(exec::run_detached(&rest));
    }
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == userspace::device::exit_guard::GUARD_ARG)
    {
        let rest: Vec<String> = std::env::args().skip(2).collect();
        return ExitCode::from(exec::run_exit_guard(&rest));
    }
    holder::set_available();
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|m| Ok((Cli::from_arg_matches(&m)?, m)));
    let cli = match parsed {
        Ok((mut cli, matches)) => {
            // curl pairs -o/-O with URLs, and joins -d pieces, in command-line order.
            if let Command::Curl(args) = &mut cli.command
                && let Some(m) = matches.subcommand_matches("curl")
            {
                args.record_order(m);
                // Back-to-back fetches keep the program attached between them.
                args.stack.default_linger_ms = holder::DEFAULT_LINGER.as_millis() as u64;
            }
            cli
        }
        Err(e) => {
            // curl's two lines for a flag it cannot take.
            let argv: Vec<String> = std::env::args().collect();
            if curl::flags::is_curl_command_line(&argv)
                && let Some(line) = curl::flags::message(&e, &argv)
            {
                eprintln!("{line}\n{}", curl::flags::TRY_HELP);
                return ExitCode::from(2);
            }
            let _ = e.print();
            // curl's exit code 2 for a bad option; 0 for --help/--version.
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "warn".into()),
        )
        .init();
    userspace::device::startup::since_start("arguments parsed, logging set up");
    match cli.command {
        Command::Curl(args) => {
            let code = match curl::run(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    if args.show_errors() && !e.message.is_empty() {
                        eprintln!("curl: ({}) {}", e.code, e.message);
                    }
                    ExitCode::from(e.code as u8)
                }
            };
            // What came after the stack was up: the fetch and the exit's hand-over.
            userspace::device::startup::print_if_enabled();
            code
        }
        Command::Serve(args) => report(serve::run(&args)),
        Command::Run(args) => report(run::run(&args)),
        Command::Exec(args) => {
            let (code, message) = exec::run(&args);
            eprintln!("userspace: {message}");
            ExitCode::from(code)
        }
        Command::Bench(args) => report(bench::run(&args)),
        Command::Sink(args) => report(bench::sink(&args)),
        Command::Blast(args) => report(bench::blast(&args)),
    }
}
