//! A split virtqueue as the device side sees it (Virtual I/O Device (VIRTIO) Version 1.2,
//! §2.7 "Split Virtqueues"): the driver's descriptor table and available ring, the device's
//! used ring, all in guest memory the device reaches through [`DmaMemory`]. In a TD that
//! memory is shared (the driver negotiated VIRTIO_F_ACCESS_PLATFORM and bounces through
//! memory it converted), so every address here is the driver's DMA address.
//!
//! Nothing the driver writes is trusted: indices are taken modulo the queue size, a chain
//! longer than [`MAX_CHAIN`] or than the queue, a loop, or an unreadable descriptor ends the
//! request as malformed, and indirect descriptors (never offered) are refused.

use super::super::fw_cfg::DmaMemory;

/// The longest descriptor chain the device takes (header, data segments, status).
pub const MAX_CHAIN: usize = 16;
/// The largest queue the device offers.
pub const MAX_QUEUE_SIZE: u16 = 256;

/// Descriptor flag: the chain continues at `next`.
const DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer.
const DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is a table of descriptors (not offered).
const DESC_F_INDIRECT: u16 = 4;

/// One buffer of a chain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Buffer {
    /// DMA address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// The device writes it (else it reads it).
    pub device_writes: bool,
}

/// A request taken from the available ring: its head index and its buffers.
#[derive(Clone, Copy, Debug)]
pub struct Chain {
    /// The head descriptor's index (what the used ring reports).
    pub head: u16,
    buffers: [Buffer; MAX_CHAIN],
    count: usize,
}

impl Chain {
    /// The buffers, in chain order.
    pub fn buffers(&self) -> &[Buffer] {
        self.buffers.get(..self.count).unwrap_or(&[])
    }
}

/// Why a chain could not be taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainError {
    /// Unreadable ring or descriptor memory, an out-of-range index, a loop, an indirect
    /// descriptor or a chain longer than the device takes. The head is reported used with
    /// length 0 when it is known.
    Malformed(Option<u16>),
}

/// The device's state of one queue (what the driver programs through the common
/// configuration, plus the device's ring positions).
#[derive(Clone, Copy, Debug, Default)]
pub struct Queue {
    /// Entries (a power of two up to [`MAX_QUEUE_SIZE`]).
    pub size: u16,
    /// The driver enabled it.
    pub enabled: bool,
    /// Descriptor table.
    pub desc: u64,
    /// Available ring ("driver area").
    pub avail: u64,
    /// Used ring ("device area").
    pub used: u64,
    /// MSI-X table entry for its interrupts (0xFFFF: none).
    pub msix_vector: u16,
    next_avail: u16,
    next_used: u16,
}

impl Queue {
    /// A reset queue of `size` entries.
    pub const fn new(size: u16) -> Queue {
        Queue {
            size,
            enabled: false,
            desc: 0,
            avail: 0,
            used: 0,
            msix_vector: super::NO_VECTOR,
            next_avail: 0,
            next_used: 0,
        }
    }

    fn read_u16(mem: &dyn DmaMemory, addr: u64) -> Option<u16> {
        let mut b = [0u8; 2];
        mem.read(addr, &mut b).then(|| u16::from_le_bytes(b))
    }

    /// Takes the next available chain, if the driver made one available.
    pub fn pop(&mut self, mem: &dyn DmaMemory) -> Option<Result<Chain, ChainError>> {
        if !self.enabled || self.size == 0 {
            return None;
        }
        let Some(avail_idx) = Self::read_u16(mem, self.avail.wrapping_add(2)) else {
            return Some(Err(ChainError::Malformed(None)));
        };
        if avail_idx == self.next_avail {
            return None;
        }
        let slot = u64::from(self.next_avail % self.size);
        self.next_avail = self.next_avail.wrapping_add(1);
        let Some(head) = Self::read_u16(mem, self.avail.wrapping_add(4 + 2 * slot)) else {
            return Some(Err(ChainError::Malformed(None)));
        };
        Some(self.walk(mem, head))
    }

    fn walk(&self, mem: &dyn DmaMemory, head: u16) -> Result<Chain, ChainError> {
        let bad = Err(ChainError::Malformed(Some(head)));
        let mut chain = Chain {
            head,
            buffers: [Buffer::default(); MAX_CHAIN],
            count: 0,
        };
        let mut index = head;
        loop {
            if index >= self.size || chain.count >= MAX_CHAIN.min(usize::from(self.size)) {
                return bad;
            }
            let mut d = [0u8; 16];
            if !mem.read(self.desc.wrapping_add(16 * u64::from(index)), &mut d) {
                return bad;
            }
            let field = |at: usize, n: usize| {
                d.get(at..at + n).map_or(0, |b| {
                    b.iter()
                        .rev()
                        .fold(0u64, |acc, byte| acc << 8 | u64::from(*byte))
                })
            };
            let flags = field(12, 2) as u16;
            if flags & DESC_F_INDIRECT != 0 {
                return bad;
            }
            if let Some(slot) = chain.buffers.get_mut(chain.count) {
                *slot = Buffer {
                    addr: field(0, 8),
                    len: field(8, 4) as u32,
                    device_writes: flags & DESC_F_WRITE != 0,
                };
            }
            chain.count += 1;
            if flags & DESC_F_NEXT == 0 {
                return Ok(chain);
            }
            index = field(14, 2) as u16;
        }
    }

    /// Returns chain `head` to the driver with `written` bytes written by the device.
    /// False if the used ring is not writable.
    pub fn push_used(&mut self, mem: &dyn DmaMemory, head: u16, written: u32) -> bool {
        if self.size == 0 {
            return false;
        }
        let slot = u64::from(self.next_used % self.size);
        let mut element = [0u8; 8];
        element[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        element[4..].copy_from_slice(&written.to_le_bytes());
        if !mem.write(self.used.wrapping_add(4 + 8 * slot), &element) {
            return false;
        }
        self.next_used = self.next_used.wrapping_add(1);
        // The element is in place before the index that publishes it.
        mem.write(self.used.wrapping_add(2), &self.next_used.to_le_bytes())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    /// Flat guest memory for device tests.
    pub(crate) struct FlatMemory(pub spin::Mutex<Vec<u8>>);

    impl FlatMemory {
        pub(crate) fn new(len: usize) -> FlatMemory {
            FlatMemory(spin::Mutex::new(vec![0; len]))
        }
        pub(crate) fn put(&self, addr: u64, data: &[u8]) {
            assert!(self.write(addr, data));
        }
        pub(crate) fn get(&self, addr: u64, len: usize) -> Vec<u8> {
            let mut b = vec![0; len];
            assert!(self.read(addr, &mut b));
            b
        }
    }

    impl DmaMemory for FlatMemory {
        fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
            let m = self.0.lock();
            let Some(src) = usize::try_from(addr)
                .ok()
                .and_then(|a| m.get(a..a.checked_add(buf.len())?))
            else {
                return false;
            };
            buf.copy_from_slice(src);
            true
        }
        fn write(&self, addr: u64, data: &[u8]) -> bool {
            let mut m = self.0.lock();
            let Some(dst) = usize::try_from(addr)
                .ok()
                .and_then(|a| m.get_mut(a..a.checked_add(data.len())?))
            else {
                return false;
            };
            dst.copy_from_slice(data);
            true
        }
    }

    /// Writes descriptor `i` of the table at `desc`.
    pub(crate) fn put_desc(
        m: &FlatMemory,
        desc: u64,
        i: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let mut d = Vec::new();
        d.extend_from_slice(&addr.to_le_bytes());
        d.extend_from_slice(&len.to_le_bytes());
        d.extend_from_slice(&flags.to_le_bytes());
        d.extend_from_slice(&next.to_le_bytes());
        m.put(desc + 16 * u64::from(i), &d);
    }

    /// Makes head `head` available as the `n`-th entry (avail index becomes `n + 1`).
    pub(crate) fn offer(m: &FlatMemory, avail: u64, size: u16, n: u16, head: u16) {
        m.put(avail + 4 + 2 * u64::from(n % size), &head.to_le_bytes());
        m.put(avail + 2, &(n + 1).to_le_bytes());
    }

    pub(crate) fn queue() -> Queue {
        Queue {
            enabled: true,
            desc: 0x1000,
            avail: 0x2000,
            used: 0x3000,
            ..Queue::new(8)
        }
    }

    #[test]
    fn takes_a_chain_and_publishes_it_used() {
        let m = FlatMemory::new(0x10000);
        let mut q = queue();
        assert!(q.pop(&m).is_none(), "nothing available");
        put_desc(&m, 0x1000, 3, 0x8000, 16, DESC_F_NEXT, 5);
        put_desc(&m, 0x1000, 5, 0x9000, 512, DESC_F_NEXT | DESC_F_WRITE, 6);
        put_desc(&m, 0x1000, 6, 0xA000, 1, DESC_F_WRITE, 0);
        offer(&m, 0x2000, 8, 0, 3);
        let c = q.pop(&m).unwrap().unwrap();
        assert_eq!(c.head, 3);
        assert_eq!(c.buffers().len(), 3);
        assert_eq!(c.buffers()[1].addr, 0x9000);
        assert!(c.buffers()[1].device_writes && !c.buffers()[0].device_writes);
        assert!(q.pop(&m).is_none(), "taken once");
        assert!(q.push_used(&m, 3, 513));
        assert_eq!(m.get(0x3002, 2), [1, 0]);
        assert_eq!(m.get(0x3004, 8), [3, 0, 0, 0, 1, 2, 0, 0]);
    }

    #[test]
    fn loops_indirect_tables_and_bad_indices_are_malformed() {
        let m = FlatMemory::new(0x10000);
        let mut q = queue();
        // 0 -> 1 -> 0: a loop longer than the queue.
        put_desc(&m, 0x1000, 0, 0x8000, 16, DESC_F_NEXT, 1);
        put_desc(&m, 0x1000, 1, 0x8000, 16, DESC_F_NEXT, 0);
        offer(&m, 0x2000, 8, 0, 0);
        assert_eq!(
            q.pop(&m).unwrap().unwrap_err(),
            ChainError::Malformed(Some(0))
        );
        put_desc(&m, 0x1000, 2, 0x8000, 16, DESC_F_INDIRECT, 0);
        offer(&m, 0x2000, 8, 1, 2);
        assert!(q.pop(&m).unwrap().is_err());
        offer(&m, 0x2000, 8, 2, 200);
        assert!(q.pop(&m).unwrap().is_err(), "head beyond the queue");
        // A ring outside guest memory.
        let mut far = Queue {
            avail: 0xFFFF_0000_0000,
            ..queue()
        };
        assert_eq!(
            far.pop(&m).unwrap().unwrap_err(),
            ChainError::Malformed(None)
        );
        let mut unwritable = Queue {
            used: 0xFFFF_0000_0000,
            ..queue()
        };
        assert!(!unwritable.push_used(&m, 0, 0));
    }
}
