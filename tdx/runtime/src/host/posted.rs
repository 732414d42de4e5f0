//! Posted-interrupt descriptors: how the host hands interrupts to a TD's vCPUs on TDX
//! hardware, where the host cannot inject events itself.
//!
//! Each vCPU has one 64-byte descriptor in host memory (Intel SDM vol. 3C, "Posted-Interrupt
//! Processing"): a 256-bit posted-interrupt request bitmap (PIR), then the outstanding
//! notification bit ON (bit 256), suppress notification SN (bit 257), the notification
//! vector NV (bits 279:272) and the notification destination NDST (bits 319:288, the x2APIC
//! ID). The host writes its address, the notification vector and the "process posted
//! interrupts" pin-based control into the TD-VMCS with TDH.VP.WR, as KVM's `tdx_vcpu_init`
//! does (Linux `arch/x86/kvm/vmx/tdx.c`; the fields are host-writable in the TDX module 1.5,
//! `include/auto_gen/td_vmcs_fields_lookup.c`).
//!
//! To deliver vector V: set bit V of the PIR, then ON. If ON was clear, the vCPU needs a
//! notification: an IPI with vector NV to the CPU the vCPU runs on. A CPU in TDX non-root
//! mode that receives NV moves the PIR into the virtual APIC without a TD exit; a CPU outside
//! the TD takes NV as an ordinary interrupt, so before each TDH.VP.ENTER (interrupts off) the
//! runner sends NV to itself when ON is set, and the CPU processes the PIR right after the
//! VM entry (KVM's `tdx_vcpu_run`).
//!
//! The software module delivers interrupts through its own hook instead (it has no VMX), so
//! on that path the descriptor is written to the TD-VMCS but carries nothing.

use core::sync::atomic::{AtomicU64, Ordering};

/// The vector the host uses as the posted-interrupt notification vector (Linux's
/// `POSTED_INTR_VECTOR`). The appliance registers a handler for it that only signals end of
/// interrupt, for notifications that reach a CPU outside the TD.
pub const POSTED_INTERRUPT_VECTOR: u8 = 0xF2;

/// ON: a notification is outstanding (bit 256, bit 0 of the control word).
const ON: u64 = 1 << 0;
/// SN: suppress notifications (bit 257).
const SN: u64 = 1 << 1;
/// NV: bits 279:272, bits 23:16 of the control word.
const NV_SHIFT: u32 = 16;
/// NDST: bits 319:288, bits 63:32 of the control word.
const NDST_SHIFT: u32 = 32;

/// One vCPU's posted-interrupt descriptor, in the layout the processor reads.
#[derive(Debug)]
#[repr(C, align(64))]
pub struct PostedInterruptDescriptor {
    /// PIR: one bit per vector.
    pir: [AtomicU64; 4],
    /// ON, SN, NV and NDST.
    control: AtomicU64,
    /// Reserved (bits 511:320).
    _reserved: [u64; 3],
}

impl PostedInterruptDescriptor {
    /// An empty descriptor notifying `vector` to the CPU with x2APIC ID `destination`.
    pub fn new(vector: u8, destination: u32) -> Self {
        PostedInterruptDescriptor {
            pir: core::array::from_fn(|_| AtomicU64::new(0)),
            control: AtomicU64::new(
                u64::from(vector) << NV_SHIFT | u64::from(destination) << NDST_SHIFT,
            ),
            _reserved: [0; 3],
        }
    }

    /// Posts `vector`; true if the caller must send the notification IPI (ON was clear and
    /// notifications are not suppressed), false if one is outstanding already.
    pub fn post(&self, vector: u8) -> bool {
        let word = usize::from(vector / 64);
        if let Some(w) = self.pir.get(word) {
            w.fetch_or(1 << (vector % 64), Ordering::SeqCst);
        }
        let before = self.control.fetch_or(ON, Ordering::SeqCst);
        before & (ON | SN) == 0
    }

    /// Whether a notification is outstanding (ON): a runner about to enter the vCPU sends
    /// itself the notification vector so that the CPU processes the PIR on entry.
    pub fn outstanding(&self) -> bool {
        self.control.load(Ordering::SeqCst) & ON != 0
    }

    /// The notification vector.
    pub fn vector(&self) -> u8 {
        (self.control.load(Ordering::Relaxed) >> NV_SHIFT) as u8
    }

    /// The notification destination (x2APIC ID).
    pub fn destination(&self) -> u32 {
        (self.control.load(Ordering::Relaxed) >> NDST_SHIFT) as u32
    }

    /// The descriptor's address, which is its physical address on the appliance (UEFI runs
    /// identity-mapped): what TDH.VP.WR writes into the TD-VMCS. 64-byte aligned.
    pub fn address(&self) -> u64 {
        self as *const PostedInterruptDescriptor as u64
    }

    /// Takes every posted vector and clears ON, as the processor does when it processes the
    /// descriptor (for tests of the host side).
    #[cfg(test)]
    pub(crate) fn take(&self) -> [u64; 4] {
        self.control.fetch_and(!ON, Ordering::SeqCst);
        core::array::from_fn(|i| self.pir[i].swap(0, Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_the_processors() {
        assert_eq!(core::mem::size_of::<PostedInterruptDescriptor>(), 64);
        assert_eq!(core::mem::align_of::<PostedInterruptDescriptor>(), 64);
        let d = PostedInterruptDescriptor::new(0xF2, 0x1234_5678);
        // NV at bits 279:272 = byte 34 of the descriptor, NDST at bits 319:288 = bytes 36..40.
        let control = d.control.load(Ordering::Relaxed).to_le_bytes();
        assert_eq!(control[2], 0xF2);
        assert_eq!(control[4..8], 0x1234_5678u32.to_le_bytes());
        assert_eq!((d.vector(), d.destination()), (0xF2, 0x1234_5678));
        assert_eq!(d.address() % 64, 0);
    }

    #[test]
    fn only_the_first_post_asks_for_a_notification() {
        let d = PostedInterruptDescriptor::new(POSTED_INTERRUPT_VECTOR, 1);
        assert!(!d.outstanding());
        assert!(d.post(0x30));
        assert!(d.outstanding());
        assert!(!d.post(0xEC), "ON is set: no second IPI");
        assert!(!d.post(0x30));
        let pir = d.take();
        assert_eq!(pir, [1 << 0x30, 0, 0, 1 << (0xEC - 0xC0)]);
        assert!(!d.outstanding());
        assert!(d.post(0xFF), "processed: the next post notifies again");
        assert_eq!(d.take()[3], 1 << 63);
    }

    #[test]
    fn suppressed_notifications_post_without_an_ipi() {
        let d = PostedInterruptDescriptor::new(POSTED_INTERRUPT_VECTOR, 1);
        d.control.fetch_or(SN, Ordering::SeqCst);
        assert!(!d.post(0x40));
        assert!(d.outstanding());
        assert_eq!(d.take()[1], 1);
    }
}
