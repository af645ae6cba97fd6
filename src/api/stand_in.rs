//! A [`Lifecycle`] without KVM, for the API's unit tests: a stop request, stand-in vCPU
//! control with no threads, and empty exit counters.

use std::path::Path;
use std::time::Instant;

use super::routes::{DeviceInfo, Lifecycle, VmStatus};
use crate::exit_stats::{ExitSnapshot, ExitStats};
use crate::snapshot::{SaveError, Saved};
use crate::stop::{StopReason, VmStop};
use crate::vcpu::control::{ControlError, VcpuControl, PAUSE_TIMEOUT};

pub struct StandIn {
    pub stop: VmStop,
    control: VcpuControl,
    stats: ExitStats,
    devices: Vec<DeviceInfo>,
    started: Instant,
}

impl StandIn {
    /// A VM of 2 vCPUs and 64 MiB with `devices`.
    pub fn new(devices: Vec<DeviceInfo>) -> Self {
        let control = VcpuControl::default();
        control.set_threads(Vec::new());
        StandIn {
            stop: VmStop::new().unwrap(),
            control,
            stats: ExitStats::new(2, &["serial".to_string()], &[]),
            devices,
            started: Instant::now(),
        }
    }
}

impl Lifecycle for StandIn {
    fn status(&self) -> VmStatus {
        VmStatus {
            state: if self.control.is_paused() {
                "paused"
            } else {
                "running"
            },
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            vcpus: 2,
            memory_mib: 64,
            devices: self.devices.clone(),
            exits: self.stats.snapshot().summary(),
        }
    }

    fn exits(&self) -> ExitSnapshot {
        self.stats.snapshot()
    }

    fn pause(&self) -> Result<(), ControlError> {
        self.control.pause(PAUSE_TIMEOUT, |_| {})
    }

    fn resume(&self) -> Result<(), ControlError> {
        self.control.resume()
    }

    fn stop(&self) {
        self.stop.request(StopReason::ApiStop);
    }

    fn snapshot(&self, _dir: &Path) -> Result<Saved, SaveError> {
        Err(SaveError::Running)
    }
}
