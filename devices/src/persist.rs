//! Snapshot and restore: one trait for everything that has state to carry across — each vCPU,
//! the VM (interrupt controllers, PIT, clock), the serial port, each virtio transport and its
//! queues. The owner of the state saves and restores it; the VMM's snapshot module only frames
//! and stores what they give.

/// State that a snapshot carries.
pub trait Persist {
    /// What is saved: plain data, serialisable.
    type State;
    /// Why saving or restoring failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The state now. The VM is paused: nothing changes it meanwhile.
    fn save(&self) -> Result<Self::State, Self::Error>;

    /// Puts a saved state back, on an owner freshly made for the same configuration. The state
    /// comes from a file the user gave: everything in it is checked, and a refused state
    /// leaves the owner as it was.
    fn restore(&mut self, state: &Self::State) -> Result<(), Self::Error>;
}
