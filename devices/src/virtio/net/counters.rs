//! What a virtio-net device counts, for the VMM to read at any time.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of a [`Net`](super::Net) device's work, shared with whoever holds
/// [`Net::counters`](super::Net::counters).
#[derive(Debug, Default)]
pub struct NetCounters {
    pub(super) rx_frames: AtomicU64,
    pub(super) rx_bytes: AtomicU64,
    pub(super) rx_dropped: AtomicU64,
    pub(super) rx_bad_chains: AtomicU64,
    pub(super) rx_errors: AtomicU64,
    pub(super) tx_frames: AtomicU64,
    pub(super) tx_bytes: AtomicU64,
    pub(super) tx_dropped: AtomicU64,
    pub(super) tx_errors: AtomicU64,
    pub(super) notifications: AtomicU64,
}

/// A copy of [`NetCounters`] at one moment. Byte counts leave out the 12-byte header.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes of the frames delivered to the guest.
    pub rx_bytes: u64,
    /// Frames read from the backend that did not reach the guest: shorter than a header and
    /// an Ethernet header, too big for a receive buffer (without `MRG_RXBUF`), or pending at a
    /// device reset.
    pub rx_dropped: u64,
    /// Receive chains returned unused (length 0) because they were malformed: a
    /// device-readable descriptor, shorter than the header, outside guest memory, broken.
    pub rx_bad_chains: u64,
    /// Failed reads from the backend.
    pub rx_errors: u64,
    /// Frames sent to the backend.
    pub tx_frames: u64,
    /// Bytes of the frames sent to the backend.
    pub tx_bytes: u64,
    /// Transmit chains dropped because they were malformed: shorter than a header and an
    /// Ethernet header, longer than [`MAX_BUFFER_LEN`](super::MAX_BUFFER_LEN), a device-writable descriptor, outside
    /// guest memory, broken.
    pub tx_dropped: u64,
    /// Frames the backend refused.
    pub tx_errors: u64,
    /// Used buffer notifications sent to the guest.
    pub notifications: u64,
}

impl NetCounters {
    /// The current values.
    pub fn snapshot(&self) -> NetStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetStats {
            rx_frames: get(&self.rx_frames),
            rx_bytes: get(&self.rx_bytes),
            rx_dropped: get(&self.rx_dropped),
            rx_bad_chains: get(&self.rx_bad_chains),
            rx_errors: get(&self.rx_errors),
            tx_frames: get(&self.tx_frames),
            tx_bytes: get(&self.tx_bytes),
            tx_dropped: get(&self.tx_dropped),
            tx_errors: get(&self.tx_errors),
            notifications: get(&self.notifications),
        }
    }

    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
