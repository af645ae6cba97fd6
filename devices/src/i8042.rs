//! The one piece of the i8042 PS/2 keyboard controller a guest needs: the CPU reset line.
//!
//! Linux reboots with `reboot=k` by writing the "pulse output port" command 0xFE to the
//! controller's command port (0x64), which on a PC pulses the CPU's reset line (Linux
//! `arch/x86/kernel/reboot.c`, `BOOT_KBD`). Before each write it polls the status port until the
//! input buffer is empty (`kb_wait`), so reading status as 0 lets it proceed at once. This is the
//! same minimal model as Cloud Hypervisor's and vm-superio's `I8042Device`.
//!
//! The VMM maps this device at port 0x60 with length 5 (0x60..=0x64), so offsets are relative to
//! the data port 0x60.

use vmm_sys_util::eventfd::EventFd;

/// First I/O port of the device as the VMM maps it (the data port).
pub const I8042_BASE: u16 = 0x60;
/// Number of ports the VMM maps, 0x60..=0x64.
pub const I8042_LEN: u16 = 5;

/// Offset of the data port, 0x60.
const DATA_OFFSET: u64 = 0;
/// Offset of the status (read) / command (write) port, 0x64.
const COMMAND_OFFSET: u64 = 4;
/// Command 0xFE: pulse output port bit 0, wired to the CPU reset line.
const CMD_RESET_CPU: u8 = 0xfe;
/// Status register value: output buffer empty, input buffer empty (bit 1 clear), so the guest's
/// `kb_wait` loop ends at once.
const STATUS_IDLE: u8 = 0;

/// Minimal i8042: turns a guest's keyboard-controller reset into a write to `reset_evt`.
#[derive(Debug)]
pub struct I8042Device {
    reset_evt: EventFd,
}

impl I8042Device {
    /// Creates the device; a guest reset request writes 1 to `reset_evt`.
    pub fn new(reset_evt: EventFd) -> Self {
        Self { reset_evt }
    }
}

impl crate::BusDevice for I8042Device {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let value = match offset {
            COMMAND_OFFSET => STATUS_IDLE,
            // No keyboard: the data port and the ports in between read as 0.
            DATA_OFFSET => 0,
            _ => 0,
        };
        data.fill(value);
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        match (offset, data) {
            (COMMAND_OFFSET, [CMD_RESET_CPU]) => {
                log::info!("guest requested a reset through the i8042 controller");
                if let Err(e) = self.reset_evt.write(1) {
                    log::error!("i8042: cannot signal the reset event: {e}");
                }
            }
            _ => log::debug!(
                "i8042: ignoring write of {data:02x?} at {:#x}",
                base.wrapping_add(offset)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BusDevice;
    use std::io;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    const BASE: u64 = I8042_BASE as u64;

    fn device() -> (I8042Device, EventFd) {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let dev = I8042Device::new(evt.try_clone().unwrap());
        (dev, evt)
    }

    fn assert_not_signalled(evt: &EventFd) {
        let err = evt.read().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn reset_command_signals_the_event() {
        let (mut dev, evt) = device();
        dev.write(BASE, COMMAND_OFFSET, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn other_writes_do_not_signal() {
        let (mut dev, evt) = device();
        dev.write(BASE, COMMAND_OFFSET, &[0xfd]);
        dev.write(BASE, COMMAND_OFFSET, &[0xd1]);
        dev.write(BASE, COMMAND_OFFSET, &[0xfe, 0x00]); // not a byte write
        dev.write(BASE, COMMAND_OFFSET, &[]);
        dev.write(BASE, DATA_OFFSET, &[0xfe]); // right value, wrong port
        dev.write(BASE, 1, &[0xfe]);
        assert_not_signalled(&evt);
    }

    #[test]
    fn status_and_other_reads_return_zero() {
        let (mut dev, evt) = device();
        for offset in 0..u64::from(I8042_LEN) {
            let mut data = [0xaa];
            dev.read(BASE, offset, &mut data);
            assert_eq!(data, [0], "offset {offset}");
        }
        let mut status = [0xaa; 2];
        dev.read(BASE, COMMAND_OFFSET, &mut status);
        assert_eq!(status, [0, 0]);
        assert_not_signalled(&evt);
    }
}
