//! Device models for the VMM.
//!
//! This crate deliberately does not depend on `kvm-ioctls`: interrupts leave a device through
//! [`vm_superio::Trigger`] (implemented here by [`interrupt::EventFdTrigger`], which the VMM
//! registers as a KVM irqfd), so every test in this crate runs without `/dev/kvm`.
//!
//! - [`bus`]: one address bus type, used for both port I/O and MMIO (Firecracker style).
//! - [`serial`]: the 16550 UART console (COM1), on top of `vm_superio::Serial`.
//! - [`i8042`]: the one bit of the PS/2 controller a guest needs to reboot (`reboot=k`).
//! - [`debug_port`]: port 0x80, where a guest writes a byte to mark a boot milestone.
//! - [`power`]: ACPI power-off (the sleep control register), pvpanic, and the exit code a guest
//!   chooses for the VMM.
//! - [`virtio`]: the virtio-mmio transport, the virtio-blk device, the virtio-net device
//!   on a TAP interface and the virtio-rng device (virtio 1.2 §4.2, §5.2, §5.1, §5.4), and the
//!   event-loop subscriber that runs their queues ([`virtio::QueueHandler`], on
//!   `event-manager`).
//! - [`persist`]: the one save/restore trait, for snapshots.

pub mod bus;
pub mod debug_port;
pub mod i8042;
pub mod interrupt;
pub mod persist;
pub mod power;
pub mod serial;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError, IoBuses};
pub use debug_port::DebugPort;
pub use i8042::I8042Device;
pub use interrupt::EventFdTrigger;
pub use persist::Persist;
pub use serial::SerialDevice;
