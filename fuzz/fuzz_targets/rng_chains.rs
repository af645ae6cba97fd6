//! virtio-rng descriptor chains over arbitrary guest memory: the device is started the way a
//! driver would (features and queue placement from the input), the rest of the input is guest
//! memory (rings, descriptors, indirect tables), and the queue is notified twice. The device's
//! bucket holds 1 MiB, so a run may also reach the dry path (the refill timer).
#![no_main]

use std::sync::LazyLock;

use devices::virtio::{Rng, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use vm_memory::GuestMemoryMmap;
use vmm_fuzz::{fill, guarded_memory, notify, queue_from, start, transport, Input};

static MEM: LazyLock<GuestMemoryMmap> =
    LazyLock::new(|| guarded_memory(&[(0, 0x10000), (0x20000, 0x10000)]));

/// VIRTIO_F_VERSION_1, which the transport requires.
const VERSION_1: u64 = 1 << 32;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let rng = Rng::new().expect("a timerfd");
    let features = (rng.avail_features() & input.u64()) | VERSION_1;
    let max = rng.queue_max_sizes()[0];
    let queue = queue_from(&mut input, max, 0x1000);
    fill(&MEM, input.rest());
    let (mut t, device) = transport(&MEM, rng);
    if start(&mut t, features, &[queue]) {
        notify(&device, 0);
        notify(&device, 0);
    }
});
