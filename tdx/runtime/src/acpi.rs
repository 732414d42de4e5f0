//! ACPI tables for a TD that boots a kernel directly, in the form OVMF takes them from QEMU:
//! the fw_cfg files `etc/acpi/tables` (the tables), `etc/acpi/rsdp` (the RSDP) and
//! `etc/table-loader` (the linker script that allocates both, patches the pointers between
//! them and fills in their checksums; QEMU `hw/acpi/bios-linker-loader.c`, OVMF
//! `OvmfPkg/AcpiPlatformDxe/QemuFwCfgAcpi.c`). OVMF installs every table a pointer leads to
//! (here FADT, DSDT and MADT) and builds its own RSDP and XSDT; for a TD its `TdxDxe`
//! appends the multiprocessor wake-up structure to the MADT.
//!
//! Contents (ACPI 6.4): a MADT with one Processor Local APIC per vCPU (APIC ID = vCPU
//! index) and one I/O APIC (GSIs 0–23, at 0xFEC00000); a hardware-reduced FADT (no SCI and
//! no fixed power button: a TD has no legacy interrupt controller to route them) whose sleep
//! control register is a byte in the PIIX4 power-management block TDVF programs at 0xB000,
//! and no FACS; a DSDT that says how to enter S5 (sleep type 0) and describes the PCI root
//! bridge and the power button (a Generic Event Device on GSI [`POWER_BUTTON_GSI`]).
//! Sans-IO.

use alloc::vec::Vec;

/// The PIIX4 power-management block (TDVF programs PMBA to 0xB000 on the 440FX platform).
const PM_BASE: u32 = 0xB000;
/// The hardware-reduced sleep control register (a byte in the PM block).
const SLEEP_CONTROL: u32 = PM_BASE + crate::devices::acpi_pm::SLEEP_CONTROL_OFFSET as u32;

/// The I/O APIC input of the power button's Generic Event Device: the first pin past the
/// ISA interrupts, so no legacy IRQ's default routing applies to it.
pub const POWER_BUTTON_GSI: u32 = 16;

/// Loader commands (QEMU `BiosLinkerLoaderEntry`, 128 bytes each).
const LOADER_ALLOCATE: u32 = 1;
const LOADER_ADD_POINTER: u32 = 2;
const LOADER_ADD_CHECKSUM: u32 = 3;
/// Allocation zones.
const ZONE_HIGH: u8 = 1;
const ZONE_FSEG: u8 = 2;

/// The fw_cfg file names.
pub const TABLES_FILE: &str = "etc/acpi/tables";
/// The RSDP's file.
pub const RSDP_FILE: &str = "etc/acpi/rsdp";
/// The linker script's file.
pub const LOADER_FILE: &str = "etc/table-loader";

/// The three fw_cfg files.
pub struct AcpiFiles {
    /// `etc/acpi/tables`.
    pub tables: Vec<u8>,
    /// `etc/acpi/rsdp`.
    pub rsdp: Vec<u8>,
    /// `etc/table-loader`.
    pub loader: Vec<u8>,
}

/// A table header (36 bytes) for `signature` of `length` bytes, checksum left 0.
fn header(out: &mut Vec<u8>, signature: &[u8; 4], length: u32, revision: u8) {
    out.extend_from_slice(signature);
    out.extend_from_slice(&length.to_le_bytes());
    out.push(revision);
    out.push(0); // checksum, filled by the loader
    out.extend_from_slice(b"TDXAPP"); // OEM ID
    out.extend_from_slice(b"TDXAPPL "); // OEM table ID
    out.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    out.extend_from_slice(b"TDXA"); // creator ID
    out.extend_from_slice(&1u32.to_le_bytes()); // creator revision
}

/// An ACPI generic address structure for an I/O port block.
fn io_gas(out: &mut Vec<u8>, port: u32, bits: u8, access: u8) {
    out.extend_from_slice(&[1, bits, 0, access]);
    out.extend_from_slice(&u64::from(port).to_le_bytes());
}

fn put_name(entry: &mut [u8], at: usize, name: &str) {
    let n = name.len().min(55);
    entry[at..at + n].copy_from_slice(&name.as_bytes()[..n]);
}

fn allocate(loader: &mut Vec<u8>, file: &str, align: u32, zone: u8) {
    let mut e = [0u8; 128];
    e[0..4].copy_from_slice(&LOADER_ALLOCATE.to_le_bytes());
    put_name(&mut e, 4, file);
    e[60..64].copy_from_slice(&align.to_le_bytes());
    e[64] = zone;
    loader.extend_from_slice(&e);
}

fn add_pointer(loader: &mut Vec<u8>, dest: &str, src: &str, offset: u32, size: u8) {
    let mut e = [0u8; 128];
    e[0..4].copy_from_slice(&LOADER_ADD_POINTER.to_le_bytes());
    put_name(&mut e, 4, dest);
    put_name(&mut e, 60, src);
    e[116..120].copy_from_slice(&offset.to_le_bytes());
    e[120] = size;
    loader.extend_from_slice(&e);
}

fn add_checksum(loader: &mut Vec<u8>, file: &str, at: u32, start: u32, len: u32) {
    let mut e = [0u8; 128];
    e[0..4].copy_from_slice(&LOADER_ADD_CHECKSUM.to_le_bytes());
    put_name(&mut e, 4, file);
    e[60..64].copy_from_slice(&at.to_le_bytes());
    e[64..68].copy_from_slice(&start.to_le_bytes());
    e[68..72].copy_from_slice(&len.to_le_bytes());
    loader.extend_from_slice(&e);
}

/// Pads `v` to a multiple of 8 bytes.
fn align8(v: &mut Vec<u8>) {
    while !v.len().is_multiple_of(8) {
        v.push(0);
    }
}

/// An AML package-style term: `op`, a PkgLength covering itself and `body`, then `body`
/// (ACPI 6.5 §20.2.4; one or two length bytes, enough for the terms built here).
fn aml_pkg(op: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = op.to_vec();
    if body.len() + 1 < 64 {
        out.push((body.len() + 1) as u8);
    } else {
        let len = body.len() + 2;
        out.push(0x40 | (len & 0xF) as u8);
        out.push((len >> 4) as u8);
    }
    out.extend_from_slice(body);
    out
}

/// `Name (name, value)` with an AML-encoded `value`.
fn aml_name(name: &[u8; 4], value: &[u8]) -> Vec<u8> {
    let mut out = alloc::vec![0x08];
    out.extend_from_slice(name);
    out.extend_from_slice(value);
    out
}

/// The PCI root bridge `PCI0` (PNP0A03, segment 0, bus 0) with the resources it decodes:
/// bus 0, the configuration ports, the rest of the I/O space and the 32-bit memory window
/// `[window_base, window_end)` (resource descriptors: ACPI 6.5 §6.4.3.5). Linux scans PCI
/// only under the root bridges ACPI describes.
fn pci_root_aml(window_base: u64, window_end: u64) -> Vec<u8> {
    let mut crs = Vec::new();
    // WordBusNumber: producer, min/max fixed, bus 0..0.
    crs.extend_from_slice(&[0x88, 0x0D, 0x00, 0x02, 0x0C, 0x00]);
    for v in [0u16, 0, 0, 0, 1] {
        crs.extend_from_slice(&v.to_le_bytes());
    }
    // IO (Decode16, 0xCF8, 0xCF8, 1, 8): the configuration ports.
    crs.extend_from_slice(&[0x47, 0x01, 0xF8, 0x0C, 0xF8, 0x0C, 0x01, 0x08]);
    // WordIO windows around them.
    for (min, max) in [(0u16, 0x0CF7u16), (0x0D00, 0xFFFF)] {
        crs.extend_from_slice(&[0x88, 0x0D, 0x00, 0x01, 0x0C, 0x03]);
        for v in [0, min, max, 0, max - min + 1] {
            crs.extend_from_slice(&v.to_le_bytes());
        }
    }
    // DWordMemory: producer, min/max fixed, non-cacheable, read-write.
    let (base, end) = (window_base as u32, (window_end - 1) as u32);
    crs.extend_from_slice(&[0x87, 0x17, 0x00, 0x00, 0x0C, 0x01]);
    for v in [0u32, base, end, 0, end - base + 1] {
        crs.extend_from_slice(&v.to_le_bytes());
    }
    let mut device = b"PCI0".to_vec();
    // EisaId ("PNP0A03").
    device.extend(aml_name(b"_HID", &[0x0C, 0x41, 0xD0, 0x0A, 0x03]));
    device.extend(aml_name(b"_UID", &[0x00]));
    device.extend(aml_name(b"_CRS", &aml_resources(&crs)));
    aml_pkg(&[0x5B, 0x82], &device)
}

/// `ResourceTemplate () { descriptors }`: a buffer of the descriptors and the end tag.
fn aml_resources(descriptors: &[u8]) -> Vec<u8> {
    let mut body = alloc::vec![0x0A, descriptors.len() as u8 + 2];
    body.extend_from_slice(descriptors);
    body.extend_from_slice(&[0x79, 0x00]);
    aml_pkg(&[0x11], &body)
}

/// The first serial port `COM1` (PNP0501) at its I/O ports 0x3F8–0x3FF with ISA IRQ 4
/// (edge, active high), so that Linux's PnP layer routes its interrupt through the I/O APIC:
/// the table of legacy ports names IRQ 4, which a platform without a legacy PIC leaves
/// unrouted.
fn com1_aml() -> Vec<u8> {
    let mut device = b"COM1".to_vec();
    // EisaId ("PNP0501").
    device.extend(aml_name(b"_HID", &[0x0C, 0x41, 0xD0, 0x05, 0x01]));
    device.extend(aml_name(b"_UID", &[0x01]));
    // IO (Decode16, 0x3F8, 0x3F8, 1, 8), IRQNoFlags () {4}.
    let crs = [
        0x47, 0x01, 0xF8, 0x03, 0xF8, 0x03, 0x01, 0x08, 0x22, 0x10, 0x00,
    ];
    device.extend(aml_name(b"_CRS", &aml_resources(&crs)));
    aml_pkg(&[0x5B, 0x82], &device)
}

/// The power button of a hardware-reduced platform (ACPI 6.5 §4.8.2.2.1.2, §5.6.9): the
/// control-method button `PWRB` (PNP0C0C) and the Generic Event Device `GED0` (ACPI0013)
/// whose interrupt is global system interrupt `gsi` (edge, active high) and whose `_EVT`
/// notifies the button with 0x80 (pressed). The host presses it by pulsing `gsi` on the
/// I/O APIC; the guest's button driver turns the notification into KEY_POWER.
fn power_button_aml(gsi: u32) -> Vec<u8> {
    let mut button = b"PWRB".to_vec();
    // EisaId ("PNP0C0C").
    button.extend(aml_name(b"_HID", &[0x0C, 0x41, 0xD0, 0x0C, 0x0C]));
    button.extend(aml_name(b"_UID", &[0x00]));
    let mut ged = b"GED0".to_vec();
    let mut hid = alloc::vec![0x0D];
    hid.extend_from_slice(b"ACPI0013\0");
    ged.extend(aml_name(b"_HID", &hid));
    ged.extend(aml_name(b"_UID", &[0x00]));
    // Extended Interrupt: consumer, edge, active high, exclusive; one interrupt.
    let mut interrupt = alloc::vec![0x89, 0x06, 0x00, 0x03, 0x01];
    interrupt.extend_from_slice(&gsi.to_le_bytes());
    ged.extend(aml_name(b"_CRS", &aml_resources(&interrupt)));
    // Method (_EVT, 1) { Notify (\_SB.PWRB, 0x80) }
    let mut method = b"_EVT".to_vec();
    method.push(0x01);
    method.extend_from_slice(&[0x86, b'\\', 0x2E]);
    method.extend_from_slice(b"_SB_PWRB");
    method.extend_from_slice(&[0x0A, 0x80]);
    ged.extend(aml_pkg(&[0x14], &method));
    let mut out = aml_pkg(&[0x5B, 0x82], &button);
    out.extend(aml_pkg(&[0x5B, 0x82], &ged));
    out
}

/// The tables of a TD with `vcpus` vCPUs (APIC IDs 0..vcpus) whose PCI memory window is
/// `[pci_window.0, pci_window.1)`.
pub fn build(vcpus: u32, pci_window: (u64, u64)) -> AcpiFiles {
    let mut tables = Vec::new();
    // DSDT: Name (_S5, Package (4) { Zero, Zero, Zero, Zero }): S5 is sleep type 0; the PCI
    // root bridge.
    let dsdt_at = tables.len() as u32;
    let mut aml = alloc::vec![
        0x08, b'_', b'S', b'5', b'_', 0x12, 0x06, 0x04, 0x00, 0x00, 0x00, 0x00,
    ];
    let mut scope = b"_SB_".to_vec();
    scope.extend(pci_root_aml(pci_window.0, pci_window.1));
    scope.extend(com1_aml());
    scope.extend(power_button_aml(POWER_BUTTON_GSI));
    aml.extend(aml_pkg(&[0x10], &scope));
    header(&mut tables, b"DSDT", 36 + aml.len() as u32, 2);
    tables.extend_from_slice(&aml);
    align8(&mut tables);
    // FADT (revision 6, 276 bytes).
    let fadt_at = tables.len() as u32;
    let mut fadt = Vec::with_capacity(276);
    header(&mut fadt, b"FACP", 276, 6);
    fadt.extend_from_slice(&0u32.to_le_bytes()); // FIRMWARE_CTRL
    fadt.extend_from_slice(&dsdt_at.to_le_bytes()); // DSDT (patched)
    fadt.extend_from_slice(&[0, 0]); // reserved, preferred PM profile
    fadt.extend_from_slice(&9u16.to_le_bytes()); // SCI_INT
    fadt.extend_from_slice(&0u32.to_le_bytes()); // SMI_CMD: none, ACPI mode already
    fadt.extend_from_slice(&[0, 0, 0, 0]); // ACPI_ENABLE/DISABLE, S4BIOS_REQ, PSTATE_CNT
    for block in [PM_BASE, 0, PM_BASE + 4, 0, 0, PM_BASE + 8, 0, 0] {
        // PM1a/b event, PM1a/b control, PM2 control, PM timer, GPE0, GPE1.
        fadt.extend_from_slice(&block.to_le_bytes());
    }
    fadt.extend_from_slice(&[4, 2, 0, 4, 0, 0, 0, 0]); // block lengths, GPE1 base, CST
    fadt.extend_from_slice(&0x0FFFu16.to_le_bytes()); // P_LVL2_LAT: no C2
    fadt.extend_from_slice(&0x0FFFu16.to_le_bytes()); // P_LVL3_LAT: no C3
    fadt.extend_from_slice(&[0; 4]); // FLUSH_SIZE, FLUSH_STRIDE
    fadt.extend_from_slice(&[0; 5]); // duty offset/width, RTC alarms, century
    fadt.extend_from_slice(&(1u16 << 2).to_le_bytes()); // IAPC_BOOT_ARCH: no VGA
    fadt.push(0);
    // Flags: WBINVD, C1 on all CPUs, power and sleep buttons are absent/control methods,
    // hardware-reduced ACPI (no SCI: a TD has no legacy interrupt controller to route it).
    fadt.extend_from_slice(&(1u32 | 1 << 2 | 1 << 4 | 1 << 5 | 1 << 20).to_le_bytes());
    fadt.extend_from_slice(&[0; 12]); // RESET_REG
    fadt.extend_from_slice(&[0, 0, 0, 0]); // RESET_VALUE, ARM_BOOT_ARCH, minor version
    fadt.extend_from_slice(&0u64.to_le_bytes()); // X_FIRMWARE_CTRL
    fadt.extend_from_slice(&u64::from(dsdt_at).to_le_bytes()); // X_DSDT (patched)
    io_gas(&mut fadt, PM_BASE, 32, 2); // X_PM1a_EVT_BLK
    fadt.extend_from_slice(&[0; 12]); // X_PM1b_EVT_BLK
    io_gas(&mut fadt, PM_BASE + 4, 16, 2); // X_PM1a_CNT_BLK
    fadt.extend_from_slice(&[0; 24]); // X_PM1b_CNT_BLK, X_PM2_CNT_BLK
    io_gas(&mut fadt, PM_BASE + 8, 32, 3); // X_PM_TMR_BLK
    fadt.extend_from_slice(&[0; 24]); // X_GPE0/1
    io_gas(&mut fadt, SLEEP_CONTROL, 8, 1); // SLEEP_CONTROL_REG
    fadt.extend_from_slice(&[0; 12]); // SLEEP_STATUS_REG
    fadt.extend_from_slice(&0u64.to_le_bytes()); // hypervisor vendor
    debug_assert_eq!(fadt.len(), 276);
    tables.extend_from_slice(&fadt);
    align8(&mut tables);
    // MADT: local APIC address, no 8259s, one Processor Local APIC per vCPU, the I/O APIC.
    let madt_at = tables.len() as u32;
    let madt_len = 44 + 8 * vcpus + 12;
    header(&mut tables, b"APIC", madt_len, 5);
    tables.extend_from_slice(&0xFEE0_0000u32.to_le_bytes());
    tables.extend_from_slice(&0u32.to_le_bytes());
    for id in 0..vcpus {
        let id8 = u8::try_from(id).unwrap_or(u8::MAX);
        tables.extend_from_slice(&[0, 8, id8, id8]);
        tables.extend_from_slice(&1u32.to_le_bytes()); // enabled
    }
    // I/O APIC: ID 0, its address, GSI base 0.
    tables.extend_from_slice(&[1, 12, 0, 0]);
    tables.extend_from_slice(&(crate::devices::ioapic::IOAPIC_BASE as u32).to_le_bytes());
    tables.extend_from_slice(&0u32.to_le_bytes());
    align8(&mut tables);
    // XSDT: FADT, MADT.
    let xsdt_at = tables.len() as u32;
    header(&mut tables, b"XSDT", 36 + 16, 1);
    tables.extend_from_slice(&u64::from(fadt_at).to_le_bytes());
    tables.extend_from_slice(&u64::from(madt_at).to_le_bytes());
    // RSDP (ACPI 2.0+, 36 bytes).
    let mut rsdp = Vec::with_capacity(36);
    rsdp.extend_from_slice(b"RSD PTR ");
    rsdp.push(0); // checksum of the first 20 bytes
    rsdp.extend_from_slice(b"TDXAPP");
    rsdp.push(2);
    rsdp.extend_from_slice(&0u32.to_le_bytes()); // RSDT: none
    rsdp.extend_from_slice(&36u32.to_le_bytes());
    rsdp.extend_from_slice(&u64::from(xsdt_at).to_le_bytes()); // XSDT (patched)
    rsdp.push(0); // extended checksum
    rsdp.extend_from_slice(&[0; 3]);
    let mut loader = Vec::new();
    allocate(&mut loader, RSDP_FILE, 16, ZONE_FSEG);
    allocate(&mut loader, TABLES_FILE, 64, ZONE_HIGH);
    add_pointer(&mut loader, TABLES_FILE, TABLES_FILE, fadt_at + 40, 4);
    add_pointer(&mut loader, TABLES_FILE, TABLES_FILE, fadt_at + 140, 8);
    add_pointer(&mut loader, TABLES_FILE, TABLES_FILE, xsdt_at + 36, 8);
    add_pointer(&mut loader, TABLES_FILE, TABLES_FILE, xsdt_at + 44, 8);
    add_pointer(&mut loader, RSDP_FILE, TABLES_FILE, 24, 8);
    for (at, len) in [
        (dsdt_at, 36 + aml.len() as u32),
        (fadt_at, 276),
        (madt_at, madt_len),
        (xsdt_at, 52),
    ] {
        add_checksum(&mut loader, TABLES_FILE, at + 9, at, len);
    }
    add_checksum(&mut loader, RSDP_FILE, 8, 0, 20);
    add_checksum(&mut loader, RSDP_FILE, 32, 0, 36);
    AcpiFiles {
        tables,
        rsdp,
        loader,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    #[test]
    fn tables_have_their_lengths_and_the_loader_links_them() {
        let f = build(2, (0x8000_0000, 0xFC00_0000));
        // DSDT at 0, FADT next (8-aligned), MADT, XSDT.
        assert_eq!(&f.tables[0..4], b"DSDT");
        let dsdt_len = u32_at(&f.tables, 4) as usize;
        let fadt = dsdt_len.next_multiple_of(8);
        assert_eq!(&f.tables[fadt..fadt + 4], b"FACP");
        assert_eq!(u32_at(&f.tables, fadt + 4), 276);
        assert_eq!(
            u32_at(&f.tables, fadt + 40),
            0,
            "DSDT offset, patched by the loader"
        );
        assert_eq!(u32_at(&f.tables, fadt + 76), 0xB008, "PM timer");
        let madt = fadt + 280;
        assert_eq!(&f.tables[madt..madt + 4], b"APIC");
        assert_eq!(u32_at(&f.tables, madt + 4), 44 + 16 + 12);
        assert_eq!(&f.tables[madt + 44..madt + 48], &[0, 8, 0, 0]);
        assert_eq!(&f.tables[madt + 52..madt + 56], &[0, 8, 1, 1]);
        assert_eq!(&f.tables[madt + 60..madt + 62], &[1, 12], "I/O APIC");
        assert_eq!(u32_at(&f.tables, madt + 64), 0xFEC0_0000);
        let xsdt = madt + 72;
        assert_eq!(&f.tables[xsdt..xsdt + 4], b"XSDT");
        assert_eq!(f.tables.len(), xsdt + 52);
        assert_eq!(&f.rsdp[0..8], b"RSD PTR ");
        assert_eq!(u32_at(&f.rsdp, 24), xsdt as u32);
        // Two allocations, five pointers, six checksums; 128 bytes each.
        assert_eq!(f.loader.len(), 13 * 128);
        assert_eq!(u32_at(&f.loader, 0), LOADER_ALLOCATE);
        assert_eq!(&f.loader[4..17], RSDP_FILE.as_bytes());
        assert_eq!(u32_at(&f.loader, 2 * 128), LOADER_ADD_POINTER);
        assert_eq!(u32_at(&f.loader, 2 * 128 + 116), fadt as u32 + 40);
        assert_eq!(u32_at(&f.loader, 12 * 128), LOADER_ADD_CHECKSUM);
    }

    #[test]
    fn the_dsdt_describes_the_pci_root_bridge_and_its_memory_window() {
        let f = build(1, (0x8000_0000, 0xFC00_0000));
        let dsdt = &f.tables[..u32_at(&f.tables, 4) as usize];
        // After the header and `_S5`: Scope (\_SB), whose two-byte PkgLength reaches the
        // end of the table.
        let scope = 36 + 12;
        assert_eq!(dsdt[scope], 0x10);
        let len = usize::from(dsdt[scope + 1] & 0xF) | usize::from(dsdt[scope + 2]) << 4;
        assert_eq!(dsdt[scope + 1] >> 6, 1, "two PkgLength bytes");
        assert_eq!(scope + 1 + len, dsdt.len());
        assert_eq!(&dsdt[scope + 3..scope + 7], b"_SB_");
        assert_eq!(&dsdt[scope + 7..scope + 9], &[0x5B, 0x82]);
        let find = |needle: &[u8]| dsdt.windows(needle.len()).position(|w| w == needle);
        assert!(find(b"PCI0").is_some());
        assert!(find(&[b'_', b'H', b'I', b'D', 0x0C, 0x41, 0xD0, 0x0A, 0x03]).is_some());
        // DWordMemory: min 0x80000000, max 0xFBFFFFFF, length 0x7C000000.
        let mem = find(&[0x87, 0x17, 0x00, 0x00, 0x0C, 0x01]).expect("DWordMemory");
        assert_eq!(u32_at(dsdt, mem + 10), 0x8000_0000);
        assert_eq!(u32_at(dsdt, mem + 14), 0xFBFF_FFFF);
        assert_eq!(u32_at(dsdt, mem + 22), 0x7C00_0000);
        assert_eq!(
            &dsdt[mem + 26..mem + 28],
            &[0x79, 0x00],
            "end tag closes _CRS"
        );
    }

    #[test]
    fn the_dsdt_has_a_power_button_behind_a_generic_event_device() {
        let f = build(1, (0x8000_0000, 0xFC00_0000));
        let dsdt = &f.tables[..u32_at(&f.tables, 4) as usize];
        let find = |needle: &[u8]| dsdt.windows(needle.len()).position(|w| w == needle);
        // DeviceOp, then a PkgLength of one byte or of two (bits 7:6 of the first = 1).
        let is_device = |name: usize| {
            dsdt[name - 3..name - 1] == [0x5B, 0x82]
                || dsdt[name - 4..name - 2] == [0x5B, 0x82] && dsdt[name - 2] >> 6 == 1
        };
        let button = find(b"PWRB").expect("PWRB");
        assert!(is_device(button));
        assert!(find(&[b'_', b'H', b'I', b'D', 0x0C, 0x41, 0xD0, 0x0C, 0x0C]).is_some());
        assert!(is_device(find(b"GED0").expect("GED0")));
        assert!(find(b"ACPI0013\0").is_some());
        let irq = find(&[0x89, 0x06, 0x00, 0x03, 0x01]).expect("Interrupt descriptor");
        assert_eq!(u32_at(dsdt, irq + 5), POWER_BUTTON_GSI);
        assert_eq!(&dsdt[irq + 9..irq + 11], &[0x79, 0x00]);
        // Method (_EVT, 1) { Notify (\_SB.PWRB, 0x80) }, the last term of the table.
        let method = find(b"_EVT").expect("_EVT");
        assert_eq!(dsdt[method - 2], 0x14);
        assert_eq!(usize::from(dsdt[method - 1]), dsdt.len() - method + 1);
        assert_eq!(
            &dsdt[method + 4..],
            &[
                0x01, 0x86, b'\\', 0x2E, b'_', b'S', b'B', b'_', b'P', b'W', b'R', b'B', 0x0A, 0x80
            ]
        );
    }
}
