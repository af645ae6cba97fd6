//! A vCPU's state for snapshots: what is saved ([`VcpuState`]), how it is read from KVM and
//! written back, and the check that this host offers the CPU features a saved guest was given.
//!
//! The order of the writes on restore follows what KVM needs (Firecracker's order): CPUID
//! before anything that depends on it, special registers (which hold the APIC base) before the
//! LAPIC, the LAPIC before the MSRs (the TSC-deadline MSR lives in it), the vCPU events (a
//! pending exception or interrupt) last.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// Why a vCPU's state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{what} failed")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("the snapshot has {0} CPUID entries, too many")]
    TooManyCpuidEntries(usize),
    #[error("the snapshot's TSC runs at {khz} kHz and this host cannot scale to it")]
    TscScaling {
        khz: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("this host's XSAVE area is larger than 4 KiB (AMX), which snapshots do not carry yet")]
    XsaveTooLarge,
    #[error("KVM refused the snapshot's MSR {index:#x} (value {value:#x}) on this host")]
    MsrRefused { index: u32, value: u64 },
    #[error("more MSRs than KVM_GET_MSRS/KVM_SET_MSRS take at once")]
    MsrList,
    #[error("the snapshot's guest was given CPU features this host lacks: {}", .0.join(", "))]
    MissingCpuFeatures(Vec<String>),
}

fn call<T>(what: &'static str, result: Result<T, kvm_ioctls::Error>) -> Result<T, StateError> {
    result.map_err(|source| StateError::Kvm { what, source })
}

/// One vCPU.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// The CPUID the guest was given; restored as is, after checking this host has it.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Every MSR of `KVM_GET_MSR_INDEX_LIST` that KVM could read on this vCPU: (index, value).
    pub msrs: Vec<(u32, u64)>,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    /// The FPU, SSE and AVX state (the 4 KiB `KVM_GET_XSAVE` area).
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub lapic: kvm_lapic_state,
    pub mp_state: kvm_mp_state,
    /// Pending exceptions, interrupts, NMIs and SMIs.
    pub events: kvm_vcpu_events,
    pub debugregs: kvm_debugregs,
    /// The guest's TSC frequency, where KVM reports it.
    pub tsc_khz: Option<u32>,
}

/// MSRs per `KVM_GET_MSRS`/`KVM_SET_MSRS` call (well below `KVM_MAX_MSR_ENTRIES`).
const MSR_CHUNK: usize = 64;

/// `(index, value)` pairs as the list `KVM_GET_MSRS`/`KVM_SET_MSRS` take; None if there are
/// more than `KVM_MAX_MSR_ENTRIES`.
pub fn msr_list(pairs: &[(u32, u64)]) -> Option<Msrs> {
    let entries: Vec<kvm_msr_entry> = pairs
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&entries).ok()
}

fn msr_entries(pairs: &[(u32, u64)]) -> Result<Msrs, StateError> {
    msr_list(pairs).ok_or(StateError::MsrList)
}

/// Reads every MSR of `indices` that KVM can read on `fd`: `KVM_GET_MSRS` stops at the first
/// it cannot, which is then left out (KVM lists MSRs whose feature this guest's CPUID lacks).
fn read_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<(u32, u64)>, StateError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(MSR_CHUNK)];
        let pairs: Vec<(u32, u64)> = chunk.iter().map(|&i| (i, 0)).collect();
        let mut msrs = msr_entries(&pairs)?;
        let read = call("KVM_GET_MSRS", fd.get_msrs(&mut msrs))?;
        out.extend(msrs.as_slice()[..read].iter().map(|e| (e.index, e.data)));
        // The one at `read`, if any, is unreadable: it is skipped.
        if let Some(&skipped) = chunk.get(read) {
            log::debug!("snapshot: MSR {skipped:#x} is not readable on this vCPU; left out");
            rest = &rest[read + 1..];
        } else {
            rest = &rest[read..];
        }
    }
    Ok(out)
}

/// Reads the state of a vCPU that is outside `KVM_RUN` (parked); `cpuid` is what it was given.
pub fn save(
    fd: &VcpuFd,
    cpuid: &[kvm_cpuid_entry2],
    msr_indices: &[u32],
) -> Result<VcpuState, StateError> {
    // Most of these are KVM's own snapshot of the vCPU; reading the MSRs last keeps the TSC
    // close to the rest.
    let mp_state = call("KVM_GET_MP_STATE", fd.get_mp_state())?;
    let regs = call("KVM_GET_REGS", fd.get_regs())?;
    let sregs = call("KVM_GET_SREGS", fd.get_sregs())?;
    let xsave = call("KVM_GET_XSAVE", fd.get_xsave())?;
    let xcrs = call("KVM_GET_XCRS", fd.get_xcrs())?;
    let debugregs = call("KVM_GET_DEBUGREGS", fd.get_debug_regs())?;
    let lapic = call("KVM_GET_LAPIC", fd.get_lapic())?;
    let tsc_khz = fd.get_tsc_khz().ok();
    let events = call("KVM_GET_VCPU_EVENTS", fd.get_vcpu_events())?;
    let msrs = read_msrs(fd, msr_indices)?;
    Ok(VcpuState {
        cpuid: cpuid.to_vec(),
        msrs,
        regs,
        sregs,
        xsave,
        xcrs,
        lapic,
        mp_state,
        events,
        debugregs,
        tsc_khz,
    })
}

/// Writes a saved state into a new vCPU that has not run.
///
/// `xsave_fits` must be true only where `KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)` is at most the
/// 4 KiB of `kvm_xsave` (no AMX state): then `KVM_SET_XSAVE` reads no more than that.
pub fn restore(fd: &VcpuFd, state: &VcpuState, xsave_fits: bool) -> Result<(), StateError> {
    let cpuid = CpuId::from_entries(&state.cpuid)
        .map_err(|_| StateError::TooManyCpuidEntries(state.cpuid.len()))?;
    call("KVM_SET_CPUID2", fd.set_cpuid2(&cpuid))?;
    if let Some(khz) = state.tsc_khz {
        if fd.get_tsc_khz().ok() != Some(khz) {
            // Without TSC scaling the guest's clock would run at this host's rate.
            fd.set_tsc_khz(khz)
                .map_err(|source| StateError::TscScaling { khz, source })?;
        }
    }
    call("KVM_SET_MP_STATE", fd.set_mp_state(state.mp_state))?;
    call("KVM_SET_REGS", fd.set_regs(&state.regs))?;
    call("KVM_SET_SREGS", fd.set_sregs(&state.sregs))?;
    if !xsave_fits {
        return Err(StateError::XsaveTooLarge);
    }
    // SAFETY: `xsave_fits` says KVM reads at most the 4 KiB `kvm_xsave` passed here.
    call("KVM_SET_XSAVE", unsafe { fd.set_xsave(&state.xsave) })?;
    call("KVM_SET_XCRS", fd.set_xcrs(&state.xcrs))?;
    call("KVM_SET_DEBUGREGS", fd.set_debug_regs(&state.debugregs))?;
    call("KVM_SET_LAPIC", fd.set_lapic(&state.lapic))?;
    for chunk in state.msrs.chunks(MSR_CHUNK) {
        let msrs = msr_entries(chunk)?;
        let set = call("KVM_SET_MSRS", fd.set_msrs(&msrs))?;
        if let Some(&(index, value)) = chunk.get(set) {
            return Err(StateError::MsrRefused { index, value });
        }
    }
    call("KVM_SET_VCPU_EVENTS", fd.set_vcpu_events(&state.events))?;
    Ok(())
}

/// CPUID bits the CPU itself changes as the guest runs (they mirror a control register), so a
/// running guest's CPUID may have them where the host's supported CPUID has not:
/// (leaf, subleaf, register, mask).
const DYNAMIC_CPUID_BITS: [(u32, u32, Register, u32); 3] = [
    (0x1, 0, Register::Ecx, 1 << 27), // OSXSAVE: CR4.OSXSAVE
    (0x1, 0, Register::Edx, 1 << 9),  // APIC: IA32_APIC_BASE.EN
    (0x7, 0, Register::Ecx, 1 << 4),  // OSPKE: CR4.PKE
];

/// The feature leaves compared on restore: (leaf, subleaf, registers).
const FEATURE_LEAVES: [(u32, u32, &[Register]); 6] = [
    (0x1, 0, &[Register::Ecx, Register::Edx]),
    (0x7, 0, &[Register::Ebx, Register::Ecx, Register::Edx]),
    (0x7, 1, &[Register::Eax]),
    (0xd, 1, &[Register::Eax]),
    (0x8000_0001, 0, &[Register::Ecx, Register::Edx]),
    (0x8000_0008, 0, &[Register::Ebx]),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Register {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

impl Register {
    fn of(self, e: &kvm_cpuid_entry2) -> u32 {
        match self {
            Register::Eax => e.eax,
            Register::Ebx => e.ebx,
            Register::Ecx => e.ecx,
            Register::Edx => e.edx,
        }
    }
}

fn find(entries: &[kvm_cpuid_entry2], leaf: u32, subleaf: u32) -> Option<&kvm_cpuid_entry2> {
    entries
        .iter()
        .find(|e| e.function == leaf && e.index == subleaf)
        .or_else(|| entries.iter().find(|e| e.function == leaf && subleaf == 0))
}

/// Checks that this host offers every CPU feature the snapshot's guest was given: `saved` is
/// the guest's CPUID, `host` what this host would give the same vCPU. Each missing feature is
/// named by leaf, register and bits.
pub fn check_cpuid(
    saved: &[kvm_cpuid_entry2],
    host: &[kvm_cpuid_entry2],
) -> Result<(), StateError> {
    let mut missing = Vec::new();
    for (leaf, subleaf, registers) in FEATURE_LEAVES {
        let Some(guest) = find(saved, leaf, subleaf) else {
            continue;
        };
        let here = find(host, leaf, subleaf);
        for &reg in registers {
            let dynamic: u32 = DYNAMIC_CPUID_BITS
                .iter()
                .filter(|(l, s, r, _)| (*l, *s, *r) == (leaf, subleaf, reg))
                .map(|(.., mask)| mask)
                .sum();
            let lacking = reg.of(guest) & !here.map_or(0, |h| reg.of(h)) & !dynamic;
            if lacking != 0 {
                missing.push(format!(
                    "CPUID leaf {leaf:#x}.{subleaf} {reg:?} bits {lacking:#010x}"
                ));
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(StateError::MissingCpuFeatures(missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    #[test]
    fn a_host_with_the_same_or_more_features_passes() {
        let guest = [
            entry(0x1, 0, 0, 0x8000_0001, 0x1),
            entry(0x7, 0, 0x10, 0, 0),
        ];
        let host = [
            entry(0x1, 0, 0, 0x8000_0003, 0x3),
            entry(0x7, 0, 0x30, 0, 0),
        ];
        check_cpuid(&guest, &host).unwrap();
        check_cpuid(&guest, &guest).unwrap();
    }

    #[test]
    fn a_missing_feature_is_named() {
        let guest = [entry(0x1, 0, 0, 0, 0), entry(0x7, 0, 1 << 5, 0, 0)];
        let host = [entry(0x1, 0, 0, 0, 0), entry(0x7, 0, 0, 0, 0)];
        let err = check_cpuid(&guest, &host).unwrap_err().to_string();
        assert!(err.contains("leaf 0x7.0 Ebx bits 0x00000020"), "{err}");
        // A whole leaf the host lacks.
        let err = check_cpuid(&[entry(0x8000_0001, 0, 0, 1, 0)], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("0x80000001.0 Ecx"), "{err}");
    }

    #[test]
    fn bits_that_follow_control_registers_are_not_features() {
        let guest = [
            entry(0x1, 0, 0, 1 << 27, 1 << 9),
            entry(0x7, 0, 0, 1 << 4, 0),
        ];
        let host = [entry(0x1, 0, 0, 0, 0), entry(0x7, 0, 0, 0, 0)];
        check_cpuid(&guest, &host).unwrap();
    }

    #[test]
    fn kvm_structures_round_trip_through_postcard() {
        let mut regs = kvm_regs {
            rip: 0x1234_5678,
            rflags: 2,
            ..Default::default()
        };
        regs.rax = u64::MAX;
        let bytes = postcard::to_stdvec(&regs).unwrap();
        let back: kvm_regs = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(
            (back.rip, back.rax, back.rflags),
            (0x1234_5678, u64::MAX, 2)
        );
    }
}
