//! Drivers shared by the cargo-fuzz targets (`fuzz/`) and by the property tests that run
//! the same code in the normal test suite.
use crate::device::memory::MemoryDevice;
use crate::sim::StackPair;
use crate::stack::StackConfig;
use crate::tcp::seq::SeqNum;
use crate::tcp::{Config, Connection, Instant, State};
use crate::wire::{MacAddr, TcpFlags, TcpOptions, TcpRepr};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Duration;

const MAC_C: MacAddr = [2, 0, 0, 0, 0, 0xc];
const MAC_S: MacAddr = [2, 0, 0, 0, 0, 0x5];
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
pub const CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0xfd09, 0, 0, 0, 0, 0, 0, 1);
pub const SERVER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd09, 0, 0, 0, 0, 0, 0, 2);

/// A server stack with a listener on port 80 and two established connections, one over
/// IPv4 and one over IPv6 (owned addresses of both families, so NDP and DAD run too),
/// fed frames.
pub struct ReceivePath {
    /// The client and the server on an in-memory wire, driven by the shared driver.
    pair: StackPair<MemoryDevice>,
    frames: u64,
}

impl Default for ReceivePath {
    fn default() -> Self {
        Self::new()
    }
}

/// A fixed key: the same input always takes the same path.
const FUZZ_KEY: [u8; 16] = [0x5a; 16];

impl ReceivePath {
    pub fn new() -> Self {
        let mut scfg = StackConfig::with_key(MAC_S, SERVER_IP, 24, FUZZ_KEY);
        scfg.ipv6 = Some(SERVER_IP6);
        scfg.max_connections = 256;
        scfg.syn_backlog = 64;
        scfg.tcp.send_buffer = 64 * 1024;
        scfg.tcp.recv_buffer = 64 * 1024;
        let mut ccfg = StackConfig::with_key(MAC_C, CLIENT_IP, 24, FUZZ_KEY);
        ccfg.ipv6 = Some(CLIENT_IP6);
        let mut pair = StackPair::wired(ccfg, scfg);
        pair.server.listen(80, 64).expect("listen");
        // Both addresses through duplicate address detection first (RFC 4862 5.4).
        pair.run_until(Duration::from_secs(2), |c, s| {
            c.ipv6_state() == crate::stack::Ipv6State::Ready
                && s.ipv6_state() == crate::stack::Ipv6State::Ready
        });
        let remotes = [
            SocketAddr::V4(SocketAddrV4::new(SERVER_IP, 80)),
            SocketAddr::V6(SocketAddrV6::new(SERVER_IP6, 80, 0, 0)),
        ];
        for remote in remotes {
            let id = pair.client.connect(pair.now, remote).expect("connect");
            // The connection stays in the listener's accept queue, as the fuzzed frames
            // find it.
            pair.run_until(Duration::from_secs(1), |c, _| {
                c.state(id) == State::Established
            });
        }
        ReceivePath { pair, frames: 0 }
    }

    /// One arbitrary frame into the server's receive path, then a poll of both stacks.
    pub fn feed(&mut self, frame: &[u8]) {
        self.frames += 1;
        let p = &mut self.pair;
        p.now = p.now + Duration::from_micros(100);
        if frame.len() <= 2048 {
            p.server_dev.inject(frame);
        }
        p.server.poll(p.now, &mut p.server_dev);
        p.client.poll(p.now, &mut p.client_dev);
        // Accept and drop whatever the listener completed, so its queue stays drained.
        while let Some(id) = p.server.accept(80) {
            p.server.abort(id);
            p.server.release(id);
        }
        assert!(
            p.server.connection_count() <= 256,
            "connection bound broken"
        );
    }

    pub fn stats(&self) -> &crate::stack::StackStats {
        &self.pair.server.stats
    }
}

/// Valid frames to start fuzzing from: SYN, data, ARP, ping, RST; over IPv6 SYN, data,
/// NDP, ping, packet too big, destination unreachable and an extension header chain.
pub fn seed_frames() -> Vec<Vec<u8>> {
    let mut out = seed_frames_v4();
    out.extend(seed_frames_v6());
    out
}

fn tcp_seed(
    ip: (std::net::IpAddr, std::net::IpAddr),
    flags: TcpFlags,
    seq: u32,
    payload: &[u8],
    options: TcpOptions,
) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let repr = TcpRepr {
        src_port: 40_000,
        dst_port: 80,
        seq: SeqNum(seq),
        ack: Some(SeqNum(1)),
        flags,
        window: 65535,
        options,
        payload,
    };
    let n = crate::wire::emit_tcp(
        &mut buf,
        (MAC_C, MAC_S),
        ip,
        &repr,
        payload.len(),
        |_| {},
        crate::wire::TxChecksum::Complete,
    );
    buf.truncate(n);
    buf
}

fn seed_frames_v6() -> Vec<Vec<u8>> {
    use crate::wire::{NdpRepr, emit_icmpv6_error, emit_ndp, multicast_mac, solicited_node};
    let ip = (CLIENT_IP6.into(), SERVER_IP6.into());
    let syn_opts = TcpOptions {
        mss: Some(1440),
        window_scale: Some(7),
        sack_permitted: true,
        timestamps: Some((1, 0)),
        ..Default::default()
    };
    let syn = tcp_seed(ip, TcpFlags::SYN, 1000, &[], syn_opts);
    let mut out = vec![
        syn.clone(),
        tcp_seed(
            ip,
            TcpFlags::ACK,
            1001,
            b"GET / HTTP/1.1\r\n\r\n",
            TcpOptions::default(),
        ),
    ];
    let mut buf = vec![0u8; 2048];
    let group = solicited_node(SERVER_IP6);
    let ns = NdpRepr::Solicit {
        target: SERVER_IP6,
        source_mac: Some(MAC_C),
    };
    let n = emit_ndp(
        &mut buf,
        (MAC_C, multicast_mac(group)),
        (CLIENT_IP6, group),
        &ns,
    );
    out.push(buf[..n].to_vec());
    let na = NdpRepr::Advert {
        target: CLIENT_IP6,
        target_mac: MAC_C,
        solicited: true,
        override_: true,
    };
    let n = emit_ndp(&mut buf, (MAC_C, MAC_S), (CLIENT_IP6, SERVER_IP6), &na);
    out.push(buf[..n].to_vec());
    let icmp = |buf: &mut [u8], kind_code, field, body: &[u8]| {
        let n = emit_icmpv6_error(
            buf,
            (MAC_C, MAC_S),
            (CLIENT_IP6, SERVER_IP6),
            kind_code,
            field,
            body,
        );
        buf[..n].to_vec()
    };
    out.push(icmp(&mut buf, (128, 0), 0x0001_0001, b"ping"));
    // Errors quoting a segment of ours (as the server would send it).
    let ours = {
        let mut b = vec![0u8; 2048];
        let repr = TcpRepr {
            src_port: 80,
            dst_port: 40_000,
            seq: SeqNum(1),
            flags: TcpFlags::ACK,
            ..Default::default()
        };
        let n = crate::wire::emit_tcp(
            &mut b,
            (MAC_S, MAC_C),
            (SERVER_IP6, CLIENT_IP6),
            &repr,
            0,
            |_| {},
            crate::wire::TxChecksum::Complete,
        );
        b[14..n].to_vec()
    };
    out.push(icmp(&mut buf, (2, 0), 1280, &ours));
    out.push(icmp(&mut buf, (1, 4), 0, &ours));
    // The SYN behind a Destination Options header (skipped, RFC 8200 4.6).
    let mut chained = syn[..54].to_vec();
    chained[20] = 60;
    chained.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
    chained.extend_from_slice(&syn[54..]);
    let plen = (chained.len() - 54) as u16;
    chained[18..20].copy_from_slice(&plen.to_be_bytes());
    out.push(chained);
    out
}

fn seed_frames_v4() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 2048];
    let tcp = |flags: TcpFlags, seq: u32, payload: &[u8], options: TcpOptions| {
        tcp_seed(
            (CLIENT_IP.into(), SERVER_IP.into()),
            flags,
            seq,
            payload,
            options,
        )
    };
    let syn_opts = TcpOptions {
        mss: Some(1460),
        window_scale: Some(7),
        sack_permitted: true,
        timestamps: Some((1, 0)),
        ..Default::default()
    };
    out.push(tcp(TcpFlags::SYN, 1000, &[], syn_opts));
    out.push(tcp(
        TcpFlags::ACK,
        1001,
        b"GET / HTTP/1.1\r\n\r\n",
        TcpOptions::default(),
    ));
    out.push(tcp(TcpFlags::RST, 1001, &[], TcpOptions::default()));
    let mut sack = TcpOptions {
        sack_count: 2,
        ..Default::default()
    };
    sack.sack_blocks[0] = (5000, 6000);
    sack.sack_blocks[1] = (7000, 8000);
    out.push(tcp(TcpFlags::ACK, 1001, b"x", sack));
    let arp = crate::wire::ArpRepr {
        op: crate::wire::ArpOp::Request,
        sender_mac: MAC_C,
        sender_ip: CLIENT_IP,
        target_mac: [0; 6],
        target_ip: SERVER_IP,
    };
    let n = crate::wire::emit_arp(&mut buf, crate::wire::BROADCAST_MAC, &arp);
    out.push(buf[..n].to_vec());
    let n = crate::wire::emit_icmp_echo_reply(
        &mut buf,
        (MAC_C, MAC_S),
        (CLIENT_IP, SERVER_IP),
        1,
        1,
        b"ping",
    );
    let mut ping = buf[..n].to_vec();
    ping[34] = 8; // echo request
    ping[36..38].fill(0);
    let sum = crate::wire::checksum(&ping[34..]);
    ping[36..38].copy_from_slice(&sum.to_be_bytes());
    out.push(ping);
    out
}

/// Drives one connection with operations decoded from `data`, checking its invariants
/// after every step.
pub fn drive_connection(data: &[u8]) {
    let cfg = Config {
        send_buffer: 16 * 1024,
        recv_buffer: 16 * 1024,
        max_ooo_ranges: 8,
        max_ooo_bytes: 8 * 1024,
        max_retries: 4,
        time_wait: Duration::from_secs(2),
        ..Config::default()
    };
    let mut now = Instant::from_millis(1);
    let mut bytes = data.iter().copied();
    let mut next = move || bytes.next();
    let first = next().unwrap_or(0);
    let passive = first & 1 == 1;
    // One state machine for both families: the second bit picks IPv6.
    let (local, remote) = if first & 2 == 2 {
        (
            SocketAddr::new(SERVER_IP6.into(), 80),
            SocketAddr::new(CLIENT_IP6.into(), 40_000),
        )
    } else {
        (
            SocketAddr::new(SERVER_IP.into(), 80),
            SocketAddr::new(CLIENT_IP.into(), 40_000),
        )
    };
    let mut conn = if passive {
        let syn = TcpRepr {
            src_port: 40_000,
            dst_port: 80,
            seq: SeqNum(7),
            flags: TcpFlags::SYN,
            window: 1024,
            options: TcpOptions {
                mss: Some(536),
                sack_permitted: true,
                ..Default::default()
            },
            ..Default::default()
        };
        Connection::accept(now, cfg, local, remote, u32::MAX - 3, &syn)
    } else {
        Connection::connect(cfg, local, remote, u32::MAX - 3)
    };
    let payload = [0x61u8; 600];
    let mut frame = [0u8; 2048];
    let mut sink = [0u8; 4096];
    while let Some(op) = next() {
        let (una, nxt, rcv) = conn.sequence_numbers();
        match op % 7 {
            0 | 1 => {
                // A segment near the interesting sequence numbers.
                let flags_byte = next().unwrap_or(0);
                let flags = TcpFlags {
                    syn: flags_byte & 1 != 0,
                    ack: flags_byte & 2 != 0,
                    fin: flags_byte & 4 != 0,
                    rst: flags_byte & 8 != 0,
                    psh: false,
                };
                let seq = rcv
                    .wrapping_add(u32::from(next().unwrap_or(0)) * 64)
                    .wrapping_sub(4096);
                let ack_base = if next().unwrap_or(0) & 1 == 0 {
                    una
                } else {
                    nxt
                };
                let ack = ack_base
                    .wrapping_add(u32::from(next().unwrap_or(0)))
                    .wrapping_sub(64);
                let len = usize::from(next().unwrap_or(0)) * 2 % payload.len();
                let mut options = TcpOptions::default();
                let opt = next().unwrap_or(0);
                if opt & 1 != 0 {
                    options.sack_count = 1;
                    options.sack_blocks[0] = (
                        una.wrapping_add(u32::from(opt) * 8),
                        una.wrapping_add(u32::from(opt) * 16),
                    );
                }
                if opt & 2 != 0 {
                    options.timestamps = Some((u32::from(opt) << 8, 0));
                }
                if opt & 4 != 0 {
                    options.window_scale = Some(opt >> 4);
                    options.mss = Some(u16::from(opt));
                }
                let window = u16::from(next().unwrap_or(255)) << 4;
                let seg = TcpRepr {
                    src_port: 40_000,
                    dst_port: 80,
                    seq: SeqNum(seq),
                    ack: flags.ack.then_some(SeqNum(ack)),
                    flags,
                    window,
                    options,
                    payload: &payload[..len],
                };
                conn.handle_segment(now, &seg);
            }
            2 => {
                let n = usize::from(next().unwrap_or(0)) * 16;
                let _ = conn.send(&payload[..n.min(payload.len())]);
            }
            3 => {
                let _ = conn.recv(&mut sink);
            }
            4 => conn.close(),
            5 => {
                now = now + Duration::from_millis(u64::from(next().unwrap_or(0)) * 20);
                if conn.poll_timeout().is_some_and(|t| t <= now) {
                    conn.handle_timeout(now);
                }
            }
            _ => {
                if next().unwrap_or(0) == 0xff {
                    conn.abort();
                }
            }
        }
        let mut emitted = 0;
        while let Some(t) = conn.poll_transmit(now) {
            let n = crate::wire::emit_tcp(
                &mut frame,
                (MAC_S, MAC_C),
                (local.ip(), remote.ip()),
                &t.repr,
                t.payload_len,
                |dst| conn.copy_payload(t.payload_offset, dst),
                crate::wire::TxChecksum::Complete,
            );
            assert!(n > 0, "segment does not fit a frame");
            emitted += 1;
            assert!(emitted < 10_000, "poll_transmit does not stop");
        }
        assert!(conn.recv_available() <= 16 * 1024);
        assert!(conn.unacked() <= 16 * 1024);
        assert!(conn.out_of_order_bytes() <= 8 * 1024);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `FUZZ_WRITE_CORPUS=DIR cargo test -p userspace --lib write_seed_corpus` refreshes
    /// the committed seed corpus of the receive_path fuzz target.
    #[test]
    fn write_seed_corpus() {
        if let Some(dir) = std::env::var_os("FUZZ_WRITE_CORPUS") {
            for (i, frame) in seed_frames().iter().enumerate() {
                std::fs::write(std::path::Path::new(&dir).join(format!("seed-{i}")), frame)
                    .unwrap();
            }
        }
    }

    #[test]
    fn seed_frames_are_accepted() {
        let mut path = ReceivePath::new();
        let before = path.stats().clone();
        for frame in seed_frames() {
            path.feed(&frame);
        }
        let after = path.stats();
        assert_eq!(after.dropped(), 0);
        // The IPv6 seeds reach the stack: the NS and the NA, the unreachable.
        assert_eq!(after.ndp_in - before.ndp_in, 2, "{after}");
        assert_eq!(after.not_for_us, before.not_for_us, "{after}");
        assert_eq!(
            after.icmp_unreachable - before.icmp_unreachable,
            1,
            "{after}"
        );
    }

    proptest! {
        // 512 cases by default; PROPTEST_CASES=N for a longer run.
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
            ..ProptestConfig::default()
        })]

        /// The fuzz targets' drivers, on random input, in every test run.
        #[test]
        fn receive_path_survives_arbitrary_frames(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..20), seed in 0usize..64, flips in proptest::collection::vec((0usize..2048, any::<u8>()), 0..8)) {
            let mut path = ReceivePath::new();
            for f in &frames {
                path.feed(f);
            }
            // Mutated valid frames reach deeper than random bytes.
            let seeds = seed_frames();
            let mut frame = seeds[seed % seeds.len()].clone();
            for (i, x) in flips {
                let len = frame.len();
                frame[i % len] ^= x;
            }
            path.feed(&frame);
        }

        #[test]
        fn connection_survives_arbitrary_operations(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            drive_connection(&data);
        }
    }
}
