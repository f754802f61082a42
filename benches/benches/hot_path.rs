//! Hot-path benchmarks, per packet or per batch, on the in-memory device.
//! Where smoltcp has the same operation, it is measured next to ours.
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;
use userspace::device::Device;
use userspace::device::memory::MemoryDevice;
use userspace::sim::StackPair;
use userspace::stack::{Stack, StackConfig};
use userspace::tcp::reassembly::Reassembler;
use userspace::tcp::{Config, Connection, Instant, SeqNum, State};
use userspace::wire::{self, TcpFlags, TcpOptions, TcpRepr};

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];
const IP_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const IP_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const MSS: usize = 1448;

fn data_frame(seq: u32, payload: &[u8]) -> Vec<u8> {
    let repr = TcpRepr {
        src_port: 80,
        dst_port: 50_000,
        seq: SeqNum(seq),
        ack: Some(SeqNum(1)),
        flags: TcpFlags::ACK,
        window: 65535,
        options: TcpOptions {
            timestamps: Some((1, 1)),
            ..Default::default()
        },
        payload,
    };
    let mut buf = vec![0u8; 2048];
    let n = wire::emit_tcp(
        &mut buf,
        (MAC_B, MAC_A),
        (IP_B, IP_A),
        &repr,
        payload.len(),
        |_| {},
        wire::TxChecksum::Complete,
    );
    buf.truncate(n);
    buf
}

/// A connection in ESTABLISHED, receiving from a peer whose next sequence number is returned.
fn established() -> (Connection, u32) {
    let local = SocketAddrV4::new(IP_A, 50_000);
    let remote = SocketAddrV4::new(IP_B, 80);
    let cfg = Config {
        recv_buffer: 64 << 20,
        max_ooo_bytes: 64 << 20,
        ..Config::default()
    };
    let mut c = Connection::connect(cfg, local, remote, 0);
    let now = Instant::from_millis(1);
    while c.poll_transmit(now).is_some() {}
    let synack = TcpRepr {
        src_port: 80,
        dst_port: 50_000,
        seq: SeqNum(1000),
        ack: Some(SeqNum(1)),
        flags: TcpFlags::SYN_ACK,
        window: 65535,
        options: TcpOptions {
            mss: Some(1460),
            window_scale: Some(7),
            sack_permitted: true,
            timestamps: Some((1, 0)),
            ..Default::default()
        },
        payload: &[],
    };
    c.handle_segment(now, &synack);
    while c.poll_transmit(now).is_some() {}
    assert_eq!(c.state(), State::Established);
    (c, 1001)
}

fn wire_benches(c: &mut Criterion) {
    let payload = vec![0xabu8; MSS];
    let frame = data_frame(1001, &payload);
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_1500B_frame_with_checksums/ours", |b| {
        b.iter(|| black_box(wire::parse_frame(black_box(&frame)).is_ok()))
    });
    g.bench_function("parse_1500B_frame_with_checksums/smoltcp", |b| {
        use smoltcp::wire::{EthernetFrame, IpAddress, Ipv4Packet, TcpPacket};
        b.iter(|| {
            let eth = EthernetFrame::new_checked(black_box(&frame[..])).unwrap();
            let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
            assert!(ip.verify_checksum());
            let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
            let (src, dst) = (
                IpAddress::Ipv4(ip.src_addr()),
                IpAddress::Ipv4(ip.dst_addr()),
            );
            black_box(tcp.verify_checksum(&src, &dst))
        })
    });
    let segment = &frame[wire::ETH_HEADER_LEN + wire::IPV4_HEADER_LEN..];
    g.bench_function("tcp_checksum_1480B/ours", |b| {
        b.iter(|| black_box(wire::tcp_checksum(IP_B, IP_A, black_box(segment))))
    });
    g.bench_function("tcp_checksum_1480B/smoltcp", |b| {
        use smoltcp::wire::{IpAddress, TcpPacket};
        let (src, dst) = (IpAddress::Ipv4(IP_B), IpAddress::Ipv4(IP_A));
        b.iter(|| {
            black_box(TcpPacket::new_unchecked(black_box(segment)).verify_checksum(&src, &dst))
        })
    });
    let mut out = vec![0u8; 2048];
    let repr = TcpRepr {
        src_port: 1,
        dst_port: 2,
        seq: SeqNum(3),
        ack: Some(SeqNum(4)),
        flags: TcpFlags::ACK,
        window: 5,
        options: TcpOptions {
            timestamps: Some((1, 2)),
            ..Default::default()
        },
        payload: &[],
    };
    g.bench_function("emit_1500B_frame", |b| {
        b.iter(|| {
            black_box(wire::emit_tcp(
                &mut out,
                (MAC_A, MAC_B),
                (IP_A, IP_B),
                &repr,
                MSS,
                |dst| dst.copy_from_slice(&payload),
                wire::TxChecksum::Complete,
            ))
        })
    });
    g.finish();
}

/// A data segment from the peer of [`established`], with no options.
fn in_order(seq: u32, payload: &[u8]) -> TcpRepr<'_> {
    TcpRepr {
        src_port: 80,
        dst_port: 50_000,
        seq: SeqNum(seq),
        ack: Some(SeqNum(1)),
        flags: TcpFlags::ACK,
        window: 65535,
        options: TcpOptions::default(),
        payload,
    }
}

fn tcp_benches(c: &mut Criterion) {
    let payload = vec![0x5au8; MSS];
    let mut g = c.benchmark_group("tcp");
    g.throughput(Throughput::Bytes(MSS as u64));
    // One in-order segment: acceptability, ACK processing, copy into the receive buffer,
    // and the application's read that frees the space again.
    g.bench_function("receive_in_order_segment", |b| {
        let (mut conn, mut seq) = established();
        let now = Instant::from_millis(2);
        let mut sink = vec![0u8; 64 * 1024];
        b.iter(|| {
            let seg = in_order(seq, &payload);
            conn.handle_segment(now, &seg);
            seq = seq.wrapping_add(MSS as u32);
            if conn.recv_available() > 32 * 1024 {
                conn.recv(&mut sink);
            }
            while conn.poll_transmit(now).is_some() {}
        })
    });
    g.throughput(Throughput::Elements(64));
    // 64 segments, each out of order (reverse order), then the gap filled: the
    // reassembly merge path.
    g.bench_function("insert_64_out_of_order_segments", |b| {
        b.iter_batched(
            || Reassembler::new(1 << 20, 128, 1 << 20),
            |mut r| {
                for i in (1..64).rev() {
                    black_box(r.insert(i * MSS, &payload));
                }
                black_box(r.insert(0, &payload))
            },
            BatchSize::SmallInput,
        )
    });
    // 64 received segments followed by one output poll: an ACK for every second
    // full-sized segment (RFC 5681 section 4.2, even within one batch), so 32 ACKs.
    g.bench_function("ack_generation_for_64_segment_batch", |b| {
        let (mut conn, mut seq) = established();
        let now = Instant::from_millis(2);
        let mut sink = vec![0u8; 128 * 1024];
        b.iter(|| {
            for _ in 0..64 {
                let seg = in_order(seq, &payload);
                conn.handle_segment(now, &seg);
                seq = seq.wrapping_add(MSS as u32);
            }
            let mut acks = 0;
            while conn.poll_transmit(now).is_some() {
                acks += 1;
            }
            while conn.recv(&mut sink) > 0 {}
            assert_eq!(acks, 32);
        })
    });
    g.finish();
}

fn stack_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("stack");
    // Demultiplex one frame to its connection among 10,000, through the full poll loop
    // (RX batch of 1, timers, dispatch of the resulting ACK, TX).
    // The shared two-endpoint driver of the tests, on an in-memory wire.
    let mut pair = StackPair::wired(
        StackConfig::new(MAC_A, IP_A, 24),
        StackConfig::new(MAC_B, IP_B, 24),
    );
    let (id, sid) = pair.connect(80, 100_000, Duration::from_secs(1));
    let chunk = vec![1u8; 64 * 1024];
    let mut sink = vec![0u8; 64 * 1024];
    g.throughput(Throughput::Bytes(64 * 1024));
    // One RX -> TX turn on each side while 64 KiB moves: segments, ACKs, window updates.
    g.bench_function("poll_loop_turns_per_64KiB", |b| {
        b.iter(|| {
            let mut moved = 0;
            let mut sent = 0;
            while moved < chunk.len() {
                if sent < chunk.len() {
                    sent += pair.client.try_send(id, &chunk[sent..]).unwrap_or(0);
                }
                pair.step(Duration::from_micros(5));
                while let Ok(n) = pair.server.try_recv(sid, &mut sink) {
                    moved += n;
                }
            }
        })
    });
    g.finish();
}

/// An ARP request from the peer for `IP_B`, as it arrives from the wire.
fn arp_request_frame() -> Vec<u8> {
    let request = wire::ArpRepr {
        op: wire::ArpOp::Request,
        sender_mac: MAC_A,
        sender_ip: IP_A,
        target_mac: [0; 6],
        target_ip: IP_B,
    };
    let mut frame = vec![0u8; 64];
    let n = wire::emit_arp(&mut frame, wire::BROADCAST_MAC, &request);
    frame.truncate(n);
    frame
}

/// One frame in, the frames sent in answer out: a smoltcp device around two buffers.
struct OneFrameDevice {
    rx: Vec<u8>,
    rx_ready: bool,
    tx: [u8; 1514],
    tx_len: usize,
}

struct OneFrameRx<'a>(&'a [u8]);
struct OneFrameTx<'a>(&'a mut [u8; 1514], &'a mut usize);

impl smoltcp::phy::RxToken for OneFrameRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl smoltcp::phy::TxToken for OneFrameTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        *self.1 = len;
        f(&mut self.0[..len])
    }
}

impl smoltcp::phy::Device for OneFrameDevice {
    type RxToken<'a> = OneFrameRx<'a>;
    type TxToken<'a> = OneFrameTx<'a>;

    fn receive(
        &mut self,
        _: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if !std::mem::take(&mut self.rx_ready) {
            return None;
        }
        Some((
            OneFrameRx(&self.rx),
            OneFrameTx(&mut self.tx, &mut self.tx_len),
        ))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        Some(OneFrameTx(&mut self.tx, &mut self.tx_len))
    }

    fn capabilities(&self) -> smoltcp::phy::DeviceCapabilities {
        let mut caps = smoltcp::phy::DeviceCapabilities::default();
        caps.max_transmission_unit = 1514;
        caps.medium = smoltcp::phy::Medium::Ethernet;
        caps
    }
}

fn arp_benches(c: &mut Criterion) {
    let request = arp_request_frame();
    let mut g = c.benchmark_group("arp");
    g.throughput(Throughput::Elements(1));
    // An ARP request for the stack's (owned) address in, the reply out through the
    // stack's transmit batch: parse, neighbour learning, reply, TX (RFC 826).
    g.bench_function("request_in_reply_out/ours", |b| {
        let (mut peer, mut dev) = MemoryDevice::pair(MAC_A, MAC_B);
        let mut stack = Stack::new(StackConfig::new(MAC_B, IP_B, 24));
        let now = Instant::from_millis(1);
        b.iter(|| {
            dev.inject(black_box(&request));
            stack.poll(now, &mut dev);
            let mut replies = 0;
            peer.receive(&mut |reply| {
                black_box(reply);
                replies += 1;
            });
            assert_eq!(replies, 1);
        })
    });
    g.bench_function("request_in_reply_out/smoltcp", |b| {
        use smoltcp::iface::{Config as IfaceConfig, Interface, SocketSet};
        use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr};
        let mut dev = OneFrameDevice {
            rx: request.clone(),
            rx_ready: false,
            tx: [0; 1514],
            tx_len: 0,
        };
        let now = smoltcp::time::Instant::from_millis(1);
        let config = IfaceConfig::new(EthernetAddress(MAC_B).into());
        let mut iface = Interface::new(config, &mut dev, now);
        iface.update_ip_addrs(|addrs| {
            addrs.push(IpCidr::new(IpAddress::Ipv4(IP_B), 24)).unwrap();
        });
        let mut sockets = SocketSet::new(Vec::new());
        b.iter(|| {
            dev.rx_ready = true;
            dev.tx_len = 0;
            iface.poll(now, &mut dev, &mut sockets);
            assert!(dev.tx_len > 0);
            black_box(&dev.tx[..dev.tx_len]);
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = wire_benches, tcp_benches, stack_benches, arp_benches
}
criterion_main!(benches);
