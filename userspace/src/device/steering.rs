//! The XDP program's maps as aya sees them, and the steering config as a map value:
//! used by the program's owner ([`super::xdp`]) and by the holder that keeps the program
//! between runs ([`super::holder`]), which share nothing else.
use crate::device::error::SetupResult;
use aya::maps::{Array, Map, MapData};
use std::os::fd::{BorrowedFd, OwnedFd};
use xdp_ebpf::SteerConfig;

/// `SteerConfig` as a map value. The newtype lives here so that the only `unsafe impl`
/// stays in the device layer.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub(in crate::device) struct PodSteerConfig(pub SteerConfig);
// SAFETY: SteerConfig is #[repr(C)], Copy, made only of integers and integer arrays
// ([u8; 4], u32, u16, u16, [u16; 16], u32, [u8; 16], u32 = 68 bytes, align 4), so it
// has no padding.
unsafe impl aya::Pod for PodSteerConfig {}
const _: () = assert!(std::mem::size_of::<SteerConfig>() == 68);

/// A typed map over `fd`.
pub(in crate::device) fn map_from_fd<M: TryFrom<Map, Error = aya::maps::MapError>>(
    fd: &OwnedFd,
) -> SetupResult<M> {
    let data = MapData::from_fd(fd.try_clone()?)?;
    Ok(M::try_from(Map::from_map_data(data)?)?)
}

/// Writes an all-zero (disabled) steering config into the config map `config`: the
/// program passes everything to the kernel.
pub(in crate::device) fn disable_steering(config: BorrowedFd<'_>) -> SetupResult<()> {
    let mut map: Array<MapData, PodSteerConfig> = map_from_fd(&config.try_clone_to_owned()?)?;
    map.set(0, PodSteerConfig(SteerConfig::default()), 0)?;
    Ok(())
}
