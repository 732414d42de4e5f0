//! [`NetStats`]: counters a [`NetStack`](crate::NetStack) keeps for diagnostics (exposed by
//! the appliance, e.g. on a status endpoint). All counters only grow.

/// Counters of frames, bytes and connections since the stack was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Ethernet frames received and handed to smoltcp.
    pub frames_received: u64,
    /// Ethernet frames the NIC accepted for transmission.
    pub frames_transmitted: u64,
    /// Frames dropped because the NIC had no room ([`Nic::transmit`](crate::Nic::transmit)
    /// returned `false`); TCP retransmits them.
    pub transmit_dropped: u64,
    /// Received frames dropped because the NIC reported a length beyond the frame buffer.
    pub receive_errors: u64,
    /// Connections that completed the handshake and were handed to the service.
    pub connections_accepted: u64,
    /// Accepted connections that ended, for any reason (includes the two counters below).
    pub connections_closed: u64,
    /// Accepted connections aborted by the idle or close deadline.
    pub connections_timed_out: u64,
    /// Half-open connections (handshake never completed) aborted by the handshake deadline;
    /// not counted as accepted or closed.
    pub handshakes_timed_out: u64,
    /// Connections aborted because the service returned [`ConnState::Abort`](crate::ConnState::Abort)
    /// (or its state had an unexpected type).
    pub connections_aborted: u64,
    /// Connections reset to make room for new ones when every socket was in use (see
    /// [`NetStack`](crate::NetStack), "Shedding"); accepted ones also count as closed.
    pub connections_shed: u64,
    /// Payload bytes received and given to the service.
    pub bytes_received: u64,
    /// Payload bytes taken from the service into TCP send buffers.
    pub bytes_sent: u64,
}
