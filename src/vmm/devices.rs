//! The VM's devices: the legacy ports (serial, i8042, ACPI sleep, pvpanic, the exit-code and
//! debug ports) on the port I/O bus, and the virtio devices ([`super::virtio`]) on the MMIO
//! bus.

use std::sync::atomic::AtomicU16;
use std::sync::{Arc, Mutex};

use boot::layout;
use devices::debug_port::DebugPort;
use devices::i8042::I8042Device;
use devices::interrupt::EventFdTrigger;
use devices::power::{AcpiSleep, GuestExitCode, PvPanic};
use devices::serial::SerialDevice;
use devices::virtio::mmio::MmioTransport;
use devices::{Bus, IoBuses};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::error::Error;
use super::virtio::{self, Opened};
use crate::api::DeviceInfo;
use crate::device_manager::MmioSlot;
use crate::stop::{StopReason, VmStop};
use crate::timeline;
use crate::vm::Vm;

/// The devices, and the handles the VMM needs to them.
pub(super) struct Devices {
    pub io: Arc<IoBuses>,
    pub serial: Arc<Mutex<SerialDevice>>,
    /// The exit code the guest chose through its port, if it wrote one.
    pub guest_code: Arc<AtomicU16>,
    /// One per virtio device: runs its queues on the event loop (taken by the event loop).
    pub queue_handlers: Vec<devices::virtio::QueueHandler>,
    /// Where each virtio device is (for the command line and the DSDT).
    pub virtio_slots: Vec<MmioSlot>,
    /// Each virtio device's transport, in slot order (for snapshots).
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
    /// The virtio devices, for the API.
    pub infos: Vec<DeviceInfo>,
    /// What vmm started or created for them (virtiofsd, socket files), undone when dropped.
    #[allow(dead_code, reason = "held only to be dropped with the devices")]
    pub helpers: Vec<super::virtio::Helper>,
    /// Each disk's image, in device order (a snapshot flushes them and records their sizes).
    pub disks: Vec<std::fs::File>,
}

pub(super) fn create_devices(
    vm: &Vm,
    mem: &GuestMemoryMmap,
    stop: &Arc<VmStop>,
    virtio: Vec<Opened>,
) -> Result<Devices, Error> {
    let io_err = |what| move |source| Error::Io { what, source };
    let bus_err = |what| move |source| Error::Bus { what, source };
    let mut pio = Bus::default();

    let serial_evt = EventFd::new(EFD_NONBLOCK).map_err(io_err("the serial interrupt"))?;
    vm.fd
        .register_irqfd(&serial_evt, layout::SERIAL_IRQ)
        .map_err(|source| Error::Irqfd {
            what: "serial",
            gsi: layout::SERIAL_IRQ,
            source,
        })?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        EventFdTrigger::new(serial_evt),
        Box::new(crate::console::ConsoleOutput::new()),
    )));
    pio.insert(
        "serial",
        serial.clone(),
        u64::from(layout::COM1_PORT),
        devices::serial::SERIAL_PORT_LEN,
    )
    .map_err(bus_err("the serial port"))?;

    // Each way the guest ends the VM: the device records it on the vCPU thread that asked.
    let i8042 = I8042Device::new(stop.trigger(StopReason::Reset));
    pio.insert(
        "i8042",
        Arc::new(Mutex::new(i8042)),
        u64::from(layout::I8042_PORT),
        devices::i8042::I8042_PORT_LEN,
    )
    .map_err(bus_err("the i8042 controller"))?;
    let sleep = AcpiSleep::new(stop.trigger(StopReason::Poweroff));
    pio.insert(
        "acpi-sleep",
        Arc::new(Mutex::new(sleep)),
        u64::from(layout::ACPI_SLEEP_CONTROL_PORT),
        1,
    )
    .map_err(bus_err("the ACPI sleep register"))?;
    let pvpanic = PvPanic::new(stop.trigger(StopReason::GuestPanic));
    pio.insert(
        "pvpanic",
        Arc::new(Mutex::new(pvpanic)),
        u64::from(layout::PVPANIC_PORT),
        1,
    )
    .map_err(bus_err("pvpanic"))?;
    let (exit_code_port, guest_code) = GuestExitCode::new();
    pio.insert(
        "guest-exit-code",
        Arc::new(Mutex::new(exit_code_port)),
        u64::from(layout::GUEST_EXIT_CODE_PORT),
        1,
    )
    .map_err(bus_err("the guest exit code port"))?;

    let debug = DebugPort::new(Box::new(|value| {
        #[cfg(feature = "seccomp-trigger")]
        crate::seccomp::trigger(value);
        timeline::mark(&format!("guest debug port 0x80: {value:#04x}"))
    }));
    pio.insert(
        "debug-port",
        Arc::new(Mutex::new(debug)),
        u64::from(layout::DEBUG_PORT),
        devices::debug_port::DEBUG_PORT_LEN,
    )
    .map_err(bus_err("the debug port"))?;

    let mut mmio = Bus::default();
    let virtio = virtio::attach(vm, mem, &mut mmio, stop, virtio)?;
    let io = Arc::new(IoBuses { pio, mmio });
    Ok(Devices {
        io,
        serial,
        guest_code,
        queue_handlers: virtio.queue_handlers,
        virtio_slots: virtio.slots,
        transports: virtio.transports,
        infos: virtio.infos,
        helpers: virtio.helpers,
        disks: virtio.disks,
    })
}
