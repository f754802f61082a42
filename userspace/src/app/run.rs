//! `userspace run`: the stack with no application. It answers ARP and ping for an owned
//! address and RSTs segments for closed ports, until SIGINT/SIGTERM or `--duration`.
use super::setup::{StackArgs, open_runtime, print_stats};
use std::time::Duration;

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Stop after this many seconds (default: run until SIGINT or SIGTERM)
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// Ports to steer to the stack as if listening (they answer RST: nobody accepts)
    #[arg(long = "steer-port", value_name = "PORT")]
    pub steer_ports: Vec<u16>,
    #[command(flatten)]
    pub stack: StackArgs,
}

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let mut rt = open_runtime(&args.stack, &args.steer_ports)?;
    // The stack steers these ports but does not accept on them.
    for port in &args.steer_ports {
        rt.stack.unlisten(*port);
    }
    eprintln!(
        "ready: {} on {} ({} mode)",
        rt.stack.ip(),
        rt.iface,
        rt.device.xdp().attached_mode()
    );
    // Hooks for the detach-on-every-exit test: fail after the program is attached.
    match std::env::var("USERSPACE_TEST_FAIL_AFTER_ATTACH").as_deref() {
        Ok("error") => {
            anyhow::bail!("test failure after attach (USERSPACE_TEST_FAIL_AFTER_ATTACH=error)")
        }
        Ok("panic") => panic!("test panic after attach (USERSPACE_TEST_FAIL_AFTER_ATTACH=panic)"),
        _ => {}
    }
    let deadline = args.duration.map(|s| rt.now() + Duration::from_secs_f64(s));
    let _ = rt.wait(deadline, |_, _| None::<()>);
    if args.stack.stats {
        print_stats(&rt);
    }
    super::setup::warn_about_losses(&rt);
    Ok(())
}
