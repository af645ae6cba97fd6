//! The entropy device, virtio-rng (virtio 1.2 §5.4, device ID 4): one request queue, no
//! feature bits, no configuration space. The driver posts device-writable buffers and the
//! device fills them with bytes from the host's `getrandom(2)`; the used length says how many.
//! Linux offers it as `/dev/hwrng` and seeds its entropy pool from it at boot.
//!
//! The guest asks for as much as it likes, so the device bounds what it gives:
//! - at most [`MAX_REQUEST_BYTES`] per buffer (a larger buffer is filled that far: the used
//!   length tells the driver, as §5.4.6.1 allows);
//! - at most [`RATE_BYTES_PER_SEC`] per second, from a bucket of [`BURST_BYTES`], where every
//!   request costs at least [`MIN_REQUEST_COST`] bytes (so a flood of 1-byte requests is
//!   bounded too). When the bucket runs dry the device leaves the remaining buffers in the
//!   ring and arms a timer (its one backend descriptor, [`VirtioDevice::backend_fds`]): the
//!   event loop comes back when there is enough again, and serves everyone else meanwhile.
//!
//! A chain with a device-readable descriptor, or with a buffer outside guest memory, is
//! returned with a used length of 0 (the device has no status byte to report it with).
//!
//! Snapshot: the transport saves the queue (every request runs to completion inside one call);
//! the bucket is not saved: a restored device starts with a full one.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::debug;
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::{DescriptorChain, Queue, QueueState, QueueT};
use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::timerfd::TimerFd;

use super::queue;
use super::{
    feature_bit, ActivateError, ActiveQueue, QueueRun, VirtioDevice, VirtioInterrupt,
    CHAINS_PER_RUN, VIRTIO_F_VERSION_1,
};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 64;
/// The most bytes one buffer gets.
pub const MAX_REQUEST_BYTES: u32 = 64 << 10;
/// The sustained rate the device gives bytes at.
pub const RATE_BYTES_PER_SEC: u64 = 1 << 20;
/// What the bucket holds when full: a guest that has asked for nothing for a second may take
/// this much at once.
pub const BURST_BYTES: u64 = 1 << 20;
/// What any request costs at least, whatever its size.
pub const MIN_REQUEST_COST: u64 = 64;
/// How the device names itself in log messages.
const LOG_NAME: &str = "virtio-rng";
const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];

/// Bytes to give, refilled at [`RATE_BYTES_PER_SEC`] up to [`BURST_BYTES`].
#[derive(Debug)]
struct Bucket {
    bytes: u64,
    refilled_at: Instant,
}

impl Bucket {
    fn full(now: Instant) -> Self {
        Bucket {
            bytes: BURST_BYTES,
            refilled_at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled_at);
        let earned = elapsed.as_nanos() * u128::from(RATE_BYTES_PER_SEC) / 1_000_000_000;
        if earned == 0 {
            return;
        }
        // Only the time that earned whole bytes is used up.
        let used_ns = earned * 1_000_000_000 / u128::from(RATE_BYTES_PER_SEC);
        self.refilled_at += Duration::from_nanos(u64::try_from(used_ns).unwrap_or(u64::MAX));
        let earned = u64::try_from(earned).unwrap_or(u64::MAX);
        self.bytes = self.bytes.saturating_add(earned).min(BURST_BYTES);
        if self.bytes == BURST_BYTES {
            self.refilled_at = now;
        }
    }

    /// How long until the bucket holds `bytes` again.
    fn wait_for(&self, bytes: u64) -> Duration {
        let missing = bytes.saturating_sub(self.bytes);
        Duration::from_nanos(missing.saturating_mul(1_000_000_000) / RATE_BYTES_PER_SEC)
            .max(Duration::from_millis(1))
    }
}

/// Counters of a [`Rng`] device's work.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RngStats {
    /// Chains taken from the queue.
    pub requests: u64,
    /// Random bytes written into guest memory.
    pub bytes: u64,
    /// Chains returned with nothing written (a readable descriptor, a buffer outside memory).
    pub errors: u64,
    /// Times the device ran out of bytes and waited for its timer.
    pub throttled: u64,
}

/// A virtio-rng device.
pub struct Rng {
    active: Option<ActiveQueue>,
    bucket: Bucket,
    /// Armed while the device waits for its bucket to refill.
    timer: TimerFd,
    throttled: bool,
    stats: RngStats,
    /// Where the random bytes of one request are made before they go to the guest.
    buf: Vec<u8>,
}

impl std::fmt::Debug for Rng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rng")
            .field("active", &self.active.is_some())
            .field("throttled", &self.throttled)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Fills `buf` from the host's `getrandom(2)` (the kernel's CSPRNG, never blocking once it is
/// initialised, which it is long before a VMM runs).
fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`, which is valid,
        // writable memory of that length for the duration of the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match usize::try_from(n) {
            Ok(n) => done += n,
            Err(_) => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

impl Rng {
    /// A device with a full bucket.
    pub fn new() -> std::io::Result<Self> {
        Ok(Rng {
            active: None,
            bucket: Bucket::full(Instant::now()),
            timer: TimerFd::new()?,
            throttled: false,
            stats: RngStats::default(),
            buf: Vec::new(),
        })
    }

    /// What the device has done so far.
    pub fn stats(&self) -> RngStats {
        self.stats
    }

    /// Serves the queue until it is empty, the bucket is dry or [`CHAINS_PER_RUN`] chains
    /// were taken (then the timer brings the device back at once, after the rest of the event
    /// loop's ready descriptors); says whether the guest was notified.
    fn serve(&mut self) -> bool {
        let Self {
            active,
            bucket,
            timer,
            throttled,
            stats,
            buf,
        } = self;
        let Some(active) = active.as_mut() else {
            return false;
        };
        let mem = &active.mem;
        let queue = &mut active.queue;
        let mut added = false;
        let mut empty_rounds = 0;
        let mut taken = 0;
        'rounds: loop {
            if let Err(e) = queue.disable_notification(mem) {
                debug!("{LOG_NAME}: cannot disable notifications: {e}");
            }
            let mut popped = false;
            loop {
                bucket.refill(Instant::now());
                if bucket.bytes < MIN_REQUEST_COST {
                    // Dry: the rest waits in the ring, with notifications off (the timer
                    // brings the device back), and the event loop serves everyone else.
                    match timer.reset(bucket.wait_for(MIN_REQUEST_COST.max(4096)), None) {
                        Ok(()) => {
                            *throttled = true;
                            stats.throttled += 1;
                        }
                        Err(e) => debug!("{LOG_NAME}: cannot arm the refill timer: {e}"),
                    }
                    break 'rounds;
                }
                if taken == CHAINS_PER_RUN {
                    // Its turn is over; notifications stay off, the timer brings it back.
                    match timer.reset(Duration::from_nanos(1), None) {
                        Ok(()) => *throttled = true,
                        Err(e) => debug!("{LOG_NAME}: cannot arm the timer: {e}"),
                    }
                    break 'rounds;
                }
                let Some(chain) = queue::pop_chain(queue, mem, LOG_NAME) else {
                    break;
                };
                taken += 1;
                popped = true;
                let head = chain.head_index();
                let len = fill_chain(chain, mem, bucket, stats, buf);
                match queue.add_used(mem, head, len) {
                    Ok(()) => added = true,
                    Err(e) => debug!("{LOG_NAME}: cannot return chain {head}: {e}"),
                }
            }
            empty_rounds = if popped { 0 } else { empty_rounds + 1 };
            match queue.enable_notification(mem) {
                Ok(false) => break,
                Ok(true) if empty_rounds < 2 => {}
                Ok(true) => {
                    debug!("{LOG_NAME}: available ring index is inconsistent; ignoring it");
                    break;
                }
                Err(e) => {
                    debug!("{LOG_NAME}: cannot enable notifications: {e}");
                    break;
                }
            }
        }
        if !added || !queue::needs_notification(queue, mem, LOG_NAME) {
            return false;
        }
        queue::signal_used_queue(active.interrupt.as_ref(), LOG_NAME);
        true
    }
}

/// Fills one chain with random bytes, as far as [`MAX_REQUEST_BYTES`] and the bucket allow
/// (the caller made sure it holds at least [`MIN_REQUEST_COST`]); returns the used length.
fn fill_chain(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    bucket: &mut Bucket,
    stats: &mut RngStats,
    buf: &mut Vec<u8>,
) -> u32 {
    stats.requests += 1;
    let mut budget = u64::from(MAX_REQUEST_BYTES).min(bucket.bytes);
    let mut targets = Vec::new();
    for desc in chain {
        if !desc.is_write_only() {
            debug!("{LOG_NAME}: a request has a device-readable buffer; returned empty");
            stats.errors += 1;
            bucket.bytes -= MIN_REQUEST_COST;
            return 0;
        }
        let len = u64::from(desc.len()).min(budget);
        if len == 0 {
            continue;
        }
        // `len` is at most MAX_REQUEST_BYTES.
        if !GuestMemoryBackend::check_range(mem, desc.addr(), len as usize) {
            debug!(
                "{LOG_NAME}: a request's buffer at {:#x} ({} bytes) is outside guest memory",
                desc.addr().0,
                desc.len()
            );
            stats.errors += 1;
            bucket.bytes -= MIN_REQUEST_COST;
            return 0;
        }
        targets.push((desc.addr(), len as usize));
        budget -= len;
    }
    let total: usize = targets.iter().map(|(_, len)| len).sum();
    bucket.bytes -= (total as u64).max(MIN_REQUEST_COST);
    buf.resize(total, 0);
    if let Err(e) = fill_random(buf) {
        log::warn!("{LOG_NAME}: getrandom failed: {e}");
        stats.errors += 1;
        return 0;
    }
    let mut offset = 0;
    for (addr, len) in targets {
        if let Err(e) = mem.write_slice(&buf[offset..offset + len], addr) {
            debug!("{LOG_NAME}: cannot write a request's buffer: {e}");
            stats.errors += 1;
            return 0;
        }
        offset += len;
    }
    stats.bytes += total as u64;
    // At most MAX_REQUEST_BYTES.
    total as u32
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        feature_bit(VIRTIO_F_VERSION_1)
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // No configuration space (§5.4.4).
        data.fill(0);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        _acked_features: u64,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        ActiveQueue::start(&mut self.active, mem, queues, interrupt)
    }

    /// Runs on a vCPU thread (a `Status` write), whose seccomp filter allows no timer call:
    /// the timer is left as it is. Not throttled, the device is no longer polled on it, and the
    /// next throttle re-arms it.
    fn reset(&mut self) {
        self.active = None;
        self.throttled = false;
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn queue_states(&self) -> Vec<QueueState> {
        ActiveQueue::states(&self.active)
    }

    /// Never `more`: a run that reached its budget left the device throttled, and its timer
    /// brings it back (for runs from either the queue or the timer).
    fn process_queue(&mut self, queue_index: usize) -> QueueRun {
        // While throttled the timer brings the device back; a notification changes nothing.
        if queue_index != 0 || self.throttled {
            return QueueRun::default();
        }
        QueueRun {
            notified: self.serve(),
            more: false,
        }
    }

    fn backend_fds(&self) -> Vec<RawFd> {
        vec![self.timer.as_raw_fd()]
    }

    /// The refill timer expired.
    fn process_backend(&mut self, index: usize) {
        if index != 0 || !self.throttled {
            return;
        }
        // Readable: the read does not block.
        let _ = self.timer.wait();
        self.throttled = false;
        self.serve();
    }

    fn backend_wanted(&self, index: usize) -> bool {
        index == 0 && self.throttled && self.active.is_some()
    }
}

#[cfg(test)]
mod tests;
