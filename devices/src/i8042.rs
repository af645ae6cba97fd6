//! The one piece of the i8042 PS/2 keyboard controller a guest needs: the CPU reset line.
//!
//! Linux reboots with `reboot=k` by writing the "pulse output port" command 0xFE to the
//! controller's command port (0x64), which on a PC pulses the CPU's reset line (Linux
//! `arch/x86/kernel/reboot.c`, `BOOT_KBD`). Before each write it polls the status port until the
//! input buffer is empty (`kb_wait`), so reading status as 0 lets it proceed at once.
//! [`vm_superio::I8042Device`] models exactly that; [`I8042Device`] puts it on the [`crate::Bus`]
//! with a [`StopTrigger`] as its reset line.
//!
//! The device keeps no state a guest can observe (every register reads as 0 and only the
//! reset command has an effect), so a VM snapshot carries nothing for it.
//!
//! The VMM maps this device at the data port 0x60 with length [`I8042_PORT_LEN`]
//! (0x60..=0x64), so offsets are relative to the data port.

use crate::power::StopTrigger;

/// Number of ports the device decodes from the data port 0x60 up to the command port 0x64.
pub const I8042_PORT_LEN: u64 = 5;

/// The i8042 on the bus: a guest's keyboard-controller reset pulls the reset trigger.
#[derive(Debug)]
pub struct I8042Device {
    inner: vm_superio::I8042Device<StopTrigger>,
}

impl I8042Device {
    /// Creates the device; a guest reset request pulls `reset`.
    pub fn new(reset: StopTrigger) -> Self {
        Self {
            inner: vm_superio::I8042Device::new(reset),
        }
    }
}

impl crate::BusDevice for I8042Device {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        // Every register reads as 0 (status: both buffers empty); the bus keeps `offset` inside
        // the device's five ports.
        let value = u8::try_from(offset).map_or(0, |offset| self.inner.read(offset));
        data.fill(value);
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        // Only single-byte writes are commands; vm-superio acts on 0xFE at the command port.
        match (u8::try_from(offset), data) {
            (Ok(offset), &[value]) => {
                // The trigger cannot fail.
                let _ = self.inner.write(offset, value);
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
    use crate::power::tests::{signalled, trigger};
    use crate::BusDevice;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    const BASE: u64 = 0x60;
    const DATA_OFFSET: u64 = 0;
    const COMMAND_OFFSET: u64 = 4;

    fn device() -> (I8042Device, Arc<AtomicUsize>) {
        let (reset, count) = trigger();
        (I8042Device::new(reset), count)
    }

    fn assert_not_signalled(count: &AtomicUsize) {
        assert!(!signalled(count));
    }

    #[test]
    fn reset_command_signals_the_event() {
        let (mut dev, evt) = device();
        dev.write(BASE, COMMAND_OFFSET, &[0xfe]);
        assert!(signalled(&evt));
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
        for offset in 0..I8042_PORT_LEN {
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
