//! What a snapshot's state file holds: the configuration the VM was made of and the state each
//! owner saved through [`devices::Persist`] — every vCPU ([`crate::vcpu::state`]), the VM's
//! interrupt controllers, PIT and clock ([`crate::vm::VmState`]), the serial port and each
//! virtio transport (the devices crate).

use serde::{Deserialize, Serialize};

use crate::config::VirtioConfig;
use crate::vcpu::state::VcpuState;
use crate::vm::VmState;

/// The whole state file.
#[derive(Serialize, Deserialize)]
pub struct SnapshotState {
    /// What the VM was made of: the restore rebuilds it from this.
    pub config: SavedConfig,
    pub vm: VmState,
    /// One per vCPU, in order (vCPU 0 first).
    pub vcpus: Vec<VcpuState>,
    pub serial: devices::serial::SerialState,
    /// One per virtio device, in slot order (as `config.devices` lists them).
    pub virtio: Vec<devices::virtio::mmio::MmioState>,
    /// The exit code the guest chose through its port, if it wrote one.
    pub guest_exit_code: Option<u8>,
    /// Each disk as it was when the snapshot was taken, in device order: a restore refuses a
    /// disk that is not that one (the guest's page cache and file systems remember it).
    pub disks: Vec<DiskIdentity>,
}

/// Which file a disk was, and how large.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskIdentity {
    pub size: u64,
    /// The file's device and inode numbers: the snapshot's own path must still name this file
    /// (another file is given with `--drive` on restore, and then only its size is checked).
    pub dev: u64,
    pub ino: u64,
}

/// The configuration a snapshot was taken with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedConfig {
    pub memory_mib: u64,
    pub cpus: u8,
    /// The virtio devices in slot order, made again on restore: disks opened again by their
    /// paths, TAPs by their names, each interface with the MAC the guest saw (given or
    /// derived), so the guest's driver sees the same one.
    pub devices: Vec<VirtioConfig>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DiskConfig, NetConfig};

    #[test]
    fn the_configuration_round_trips_through_postcard() {
        let config = SavedConfig {
            memory_mib: 128,
            cpus: 2,
            devices: vec![
                VirtioConfig::Block(DiskConfig {
                    path: "/tmp/a.img".into(),
                    read_only: true,
                    id: Some("x".into()),
                }),
                VirtioConfig::Net(NetConfig {
                    tap: "tap0".into(),
                    mac: Some([0x52, 0x54, 0, 1, 2, 3]),
                }),
                VirtioConfig::Rng,
            ],
        };
        let bytes = postcard::to_stdvec(&config).unwrap();
        assert_eq!(postcard::from_bytes::<SavedConfig>(&bytes).unwrap(), config);
    }
}
