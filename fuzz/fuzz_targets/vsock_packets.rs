//! virtio-vsock packets over arbitrary guest memory: the device is started with features and
//! its three queues from the input (restored or not), the rest of the input is guest memory
//! (rings, descriptors, packet headers and data), and its queues and host side are run as the
//! event loop runs them. A host program listens on port 1024, so a guest REQUEST there makes a
//! connection (and RW, SHUTDOWN, credit and RST packets reach one); every other port is
//! refused.
#![no_main]

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::LazyLock;

use devices::virtio::vsock::{Vsock, EVENT_QUEUE, RX_QUEUE, TX_QUEUE};
use devices::virtio::VirtioDevice;
use libfuzzer_sys::fuzz_target;
use vm_memory::GuestMemoryMmap;
use vmm_fuzz::{fill, guarded_memory, notify, queue_from, start, transport, Input};

static MEM: LazyLock<GuestMemoryMmap> =
    LazyLock::new(|| guarded_memory(&[(0, 0x10000), (0x20000, 0x10000)]));

/// The device's socket, and a host program's listener for port 1024 (never accepting: the
/// kernel completes connections up to its backlog, the rest are refused).
static SOCKETS: LazyLock<(PathBuf, UnixListener, UnixListener)> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("vmm-fuzz-vsock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let path = dir.join("v.sock");
    let device = UnixListener::bind(&path).expect("bind the device's socket");
    let host = UnixListener::bind(dir.join("v.sock_1024")).expect("bind port 1024");
    host.set_nonblocking(true).expect("non-blocking");
    (path, device, host)
});

/// VIRTIO_F_VERSION_1, which the transport requires.
const VERSION_1: u64 = 1 << 32;

fuzz_target!(|data: &[u8]| {
    let (path, listener, host) = &*SOCKETS;
    // Connections the last run made: accepted and dropped, so the backlog has room.
    while host.accept().is_ok() {}
    let mut input = Input::new(data);
    let restored = input.u8() & 1 == 1;
    let vsock = Vsock::new(
        3,
        listener.try_clone().expect("dup the listener"),
        path.clone(),
        restored,
    )
    .expect("an epoll and a timer");
    let features = (vsock.avail_features() & input.u64()) | VERSION_1;
    let max = vsock.queue_max_sizes()[0];
    let queues = [
        queue_from(&mut input, max, 0x1000),
        queue_from(&mut input, max, 0x1000),
        queue_from(&mut input, max, 0x1000),
    ];
    fill(&MEM, input.rest());
    let (mut t, device) = transport(&MEM, vsock);
    if start(&mut t, features, &queues) {
        notify(&device, TX_QUEUE);
        notify(&device, RX_QUEUE);
        notify(&device, EVENT_QUEUE);
        for _ in 0..2 {
            let mut device = device.lock().unwrap();
            if device.backend_wanted(0) {
                device.process_backend(0);
            }
        }
        notify(&device, TX_QUEUE);
    }
});
