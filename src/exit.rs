//! How the VM stops: the first reason recorded wins, every vCPU thread is told to stop, and
//! the event loop is woken through an eventfd.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset itself through the i8042 keyboard controller (`reboot=k`).
    Reset,
    /// A vCPU triple-faulted (`KVM_EXIT_SHUTDOWN`).
    TripleFault { cpu: u8 },
    /// KVM reported a system event (`KVM_EXIT_SYSTEM_EVENT`) such as shutdown or reset.
    SystemEvent { cpu: u8, kind: u32 },
    /// The VMM received SIGINT or SIGTERM.
    Signal(i32),
    /// A vCPU could not go on: an emulation failure, a failed VM entry, an unexpected exit.
    /// The text is the whole message for the user.
    Error(String),
}

impl ExitReason {
    /// The VMM's exit code for this reason: 0 for the clean ways a VM ends, 1 for errors.
    pub fn exit_code(&self) -> u8 {
        match self {
            ExitReason::Error(_) => 1,
            ExitReason::SystemEvent { kind, .. }
                if *kind == kvm_bindings::KVM_SYSTEM_EVENT_CRASH =>
            {
                1
            }
            _ => 0,
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Reset => write!(f, "the guest reset the machine (i8042 reset)"),
            ExitReason::TripleFault { cpu } => {
                write!(f, "vCPU {cpu} triple-faulted (KVM_EXIT_SHUTDOWN)")
            }
            ExitReason::SystemEvent { cpu, kind } => {
                let name = match *kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => "shutdown",
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => "reset",
                    kvm_bindings::KVM_SYSTEM_EVENT_CRASH => "crash",
                    _ => "other",
                };
                write!(f, "vCPU {cpu}: KVM_EXIT_SYSTEM_EVENT {name} (type {kind})")
            }
            ExitReason::Signal(sig) => write!(f, "received signal {sig}"),
            ExitReason::Error(msg) => f.write_str(msg),
        }
    }
}

/// Shared between the vCPU threads and the event loop.
pub struct VmExit {
    reason: Mutex<Option<ExitReason>>,
    stopping: AtomicBool,
    /// Written once a reason is recorded, to wake the event loop.
    pub evt: EventFd,
}

impl VmExit {
    pub fn new() -> std::io::Result<Self> {
        Ok(VmExit {
            reason: Mutex::new(None),
            stopping: AtomicBool::new(false),
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Records `reason` unless one is recorded already, and asks everything to stop.
    pub fn request(&self, reason: ExitReason) {
        {
            let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_none() {
                log::debug!("VM exit requested: {reason}");
                *slot = Some(reason);
            }
        }
        self.stopping.store(true, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            log::error!("cannot wake the event loop: {e}");
        }
    }

    /// True once any exit has been requested.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<ExitReason> {
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
        let exit = VmExit::new().unwrap();
        assert!(!exit.stopping());
        assert!(exit.evt.read().is_err(), "nothing written yet");
        exit.request(ExitReason::Reset);
        exit.request(ExitReason::Error("late".into()));
        assert!(exit.stopping());
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
        assert_eq!(exit.evt.read().unwrap(), 2);
    }

    #[test]
    fn exit_codes() {
        assert_eq!(ExitReason::Reset.exit_code(), 0);
        assert_eq!(ExitReason::TripleFault { cpu: 0 }.exit_code(), 0);
        assert_eq!(ExitReason::Signal(15).exit_code(), 0);
        let shutdown = ExitReason::SystemEvent {
            cpu: 0,
            kind: kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN,
        };
        assert_eq!(shutdown.exit_code(), 0);
        let crash = ExitReason::SystemEvent {
            cpu: 0,
            kind: kvm_bindings::KVM_SYSTEM_EVENT_CRASH,
        };
        assert_eq!(crash.exit_code(), 1);
        assert_eq!(ExitReason::Error("x".into()).exit_code(), 1);
    }
}
