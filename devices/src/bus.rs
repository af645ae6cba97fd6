//! One address bus for both port I/O and MMIO (the Firecracker design).
//!
//! A vCPU thread that takes an I/O or MMIO exit looks the address up on the matching [`Bus`] and
//! forwards the access to the device whose range holds it. Each device sees the base of the range
//! it was inserted at and the offset of the access within that range, so one device type can be
//! mapped at several bases (COM1 and COM2, for example).
//!
//! The buses are built once, before the vCPUs start, and then shared by every vCPU thread as one
//! `Arc<`[`IoBuses`]`>`; each device sits behind its own `Mutex`, so vCPUs that reach different
//! devices do not wait for one another.
//!
//! Every device is inserted with a name and gets an index (0, 1, … in insertion order); a read or
//! write returns the index of the device that handled it, so the VMM can count exits per device
//! ([`Bus::names`] says which name each index has).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// A device on a [`Bus`].
///
/// `base` is the first address of the range the device was inserted at and `offset` the distance
/// of the access from it; `data.len()` is the access size. An access never crosses the end of the
/// device's range (the bus rejects those), but a device must still accept any size and any offset
/// inside its range without panicking: the guest chooses them.
pub trait BusDevice: Send {
    /// Handles a read of `data.len()` bytes at `base + offset`; the device fills `data`.
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    /// Handles a write of `data` at `base + offset`.
    fn write(&mut self, base: u64, offset: u64, data: &[u8]);
}

/// Errors from building a [`Bus`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// A device range must hold at least one address.
    #[error("cannot insert a device with zero length at {base:#x}")]
    ZeroLength {
        /// Requested base address.
        base: u64,
    },
    /// `base + len` does not fit in the 64-bit address space.
    #[error("device range at {base:#x} with length {len:#x} overflows the address space")]
    Overflow {
        /// Requested base address.
        base: u64,
        /// Requested length.
        len: u64,
    },
    /// The new range shares at least one address with a device already on the bus.
    #[error(
        "device range {base:#x}..={last:#x} overlaps the device at {existing_base:#x}..={existing_last:#x}"
    )]
    Overlap {
        /// First address of the requested range.
        base: u64,
        /// Last address (inclusive) of the requested range.
        last: u64,
        /// First address of the device already there.
        existing_base: u64,
        /// Last address (inclusive) of the device already there.
        existing_last: u64,
    },
}

/// One device's range on the bus, keyed in the map by its first address.
struct BusEntry {
    /// Last address of the range, inclusive (so a range may end at `u64::MAX`).
    last: u64,
    /// The device's index: its name is `names[index]`.
    index: usize,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// An address bus that dispatches accesses to the devices mapped on it.
#[derive(Default)]
pub struct Bus {
    devices: BTreeMap<u64, BusEntry>,
    /// The name of each device, by index (insertion order).
    names: Vec<String>,
    /// Accesses that no device answered, from every vCPU.
    unhandled: AtomicU64,
}

/// The port-I/O and MMIO buses of a VM, shared by all its vCPU threads.
#[derive(Debug, Default)]
pub struct IoBuses {
    /// Port I/O (`in`/`out`): the legacy PC devices.
    pub pio: Bus,
    /// Memory-mapped I/O in the 32-bit MMIO gap: the virtio-mmio devices.
    pub mmio: Bus,
}

// vCPU threads share the bus: fail the build, not a test, if that ever stops being possible.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Bus>();
};

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field(
                "ranges",
                &self
                    .devices
                    .iter()
                    .map(|(base, entry)| {
                        format!("{} {base:#x}..={:#x}", self.names[entry.index], entry.last)
                    })
                    .collect::<Vec<_>>(),
            )
            .field("unhandled_accesses", &self.unhandled_accesses())
            .finish()
    }
}

impl Bus {
    /// Creates an empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `device`, called `name` (for statistics and logs), at `base..base + len`, and
    /// returns its index.
    ///
    /// Fails if `len` is zero, if the range overflows the address space, or if it overlaps a
    /// device already on the bus; the error names both ranges.
    pub fn insert(
        &mut self,
        name: impl Into<String>,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<usize, BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength { base });
        }
        let last = base
            .checked_add(len - 1)
            .ok_or(BusError::Overflow { base, len })?;
        // Ranges on the bus never overlap one another, so if any of them overlaps the new one,
        // the one that starts last at or before `last` does.
        if let Some((&existing_base, entry)) = self.devices.range(..=last).next_back() {
            if entry.last >= base {
                return Err(BusError::Overlap {
                    base,
                    last,
                    existing_base,
                    existing_last: entry.last,
                });
            }
        }
        let index = self.names.len();
        self.names.push(name.into());
        self.devices.insert(
            base,
            BusEntry {
                last,
                index,
                device,
            },
        );
        Ok(index)
    }

    /// The devices' names, by index.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Finds the device holding every byte of a `len`-byte access at `addr`: the device, its
    /// base and the access's offset from that base.
    fn find(&self, addr: u64, len: usize) -> Option<(&BusEntry, u64, u64)> {
        let (&base, entry) = self.devices.range(..=addr).next_back()?;
        if addr > entry.last {
            return None;
        }
        let offset = addr - base;
        // The access must end inside the range too: `addr + len - 1 <= last`.
        let len = u64::try_from(len).ok()?;
        if len > 0 && len - 1 > entry.last - addr {
            return None;
        }
        Some((entry, base, offset))
    }

    fn count_unhandled(&self, kind: &str, addr: u64, len: usize) {
        self.unhandled.fetch_add(1, Ordering::Relaxed);
        log::debug!("unhandled {len}-byte {kind} at {addr:#x}: no device there");
    }

    /// Reads `data.len()` bytes at `addr` from the device mapped there, and returns that
    /// device's index.
    ///
    /// Returns `None`, leaves `data` untouched and counts the access as unhandled if no device
    /// holds the whole access (an access that crosses the end of a device's range is unhandled).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> Option<usize> {
        match self.find(addr, data.len()) {
            Some((entry, base, offset)) => {
                // A device that panicked while holding its lock poisons it; its state is
                // whatever it was, and that must not take the whole VMM down with it.
                entry
                    .device
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .read(base, offset, data);
                Some(entry.index)
            }
            None => {
                self.count_unhandled("read", addr, data.len());
                None
            }
        }
    }

    /// Writes `data` at `addr` to the device mapped there, and returns that device's index.
    ///
    /// Returns `None` and counts the access as unhandled if no device holds the whole access.
    pub fn write(&self, addr: u64, data: &[u8]) -> Option<usize> {
        match self.find(addr, data.len()) {
            Some((entry, base, offset)) => {
                entry
                    .device
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .write(base, offset, data);
                Some(entry.index)
            }
            None => {
                self.count_unhandled("write", addr, data.len());
                None
            }
        }
    }

    /// Reads like [`Bus::read`], but answers an access no device handles the way an empty
    /// ISA bus does: with all bits set (`0xff` in every byte).
    pub fn read_or_ff(&self, addr: u64, data: &mut [u8]) -> Option<usize> {
        let device = self.read(addr, data);
        if device.is_none() {
            data.fill(0xff);
        }
        device
    }

    /// How many reads and writes, over this bus and all its clones, found no device.
    pub fn unhandled_accesses(&self) -> u64 {
        self.unhandled.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every access it sees and answers reads with `offset as u8` in every byte.
    #[derive(Default)]
    struct Recorder {
        reads: Vec<(u64, u64, usize)>,
        writes: Vec<(u64, u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
            self.reads.push((base, offset, data.len()));
            data.fill(offset as u8);
        }
        fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
            self.writes.push((base, offset, data.to_vec()));
        }
    }

    fn recorder() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder::default()))
    }

    #[test]
    fn bus_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Bus>();
    }

    #[test]
    fn insert_rejects_zero_length() {
        let mut bus = Bus::new();
        let err = bus.insert("dev", recorder(), 0x3f8, 0).unwrap_err();
        assert_eq!(err, BusError::ZeroLength { base: 0x3f8 });
        assert!(err.to_string().contains("0x3f8"), "{err}");
    }

    #[test]
    fn insert_rejects_overflow() {
        let mut bus = Bus::new();
        assert_eq!(
            bus.insert("dev", recorder(), u64::MAX, 2),
            Err(BusError::Overflow {
                base: u64::MAX,
                len: 2
            })
        );
        // A range that ends exactly at the top of the address space is fine.
        bus.insert("dev", recorder(), u64::MAX - 1, 2).unwrap();
        assert!(bus.write(u64::MAX, &[1]).is_some());
        assert!(bus.write(u64::MAX, &[1, 2]).is_none());
    }

    #[test]
    fn insert_rejects_overlaps_and_names_both_ranges() {
        let mut bus = Bus::new();
        bus.insert("dev", recorder(), 0x100, 0x10).unwrap(); // 0x100..=0x10f
        bus.insert("dev", recorder(), 0x200, 0x10).unwrap(); // 0x200..=0x20f

        // Overlaps at the start, at the end, inside, around and exactly.
        for (base, len, existing) in [
            (0xf8, 0x10, 0x100),
            (0x10f, 1, 0x100),
            (0x104, 2, 0x100),
            (0x80, 0x100, 0x100),
            (0x100, 0x10, 0x100),
            (0x110, 0xf1, 0x200),
            (0x1ff, 0x20, 0x200),
        ] {
            let err = bus.insert("dev", recorder(), base, len).unwrap_err();
            match err {
                BusError::Overlap {
                    base: b,
                    last,
                    existing_base,
                    existing_last,
                } => {
                    assert_eq!((b, last), (base, base + len - 1));
                    assert_eq!((existing_base, existing_last), (existing, existing + 0xf));
                }
                other => panic!("{base:#x}+{len:#x}: unexpected {other:?}"),
            }
            let msg = err.to_string();
            assert!(msg.contains(&format!("{base:#x}")), "{msg}");
            assert!(msg.contains(&format!("{existing:#x}")), "{msg}");
        }

        // Neighbours that touch but do not overlap are fine.
        bus.insert("dev", recorder(), 0x110, 0xf0).unwrap(); // 0x110..=0x1ff
        bus.insert("dev", recorder(), 0xf0, 0x10).unwrap(); // 0xf0..=0xff
    }

    #[test]
    fn dispatch_passes_base_and_offset() {
        let mut bus = Bus::new();
        let com1 = recorder();
        let com2 = recorder();
        bus.insert("com1", com1.clone(), 0x3f8, 8).unwrap();
        bus.insert("com2", com2.clone(), 0x2f8, 8).unwrap();

        assert!(bus.write(0x3fb, &[0x80]).is_some());
        assert!(bus.write(0x2f8, &[0x41]).is_some());
        let mut data = [0u8; 2];
        assert!(bus.read(0x3fd, &mut data).is_some());
        assert_eq!(data, [5, 5]);

        let com1 = com1.lock().unwrap();
        assert_eq!(com1.writes, vec![(0x3f8, 3, vec![0x80])]);
        assert_eq!(com1.reads, vec![(0x3f8, 5, 2)]);
        let com2 = com2.lock().unwrap();
        assert_eq!(com2.writes, vec![(0x2f8, 0, vec![0x41])]);
        assert!(com2.reads.is_empty());
        assert_eq!(bus.unhandled_accesses(), 0);
    }

    #[test]
    fn accesses_return_the_index_of_the_device_that_handled_them() {
        let mut bus = Bus::new();
        assert_eq!(bus.insert("serial", recorder(), 0x3f8, 8), Ok(0));
        assert_eq!(bus.insert("i8042", recorder(), 0x60, 5), Ok(1));
        // A refused insert takes no index.
        assert!(bus.insert("overlap", recorder(), 0x3f8, 1).is_err());
        assert_eq!(bus.insert("debug", recorder(), 0x80, 1), Ok(2));
        assert_eq!(bus.names(), ["serial", "i8042", "debug"]);

        let mut data = [0u8; 1];
        assert_eq!(bus.write(0x3f8, &[1]), Some(0));
        assert_eq!(bus.read(0x64, &mut data), Some(1));
        assert_eq!(bus.read_or_ff(0x80, &mut data), Some(2));
        assert_eq!(bus.read_or_ff(0x81, &mut data), None);
        assert_eq!(data, [0xff]);
        assert!(format!("{bus:?}").contains("i8042 0x60..=0x64"), "{bus:?}");
    }

    #[test]
    fn accesses_outside_or_across_a_range_are_unhandled() {
        let mut bus = Bus::new();
        let dev = recorder();
        bus.insert("dev", dev.clone(), 0x1000, 0x10).unwrap();

        let mut data = [0u8; 4];
        assert!(bus.read(0xfff, &mut data).is_none()); // before
        assert!(bus.read(0x1010, &mut data).is_none()); // just after
        assert!(bus.read(0x100d, &mut data).is_none()); // 0x100d..=0x1010 crosses the end
        assert!(bus.write(0x100f, &[1, 2]).is_none()); // crosses the end
        assert!(bus.read(0x100c, &mut data).is_some()); // 0x100c..=0x100f ends exactly at the end
        assert!(bus.write(0x100f, &[1]).is_some());

        let dev = dev.lock().unwrap();
        assert_eq!(dev.reads, vec![(0x1000, 0xc, 4)]);
        assert_eq!(dev.writes, vec![(0x1000, 0xf, vec![1])]);
    }

    #[test]
    fn unhandled_accesses_are_counted_for_every_vcpu() {
        let mut bus = Bus::new();
        bus.insert("dev", recorder(), 0x60, 5).unwrap();
        let bus = Arc::new(bus);
        let clone = bus.clone();

        let mut data = [0u8; 2];
        assert!(bus.read(0x70, &mut data).is_none());
        assert_eq!(data, [0, 0], "a failed read leaves the buffer alone");
        assert!(clone.write(0x70, &[0]).is_none());
        clone.read_or_ff(0x71, &mut data);
        assert_eq!(data, [0xff, 0xff]);
        bus.read_or_ff(0x60, &mut data);
        assert_eq!(data, [0, 0], "a handled read is answered by the device");

        assert_eq!(bus.unhandled_accesses(), 3);
        assert_eq!(clone.unhandled_accesses(), 3);
    }

    #[test]
    fn empty_bus_handles_nothing() {
        let bus = Bus::default();
        assert!(bus.write(0, &[0]).is_none());
        let mut data = [0u8; 1];
        assert!(bus.read(u64::MAX, &mut data).is_none());
        assert_eq!(bus.unhandled_accesses(), 2);
    }

    #[test]
    fn a_poisoned_device_lock_does_not_panic_the_bus() {
        let mut bus = Bus::new();
        let dev = recorder();
        bus.insert("dev", dev.clone(), 0x80, 1).unwrap();

        let poisoner = dev.clone();
        let result = std::thread::spawn(move || {
            let _guard = poisoner.lock().unwrap();
            panic!("poison the device lock");
        })
        .join();
        assert!(result.is_err());
        assert!(dev.is_poisoned());

        assert!(bus.write(0x80, &[0x42]).is_some());
        let mut data = [0u8; 1];
        assert!(bus.read(0x80, &mut data).is_some());
        let dev = dev.lock().unwrap_or_else(PoisonError::into_inner);
        assert_eq!(dev.writes, vec![(0x80, 0, vec![0x42])]);
        assert_eq!(dev.reads, vec![(0x80, 0, 1)]);
    }

    #[test]
    fn threads_share_one_bus() {
        let mut bus = Bus::new();
        let dev = recorder();
        bus.insert("dev", dev.clone(), 0x3f8, 8).unwrap();
        let bus = Arc::new(bus);

        let handles: Vec<_> = (0..4u8)
            .map(|i| {
                let bus = bus.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        assert!(bus.write(0x3f8, &[i]).is_some());
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(dev.lock().unwrap().writes.len(), 400);
    }
}
