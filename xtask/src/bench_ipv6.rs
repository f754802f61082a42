//! The IPv6 rows of `cargo xtask bench`: in one dual-stack world, the bulk download and
//! the request/response latency over IPv6 beside the same over IPv4, ours against the
//! kernel's (issue 20).
use crate::bench::{Row, best_of_two, json_field, leak, output, timed_transfer};
use crate::world::{Family, SERVER_IP, SERVER_IP6, World, WorldOptions};
use std::net::IpAddr;

const FILE_SIZE: usize = 256 << 20;
const RR_ROUNDS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `http://10.77.2.2/` or `http://[fd00:77:2::2]/`.
fn url_of(ip: IpAddr, path: &str) -> String {
    match ip {
        IpAddr::V4(v4) => format!("http://{v4}{path}"),
        IpAddr::V6(v6) => format!("http://[{v6}]{path}"),
    }
}

pub(crate) fn ipv6_rows(
    bin: &str,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let world = World::up(&WorldOptions {
        nginx: true,
        family: Family::Dual,
        big_file: Some(FILE_SIZE),
        ..Default::default()
    })?;
    // socat's TCP6-LISTEN takes IPv4 too (IPV6_V6ONLY off).
    let _echo = world.spawn(
        &world.server,
        &["socat", "TCP6-LISTEN:7000,reuseaddr,fork", "PIPE"],
    )?;
    world.wait_for_port(&world.server, SERVER_IP, 7000, false)?;
    for (family, ip) in [
        ("IPv6", IpAddr::V6(SERVER_IP6)),
        ("IPv4", IpAddr::V4(SERVER_IP)),
    ] {
        let url = url_of(ip, "/big.bin");
        let download = |kernel: bool| {
            best_of_two(&|| {
                let mut c = world.exec(&world.host);
                if kernel {
                    c.args(["curl", "-g"]);
                } else {
                    c.args([bin, "curl"]);
                }
                c.args(["-sS", "-o", "/dev/null", &url]);
                timed_transfer(c, FILE_SIZE)
            })
        };
        let (ours, kernel) = (download(false)?, download(true)?);
        rows.push(Row {
            name: leak(format!(
                "bulk download over {family} (256 MiB, dual-stack world)"
            )),
            ours: ours.gbps,
            kernel: kernel.gbps,
            unit: "Gbit/s",
            target: "as IPv4",
        });
        let target = std::net::SocketAddr::new(ip, 7000).to_string();
        let keys = ["p50_us", "p99_us"];
        let mut rounds: Vec<([f64; 2], [f64; 2])> = Vec::new();
        for _ in 0..RR_ROUNDS {
            let run = |kernel: bool| -> anyhow::Result<[f64; 2]> {
                let mut c = world.exec(&world.host);
                c.args([bin, "bench", "rr", &target, "--count", "20000"]);
                c.args(if kernel {
                    &["--kernel"][..]
                } else {
                    &["--cpu", "0"][..]
                });
                let out = output(&mut c)?;
                Ok(keys.map(|k| json_field(&out, k).unwrap_or(0.0)))
            };
            rounds.push((run(false)?, run(true)?));
        }
        for (i, quantile) in ["p50", "p99"].into_iter().enumerate() {
            rows.push(Row {
                name: leak(format!(
                    "rr latency {quantile} over {family} (64 B, median of {RR_ROUNDS})"
                )),
                ours: median(rounds.iter().map(|(o, _)| o[i]).collect()),
                kernel: median(rounds.iter().map(|(_, k)| k[i]).collect()),
                unit: "us",
                target: if i == 0 { "<= 0.7x" } else { "<= 0.8x" },
            });
        }
    }
    notes.push(format!(
        "IPv6 rows: one dual-stack world, nginx on [::]:80 and socat TCP6-LISTEN (both families) in the server namespace; each download best of two, our curl vs the kernel's `curl -g` by literal ({SERVER_IP6} and {SERVER_IP})"
    ));
    Ok(())
}
