//! `--pcap FILE`: wraps a device and records every frame received and sent, in the
//! classic pcap format that tshark and Wireshark read.
use super::Device;
use crate::device::error::{SetupResult, setup_error};
use crate::wire::MacAddr;
use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use std::fs::File;
use std::io::BufWriter;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A device that records every frame it receives and transmits to a pcap file.
pub struct PcapDevice<D: Device> {
    inner: D,
    writer: PcapWriter<BufWriter<File>>,
    errors: u64,
}

impl<D: Device> PcapDevice<D> {
    /// Records the traffic of `inner` to a new pcap file at `path`.
    pub fn create(inner: D, path: &std::path::Path) -> SetupResult<Self> {
        let file = File::create(path)
            .map_err(|e| setup_error!("cannot create {}: {e}", path.display()))?;
        let header = PcapHeader {
            datalink: DataLink::ETHERNET,
            snaplen: 65535,
            ..Default::default()
        };
        let writer = PcapWriter::with_header(BufWriter::new(file), header)?;
        Ok(PcapDevice {
            inner,
            writer,
            errors: 0,
        })
    }

    /// The device being recorded.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// The recorded device, mutably.
    pub fn inner_mut(&mut self) -> &mut D {
        &mut self.inner
    }

    fn record(writer: &mut PcapWriter<BufWriter<File>>, errors: &mut u64, frame: &[u8]) {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        if writer
            .write_packet(&PcapPacket::new(ts, frame.len() as u32, frame))
            .is_err()
        {
            *errors += 1;
        }
    }
}

impl<D: Device> Device for PcapDevice<D> {
    fn receive(&mut self, handle: &mut dyn FnMut(&[u8])) -> usize {
        let (writer, errors) = (&mut self.writer, &mut self.errors);
        self.inner.receive(&mut |frame| {
            Self::record(writer, errors, frame);
            handle(frame);
        })
    }

    fn transmit(&mut self, build: &mut dyn FnMut(&mut [u8]) -> usize) -> bool {
        let (writer, errors) = (&mut self.writer, &mut self.errors);
        self.inner.transmit(&mut |buf| {
            let len = build(buf);
            if len > 0 {
                Self::record(writer, errors, &buf[..len]);
            }
            len
        })
    }

    fn flush(&mut self) {
        self.inner.flush();
    }

    fn mac(&self) -> MacAddr {
        self.inner.mac()
    }

    fn mtu(&self) -> usize {
        self.inner.mtu()
    }

    fn tx_checksum_offload(&self) -> bool {
        self.inner.tx_checksum_offload()
    }
}
