//! How a guest ends the VM, besides a reset: ACPI power-off, a kernel panic, and the exit code a
//! guest chooses for the VMM.
//!
//! - [`AcpiSleep`]: the hardware-reduced ACPI sleep control and status register (ACPI 6.5
//!   §4.8.3.7), one byte that the FADT points both registers at. Linux powers off by writing
//!   `SLP_TYP` from the DSDT's `_S5_` object with `SLP_EN` set (`acpi_hw_extended_sleep`).
//! - [`PvPanic`]: QEMU's pvpanic ISA device (docs/specs/pvpanic.rst): the guest reads the events
//!   it may report, and on a panic writes `PVPANIC_PANICKED`.
//! - [`GuestExitCode`]: a port where a guest writes one byte, the exit code the VMM ends with
//!   once the guest powers off or resets (for CI runs: a test's status out of the guest).
//!
//! Each asks the VMM to stop the VM through a [`StopTrigger`], like the i8042's reset line.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

/// How a device asks the VMM to stop the VM (reset, power-off, panic). It is called on the vCPU
/// thread whose port write made the request, so the VMM records the request before that vCPU
/// runs another guest instruction: what the guest does after asking to stop cannot change how
/// the VM ended.
pub struct StopTrigger(Box<dyn Fn() + Send + Sync>);

impl StopTrigger {
    /// A trigger that calls `request`.
    pub fn new(request: impl Fn() + Send + Sync + 'static) -> Self {
        StopTrigger(Box::new(request))
    }

    /// Asks the VMM to stop the VM.
    pub fn request(&self) {
        (self.0)()
    }
}

impl std::fmt::Debug for StopTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StopTrigger")
    }
}

impl vm_superio::Trigger for StopTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.request();
        Ok(())
    }
}

/// Sleep control register bit 5, `SLP_EN`: enter the sleep state in `SLP_TYP` (ACPI 6.5
/// §4.8.3.7, Table 4.19).
pub const SLP_EN: u8 = 1 << 5;
/// Sleep control register bits 4:2, `SLP_TYP`.
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111;
/// The `SLP_TYP` value of S5 (soft off) that the DSDT's `_S5_` package gives the guest.
pub const S5_SLP_TYP: u8 = 5;

/// The ACPI sleep control/status register: a write of `SLP_EN | S5 << 2` powers the VM off.
#[derive(Debug)]
pub struct AcpiSleep {
    poweroff: StopTrigger,
}

impl AcpiSleep {
    /// Creates the register; a guest power-off pulls `poweroff`.
    pub fn new(poweroff: StopTrigger) -> Self {
        Self { poweroff }
    }
}

impl crate::BusDevice for AcpiSleep {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        // Sleep status: WAK_STS (bit 7) clear; the VM never wakes from a sleep state.
        data.fill(0);
    }

    fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) {
        let &[value] = data else {
            log::debug!("acpi: ignoring a {}-byte sleep register write", data.len());
            return;
        };
        let slp_typ = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
        if value & SLP_EN == 0 {
            return;
        }
        if slp_typ == S5_SLP_TYP {
            log::info!("the guest powered off (ACPI S5)");
            self.poweroff.request();
        } else {
            log::debug!("acpi: ignoring sleep state SLP_TYP {slp_typ}: only S5 is offered");
        }
    }
}

/// pvpanic event bit 0: the guest kernel panicked.
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// pvpanic event bit 1: a crash kernel was loaded (kdump takes over; the guest goes on).
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;

/// QEMU's pvpanic ISA device: a guest panic pulls `panic`.
#[derive(Debug)]
pub struct PvPanic {
    panic: StopTrigger,
}

impl PvPanic {
    /// Creates the device; a guest panic pulls `panic`.
    pub fn new(panic: StopTrigger) -> Self {
        Self { panic }
    }
}

impl crate::BusDevice for PvPanic {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        // The events the guest may report.
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;
        }
    }

    fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) {
        let Some(&events) = data.first() else {
            return;
        };
        if events & PVPANIC_PANICKED != 0 {
            log::info!("pvpanic: the guest kernel panicked");
            self.panic.request();
        } else if events & PVPANIC_CRASH_LOADED != 0 {
            log::info!("pvpanic: the guest loaded its crash kernel");
        }
    }
}

/// Nothing written yet: a value no byte can take.
const NO_CODE: u16 = u16::MAX;

/// The exit code a guest chose, shared between the port and the VMM.
#[derive(Debug)]
pub struct GuestExitCode {
    code: Arc<AtomicU16>,
}

impl GuestExitCode {
    /// Creates the port and the handle the VMM reads the code through.
    pub fn new() -> (Self, Arc<AtomicU16>) {
        let code = Arc::new(AtomicU16::new(NO_CODE));
        (Self { code: code.clone() }, code)
    }

    /// The code in `handle`, if the guest wrote one (the last byte written wins).
    pub fn read(handle: &AtomicU16) -> Option<u8> {
        u8::try_from(handle.load(Ordering::SeqCst)).ok()
    }
}

impl crate::BusDevice for GuestExitCode {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(first), Some(code)) = (data.first_mut(), GuestExitCode::read(&self.code)) {
            *first = code;
        }
    }

    fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) {
        match data {
            &[code] => {
                log::info!("the guest chose exit code {code}");
                self.code.store(u16::from(code), Ordering::SeqCst);
            }
            _ => log::debug!("exit code port: ignoring a {}-byte write", data.len()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::BusDevice;
    use std::sync::atomic::AtomicUsize;

    /// A trigger and the count of its pulls.
    pub(crate) fn trigger() -> (StopTrigger, Arc<AtomicUsize>) {
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        let trigger = StopTrigger::new(move || {
            seen.fetch_add(1, Ordering::SeqCst);
        });
        (trigger, count)
    }

    /// Whether `count` was pulled since the last call.
    pub(crate) fn signalled(count: &AtomicUsize) -> bool {
        count.swap(0, Ordering::SeqCst) > 0
    }

    #[test]
    fn s5_with_slp_en_powers_off_and_nothing_else_does() {
        let (e, seen) = trigger();
        let mut dev = AcpiSleep::new(e);
        for value in [
            S5_SLP_TYP << SLP_TYP_SHIFT,                   // S5 without SLP_EN
            SLP_EN,                                        // S0 with SLP_EN
            SLP_EN | (3 << SLP_TYP_SHIFT),                 // S3
            SLP_EN | (S5_SLP_TYP << SLP_TYP_SHIFT) | 0x80, // reserved bit set: still S5
        ] {
            dev.write(0x3c0, 0, &[value]);
            assert_eq!(signalled(&seen), value & 0x80 != 0, "value {value:#x}");
        }
        // A word write is not a register write.
        dev.write(0x3c0, 0, &[SLP_EN | (S5_SLP_TYP << SLP_TYP_SHIFT), 0]);
        dev.write(0x3c0, 0, &[]);
        assert!(!signalled(&seen));
        let mut status = [0xff; 2];
        dev.read(0x3c0, 0, &mut status);
        assert_eq!(status, [0, 0], "WAK_STS clear");
    }

    #[test]
    fn pvpanic_reports_its_events_and_signals_a_panic() {
        let (e, seen) = trigger();
        let mut dev = PvPanic::new(e);
        let mut caps = [0u8; 1];
        dev.read(0x505, 0, &mut caps);
        assert_eq!(caps, [PVPANIC_PANICKED | PVPANIC_CRASH_LOADED]);
        dev.write(0x505, 0, &[PVPANIC_CRASH_LOADED]);
        dev.write(0x505, 0, &[]);
        assert!(!signalled(&seen), "a crash kernel load is not a panic");
        dev.write(0x505, 0, &[PVPANIC_PANICKED]);
        assert!(signalled(&seen));
    }

    #[test]
    fn the_last_byte_written_is_the_guest_exit_code() {
        let (mut port, code) = GuestExitCode::new();
        assert_eq!(GuestExitCode::read(&code), None);
        port.write(0x506, 0, &[7]);
        assert_eq!(GuestExitCode::read(&code), Some(7));
        port.write(0x506, 0, &[7, 1]); // not a byte write: ignored
        port.write(0x506, 0, &[0]);
        assert_eq!(GuestExitCode::read(&code), Some(0));
        port.write(0x506, 0, &[255]);
        let mut back = [0u8; 1];
        port.read(0x506, 0, &mut back);
        assert_eq!(back, [255]);
    }
}
