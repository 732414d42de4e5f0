//! Transmit buffers for a NIC driver that does not copy (UEFI SNP).
//!
//! SNP's `Transmit` keeps using the caller's buffer until `GetStatus` hands its address back, so
//! a frame must be copied into a buffer that stays untouched until then. The ring owns a few
//! fixed buffers, tracks which are in flight and matches recycled addresses back to buffers.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

/// Why a frame could not be staged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageError {
    /// Every buffer is still owned by the driver.
    AllInFlight,
    /// The frame is longer than a buffer.
    TooLong,
}

/// A fixed set of transmit buffers.
#[derive(Debug)]
pub struct TxRing {
    buffers: Vec<Box<[u8]>>,
    in_flight: Vec<bool>,
    next: usize,
}

impl TxRing {
    /// `count` buffers of `buffer_len` bytes each.
    pub fn new(count: usize, buffer_len: usize) -> Self {
        Self {
            buffers: (0..count)
                .map(|_| vec![0u8; buffer_len].into_boxed_slice())
                .collect(),
            in_flight: vec![false; count],
            next: 0,
        }
    }

    /// Copies `frame` into a free buffer and marks it in flight. Returns the buffer index and
    /// the filled part of the buffer, which is what goes to the driver.
    pub fn stage(&mut self, frame: &[u8]) -> Result<(usize, &mut [u8]), StageError> {
        let count = self.buffers.len();
        let index = (0..count)
            .map(|offset| (self.next + offset) % count)
            .find(|&index| !self.in_flight.get(index).copied().unwrap_or(true))
            .ok_or(StageError::AllInFlight)?;
        let buffer = self.buffers.get_mut(index).ok_or(StageError::AllInFlight)?;
        let filled = buffer.get_mut(..frame.len()).ok_or(StageError::TooLong)?;
        filled.copy_from_slice(frame);
        if let Some(flag) = self.in_flight.get_mut(index) {
            *flag = true;
        }
        self.next = (index + 1) % count;
        Ok((index, filled))
    }

    /// Frees a staged buffer the driver refused to take.
    pub fn cancel(&mut self, index: usize) {
        if let Some(flag) = self.in_flight.get_mut(index) {
            *flag = false;
        }
    }

    /// Frees the buffer starting at `address` (as returned by the driver). Returns false for
    /// an address that is not one of ours or not in flight.
    pub fn recycle(&mut self, address: *const u8) -> bool {
        let found = self
            .buffers
            .iter()
            .position(|buffer| core::ptr::eq(buffer.as_ptr(), address));
        match found.and_then(|index| self.in_flight.get_mut(index)) {
            Some(flag) if *flag => {
                *flag = false;
                true
            }
            _ => false,
        }
    }

    /// How many buffers the driver currently owns.
    pub fn in_flight(&self) -> usize {
        self.in_flight.iter().filter(|&&flag| flag).count()
    }

    /// Total number of buffers.
    pub fn capacity(&self) -> usize {
        self.buffers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_until_full_then_recycles_by_address() {
        let mut ring = TxRing::new(2, 64);
        let (first, data) = ring.stage(b"hello").expect("free buffer");
        assert_eq!(data, b"hello");
        let first_addr = data.as_ptr();
        let (second, _) = ring.stage(b"world").expect("free buffer");
        assert_ne!(first, second);
        assert_eq!(
            ring.stage(b"x").map(|(i, _)| i),
            Err(StageError::AllInFlight)
        );
        assert_eq!(ring.in_flight(), 2);
        assert!(ring.recycle(first_addr));
        assert!(!ring.recycle(first_addr), "recycling twice is refused");
        assert_eq!(ring.in_flight(), 1);
        let (again, _) = ring.stage(b"again").expect("recycled buffer");
        assert_eq!(again, first);
    }

    #[test]
    fn foreign_addresses_are_not_recycled() {
        let mut ring = TxRing::new(1, 16);
        let other = [0u8; 4];
        assert!(!ring.recycle(other.as_ptr()));
        assert!(!ring.recycle(core::ptr::null()));
    }

    #[test]
    fn oversized_frames_are_refused_without_taking_a_buffer() {
        let mut ring = TxRing::new(1, 4);
        assert_eq!(
            ring.stage(b"too long").map(|(i, _)| i),
            Err(StageError::TooLong)
        );
        assert_eq!(ring.in_flight(), 0);
        assert!(ring.stage(b"ok").is_ok());
    }

    #[test]
    fn cancel_frees_a_buffer() {
        let mut ring = TxRing::new(1, 16);
        let (index, _) = ring.stage(b"a").expect("free");
        ring.cancel(index);
        assert_eq!(ring.in_flight(), 0);
        assert_eq!(ring.capacity(), 1);
    }

    #[test]
    fn an_empty_ring_never_panics() {
        let mut ring = TxRing::new(0, 16);
        assert_eq!(
            ring.stage(b"a").map(|(i, _)| i),
            Err(StageError::AllInFlight)
        );
    }
}
