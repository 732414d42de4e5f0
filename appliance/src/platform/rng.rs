//! A random seed for the network stack (TCP initial sequence numbers, DHCP transaction ids).

use uefi::boot;
use uefi::proto::rng::Rng;

use super::clock::read_tsc;

/// 64 random bits from the firmware's RNG protocol, or, where there is none (QEMU without
/// `virtio-rng` and a CPU without RDRAND), the TSC mixed through SplitMix64 — unpredictable
/// enough for sequence numbers, which is all it is used for.
pub fn seed() -> (u64, &'static str) {
    let from_firmware = boot::get_handle_for_protocol::<Rng>()
        .and_then(boot::open_protocol_exclusive::<Rng>)
        .and_then(|mut rng| {
            let mut bytes = [0u8; 8];
            rng.get_rng(None, &mut bytes)
                .map(|()| u64::from_le_bytes(bytes))
        });
    match from_firmware {
        Ok(seed) => (seed, "EFI_RNG_PROTOCOL"),
        Err(_) => (splitmix64(read_tsc()), "TSC"),
    }
}

fn splitmix64(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
