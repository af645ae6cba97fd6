//! The virtio-mmio register file: arbitrary sequences of register and configuration-space
//! reads and writes of every size, with guest memory writes and queue notifications between
//! them, on a virtio-blk or a virtio-net device.
#![no_main]

use std::sync::LazyLock;

use devices::virtio::Net;
use devices::BusDevice;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_fuzz::{block_device, fill, guarded_memory, notify, transport, FrameQueue, Input};

/// Two regions with a hole between them.
static MEM: LazyLock<GuestMemoryMmap> =
    LazyLock::new(|| guarded_memory(&[(0, 0x10000), (0x20000, 0x10000)]));

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let kind = input.u8();
    fill(&MEM, &[]);
    let frames = FrameQueue::new();
    let (mut t, device) = if kind & 1 == 0 {
        transport(&MEM, block_device(128, kind & 2 != 0))
    } else {
        transport(&MEM, Net::new(frames.clone(), [2, 0, 0, 0, 0, 1]))
    };
    while !input.is_empty() {
        let op = input.u8();
        let len = [1, 2, 4, 8][usize::from(op >> 2) & 3];
        match op & 3 {
            0 => {
                let offset = u64::from(input.u16() & 0x1ff);
                let value = input.bytes(len).to_vec();
                t.write(0xd000_0000, offset, &value);
            }
            1 => {
                let offset = u64::from(input.u16() & 0x1ff);
                let mut value = vec![0u8; len];
                t.read(0xd000_0000, offset, &mut value);
            }
            2 => {
                // What the event loop does for a notification or a readable TAP.
                let queue = usize::from(op >> 4) % 3;
                if kind & 1 == 1 && op & 0x40 != 0 {
                    let n = usize::from(input.u8());
                    frames.push(input.bytes(n));
                    device.lock().unwrap().process_backend(0);
                } else {
                    notify(&device, queue);
                }
            }
            _ => {
                let addr = u64::from(input.u32()) % 0x30000;
                let n = usize::from(input.u8());
                let _ = MEM.write_slice(input.bytes(n), GuestAddress(addr));
            }
        }
    }
});
