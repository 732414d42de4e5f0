//! smoltcp glue for the appliance: a [`Nic`] seam, a TCP server with a pool of listening
//! sockets ([`NetStack`]) that drives connections through a sans-IO [`Service`], IPv4
//! configuration (DHCPv4 or static) and `embedded-io` adapters over smoltcp TCP sockets.
//!
//! The crate knows nothing about UEFI: the appliance implements [`Nic`] over the Simple
//! Network Protocol; host tests implement it over in-memory queues and talk to the server
//! through a second smoltcp interface, so every test exchanges real TCP segments.
//!
//! Module map (modelled on smoltcp's own layout):
//! - [`nic`]: the [`Nic`] trait and [`NicDevice`], a `smoltcp::phy::Device` over any `Nic`;
//! - [`config`]: [`ServerConfig`], [`Ipv4Config`] and the fixed timeouts;
//! - [`service`]: the [`Service`] trait an application implements and [`ConnState`];
//! - [`server`]: [`NetStack`], the listener pool and connection table;
//! - [`addr`]: applies static or DHCP-provided IPv4 settings to the interface;
//! - [`io`]: [`TcpStream`], `embedded_io::{Read, Write}` over a smoltcp TCP socket;
//! - [`stats`]: [`NetStats`] counters.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod addr;
pub mod config;
pub mod io;
pub mod nic;
pub mod server;
pub mod service;
pub mod stats;

#[cfg(test)]
mod testkit;

pub use config::{Ipv4Config, ServerConfig};
pub use io::{TcpIoError, TcpStream};
pub use nic::{Nic, NicDevice};
pub use server::NetStack;
pub use service::{ConnState, Service};
pub use stats::NetStats;

/// The smoltcp version this crate is built against, re-exported so integrators use the
/// same types (for example `smoltcp::socket::tcp::Socket` with [`TcpStream`]).
pub use smoltcp;
