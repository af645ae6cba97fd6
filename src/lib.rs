//! vmm: a small, fast, readable KVM virtual machine monitor.
//!
//! The boot path, in order: [`cli`] parses the options into a [`config::VmConfig`];
//! [`runner::run_vm`] opens KVM and creates the VM ([`vm`]), maps guest memory and loads the
//! kernel (the `boot` crate), creates the devices (the `devices` crate, wired to KVM by
//! [`device_manager`]) and the vCPUs ([`vcpus`] runs [`vcpu`]s, with [`cpuid`], on their threads), then runs the [`event_loop`]
//! on the main thread until the VM stops ([`exit`]). The arrows go one way: CLI → runner →
//! vCPU, devices, boot. [`api`] serves the control API (`--api-socket`) on that event loop;
//! [`exit_stats`] counts the vCPUs' exits.

pub mod api;
pub mod cli;
pub mod config;
pub mod console;
pub mod cpuid;
pub mod device_manager;
pub mod disk;
pub mod event_loop;
pub mod exit;
pub mod exit_stats;
pub mod runner;
pub mod seccomp;
pub mod signals;
pub mod snapshot;
pub mod terminal;
pub mod timeline;
pub mod vcpu;
pub mod vcpus;
pub mod vm;
