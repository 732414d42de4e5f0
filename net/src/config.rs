//! Server configuration: how the interface gets its IPv4 address, which port to serve, how
//! many sockets listen, per-connection buffer sizes and timeouts.

/// How the interface gets its IPv4 address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ipv4Config {
    /// Ask a DHCPv4 server (QEMU user networking runs one); the address, prefix and default
    /// gateway follow the lease and are removed when it is lost.
    #[default]
    Dhcp,
    /// A fixed address.
    Static {
        /// The interface address.
        address: [u8; 4],
        /// Network prefix length, 0..=32 (larger values are treated as 32).
        prefix_len: u8,
        /// Default gateway, if any.
        gateway: Option<[u8; 4]>,
    },
}

/// How long a half-open connection (SYN received, handshake not completed) may hold a
/// socket before it is aborted (capped by [`ServerConfig::idle_timeout_ms`]).
pub const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;

/// How long a closing connection may go without progress (no byte accepted into or
/// acknowledged out of the send buffer, FIN not acknowledged) before it is aborted (capped
/// by [`ServerConfig::idle_timeout_ms`]).
pub const CLOSE_TIMEOUT_MS: u64 = 5_000;

/// A connection is shed to make room only after waiting this long (see
/// [`NetStack`](crate::NetStack), "Shedding"), so a client is never reset during its own
/// handshake or before it could send its first request.
pub const SHED_GRACE_MS: u64 = 1_000;

/// Largest accepted [`ServerConfig::listeners`]; larger values are lowered.
pub const MAX_LISTENERS: usize = 256;

/// Sockets kept listening on [`ServerConfig::second_port`] when there is one.
pub const SECOND_PORT_LISTENERS: usize = 2;

/// Largest accepted [`ServerConfig::max_connections`]; larger values are lowered.
pub const MAX_CONNECTIONS: usize = 4096;

/// Smallest per-socket buffer accepted; smaller values are raised to it.
pub const MIN_SOCKET_BUFFER: usize = 1024;

/// Largest per-socket buffer accepted (smoltcp's limit is 1 GiB); larger values are lowered.
pub const MAX_SOCKET_BUFFER: usize = 16 << 20;

/// Configuration of a [`NetStack`](crate::NetStack).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// IPv4 addressing (default DHCP).
    pub ipv4: Ipv4Config,
    /// TCP port served (default 8080).
    pub port: u16,
    /// A second port served by the same service, with [`SECOND_PORT_LISTENERS`] listeners of
    /// its own (default none). [`Service::open_on`](crate::Service::open_on) tells the
    /// service which port a connection came in on; the connection limit is shared.
    pub second_port: Option<u16>,
    /// Sockets kept listening at all times, i.e. how many clients may connect at once
    /// without waiting for the next poll (default 8).
    pub listeners: usize,
    /// Connections (handshaking, open or closing) held at once while all `listeners` keep
    /// listening (default 256): a connection that stays open (a long poll) costs one of
    /// these, not a listener. Beyond it, waiting connections are shed to keep the listeners
    /// open, and when none can be shed the listeners themselves are taken, up to
    /// `listeners + max_connections` connections.
    pub max_connections: usize,
    /// A connection that moves no byte either way for this long is aborted (default 30 s).
    pub idle_timeout_ms: u64,
    /// Receive buffer per socket in bytes (default 64 KiB). It bounds the TCP window.
    pub rx_buffer: usize,
    /// Transmit buffer per socket in bytes (default 64 KiB). Bigger buffers mean fewer
    /// polls per response at the cost of memory: every socket owns both buffers.
    pub tx_buffer: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            ipv4: Ipv4Config::Dhcp,
            port: 8080,
            second_port: None,
            listeners: 8,
            max_connections: 256,
            idle_timeout_ms: 30_000,
            rx_buffer: 64 * 1024,
            tx_buffer: 64 * 1024,
        }
    }
}

impl ServerConfig {
    /// Upper bound on TCP sockets (listening plus connected): the listeners of both ports
    /// plus `max_connections`. When every connection slot is taken, waiting connections are shed
    /// to keep the listeners open (see [`NetStack`](crate::NetStack)); when none is waiting,
    /// new connection attempts are refused with a RST until one closes.
    pub fn max_sockets(&self) -> usize {
        self.total_listeners().saturating_add(self.max_connections)
    }

    /// Listening sockets on both ports.
    pub fn total_listeners(&self) -> usize {
        let second = if self.second_port.is_some() {
            SECOND_PORT_LISTENERS
        } else {
            0
        };
        self.listeners.saturating_add(second)
    }

    /// How many sockets listen on `port` at all times.
    pub fn listeners_on(&self, port: u16) -> usize {
        if port == self.port {
            self.listeners
        } else if Some(port) == self.second_port {
            SECOND_PORT_LISTENERS
        } else {
            0
        }
    }

    /// Memory the TCP socket buffers can take at most: `max_sockets * (rx + tx)`.
    pub fn max_buffer_memory(&self) -> usize {
        let sane = self.sanitized();
        sane.max_sockets()
            .saturating_mul(sane.rx_buffer.saturating_add(sane.tx_buffer))
    }

    /// The configuration [`NetStack::new`](crate::NetStack::new) actually uses: buffers
    /// clamped to [`MIN_SOCKET_BUFFER`]..=[`MAX_SOCKET_BUFFER`], `listeners` to
    /// [`MAX_LISTENERS`], `max_connections` to 1..=[`MAX_CONNECTIONS`], `prefix_len` to 32
    /// and `idle_timeout_ms` to at least 1.
    pub fn sanitized(&self) -> Self {
        let mut sane = *self;
        sane.rx_buffer = sane.rx_buffer.clamp(MIN_SOCKET_BUFFER, MAX_SOCKET_BUFFER);
        sane.tx_buffer = sane.tx_buffer.clamp(MIN_SOCKET_BUFFER, MAX_SOCKET_BUFFER);
        sane.idle_timeout_ms = sane.idle_timeout_ms.max(1);
        sane.listeners = sane.listeners.min(MAX_LISTENERS);
        sane.max_connections = sane.max_connections.clamp(1, MAX_CONNECTIONS);
        if let Ipv4Config::Static { prefix_len, .. } = &mut sane.ipv4 {
            *prefix_len = (*prefix_len).min(32);
        }
        sane
    }

    /// Handshake deadline actually applied: [`HANDSHAKE_TIMEOUT_MS`] capped by the idle timeout.
    pub fn handshake_timeout_ms(&self) -> u64 {
        HANDSHAKE_TIMEOUT_MS.min(self.idle_timeout_ms)
    }

    /// Close deadline actually applied: [`CLOSE_TIMEOUT_MS`] capped by the idle timeout.
    pub fn close_timeout_ms(&self) -> u64 {
        CLOSE_TIMEOUT_MS.min(self.idle_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_appliance_contract() {
        let config = ServerConfig::default();
        assert_eq!(config.ipv4, Ipv4Config::Dhcp);
        assert_eq!(config.port, 8080);
        assert_eq!(config.listeners, 8);
        assert_eq!(config.max_connections, 256);
        assert_eq!(config.max_sockets(), 264);
        assert_eq!(config.max_buffer_memory(), 264 * 128 * 1024);
        assert_eq!(config.sanitized(), config);
    }

    #[test]
    fn sanitized_clamps_out_of_range_values() {
        let config = ServerConfig {
            ipv4: Ipv4Config::Static {
                address: [10, 0, 0, 1],
                prefix_len: 40,
                gateway: None,
            },
            idle_timeout_ms: 0,
            rx_buffer: 0,
            tx_buffer: usize::MAX,
            listeners: usize::MAX,
            max_connections: usize::MAX,
            ..ServerConfig::default()
        };
        let sane = config.sanitized();
        assert_eq!(sane.rx_buffer, MIN_SOCKET_BUFFER);
        assert_eq!(sane.tx_buffer, MAX_SOCKET_BUFFER);
        assert_eq!(sane.idle_timeout_ms, 1);
        assert_eq!(sane.max_sockets(), MAX_LISTENERS + MAX_CONNECTIONS);
        let none = ServerConfig {
            max_connections: 0,
            ..ServerConfig::default()
        };
        assert_eq!(none.sanitized().max_connections, 1);
        assert!(matches!(
            sane.ipv4,
            Ipv4Config::Static { prefix_len: 32, .. }
        ));
        assert_eq!(sane.close_timeout_ms(), 1);
        assert_eq!(sane.handshake_timeout_ms(), 1);
    }
}
