//! The NIC: UEFI Simple Network Protocol (SNP) behind the [`net::Nic`] seam.
//!
//! Facts this relies on (measured against Debian's OVMF 2022.11 under QEMU; edk2 `MdeModulePkg/Universal/Network/SnpDxe`): several handles carry SNP (PXE adds
//! IPv4/IPv6 children), the right one has no IPv4/IPv6 node in its device path; it must be
//! opened exclusively, or the firmware's managed-network layer keeps polling it and steals
//! frames; after that exclusive open SNP is stopped, so we Start and Initialize it; the
//! receive-filter status it reports afterwards is unreliable and is not checked; Transmit does
//! not copy, so frames go out of a [`TxRing`] whose buffers come back through GetStatus.

use alloc::vec::Vec;

use appliance::tx_ring::{StageError, TxRing};
use log::{debug, info, warn};
use uefi::boot::{self, OpenProtocolAttributes, OpenProtocolParams, ScopedProtocol};
use uefi::proto::device_path::{DevicePath, DeviceSubType, DeviceType};
use uefi::proto::network::snp::{NetworkState, ReceiveFlags, SimpleNetwork};
use uefi::{Handle, Status};

/// Transmit buffers kept in flight at most.
const TX_BUFFERS: usize = 32;
/// Ethernet header length, used when the driver reports none.
const ETHERNET_HEADER: usize = 14;

/// Why no NIC could be brought up.
#[derive(Debug)]
pub enum NicError {
    /// No handle carries SNP.
    NoNic,
    /// A firmware call failed.
    Firmware(&'static str, Status),
}

impl core::fmt::Display for NicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoNic => f.write_str("no network card with the Simple Network Protocol"),
            Self::Firmware(call, status) => write!(f, "{call} failed: {status:?}"),
        }
    }
}

/// Counters of rare driver errors (each kind is logged once).
#[derive(Debug, Default, Clone, Copy)]
pub struct SnpErrors {
    /// Receive calls that failed with something other than "no frame".
    pub receive: u64,
    /// Transmit calls the driver refused.
    pub transmit: u64,
    /// Frames dropped because every transmit buffer was in flight.
    pub tx_ring_full: u64,
    /// Recycled addresses that were not ours.
    pub foreign_recycle: u64,
}

/// The NIC, opened exclusively and initialised.
pub struct SnpNic {
    snp: ScopedProtocol<SimpleNetwork>,
    mac: [u8; 6],
    frame_len: usize,
    tx: TxRing,
    errors: SnpErrors,
}

/// Whether `handle`'s device path has an IPv4 or IPv6 node (a PXE child, not the card).
fn is_ip_child(handle: Handle) -> Option<bool> {
    // SAFETY: GetProtocol does not take ownership of the device path; it is only read within
    // this function, while no driver is being connected or disconnected.
    let path = unsafe {
        boot::open_protocol::<DevicePath>(
            OpenProtocolParams {
                handle,
                agent: boot::image_handle(),
                controller: None,
            },
            OpenProtocolAttributes::GetProtocol,
        )
    }
    .ok()?;
    Some(path.node_iter().any(|node| {
        node.device_type() == DeviceType::MESSAGING
            && (node.sub_type() == DeviceSubType::MESSAGING_IPV4
                || node.sub_type() == DeviceSubType::MESSAGING_IPV6)
    }))
}

/// Connects drivers to every handle, recursively (the Boot Manager's "connect all").
/// Returns how many handles accepted a connection.
fn connect_all_controllers() -> usize {
    let Ok(handles) = boot::locate_handle_buffer(boot::SearchType::AllHandles) else {
        return 0;
    };
    handles
        .iter()
        .filter(|&&handle| boot::connect_controller(handle, &[], None, true).is_ok())
        .count()
}

impl SnpNic {
    /// Finds the first card, opens it exclusively, starts and initialises it and enables
    /// unicast and broadcast reception. Firmware that boots from a disk with a boot order
    /// (OVMF with `bootindex`, "fast boot" on real machines) may not have connected a driver
    /// to the card at all: then every controller is connected first.
    pub fn open_first() -> Result<Self, NicError> {
        let handles = match boot::find_handles::<SimpleNetwork>() {
            Ok(handles) if !handles.is_empty() => handles,
            _ => {
                let connected = connect_all_controllers();
                info!("no NIC driver was connected; connected {connected} controllers");
                boot::find_handles::<SimpleNetwork>().map_err(|_| NicError::NoNic)?
            }
        };
        let candidates: Vec<(Handle, Option<bool>)> =
            handles.iter().map(|&h| (h, is_ip_child(h))).collect();
        debug!("{} SNP handle(s)", candidates.len());
        let handle = candidates
            .iter()
            .find(|(_, ip_child)| *ip_child == Some(false))
            .or_else(|| candidates.iter().find(|(_, ip_child)| ip_child.is_none()))
            .map(|(handle, _)| *handle)
            .ok_or(NicError::NoNic)?;
        let mut snp = boot::open_protocol_exclusive::<SimpleNetwork>(handle)
            .map_err(|e| NicError::Firmware("OpenProtocol(SNP, EXCLUSIVE)", e.status()))?;

        if snp.mode().state == NetworkState::STOPPED {
            snp.start()
                .map_err(|e| NicError::Firmware("SNP.Start", e.status()))?;
        }
        if snp.mode().state != NetworkState::INITIALIZED {
            snp.initialize(0, 0)
                .map_err(|e| NicError::Firmware("SNP.Initialize", e.status()))?;
        }
        let supported = ReceiveFlags::from_bits_truncate(snp.mode().receive_filter_mask);
        let wanted = (ReceiveFlags::UNICAST | ReceiveFlags::BROADCAST) & supported;
        if let Err(e) = snp.receive_filters(wanted, ReceiveFlags::empty(), false, None) {
            // Reported filter status is unreliable across drivers; carry on regardless.
            warn!("SNP.ReceiveFilters returned {:?}; continuing", e.status());
        }
        let mode = snp.mode();
        let mut mac = [0u8; 6];
        if let Some(bytes) = mode.current_address.0.get(..6) {
            mac.copy_from_slice(bytes);
        }
        let header = usize::try_from(mode.media_header_size)
            .ok()
            .filter(|&len| len > 0)
            .unwrap_or(ETHERNET_HEADER);
        let frame_len = header + usize::try_from(mode.max_packet_size).unwrap_or(1500);
        info!(
            "NIC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, frames up to {} bytes, receive filters {:#x} (of {:#x})",
            mac[0],
            mac[1],
            mac[2],
            mac[3],
            mac[4],
            mac[5],
            frame_len,
            mode.receive_filter_setting,
            mode.receive_filter_mask
        );
        Ok(Self {
            snp,
            mac,
            frame_len,
            tx: TxRing::new(TX_BUFFERS, frame_len),
            errors: SnpErrors::default(),
        })
    }

    /// Error counters.
    pub fn errors(&self) -> SnpErrors {
        self.errors
    }

    /// Takes back every transmit buffer the driver has finished with.
    fn recycle_tx(&mut self) {
        for _ in 0..=self.tx.capacity() {
            match self.snp.get_recycled_transmit_buffer_status() {
                Ok(Some(address)) => {
                    if !self.tx.recycle(address.as_ptr().cast_const()) {
                        if self.errors.foreign_recycle == 0 {
                            warn!("SNP recycled a transmit buffer that is not ours");
                        }
                        self.errors.foreign_recycle += 1;
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
}

impl net::Nic for SnpNic {
    fn mac_address(&self) -> [u8; 6] {
        self.mac
    }

    fn max_frame_len(&self) -> usize {
        self.frame_len
    }

    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        match self.snp.receive(buf, None, None, None, None) {
            Ok(len) => Some(len),
            Err(e) if e.status() == Status::NOT_READY => None,
            // The driver has dropped the frame; report it as oversized.
            Err(e) if e.status() == Status::BUFFER_TOO_SMALL => Some(buf.len().saturating_add(1)),
            Err(e) => {
                if self.errors.receive == 0 {
                    warn!("SNP.Receive failed: {:?} (logged once)", e.status());
                }
                self.errors.receive += 1;
                None
            }
        }
    }

    fn transmit(&mut self, frame: &[u8]) -> bool {
        if self.tx.in_flight() > 0 {
            self.recycle_tx();
        }
        let (index, staged) = match self.tx.stage(frame) {
            Ok(staged) => staged,
            Err(StageError::AllInFlight) => {
                self.errors.tx_ring_full += 1;
                return false;
            }
            Err(StageError::TooLong) => return false,
        };
        match self.snp.transmit(0, staged, None, None, None) {
            Ok(()) => true,
            Err(e) => {
                self.tx.cancel(index);
                if e.status() != Status::NOT_READY && self.errors.transmit == 0 {
                    warn!("SNP.Transmit failed: {:?} (logged once)", e.status());
                }
                self.errors.transmit += 1;
                false
            }
        }
    }
}
