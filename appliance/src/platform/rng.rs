//! Randomness: the seed of the network stack (TCP initial sequence numbers, DHCP transaction
//! ids) and the bytes of a generated API token (RDSEED/RDRAND, else EFI_RNG_PROTOCOL).

use uefi::boot;
use uefi::proto::rng::Rng;

use super::clock::read_tsc;

/// 64 random bits from [`secure_random_bytes`], or, where there is no random source (QEMU's
/// default CPU without RDRAND and no `virtio-rng`), the TSC mixed through SplitMix64 —
/// unpredictable enough for sequence numbers, which is all the seed is used for.
pub fn seed() -> (u64, &'static str) {
    let mut bytes = [0u8; 8];
    match secure_random_bytes(&mut bytes) {
        Ok(source) => (u64::from_le_bytes(bytes), source),
        Err(NoRandomSource) => (splitmix64(read_tsc()), "TSC"),
    }
}

fn splitmix64(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// How often RDSEED/RDRAND is retried when it reports no entropy yet (Intel's DRNG guide
/// recommends 10 retries for RDRAND; RDSEED may need more under load).
const RETRIES: u32 = 100;

/// No source of secure random bytes exists on this machine.
#[derive(Debug, Clone, Copy)]
pub struct NoRandomSource;

impl core::fmt::Display for NoRandomSource {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(
            "the CPU has neither RDSEED nor RDRAND and the firmware has no EFI_RNG_PROTOCOL",
        )
    }
}

/// Whether the CPU has RDRAND (CPUID.01H:ECX bit 30) and RDSEED (CPUID.(07H,0):EBX bit 18).
fn cpu_random_instructions() -> (bool, bool) {
    use core::arch::x86_64::{__cpuid, __cpuid_count};
    let max_leaf = __cpuid(0).eax;
    let rdrand = __cpuid(1).ecx & (1 << 30) != 0;
    let rdseed = max_leaf >= 7 && __cpuid_count(7, 0).ebx & (1 << 18) != 0;
    (rdrand, rdseed)
}

#[target_feature(enable = "rdseed")]
fn rdseed64() -> Option<u64> {
    for _ in 0..RETRIES {
        let mut value = 0u64;
        // Safe to call here: the function is compiled with the `rdseed` target feature.
        if core::arch::x86_64::_rdseed64_step(&mut value) == 1 {
            return Some(value);
        }
        core::hint::spin_loop();
    }
    None
}

#[target_feature(enable = "rdrand")]
fn rdrand64() -> Option<u64> {
    for _ in 0..RETRIES {
        let mut value = 0u64;
        if core::arch::x86_64::_rdrand64_step(&mut value) == 1 {
            return Some(value);
        }
        core::hint::spin_loop();
    }
    None
}

/// Fills `buf` with secure random bytes: from RDSEED, else RDRAND, else the firmware's
/// EFI_RNG_PROTOCOL. Returns the source's name.
pub fn secure_random_bytes(buf: &mut [u8]) -> Result<&'static str, NoRandomSource> {
    let (rdrand, rdseed) = cpu_random_instructions();
    let mut fill = |source: &'static str, next: &mut dyn FnMut() -> Option<u64>| {
        for chunk in buf.chunks_mut(8) {
            let bytes = next()?.to_le_bytes();
            chunk.copy_from_slice(bytes.get(..chunk.len())?);
        }
        Some(source)
    };
    if rdseed {
        // SAFETY: `rdseed64` is compiled for the RDSEED instruction, which CPUID just
        // reported; executing it on such a CPU cannot fault.
        if let Some(source) = fill("RDSEED", &mut || unsafe { rdseed64() }) {
            return Ok(source);
        }
    }
    if rdrand {
        // SAFETY: as above, for RDRAND.
        if let Some(source) = fill("RDRAND", &mut || unsafe { rdrand64() }) {
            return Ok(source);
        }
    }
    boot::get_handle_for_protocol::<Rng>()
        .and_then(boot::open_protocol_exclusive::<Rng>)
        .and_then(|mut rng| rng.get_rng(None, buf))
        .map(|()| "EFI_RNG_PROTOCOL")
        .map_err(|_| NoRandomSource)
}
