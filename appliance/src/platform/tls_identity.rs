//! The API's TLS identity on this machine: the key and self-signed certificate generated at
//! first boot, kept in a non-volatile UEFI variable so that the certificate (and the
//! fingerprint operators pinned) survives reboots; and the wall clock rustls asks for.
//!
//! The variable (`ApplianceTlsIdentity`, under this appliance's own vendor GUID) holds
//! [`TlsIdentity::to_bytes`]; it is boot-services-only (UEFI 2.10 §8.2,
//! `EFI_VARIABLE_BOOTSERVICE_ACCESS` without `RUNTIME_ACCESS`), so an operating system booted
//! later on the same machine cannot read the private key through the runtime services. A
//! variable that does not decode (another version, corruption) is replaced by a new
//! identity, and the console says so.

use core::sync::atomic::{AtomicU64, Ordering};

use api_tls::TlsIdentity;
use log::{info, warn};
use uefi::runtime::{self, VariableAttributes, VariableVendor};
use uefi::{Status, cstr16, guid};

use super::clock::now_ms;

/// This appliance's vendor GUID for its UEFI variables.
const VENDOR: VariableVendor = VariableVendor(guid!("5c1e7f5a-2b0d-4d39-9a2e-7d8e0c4b6a11"));

/// How long a generated certificate is valid.
const VALID_DAYS: u32 = 3650;

/// Names in a generated certificate: what a client on the host reaches a QEMU instance as,
/// and the appliance's name.
const NAMES: [&str; 3] = ["tdx-appliance", "localhost", "127.0.0.1"];

/// Unix seconds at boot from the firmware's real-time clock; 0 when unknown.
static BOOT_UNIX_S: AtomicU64 = AtomicU64::new(0);
/// [`now_ms`] when [`BOOT_UNIX_S`] was read.
static BOOT_AT_MS: AtomicU64 = AtomicU64::new(0);

/// Reads the real-time clock once (UEFI GetTime), so that [`unix_now_s`] can count from it.
pub fn init_wall_clock() -> Option<u64> {
    let time = runtime::get_time().ok()?;
    let unix = appliance::clock::unix_seconds(
        time.year(),
        time.month(),
        time.day(),
        time.hour(),
        time.minute(),
        time.second(),
        time.time_zone(),
    )?;
    BOOT_UNIX_S.store(unix, Ordering::Relaxed);
    BOOT_AT_MS.store(now_ms(), Ordering::Relaxed);
    Some(unix)
}

/// Seconds since 1970 now, from the boot-time real-time clock plus the TSC; `None` when the
/// firmware had no clock.
pub fn unix_now_s() -> Option<u64> {
    let boot = BOOT_UNIX_S.load(Ordering::Relaxed);
    (boot != 0).then(|| boot + now_ms().saturating_sub(BOOT_AT_MS.load(Ordering::Relaxed)) / 1000)
}

/// The identity kept in the UEFI variable, or a new one (generated and stored) when there
/// is none usable. Returns it with whether it was generated at this boot.
pub fn load_or_generate() -> Result<(TlsIdentity, bool), api_tls::IdentityError> {
    let name = cstr16!("ApplianceTlsIdentity");
    match runtime::get_variable_boxed(name, &VENDOR) {
        Ok((bytes, _)) => match TlsIdentity::from_bytes(&bytes) {
            Ok(identity) => return Ok((identity, false)),
            Err(e) => warn!("tls: the stored identity is unusable ({e}); generating a new one"),
        },
        Err(e) if e.status() == Status::NOT_FOUND => {
            info!("tls: no stored identity; generating a key and self-signed certificate");
        }
        Err(e) => warn!(
            "tls: cannot read the stored identity ({:?}); generating a new one",
            e.status()
        ),
    }
    let now = unix_now_s().unwrap_or(0);
    let identity = TlsIdentity::generate_self_signed(now, VALID_DAYS, &NAMES)?;
    let attributes = VariableAttributes::NON_VOLATILE | VariableAttributes::BOOTSERVICE_ACCESS;
    if let Err(e) = runtime::set_variable(name, &VENDOR, attributes, &identity.to_bytes()) {
        warn!(
            "tls: cannot store the identity ({:?}): the certificate changes at the next boot",
            e.status()
        );
    }
    Ok((identity, true))
}
