//! The snapshot reader: a state file of arbitrary bytes (or an arbitrary payload under a valid
//! header, so that the fuzzer gets past the CRC), read by `vmm::snapshot::load` as
//! `vmm --restore` reads it; whatever it accepts then goes to the devices' restore paths (the
//! serial port, and each virtio state into a virtio-blk or virtio-net transport whose queues
//! then run over guarded guest memory).
#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use devices::virtio::Net;
use devices::{EventFdTrigger, SerialDevice};
use libfuzzer_sys::fuzz_target;
use vm_memory::GuestMemoryMmap;
use vmm::snapshot::{format, load, MEMORY_FILE, STATE_FILE};
use vmm_fuzz::{block_device, guarded_memory, notify, transport, FrameQueue, Input};
use vmm_sys_util::eventfd::EventFd;

static MEM: LazyLock<GuestMemoryMmap> =
    LazyLock::new(|| guarded_memory(&[(0, 0x10000), (0x20000, 0x10000)]));

/// A directory of this process's own in memory, with an 8 MiB (sparse) memory file: a
/// snapshot of a VM with `memory_mib` 8, the smallest vmm runs, passes the size check.
static DIR: LazyLock<PathBuf> = LazyLock::new(|| {
    let dir = PathBuf::from(format!("/dev/shm/vmm-fuzz-snapshot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let memory = std::fs::File::create(dir.join(MEMORY_FILE)).unwrap();
    memory.set_len(8 << 20).unwrap();
    dir
});

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let framed = input.u8() & 1 == 0;
    let payload = input.rest();
    let bytes = if framed {
        let mut bytes = format::MAGIC.to_vec();
        bytes.extend_from_slice(&format::FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&crc32(payload).to_le_bytes());
        bytes.extend_from_slice(payload);
        bytes
    } else {
        payload.to_vec()
    };
    std::fs::write(DIR.join(STATE_FILE), &bytes).unwrap();
    let Ok(snapshot) = load(&DIR) else {
        return;
    };
    let state = snapshot.state;
    let trigger = EventFdTrigger::new(EventFd::new(0).unwrap());
    let mut serial = SerialDevice::new(trigger, Box::new(std::io::sink()));
    let _ = serial.restore(&state.serial);
    for virtio in &state.virtio {
        let (mut t, device) = if virtio.device_type == 1 {
            transport(&MEM, Net::new(FrameQueue::new(), [2, 0, 0, 0, 0, 1]))
        } else {
            transport(&MEM, block_device(128, false))
        };
        if t.restore(virtio).is_ok() {
            for queue in 0..virtio.queues.len() {
                notify(&device, queue);
            }
        }
    }
});

/// CRC-32 (IEEE), bit by bit: the state file's checksum.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}
