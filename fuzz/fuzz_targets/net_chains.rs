//! virtio-net descriptor chains over arbitrary guest memory: the device is started with
//! features and both queues from the input, receives up to 4 frames of the input's lengths and
//! bytes from its backend, and its transmit and receive queues are run as the event loop runs
//! them.
#![no_main]

use std::sync::LazyLock;

use devices::virtio::{Net, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use vm_memory::GuestMemoryMmap;
use vmm_fuzz::{fill, guarded_memory, notify, queue_from, start, transport, FrameQueue, Input};

static MEM: LazyLock<GuestMemoryMmap> =
    LazyLock::new(|| guarded_memory(&[(0, 0x10000), (0x20000, 0x10000)]));

/// VIRTIO_F_VERSION_1, which the transport requires.
const VERSION_1: u64 = 1 << 32;
const RX: usize = 0;
const TX: usize = 1;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let frames = FrameQueue::new();
    for _ in 0..input.u8() % 5 {
        let len = usize::from(input.u16()) % 70_000;
        let byte = input.u8();
        frames.push(&vec![byte; len]);
    }
    let net = Net::new(frames, [2, 0, 0, 0, 0, 1]);
    let features = (net.avail_features() & input.u64()) | VERSION_1;
    let max = net.queue_max_sizes()[0];
    let queues = [
        queue_from(&mut input, max, 0x1000),
        queue_from(&mut input, max, 0x1000),
    ];
    fill(&MEM, input.rest());
    let (mut t, device) = transport(&MEM, net);
    if start(&mut t, features, &queues) {
        notify(&device, TX);
        notify(&device, RX);
        for _ in 0..3 {
            let mut device = device.lock().unwrap();
            if device.backend_wanted(0) {
                device.process_backend(0);
            }
        }
        notify(&device, TX);
    }
});
