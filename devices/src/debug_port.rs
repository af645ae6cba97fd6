//! The POST/debug port, I/O port 0x80.
//!
//! PC firmware writes progress codes to port 0x80 (POST codes); Cloud Hypervisor uses the port the
//! same way for guests: a guest (or a test kernel) writes one byte to mark a boot milestone, and
//! the VMM notes when it happened. [`DebugPort`] hands each byte to a callback that the VMM
//! supplies (which typically stamps it with the time since the VMM started).
//!
//! Linux itself also writes to port 0x80 as an I/O delay (`io_delay=0x80`, the default, used by
//! `outb_p`) unless the hypervisor advertises `KVM_FEATURE_NOP_IO_DELAY` in CPUID, so the callback
//! must be cheap and must expect bytes that are not milestones.

/// How many ports the debug port decodes: one.
pub const DEBUG_PORT_LEN: u64 = 1;

/// Callback invoked with every byte the guest writes to the debug port.
pub type DebugPortCallback = Box<dyn FnMut(u8) + Send>;

/// Port 0x80: single-byte writes go to a callback, reads return 0.
pub struct DebugPort {
    callback: DebugPortCallback,
}

impl DebugPort {
    /// Creates the device; `callback` receives each byte the guest writes.
    pub fn new(callback: DebugPortCallback) -> Self {
        Self { callback }
    }
}

impl std::fmt::Debug for DebugPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DebugPort").finish_non_exhaustive()
    }
}

impl crate::BusDevice for DebugPort {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        match data {
            [value] => (self.callback)(*value),
            _ => log::debug!(
                "debug port: ignoring {}-byte write at {:#x}",
                data.len(),
                base.wrapping_add(offset)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BusDevice;
    use std::sync::{Arc, Mutex};

    #[test]
    fn callback_gets_each_byte_in_order() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let mut port = DebugPort::new(Box::new(move |v| sink.lock().unwrap().push(v)));

        let base = 0x80;
        port.write(base, 0, &[0x10]);
        port.write(base, 0, &[0x20]);
        port.write(base, 0, &[0x10, 0x11]); // a word write is not a milestone
        port.write(base, 0, &[]);
        port.write(base, 0, &[0xff]);
        assert_eq!(*seen.lock().unwrap(), vec![0x10, 0x20, 0xff]);

        let mut data = [0xaa; 2];
        port.read(base, 0, &mut data);
        assert_eq!(data, [0, 0]);
    }
}
