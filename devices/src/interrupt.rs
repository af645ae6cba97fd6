//! Interrupt delivery out of a device, without KVM.
//!
//! Devices raise interrupts through [`vm_superio::Trigger`]. The VMM hands them an
//! [`EventFdTrigger`] and registers the same eventfd with KVM as an irqfd for the device's GSI,
//! so a trigger becomes a guest interrupt without a trip through the VMM; tests read the eventfd.

use std::io;

use vmm_sys_util::eventfd::EventFd;

/// A [`vm_superio::Trigger`] that signals an eventfd (adds 1 to its counter).
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `evt`; [`Trigger::trigger`](vm_superio::Trigger::trigger) writes 1 to it.
    pub fn new(evt: EventFd) -> Self {
        Self(evt)
    }

    /// A second trigger on the same eventfd (a duplicate of its descriptor).
    pub fn try_clone(&self) -> io::Result<Self> {
        self.0.try_clone().map(Self)
    }
}

impl vm_superio::Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_superio::Trigger;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn trigger_signals_the_eventfd_and_its_clones() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let trigger = EventFdTrigger::new(evt.try_clone().unwrap());
        let clone = EventFdTrigger::new(evt.try_clone().unwrap());

        // Nothing pending yet: a non-blocking read fails with EAGAIN.
        let err = evt.read().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);

        trigger.trigger().unwrap();
        clone.trigger().unwrap();
        // Both wrote to the same eventfd: its counter is 2.
        assert_eq!(evt.read().unwrap(), 2);
    }
}
