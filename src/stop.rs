//! How the VM stops: the first reason recorded wins, every vCPU thread is told to stop, and
//! the event loop is woken through an eventfd.
//!
//! Words used across vmm: the VM *stops* (this module: [`StopReason`]); a vCPU *exits* to
//! the VMM when `KVM_RUN` returns (a KVM exit, counted in [`crate::exit_stats`]); the process
//! ends with an *exit code*, which the guest may choose through its exit-code port
//! ([`devices::power::GuestExitCode`]).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use devices::power::StopTrigger;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The guest reset itself through the i8042 keyboard controller (`reboot=k`).
    Reset,
    /// The guest powered off: ACPI S5 through the FADT's sleep control register.
    Poweroff,
    /// The guest kernel panicked (reported through pvpanic).
    GuestPanic,
    /// A vCPU triple-faulted (`KVM_EXIT_SHUTDOWN`).
    TripleFault { cpu: u8 },
    /// KVM reported a system event (`KVM_EXIT_SYSTEM_EVENT`) such as shutdown or reset.
    SystemEvent { cpu: u8, kind: u32 },
    /// The VMM received SIGINT or SIGTERM.
    Signal(i32),
    /// A client asked the API to stop the VM (`PUT /vm/stop`).
    ApiStop,
    /// A vCPU could not go on: an emulation failure, a failed VM entry, an unexpected exit.
    /// The text is the whole message for the user.
    Error(String),
}

/// The VMM's exit code after a guest kernel panic.
pub const GUEST_PANIC_EXIT_CODE: u8 = 3;

impl StopReason {
    /// The VMM's exit code for this reason: for the clean ways a VM ends, 0, or the code the
    /// guest chose (`guest_code`, from the exit-code port) when it powered off or reset
    /// itself; [`GUEST_PANIC_EXIT_CODE`] after a guest kernel panic; 1 for errors.
    pub fn exit_code(&self, guest_code: Option<u8>) -> u8 {
        match self {
            StopReason::Error(_) => 1,
            StopReason::GuestPanic => GUEST_PANIC_EXIT_CODE,
            StopReason::SystemEvent { kind, .. }
                if *kind == kvm_bindings::KVM_SYSTEM_EVENT_CRASH =>
            {
                1
            }
            StopReason::Signal(_) | StopReason::ApiStop => 0,
            StopReason::Reset
            | StopReason::Poweroff
            | StopReason::TripleFault { .. }
            | StopReason::SystemEvent { .. } => guest_code.unwrap_or(0),
        }
    }

    /// Whether the VM failed (an error, a crash, a guest panic), as opposed to ending the way
    /// it was asked to, whatever exit code the guest chose.
    pub fn is_failure(&self) -> bool {
        self.exit_code(None) != 0
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Reset => write!(f, "the guest reset the machine (i8042 reset)"),
            StopReason::Poweroff => write!(f, "the guest powered off (ACPI S5)"),
            StopReason::GuestPanic => write!(f, "guest kernel panic (reported by pvpanic)"),
            StopReason::TripleFault { cpu } => {
                write!(f, "vCPU {cpu} triple-faulted (KVM_EXIT_SHUTDOWN)")
            }
            StopReason::SystemEvent { cpu, kind } => {
                let name = match *kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => "shutdown",
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => "reset",
                    kvm_bindings::KVM_SYSTEM_EVENT_CRASH => "crash",
                    _ => "other",
                };
                write!(f, "vCPU {cpu}: KVM_EXIT_SYSTEM_EVENT {name} (type {kind})")
            }
            StopReason::Signal(sig) => write!(f, "received signal {sig}"),
            StopReason::ApiStop => write!(f, "stopped through the API (PUT /vm/stop)"),
            StopReason::Error(msg) => f.write_str(msg),
        }
    }
}

/// Shared between the vCPU threads, the devices and the event loop.
pub struct VmStop {
    reason: Mutex<Option<StopReason>>,
    stopping: AtomicBool,
    /// Written once a reason is recorded, to wake the event loop.
    pub evt: EventFd,
}

impl VmStop {
    pub fn new() -> std::io::Result<Self> {
        Ok(VmStop {
            reason: Mutex::new(None),
            stopping: AtomicBool::new(false),
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Records `reason` unless one is recorded already, and asks everything to stop.
    pub fn request(&self, reason: StopReason) {
        {
            let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_none() {
                log::debug!("VM stop requested: {reason}");
                *slot = Some(reason);
            }
        }
        self.stopping.store(true, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            log::error!("cannot wake the event loop: {e}");
        }
    }

    /// A trigger for a device (the i8042's reset line, the ACPI power-off, pvpanic, a
    /// virtio-fs back end gone) that records `reason` on the thread that pulls it: for a port
    /// write, the vCPU's own, before that vCPU enters the guest again.
    pub fn trigger(self: &Arc<Self>, reason: StopReason) -> StopTrigger {
        let stop = self.clone();
        StopTrigger::new(move || {
            crate::timeline::mark(&format!("guest stop: {reason}"));
            stop.request(reason.clone());
        })
    }

    /// True once any exit has been requested.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<StopReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_wakes() {
        let exit = VmStop::new().unwrap();
        assert!(!exit.stopping());
        assert!(exit.evt.read().is_err(), "nothing written yet");
        exit.request(StopReason::Reset);
        exit.request(StopReason::Error("late".into()));
        assert!(exit.stopping());
        assert_eq!(exit.reason(), Some(StopReason::Reset));
        assert_eq!(exit.evt.read().unwrap(), 2);
    }

    #[test]
    fn exit_codes() {
        assert_eq!(StopReason::Reset.exit_code(None), 0);
        assert_eq!(StopReason::Poweroff.exit_code(None), 0);
        assert_eq!(StopReason::TripleFault { cpu: 0 }.exit_code(None), 0);
        assert_eq!(StopReason::Signal(15).exit_code(None), 0);
        assert_eq!(StopReason::ApiStop.exit_code(None), 0);
        assert_eq!(StopReason::ApiStop.exit_code(Some(7)), 0);
        let shutdown = StopReason::SystemEvent {
            cpu: 0,
            kind: kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN,
        };
        assert_eq!(shutdown.exit_code(None), 0);
        let crash = StopReason::SystemEvent {
            cpu: 0,
            kind: kvm_bindings::KVM_SYSTEM_EVENT_CRASH,
        };
        assert_eq!(crash.exit_code(None), 1);
        assert_eq!(StopReason::Error("x".into()).exit_code(None), 1);
        assert_eq!(StopReason::GuestPanic.exit_code(None), 3);
        assert!(StopReason::GuestPanic.is_failure() && !StopReason::Poweroff.is_failure());
    }

    #[test]
    fn the_guest_chooses_the_exit_code_of_its_own_ends_only() {
        for own in [
            StopReason::Reset,
            StopReason::Poweroff,
            StopReason::TripleFault { cpu: 1 },
        ] {
            assert_eq!(own.exit_code(Some(7)), 7, "{own}");
            assert_eq!(own.exit_code(Some(0)), 0, "{own}");
        }
        assert_eq!(StopReason::Signal(15).exit_code(Some(7)), 0);
        assert_eq!(StopReason::GuestPanic.exit_code(Some(0)), 3);
        assert_eq!(StopReason::Error("x".into()).exit_code(Some(0)), 1);
    }
}
