//! Argument rules: for the calls whose arguments decide what they do, each thread may make
//! only the forms it needs (Firecracker and Cloud Hypervisor pin theirs the same way).
//!
//! - `ioctl`: a per-thread list of request numbers. The vCPU threads: `KVM_RUN`, the vCPU state
//!   reads a snapshot and an error report make, `KVM_KVMCLOCK_CTRL` at a pause, and the TAP
//!   offloads set when the guest starts virtio-net. The main thread: the VM-wide state reads of
//!   a snapshot, the terminal's mode put back at the end, and `FIONBIO` for the sockets it
//!   accepts. Everything KVM is asked to *set* happens before the filters go on.
//! - `mmap`, `mprotect`: never `PROT_EXEC` (nothing is loaded once vmm runs).
//! - `tgkill`: only the vCPU kick signal and `SIGABRT` (an abort); `kill`: only `SIGKILL` (the
//!   helper processes vmm stops).
//! - `fcntl`: descriptor and status flags and `F_DUPFD_CLOEXEC` only (no locks, no leases,
//!   no pipe sizes, no owners).
//! - `openat` (main thread): read-only, or a new file (`O_CREAT|O_EXCL`, a snapshot's): an
//!   existing file is never opened for writing.
//! - `socket` (main thread): `AF_UNIX` only (vsock's host side), no network sockets.

use std::collections::BTreeMap;

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_fpu, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msrs,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_translation, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
    KVMIO,
};
use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iowr_nr};

use super::{Error, ThreadKind};

// The KVM request numbers, from the structures they carry (include/uapi/linux/kvm.h).
ioctl_io_nr!(KVM_CHECK_EXTENSION, KVMIO, 0x03);
ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
ioctl_iowr_nr!(KVM_TRANSLATE, KVMIO, 0x85, kvm_translation);
ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
ioctl_ior_nr!(KVM_GET_FPU, KVMIO, 0x8c, kvm_fpu);
ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
ioctl_io_nr!(KVM_GET_TSC_KHZ, KVMIO, 0xa3);
ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
ioctl_io_nr!(KVM_KVMCLOCK_CTRL, KVMIO, 0xad);
ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_irqchip);
ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);
ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_pit_state2);

/// The `ioctl` requests of the vCPU threads once their filter is on.
fn vcpu_ioctls() -> Vec<u64> {
    vec![
        KVM_RUN(),
        KVM_CHECK_EXTENSION(),
        KVM_GET_REGS(),
        KVM_GET_SREGS(),
        KVM_TRANSLATE(),
        KVM_GET_MSRS(),
        KVM_GET_FPU(),
        KVM_GET_LAPIC(),
        KVM_GET_MP_STATE(),
        KVM_GET_VCPU_EVENTS(),
        KVM_GET_DEBUGREGS(),
        KVM_GET_TSC_KHZ(),
        KVM_GET_XSAVE(),
        KVM_GET_XCRS(),
        KVM_KVMCLOCK_CTRL(),
        // virtio-net's activation, on the vCPU thread that wrote DRIVER_OK.
        libc::TUNSETOFFLOAD,
        libc::TUNSETVNETHDRSZ,
    ]
}

/// The main thread's `ioctl` requests once its filter is on.
fn main_ioctls() -> Vec<u64> {
    vec![
        KVM_CHECK_EXTENSION(),
        KVM_GET_CLOCK(),
        KVM_GET_IRQCHIP(),
        KVM_GET_PIT2(),
        // The terminal's mode, put back when vmm ends (rustix uses the termios2 forms).
        libc::TCGETS,
        libc::TCSETS,
        libc::TCGETS2,
        libc::TCSETS2,
        // `set_nonblocking` on the API's and vsock's sockets.
        libc::FIONBIO,
    ]
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, Error> {
    Ok(SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Qword,
        op,
        value,
    )?)
}

/// One rule per allowed value of argument `arg`.
fn one_of(arg: u8, values: &[u64]) -> Result<Vec<SeccompRule>, Error> {
    values
        .iter()
        .map(|&v| Ok(SeccompRule::new(vec![cond(arg, SeccompCmpOp::Eq, v)?])?))
        .collect()
}

/// One rule per allowed `ioctl` request: its low 32 bits, as the kernel reads it (callers pass
/// it as an `unsigned int` or an `unsigned long`, and a sign-extended one must match too).
fn requests(values: &[u64]) -> Result<Vec<SeccompRule>, Error> {
    values
        .iter()
        .map(|&v| {
            let dword = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v)?;
            Ok(SeccompRule::new(vec![dword])?)
        })
        .collect()
}

/// Argument `arg` has none of the bits of `mask`.
fn without(arg: u8, mask: u64) -> Result<Vec<SeccompRule>, Error> {
    Ok(vec![SeccompRule::new(vec![cond(
        arg,
        SeccompCmpOp::MaskedEq(mask),
        0,
    )?])?])
}

/// The rules of `kind`'s thread: each call of `syscalls` is allowed with any arguments, except
/// those given rules here. `kick_signal` is the signal the main thread sends the vCPU threads.
pub(super) fn for_thread(
    kind: ThreadKind,
    syscalls: &[i64],
    kick_signal: i32,
) -> Result<BTreeMap<i64, Vec<SeccompRule>>, Error> {
    let kick = kick_signal as u64;
    let fcntl_cmds = [
        libc::F_GETFD,
        libc::F_SETFD,
        libc::F_GETFL,
        libc::F_SETFL,
        libc::F_DUPFD_CLOEXEC,
    ]
    .map(|c| c as u64);
    let mut rules = BTreeMap::new();
    for &nr in syscalls {
        let rule = match nr {
            libc::SYS_ioctl => requests(&match kind {
                ThreadKind::Main => main_ioctls(),
                ThreadKind::Vcpu => vcpu_ioctls(),
            })?,
            // prot is argument 2 of both.
            libc::SYS_mmap | libc::SYS_mprotect => without(2, libc::PROT_EXEC as u64)?,
            libc::SYS_tgkill => one_of(2, &[kick, libc::SIGABRT as u64])?,
            libc::SYS_kill => one_of(1, &[libc::SIGKILL as u64])?,
            libc::SYS_fcntl => one_of(1, &fcntl_cmds)?,
            libc::SYS_socket => one_of(0, &[libc::AF_UNIX as u64])?,
            libc::SYS_openat => {
                let read_only = (libc::O_ACCMODE | libc::O_CREAT) as u64;
                let new_file = (libc::O_CREAT | libc::O_EXCL) as u64;
                vec![
                    SeccompRule::new(vec![cond(2, SeccompCmpOp::MaskedEq(read_only), 0)?])?,
                    SeccompRule::new(vec![cond(2, SeccompCmpOp::MaskedEq(new_file), new_file)?])?,
                ]
            }
            _ => Vec::new(),
        };
        rules.insert(nr, rule);
    }
    Ok(rules)
}
