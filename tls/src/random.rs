//! Entropy for key generation and the TLS stack.
//!
//! Everything random in this crate (the P-256 key and serial of a generated certificate, and
//! through `rand_core` 0.6 the TLS handshake randoms and ephemeral keys of the RustCrypto
//! provider) comes from `getrandom` 0.2. On the host that is the OS RNG. `getrandom` 0.2 has
//! no UEFI backend, so on `x86_64-unknown-uefi` its `custom` hook (registered here) draws from
//! the source installed with [`set_random_source`] (the appliance passes
//! `EFI_RNG_PROTOCOL.GetRNG`, UEFI spec 2.10 §37.5) and falls back to RDRAND (Intel SDM Vol. 1
//! §7.3.17) when none is installed or it fails.

use crate::IdentityError;

/// A random source: fills the buffer and returns `true`, or returns `false`.
type RandomSource = fn(&mut [u8]) -> bool;

/// The installed random source, if any (only consulted on UEFI).
static SOURCE: spin::RwLock<Option<RandomSource>> = spin::RwLock::new(None);

/// Installs the random source used on UEFI: a function that fills the buffer completely and
/// returns `true`, or returns `false` on failure (then RDRAND is tried). Typically a wrapper
/// around `EFI_RNG_PROTOCOL.GetRNG`. On other targets the source is recorded but unused: the
/// OS RNG is used there.
pub fn set_random_source(source: fn(&mut [u8]) -> bool) {
    *SOURCE.write() = Some(source);
}

/// Fills `buf` from the system's random source (see the module documentation).
pub(crate) fn fill(buf: &mut [u8]) -> Result<(), IdentityError> {
    getrandom::getrandom(buf).map_err(|_| IdentityError::Random)
}

#[cfg(target_os = "uefi")]
mod uefi {
    use core::num::NonZeroU32;

    /// getrandom error code reported when neither the installed source nor RDRAND works.
    const NO_ENTROPY: NonZeroU32 = match NonZeroU32::new(getrandom::Error::CUSTOM_START + 1) {
        Some(code) => code,
        None => NonZeroU32::MAX,
    };

    /// getrandom 0.2 `custom` backend.
    fn uefi_getrandom(buf: &mut [u8]) -> Result<(), getrandom::Error> {
        let source = *super::SOURCE.read();
        if let Some(source) = source
            && source(buf)
        {
            return Ok(());
        }
        rdrand_fill(buf).ok_or(getrandom::Error::from(NO_ENTROPY))
    }

    getrandom::register_custom_getrandom!(uefi_getrandom);

    /// Fills `buf` with RDRAND output, retrying each step up to 10 times as the Intel DRNG
    /// Software Implementation Guide (§5.2.1) recommends; `None` if the CPU has no RDRAND or
    /// it keeps failing.
    fn rdrand_fill(buf: &mut [u8]) -> Option<()> {
        use core::arch::x86_64::__cpuid;

        // CPUID.01H:ECX bit 30 = RDRAND.
        #[allow(unused_unsafe)]
        // SAFETY: CPUID is available on every x86_64 CPU and has no side effects.
        let leaf1 = unsafe { __cpuid(1) };
        if leaf1.ecx & (1 << 30) == 0 {
            return None;
        }
        for chunk in buf.chunks_mut(8) {
            // SAFETY: RDRAND support was checked with CPUID above.
            let value = unsafe { rdrand64() }?;
            let bytes = value.to_le_bytes();
            chunk.copy_from_slice(bytes.get(..chunk.len())?);
        }
        Some(())
    }

    /// One 64-bit RDRAND value, with retries. Callers outside RDRAND-enabled code must check
    /// that the CPU supports RDRAND (calling it is `unsafe` there).
    #[target_feature(enable = "rdrand")]
    fn rdrand64() -> Option<u64> {
        for _ in 0..10 {
            let mut value = 0u64;
            if core::arch::x86_64::_rdrand64_step(&mut value) == 1 {
                return Some(value);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_produces_distinct_values() {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        fill(&mut a).expect("random");
        fill(&mut b).expect("random");
        assert_ne!(a, b);
    }

    #[test]
    fn set_random_source_is_accepted_on_the_host() {
        fn never(_: &mut [u8]) -> bool {
            false
        }
        set_random_source(never);
        // The host keeps using the OS RNG.
        let mut a = [0u8; 16];
        fill(&mut a).expect("random");
    }
}
