//! virtio-console (Virtual I/O Device (VIRTIO) Version 1.2, §5.3) with one port and no
//! optional features: queue 0 receives (host → guest), queue 1 transmits (guest → host).
//! Linux names the port `hvc0`.
//!
//! What the guest transmits goes into the TD's console ring, beside the UART's output.
//! Input typed through the API waits in a bounded [`ConsoleInput`] until the guest has
//! receive buffers for it; the host calls [`super::VirtioPci::run_queue`] on
//! [`RX_QUEUE`] after adding input, and the guest's own notification on that queue (new
//! buffers) delivers what is still waiting.
//!
//! One transmit chain is copied up to [`TX_CHAIN_MAX`] bytes, over all its buffers (Linux's
//! `hvc` writes at most a page at a time); the rest is dropped, so a notification costs its
//! runner at most a queue's worth of that (4 MiB).

use alloc::collections::VecDeque;
use alloc::sync::Arc;

use super::super::AccessSize;
use super::super::fw_cfg::DmaMemory;
use super::VirtioBackend;
use super::queue::{Buffer, ChainError, Queue};
use crate::host::td::ConsoleRing;

/// The virtio device ID of a console.
pub const DEVICE_ID: u16 = 3;
/// The receive queue of port 0.
pub const RX_QUEUE: usize = 0;
/// The transmit queue of port 0.
const TX_QUEUE: usize = 1;
/// Bytes of input held for the guest; input beyond it is refused.
pub const INPUT_BYTES: usize = 4096;
/// Bytes taken from one transmit chain.
pub const TX_CHAIN_MAX: u32 = 16 << 10;

/// Input for the guest, shared by the host (which adds) and the device (which delivers).
#[derive(Default)]
pub struct ConsoleInput(spin::Mutex<VecDeque<u8>>);

impl ConsoleInput {
    /// Queues `bytes`; returns how many fit (at most [`INPUT_BYTES`] wait at once).
    pub fn push(&self, bytes: &[u8]) -> usize {
        let mut q = self.0.lock();
        let n = bytes.len().min(INPUT_BYTES.saturating_sub(q.len()));
        q.extend(bytes.iter().take(n));
        n
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.0.lock().len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The console device: output to `output`, input from `input`.
pub struct VirtioConsole {
    output: Arc<ConsoleRing>,
    input: Arc<ConsoleInput>,
}

impl VirtioConsole {
    /// A console writing to `output` and reading `input`.
    pub fn new(output: Arc<ConsoleRing>, input: Arc<ConsoleInput>) -> VirtioConsole {
        VirtioConsole { output, input }
    }

    /// Copies the device-readable buffers of a transmit chain to the console, at most
    /// [`TX_CHAIN_MAX`] bytes in all.
    fn transmit(&self, buffers: &[Buffer], mem: &dyn DmaMemory) {
        let mut chunk = [0u8; 512];
        let mut budget = u64::from(TX_CHAIN_MAX);
        for b in buffers.iter().filter(|b| !b.device_writes) {
            let len = u64::from(b.len).min(budget);
            budget -= len;
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(chunk.len() as u64) as usize;
                let Some(part) = chunk.get_mut(..n) else {
                    return;
                };
                if !mem.read(b.addr + done, part) {
                    return;
                }
                self.output.push(part);
                done += n as u64;
            }
        }
    }

    /// Fills the device-writable buffers of a receive chain from the waiting input; returns
    /// the bytes written.
    fn receive(&self, buffers: &[Buffer], mem: &dyn DmaMemory) -> u32 {
        let mut input = self.input.0.lock();
        let mut written = 0u32;
        for b in buffers.iter().filter(|b| b.device_writes) {
            let n = (b.len as usize).min(input.len());
            if n == 0 {
                break;
            }
            let bytes: alloc::vec::Vec<u8> = input.iter().take(n).copied().collect();
            if !mem.write(b.addr, &bytes) {
                break;
            }
            input.drain(..n);
            written = written.saturating_add(n as u32);
        }
        written
    }
}

impl VirtioBackend for VirtioConsole {
    fn device_id(&self) -> u16 {
        DEVICE_ID
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_count(&self) -> usize {
        2
    }

    fn read_config(&self, _offset: u64, _size: AccessSize) -> u64 {
        // Every field of the configuration (§5.3.4) belongs to a feature not offered.
        0
    }

    fn process(&mut self, index: usize, queue: &mut Queue, mem: &dyn DmaMemory) -> bool {
        let mut used = false;
        // At most one pass over the ring per call.
        for _ in 0..queue.size {
            if index == RX_QUEUE && self.input.is_empty() {
                break;
            }
            let (head, written) = match queue.pop(mem) {
                None => break,
                Some(Ok(chain)) if index == TX_QUEUE => {
                    self.transmit(chain.buffers(), mem);
                    (chain.head, 0)
                }
                Some(Ok(chain)) => (chain.head, self.receive(chain.buffers(), mem)),
                Some(Err(ChainError::Malformed(Some(head)))) => (head, 0),
                Some(Err(ChainError::Malformed(None))) => break,
            };
            used |= queue.push_used(mem, head, written);
        }
        used
    }

    fn reset(&mut self) {}
}
