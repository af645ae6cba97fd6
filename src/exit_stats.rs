//! vCPU exit statistics: why each vCPU left `KVM_RUN` and, for port I/O and MMIO, which device
//! the access went to and how long the VMM took to handle it (measured around the bus
//! dispatch, device lock included).
//!
//! Each vCPU thread counts its own exits in atomics (no lock on the exit path); the API
//! (`GET /vm/exits`) and the `--exit-stats` table read them from the main thread. An exit is
//! counted once it has been handled, before the vCPU enters the guest again.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::ser::{Serialize, SerializeMap, Serializer};

/// The name of the row for accesses that no device handled.
pub const NO_DEVICE: &str = "no device";

/// Why a vCPU left `KVM_RUN` (the `KVM_EXIT_*` reasons the VMM sees, and interruptions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    /// `KVM_EXIT_IO`, an `in`: the VMM's device supplies the value.
    IoIn,
    /// `KVM_EXIT_IO`, an `out`.
    IoOut,
    /// `KVM_EXIT_MMIO`, a load from an address with no guest RAM and no in-kernel device.
    MmioRead,
    /// `KVM_EXIT_MMIO`, a store.
    MmioWrite,
    /// `KVM_EXIT_HLT` (with the in-kernel LAPIC, only a halt for good).
    Hlt,
    /// `KVM_EXIT_SHUTDOWN`: a triple fault.
    Shutdown,
    /// `KVM_EXIT_SYSTEM_EVENT`.
    SystemEvent,
    /// `KVM_EXIT_INTERNAL_ERROR`.
    InternalError,
    /// `KVM_EXIT_FAIL_ENTRY`.
    FailEntry,
    /// `KVM_RUN` returned `EINTR`/`EAGAIN`: a signal, such as the VMM's own kick (stop, pause).
    Interrupted,
    /// Any other exit.
    Other,
}

impl ExitKind {
    /// Every kind, in the order the tables list them.
    pub const ALL: [ExitKind; 11] = [
        ExitKind::IoIn,
        ExitKind::IoOut,
        ExitKind::MmioRead,
        ExitKind::MmioWrite,
        ExitKind::Hlt,
        ExitKind::Shutdown,
        ExitKind::SystemEvent,
        ExitKind::InternalError,
        ExitKind::FailEntry,
        ExitKind::Interrupted,
        ExitKind::Other,
    ];

    /// The name in the JSON and the table.
    pub fn name(self) -> &'static str {
        match self {
            ExitKind::IoIn => "io-in",
            ExitKind::IoOut => "io-out",
            ExitKind::MmioRead => "mmio-read",
            ExitKind::MmioWrite => "mmio-write",
            ExitKind::Hlt => "hlt",
            ExitKind::Shutdown => "shutdown",
            ExitKind::SystemEvent => "system-event",
            ExitKind::InternalError => "internal-error",
            ExitKind::FailEntry => "fail-entry",
            ExitKind::Interrupted => "intr",
            ExitKind::Other => "other",
        }
    }

    /// The bus a port-I/O or MMIO exit goes to, and whether it is a write.
    fn access(self) -> Option<(BusKind, bool)> {
        match self {
            ExitKind::IoIn => Some((BusKind::Pio, false)),
            ExitKind::IoOut => Some((BusKind::Pio, true)),
            ExitKind::MmioRead => Some((BusKind::Mmio, false)),
            ExitKind::MmioWrite => Some((BusKind::Mmio, true)),
            _ => None,
        }
    }
}

/// Port I/O or MMIO.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    Pio,
    Mmio,
}

impl BusKind {
    fn name(self) -> &'static str {
        match self {
            BusKind::Pio => "pio",
            BusKind::Mmio => "mmio",
        }
    }
}

#[derive(Default)]
struct KindCounter {
    count: AtomicU64,
    ns: AtomicU64,
}

#[derive(Default)]
struct DeviceCounter {
    reads: AtomicU64,
    writes: AtomicU64,
    ns: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// One vCPU's counters; only its own thread writes them.
pub struct VcpuExitStats {
    kinds: [KindCounter; ExitKind::ALL.len()],
    /// One per device on the port-I/O bus (by bus index), then one for [`NO_DEVICE`].
    pio: Box<[DeviceCounter]>,
    /// The same for the MMIO bus.
    mmio: Box<[DeviceCounter]>,
}

impl VcpuExitStats {
    fn new(pio_devices: usize, mmio_devices: usize) -> Self {
        let table = |n: usize| (0..=n).map(|_| DeviceCounter::default()).collect();
        VcpuExitStats {
            kinds: Default::default(),
            pio: table(pio_devices),
            mmio: table(mmio_devices),
        }
    }

    /// Counts an exit that went to no device.
    pub fn count(&self, kind: ExitKind) {
        bump(&self.kinds[kind as usize].count, 1);
    }

    /// Counts a port-I/O or MMIO exit: `device` is the bus index of the device that handled
    /// it (`None`: no device did), `took` the time the VMM spent on it.
    pub fn count_access(&self, kind: ExitKind, device: Option<usize>, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let counter = &self.kinds[kind as usize];
        bump(&counter.count, 1);
        bump(&counter.ns, ns);
        let Some((bus, write)) = kind.access() else {
            return;
        };
        let table = match bus {
            BusKind::Pio => &self.pio,
            BusKind::Mmio => &self.mmio,
        };
        // The last row is "no device"; an index the table does not know lands there too.
        let last = table.len() - 1;
        let row = &table[device.unwrap_or(last).min(last)];
        bump(if write { &row.writes } else { &row.reads }, 1);
        bump(&row.ns, ns);
    }

    fn total(&self) -> u64 {
        self.kinds.iter().map(|k| get(&k.count)).sum()
    }
}

/// Every vCPU's counters, and the names of the devices on the two buses.
pub struct ExitStats {
    vcpus: Vec<Arc<VcpuExitStats>>,
    pio_names: Vec<String>,
    mmio_names: Vec<String>,
}

impl ExitStats {
    /// Counters for `cpus` vCPUs on buses whose devices are called `pio_names` and
    /// `mmio_names` (by bus index).
    pub fn new(cpus: usize, pio_names: &[String], mmio_names: &[String]) -> Self {
        ExitStats {
            vcpus: (0..cpus)
                .map(|_| Arc::new(VcpuExitStats::new(pio_names.len(), mmio_names.len())))
                .collect(),
            pio_names: pio_names.to_vec(),
            mmio_names: mmio_names.to_vec(),
        }
    }

    /// The counters of vCPU `index`, for its thread.
    pub fn vcpu(&self, index: usize) -> Option<Arc<VcpuExitStats>> {
        self.vcpus.get(index).cloned()
    }

    /// The totals over every vCPU, now.
    pub fn snapshot(&self) -> ExitSnapshot {
        let by_reason: Vec<(&'static str, ReasonRow)> = ExitKind::ALL
            .iter()
            .map(|&kind| {
                let (count, ns) = self.vcpus.iter().fold((0, 0), |(c, n), v| {
                    let k = &v.kinds[kind as usize];
                    (c + get(&k.count), n + get(&k.ns))
                });
                (
                    kind.name(),
                    ReasonRow {
                        count,
                        handling_ns: ns,
                    },
                )
            })
            .collect();
        let mut by_device = Vec::new();
        for (bus, names) in [
            (BusKind::Pio, &self.pio_names),
            (BusKind::Mmio, &self.mmio_names),
        ] {
            let names = names.iter().map(String::as_str).chain([NO_DEVICE]);
            for (i, name) in names.enumerate() {
                let mut row = DeviceRow {
                    bus,
                    device: name.to_string(),
                    reads: 0,
                    writes: 0,
                    handling_ns: 0,
                };
                for vcpu in &self.vcpus {
                    let table = match bus {
                        BusKind::Pio => &vcpu.pio,
                        BusKind::Mmio => &vcpu.mmio,
                    };
                    if let Some(c) = table.get(i) {
                        row.reads += get(&c.reads);
                        row.writes += get(&c.writes);
                        row.handling_ns += get(&c.ns);
                    }
                }
                by_device.push(row);
            }
        }
        ExitSnapshot {
            total: by_reason.iter().map(|(_, r)| r.count).sum(),
            handling_ns: by_reason.iter().map(|(_, r)| r.handling_ns).sum(),
            by_reason: InOrder(by_reason),
            by_device,
            per_vcpu: self.vcpus.iter().map(|v| v.total()).collect(),
        }
    }
}

/// A map that serializes its entries in this order (the kinds' order, not alphabetical).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InOrder<V>(pub Vec<(&'static str, V)>);

impl<V: Serialize> Serialize for InOrder<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// The exit counts by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ReasonRow {
    pub count: u64,
    /// Time spent handling them (port I/O and MMIO only; 0 for the others).
    pub handling_ns: u64,
}

/// The port-I/O or MMIO exits that went to one device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceRow {
    pub bus: BusKind,
    pub device: String,
    pub reads: u64,
    pub writes: u64,
    pub handling_ns: u64,
}

/// `GET /vm/exits`, and the `--exit-stats` table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExitSnapshot {
    pub total: u64,
    pub handling_ns: u64,
    pub by_reason: InOrder<ReasonRow>,
    /// Every device on both buses, then "no device", for port I/O first, then MMIO.
    pub by_device: Vec<DeviceRow>,
    /// The total of each vCPU, by index.
    pub per_vcpu: Vec<u64>,
}

/// The short form in `GET /vm`: the total and the count of each reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExitSummary {
    pub total: u64,
    pub by_reason: InOrder<u64>,
}

impl ExitSnapshot {
    pub fn summary(&self) -> ExitSummary {
        ExitSummary {
            total: self.total,
            by_reason: InOrder(
                self.by_reason
                    .0
                    .iter()
                    .map(|(k, r)| (*k, r.count))
                    .collect(),
            ),
        }
    }

    /// The table `--exit-stats` prints: every reason and device with a non-zero count.
    pub fn table(&self) -> String {
        let ms = |ns: u64| ns as f64 / 1e6;
        let us_each = |ns: u64, n: u64| {
            if n == 0 {
                String::new()
            } else {
                format!("{:.2}", ns as f64 / 1e3 / n as f64)
            }
        };
        let mut out = String::new();
        let per_vcpu: Vec<String> = self
            .per_vcpu
            .iter()
            .enumerate()
            .map(|(i, n)| format!("vcpu{i} {n}"))
            .collect();
        let _ = writeln!(
            out,
            "vCPU exits: {} ({}), {:.3} ms handling port I/O and MMIO",
            self.total,
            per_vcpu.join(", "),
            ms(self.handling_ns)
        );
        let _ = writeln!(
            out,
            "{:<16} {:>10} {:>13} {:>9}",
            "exit reason", "count", "handling ms", "µs each"
        );
        for (name, row) in self.by_reason.0.iter().filter(|(_, r)| r.count > 0) {
            let (handling, each) = if row.handling_ns > 0 {
                (
                    format!("{:.3}", ms(row.handling_ns)),
                    us_each(row.handling_ns, row.count),
                )
            } else {
                (String::new(), String::new())
            };
            let _ = writeln!(out, "{name:<16} {:>10} {handling:>13} {each:>9}", row.count);
        }
        let _ = writeln!(
            out,
            "{:<16} {:<4} {:>10} {:>10} {:>13} {:>9}",
            "device", "bus", "reads", "writes", "handling ms", "µs each"
        );
        for row in self.by_device.iter().filter(|r| r.reads + r.writes > 0) {
            let _ = writeln!(
                out,
                "{:<16} {:<4} {:>10} {:>10} {:>13.3} {:>9}",
                row.device,
                row.bus.name(),
                row.reads,
                row.writes,
                ms(row.handling_ns),
                us_each(row.handling_ns, row.reads + row.writes)
            );
        }
        // Rows without a handling time end in padding.
        out.lines().map(|l| format!("{}\n", l.trim_end())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn counts_add_up_by_reason_device_and_vcpu() {
        let stats = ExitStats::new(2, &names(&["serial", "i8042"]), &names(&["virtio-blk:vda"]));
        let (v0, v1) = (stats.vcpu(0).unwrap(), stats.vcpu(1).unwrap());
        assert!(stats.vcpu(2).is_none());
        let us = Duration::from_micros(1);
        for _ in 0..3 {
            v0.count_access(ExitKind::IoOut, Some(0), us);
        }
        v1.count_access(ExitKind::IoIn, Some(1), us);
        v1.count_access(ExitKind::IoOut, None, us);
        v1.count_access(ExitKind::MmioRead, Some(0), us);
        v1.count_access(ExitKind::MmioWrite, None, us);
        // An index beyond the table (cannot come from the bus) counts as no device.
        v0.count_access(ExitKind::IoOut, Some(7), us);
        v0.count(ExitKind::Interrupted);

        let snap = stats.snapshot();
        assert_eq!(snap.total, 9);
        assert_eq!(snap.per_vcpu, vec![5, 4]);
        assert_eq!(snap.handling_ns, 8_000);
        let reason = |name: &str| snap.by_reason.0.iter().find(|(k, _)| *k == name).unwrap().1;
        assert_eq!(reason("io-out").count, 5);
        assert_eq!(reason("io-in").count, 1);
        assert_eq!(
            reason("intr"),
            ReasonRow {
                count: 1,
                handling_ns: 0
            }
        );
        let device = |bus, name: &str| {
            snap.by_device
                .iter()
                .find(|r| r.bus == bus && r.device == name)
                .cloned()
                .unwrap()
        };
        let serial = device(BusKind::Pio, "serial");
        assert_eq!(
            (serial.reads, serial.writes, serial.handling_ns),
            (0, 3, 3_000)
        );
        assert_eq!(device(BusKind::Pio, "i8042").reads, 1);
        assert_eq!(device(BusKind::Pio, NO_DEVICE).writes, 2);
        assert_eq!(device(BusKind::Mmio, "virtio-blk:vda").reads, 1);
        assert_eq!(device(BusKind::Mmio, NO_DEVICE).writes, 1);
        assert_eq!(snap.by_device.len(), 5);
    }

    #[test]
    fn json_lists_reasons_in_order_and_the_table_skips_zero_rows() {
        let stats = ExitStats::new(1, &names(&["serial"]), &[]);
        let v = stats.vcpu(0).unwrap();
        v.count_access(ExitKind::IoOut, Some(0), Duration::from_nanos(1500));
        let snap = stats.snapshot();
        let json = serde_json::to_string(&snap).unwrap();
        assert!(
            json.starts_with(r#"{"total":1,"handling_ns":1500,"by_reason":{"io-in":{"count":0,"handling_ns":0},"io-out":{"count":1,"handling_ns":1500},"#),
            "{json}"
        );
        assert!(
            json.contains(
                r#"{"bus":"pio","device":"serial","reads":0,"writes":1,"handling_ns":1500}"#
            ),
            "{json}"
        );
        let summary = serde_json::to_string(&snap.summary()).unwrap();
        assert!(
            summary.starts_with(r#"{"total":1,"by_reason":{"io-in":0,"io-out":1,"#),
            "{summary}"
        );

        let table = snap.table();
        assert!(
            table.starts_with("vCPU exits: 1 (vcpu0 1), 0.002 ms"),
            "{table}"
        );
        assert!(table.contains("\nio-out "), "{table}");
        assert!(!table.contains("\nio-in "), "{table}");
        assert!(
            table.contains("\nserial           pio           0          1"),
            "{table}"
        );
        assert!(!table.contains(NO_DEVICE), "{table}");
    }
}
