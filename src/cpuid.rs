//! CPUID for each vCPU: what `KVM_GET_SUPPORTED_CPUID` reports, normalised so that every vCPU
//! sees its own APIC id and a consistent topology (one socket, `cpus` cores, one thread each),
//! and knows that it runs under a hypervisor.
//!
//! References: Intel SDM Vol. 2A, CPUID; AMD APM Vol. 3, appendix E (CPUID).

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// Leaf 0x1: version and feature information.
const LEAF_FEATURES: u32 = 0x1;
/// Leaf 0x4: deterministic cache parameters (Intel).
const LEAF_CACHE_PARAMS: u32 = 0x4;
/// Leaf 0xb: extended topology enumeration.
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
/// Leaf 0x1f: V2 extended topology enumeration.
const LEAF_EXT_TOPOLOGY_V2: u32 = 0x1f;
/// Leaf 0x4000_0000: hypervisor vendor leaf ("KVMKVMKVM\0\0\0").
const LEAF_HYPERVISOR: u32 = 0x4000_0000;
/// Leaf 0x8000_0008: address sizes and (AMD) core count.
const LEAF_AMD_SIZE_IDS: u32 = 0x8000_0008;
/// Leaf 0x8000_001e: AMD extended APIC id and compute-unit topology.
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;

/// Leaf 0x1 ECX bit 31: running under a hypervisor.
const ECX_HYPERVISOR_BIT: u32 = 1 << 31;
/// Leaf 0x1 EDX bit 28: the package has more than one logical processor (HTT).
const EDX_HTT_BIT: u32 = 1 << 28;
/// Leaf 0x1 ECX bit 24: the local APIC timer has TSC-deadline mode.
const ECX_TSC_DEADLINE_BIT: u32 = 1 << 24;

/// Level types in leaves 0xb/0x1f, ECX[15:8].
const LEVEL_TYPE_INVALID: u32 = 0;
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// The KVM signature in leaf 0x4000_0000 (EBX, ECX, EDX).
const KVM_SIGNATURE: &[u8; 12] = b"KVMKVMKVM\0\0\0";

/// Number of bits needed to hold `count` distinct ids (ceil(log2(count))).
fn id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

/// Offers the guest the local APIC's TSC-deadline timer mode, which KVM's in-kernel LAPIC
/// emulates but `KVM_GET_SUPPORTED_CPUID` does not report: the VMM sets the bit when KVM has
/// `KVM_CAP_TSC_DEADLINE_TIMER` (KVM's api.rst; QEMU, Firecracker and Cloud Hypervisor do the
/// same). Linux then programs its timer with one MSR write instead of the APIC's count
/// registers, and says `TSC deadline timer available` at boot.
pub fn enable_tsc_deadline(cpuid: &mut CpuId) {
    for entry in cpuid.as_mut_slice() {
        if entry.function == LEAF_FEATURES {
            entry.ecx |= ECX_TSC_DEADLINE_BIT;
        }
    }
}

/// Returns the CPUID for vCPU `cpu_index` (its APIC id) of `num_cpus`, derived from `supported`.
pub fn normalize(supported: &CpuId, cpu_index: u8, num_cpus: u8) -> CpuId {
    let mut cpuid = supported.clone();
    let apic_id = u32::from(cpu_index);
    let cpus = u32::from(num_cpus.max(1));
    let core_bits = id_bits(cpus);
    for entry in cpuid.as_mut_slice() {
        normalize_entry(entry, apic_id, cpus, core_bits);
    }
    cpuid
}

fn normalize_entry(entry: &mut kvm_cpuid_entry2, apic_id: u32, cpus: u32, core_bits: u32) {
    match entry.function {
        LEAF_FEATURES => {
            // EBX[31:24] initial APIC id, EBX[23:16] logical processors per package.
            entry.ebx = (entry.ebx & 0x0000_ffff) | (apic_id << 24) | ((cpus & 0xff) << 16);
            entry.ecx |= ECX_HYPERVISOR_BIT;
            if cpus > 1 {
                entry.edx |= EDX_HTT_BIT;
            } else {
                entry.edx &= !EDX_HTT_BIT;
            }
        }
        LEAF_CACHE_PARAMS => {
            // EAX[31:26] cores per package - 1; EAX[25:14] logical processors sharing this
            // cache - 1: private L1/L2 (one thread per core), L3 shared by the package.
            let level = (entry.eax >> 5) & 0x7;
            let sharing = if level >= 3 { cpus - 1 } else { 0 };
            entry.eax = (entry.eax & 0x3fff) | ((cpus - 1) << 26) | ((sharing & 0xfff) << 14);
        }
        LEAF_EXT_TOPOLOGY | LEAF_EXT_TOPOLOGY_V2 => {
            entry.flags |= KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
            let (shift, count, level_type) = match entry.index {
                0 => (0, 1, LEVEL_TYPE_SMT),
                1 => (core_bits, cpus, LEVEL_TYPE_CORE),
                _ => (0, 0, LEVEL_TYPE_INVALID),
            };
            entry.eax = shift;
            entry.ebx = count;
            entry.ecx = (level_type << 8) | (entry.index & 0xff);
            entry.edx = apic_id;
        }
        LEAF_HYPERVISOR => {
            entry.ebx = u32::from_le_bytes([
                KVM_SIGNATURE[0],
                KVM_SIGNATURE[1],
                KVM_SIGNATURE[2],
                KVM_SIGNATURE[3],
            ]);
            entry.ecx = u32::from_le_bytes([
                KVM_SIGNATURE[4],
                KVM_SIGNATURE[5],
                KVM_SIGNATURE[6],
                KVM_SIGNATURE[7],
            ]);
            entry.edx = u32::from_le_bytes([
                KVM_SIGNATURE[8],
                KVM_SIGNATURE[9],
                KVM_SIGNATURE[10],
                KVM_SIGNATURE[11],
            ]);
        }
        LEAF_AMD_SIZE_IDS => {
            // ECX[15:12] APIC id bits for the core id, ECX[7:0] cores per package - 1.
            entry.ecx = (entry.ecx & !0xf0ff) | (core_bits << 12) | ((cpus - 1) & 0xff);
        }
        LEAF_AMD_EXT_APIC_ID => {
            // EAX extended APIC id; EBX[7:0] compute unit (core) id, EBX[15:8] threads per
            // compute unit - 1; ECX node id 0 with one node per package.
            entry.eax = apic_id;
            entry.ebx = apic_id & 0xff;
            entry.ecx = 0;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xdead_0000 | function,
            ebx: 0x0001_0800,
            ecx: 0x1,
            edx: EDX_HTT_BIT,
            ..Default::default()
        }
    }

    #[test]
    fn tsc_deadline_is_offered_in_leaf_1_only() {
        let mut cpuid = supported();
        enable_tsc_deadline(&mut cpuid);
        for e in cpuid.as_slice() {
            let set = e.ecx & ECX_TSC_DEADLINE_BIT != 0;
            assert_eq!(set, e.function == LEAF_FEATURES, "leaf {:#x}", e.function);
        }
        // The per-vCPU normalisation keeps it.
        let vcpu = normalize(&cpuid, 1, 2);
        let leaf1 = vcpu.as_slice().iter().find(|e| e.function == LEAF_FEATURES);
        assert_ne!(leaf1.unwrap().ecx & ECX_TSC_DEADLINE_BIT, 0);
    }

    fn supported() -> CpuId {
        CpuId::from_entries(&[
            entry(0, 0),
            entry(LEAF_FEATURES, 0),
            entry(LEAF_CACHE_PARAMS, 0),
            kvm_cpuid_entry2 {
                function: LEAF_CACHE_PARAMS,
                index: 3,
                eax: 3 << 5,
                ..Default::default()
            },
            entry(LEAF_EXT_TOPOLOGY, 0),
            entry(LEAF_EXT_TOPOLOGY, 1),
            entry(LEAF_EXT_TOPOLOGY, 2),
            entry(LEAF_HYPERVISOR, 0),
            entry(LEAF_AMD_SIZE_IDS, 0),
            entry(LEAF_AMD_EXT_APIC_ID, 0),
        ])
        .unwrap()
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(3), 2);
        assert_eq!(id_bits(4), 2);
        assert_eq!(id_bits(5), 3);
        assert_eq!(id_bits(255), 8);
    }

    #[test]
    fn each_vcpu_gets_its_apic_id() {
        let base = supported();
        for cpu in 0..4u8 {
            let c = normalize(&base, cpu, 4);
            let leaf1 = find(&c, LEAF_FEATURES, 0);
            assert_eq!(leaf1.ebx >> 24, u32::from(cpu));
            assert_eq!((leaf1.ebx >> 16) & 0xff, 4);
            // The low half (brand index, CLFLUSH size) is kept.
            assert_eq!(leaf1.ebx & 0xffff, 0x0800);
            for sub in 0..3 {
                assert_eq!(find(&c, LEAF_EXT_TOPOLOGY, sub).edx, u32::from(cpu));
            }
            assert_eq!(find(&c, LEAF_AMD_EXT_APIC_ID, 0).eax, u32::from(cpu));
        }
    }

    #[test]
    fn hypervisor_bit_and_signature() {
        let c = normalize(&supported(), 0, 1);
        assert_ne!(find(&c, LEAF_FEATURES, 0).ecx & ECX_HYPERVISOR_BIT, 0);
        let h = find(&c, LEAF_HYPERVISOR, 0);
        let mut sig = Vec::new();
        for r in [h.ebx, h.ecx, h.edx] {
            sig.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&sig[..], KVM_SIGNATURE);
    }

    #[test]
    fn topology_leaves_describe_one_socket() {
        let c = normalize(&supported(), 2, 3);
        let smt = find(&c, LEAF_EXT_TOPOLOGY, 0);
        assert_eq!(
            (smt.eax, smt.ebx, (smt.ecx >> 8) & 0xff),
            (0, 1, LEVEL_TYPE_SMT)
        );
        let core = find(&c, LEAF_EXT_TOPOLOGY, 1);
        assert_eq!(
            (core.eax, core.ebx, (core.ecx >> 8) & 0xff),
            (2, 3, LEVEL_TYPE_CORE)
        );
        assert_eq!(core.ecx & 0xff, 1);
        let end = find(&c, LEAF_EXT_TOPOLOGY, 2);
        assert_eq!(
            (end.eax, end.ebx, (end.ecx >> 8) & 0xff),
            (0, 0, LEVEL_TYPE_INVALID)
        );
        // Intel cache leaf: 3 cores; L1 private, L3 shared by all 3.
        let l1 = find(&c, LEAF_CACHE_PARAMS, 0);
        assert_eq!((l1.eax >> 26, (l1.eax >> 14) & 0xfff), (2, 0));
        let l3 = find(&c, LEAF_CACHE_PARAMS, 3);
        assert_eq!((l3.eax >> 26, (l3.eax >> 14) & 0xfff), (2, 2));
        // AMD core count.
        let amd = find(&c, LEAF_AMD_SIZE_IDS, 0);
        assert_eq!((amd.ecx & 0xff, (amd.ecx >> 12) & 0xf), (2, 2));
    }

    #[test]
    fn htt_only_with_several_cpus() {
        let one = normalize(&supported(), 0, 1);
        assert_eq!(find(&one, LEAF_FEATURES, 0).edx & EDX_HTT_BIT, 0);
        let two = normalize(&supported(), 0, 2);
        assert_ne!(find(&two, LEAF_FEATURES, 0).edx & EDX_HTT_BIT, 0);
    }

    #[test]
    fn other_leaves_untouched() {
        let base = supported();
        let c = normalize(&base, 1, 2);
        assert_eq!(find(&c, 0, 0), find(&base, 0, 0));
    }
}
