//! The virtio device manager: one virtio-mmio slot per device in the 32-bit MMIO gap, one GSI
//! each, an ioeventfd per queue on QueueNotify (a notification costs no exit to userspace),
//! an irqfd per device, and the `virtio_mmio.device=SIZE@ADDR:IRQ` entries for the kernel
//! command line (Linux drivers/virtio/virtio_mmio.c, VIRTIO_MMIO_CMDLINE_DEVICES).
//!
//! This is only the KVM wiring: the transport owns each queue's notification eventfd (KVM
//! signals it through the ioeventfd, the transport itself for a trapped write), and the
//! devices crate's [`QueueHandler`] runs the device on the event loop.

use std::sync::{Arc, Mutex};

use boot::layout;
use devices::virtio::mmio::{MmioError, MmioTransport, QUEUE_NOTIFY_OFFSET};
use devices::virtio::{EventFdInterrupt, VirtioDevice};
use devices::Bus;
use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use devices::virtio::QueueHandler;

/// How many virtio devices fit: one IOAPIC pin each from `layout::FIRST_VIRTIO_IRQ` up.
pub const MAX_VIRTIO_DEVICES: usize =
    layout::IOAPIC_NUM_PINS as usize - layout::FIRST_VIRTIO_IRQ as usize;

/// Errors while attaching a virtio device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "too many virtio devices: at most {MAX_VIRTIO_DEVICES} fit on the interrupt controller"
    )]
    TooManyDevices,
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("cannot set up the virtio-mmio transport")]
    Transport(#[source] MmioError),
    #[error("cannot register the interrupt (irqfd for GSI {gsi}) with KVM")]
    Irqfd {
        gsi: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot register the queue {queue} notification (ioeventfd at {addr:#x}) with KVM")]
    Ioeventfd {
        queue: usize,
        addr: u64,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot map the virtio-mmio slot at {addr:#x}")]
    Bus {
        addr: u64,
        #[source]
        source: devices::BusError,
    },
}

/// Where a device was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioSlot {
    pub addr: u64,
    pub size: u64,
    pub irq: u32,
}

impl MmioSlot {
    /// The slot of the `index`-th virtio device.
    pub fn for_index(index: usize) -> Option<MmioSlot> {
        (index < MAX_VIRTIO_DEVICES).then(|| MmioSlot {
            addr: layout::VIRTIO_MMIO_START.0 + index as u64 * layout::VIRTIO_MMIO_SIZE_EACH,
            size: layout::VIRTIO_MMIO_SIZE_EACH,
            irq: layout::FIRST_VIRTIO_IRQ + index as u32,
        })
    }

    /// `virtio_mmio.device=4K@0xd0000000:5`, as Linux parses it.
    pub fn cmdline_entry(&self) -> String {
        format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            self.size >> 10,
            self.addr,
            self.irq
        )
    }
}

/// Places virtio devices in MMIO slots, in order.
#[derive(Default)]
pub struct DeviceManager {
    slots: Vec<MmioSlot>,
    /// Each device's transport, in slot order (a snapshot saves and restores them).
    transports: Vec<Arc<Mutex<MmioTransport>>>,
}

impl DeviceManager {
    /// Attaches `device`, called `name` on the bus: maps its transport on `mmio`, wires its
    /// interrupt and queue notifications through KVM, and returns the subscriber that runs its
    /// queues.
    pub fn attach(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        mmio: &mut Bus,
        name: String,
        device: Arc<Mutex<dyn VirtioDevice>>,
    ) -> Result<QueueHandler, Error> {
        let slot = MmioSlot::for_index(self.slots.len()).ok_or(Error::TooManyDevices)?;
        let irqfd = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
        vm.register_irqfd(&irqfd, slot.irq)
            .map_err(|source| Error::Irqfd {
                gsi: slot.irq,
                source,
            })?;
        let interrupt = Arc::new(EventFdInterrupt::new(irqfd));
        let transport =
            MmioTransport::new(mem.clone(), device, interrupt).map_err(Error::Transport)?;
        let notify = slot.addr + QUEUE_NOTIFY_OFFSET;
        for (queue, evt) in transport.queue_evts().iter().enumerate() {
            vm.register_ioevent(evt, &IoEventAddress::Mmio(notify), queue as u32)
                .map_err(|source| Error::Ioeventfd {
                    queue,
                    addr: notify,
                    source,
                })?;
        }
        let handler = transport.queue_handler().map_err(Error::Transport)?;
        let transport = Arc::new(Mutex::new(transport));
        mmio.insert(name, transport.clone(), slot.addr, slot.size)
            .map_err(|source| Error::Bus {
                addr: slot.addr,
                source,
            })?;
        self.slots.push(slot);
        self.transports.push(transport);
        Ok(handler)
    }

    /// Where every attached device is, and its transport, in order.
    pub fn into_parts(self) -> (Vec<MmioSlot>, Vec<Arc<Mutex<MmioTransport>>>) {
        (self.slots, self.transports)
    }
}

#[cfg(test)]
mod tests {
    use devices::virtio::mmio::regs;

    use super::*;

    #[test]
    fn slots_are_consecutive_pages_with_their_own_irq() {
        let a = MmioSlot::for_index(0).unwrap();
        let b = MmioSlot::for_index(1).unwrap();
        assert_eq!((a.addr, a.irq), (0xd000_0000, 5));
        assert_eq!((b.addr, b.irq), (0xd000_1000, 6));
        assert_eq!(a.cmdline_entry(), "virtio_mmio.device=4K@0xd0000000:5");
        let last = MmioSlot::for_index(MAX_VIRTIO_DEVICES - 1).unwrap();
        assert_eq!(last.irq, u32::from(layout::IOAPIC_NUM_PINS) - 1);
        assert!(MmioSlot::for_index(MAX_VIRTIO_DEVICES).is_none());
        // A slot holds the transport's registers and a configuration space after them
        // (virtio 1.2 §4.2.2).
        const { assert!(layout::VIRTIO_MMIO_SIZE_EACH >= regs::CONFIG + 0x100) };
    }
}
