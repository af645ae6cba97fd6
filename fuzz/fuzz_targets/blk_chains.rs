//! virtio-blk descriptor chains over arbitrary guest memory: the device is started the way a
//! driver would (features and queue placement from the input), the rest of the input is guest
//! memory (rings, descriptors, indirect tables, request headers), and the queue is notified
//! twice.
#![no_main]

use std::sync::LazyLock;

use devices::virtio::VirtioDevice;
use libfuzzer_sys::fuzz_target;
use vm_memory::GuestMemoryMmap;
use vmm_fuzz::{block_device, fill, guarded_memory, notify, queue_from, start, transport, Input};

static MEM: LazyLock<GuestMemoryMmap> =
    LazyLock::new(|| guarded_memory(&[(0, 0x10000), (0x20000, 0x10000)]));

/// VIRTIO_F_VERSION_1, which the transport requires.
const VERSION_1: u64 = 1 << 32;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();
    let block = block_device(128, flags & 1 != 0);
    let features = (block.avail_features() & input.u64()) | VERSION_1;
    let max = block.queue_max_sizes()[0];
    let queue = queue_from(&mut input, max, 0x1000);
    fill(&MEM, input.rest());
    let (mut t, device) = transport(&MEM, block);
    if start(&mut t, features, &[queue]) {
        notify(&device, 0);
        notify(&device, 0);
    }
});
