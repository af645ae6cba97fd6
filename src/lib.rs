//! vmm: a small, fast, readable KVM virtual machine monitor.
//!
//! The story, in order: [`cli`] parses the options into a [`config::VmConfig`];
//! [`vmm::Vmm::boot`] builds the VM (guest memory, the vCPU threads from [`vcpus`], the kernel
//! and initrd from the `boot` crate, the KVM VM from [`vm`], the devices from the `devices`
//! crate wired to KVM by [`device_manager`], the boot structures); [`vmm::Vmm::run`] runs the
//! [`event_loop`] on the main thread and lets each [`vcpu`] run on its thread until the VM
//! [`stop`]s. [`vmm::Vmm::restore`] builds the same from a [`snapshot`]. [`api`] serves the
//! control API (`--api-socket`) on that event loop; [`exit_stats`] counts the vCPUs' KVM
//! exits. The arrows go one way: main → vmm → api, vcpus, devices, boot.

pub mod api;
pub mod cli;
pub mod config;
pub mod console;
pub mod cpuid;
pub mod device_manager;
pub mod disk;
pub mod event_loop;
pub mod exit_stats;
pub mod jail;
pub mod seccomp;
pub mod signals;
pub mod snapshot;
pub mod stop;
pub mod terminal;
pub mod timeline;
pub mod vcpu;
pub mod vcpus;
pub mod virtiofsd;
pub mod vm;
pub mod vmm;
