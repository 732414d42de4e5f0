//! Reporting when the API starts listening (once), and address changes after that.

use core::fmt;

/// The API became reachable: the interface has an address and the listeners are open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listening {
    /// The interface address.
    pub address: [u8; 4],
    /// Its prefix length.
    pub prefix_len: u8,
    /// The API port.
    pub port: u16,
    /// Milliseconds from the entry point.
    pub after_ms: u64,
}

impl fmt::Display for Listening {
    /// `listening on port 8080 after 51 ms at 10.0.2.15/24` (the e2e tests parse this).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d] = self.address;
        write!(
            f,
            "listening on port {} after {} ms at {a}.{b}.{c}.{d}/{}",
            self.port, self.after_ms, self.prefix_len
        )
    }
}

/// A change worth one log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressEvent {
    /// The first address: the API is listening.
    FirstListening(Listening),
    /// The address changed later (DHCP gave a different lease).
    Changed {
        /// The new address.
        address: [u8; 4],
        /// The new prefix length.
        prefix_len: u8,
    },
    /// The address was lost (lease expired); the stack is back to configuring.
    Lost,
}

/// Watches the interface address and reports changes.
#[derive(Debug, Clone)]
pub struct AddressWatch {
    port: u16,
    current: Option<([u8; 4], u8)>,
    ever_listening: bool,
}

impl AddressWatch {
    /// Watches for the API on `port`.
    pub fn new(port: u16) -> Self {
        Self {
            port,
            current: None,
            ever_listening: false,
        }
    }

    /// Whether the API has been listening at some point.
    pub fn ever_listening(&self) -> bool {
        self.ever_listening
    }

    /// Feeds the current address; returns an event when it differs from the last one.
    pub fn observe(&mut self, address: Option<([u8; 4], u8)>, now_ms: u64) -> Option<AddressEvent> {
        if address == self.current {
            return None;
        }
        self.current = address;
        Some(match address {
            None => AddressEvent::Lost,
            Some((address, prefix_len)) if !self.ever_listening => {
                self.ever_listening = true;
                AddressEvent::FirstListening(Listening {
                    address,
                    prefix_len,
                    port: self.port,
                    after_ms: now_ms,
                })
            }
            Some((address, prefix_len)) => AddressEvent::Changed {
                address,
                prefix_len,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    extern crate alloc;
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn first_address_reports_listening_once() {
        let mut watch = AddressWatch::new(8080);
        assert_eq!(watch.observe(None, 3), None);
        let Some(AddressEvent::FirstListening(listening)) =
            watch.observe(Some(([10, 0, 2, 15], 24)), 51)
        else {
            panic!("expected the first listening event");
        };
        assert_eq!(
            listening.to_string(),
            "listening on port 8080 after 51 ms at 10.0.2.15/24"
        );
        assert_eq!(watch.observe(Some(([10, 0, 2, 15], 24)), 60), None);
        assert!(watch.ever_listening());
    }

    #[test]
    fn later_changes_and_losses_are_reported_differently() {
        let mut watch = AddressWatch::new(8080);
        watch.observe(Some(([10, 0, 2, 15], 24)), 1);
        assert_eq!(watch.observe(None, 2), Some(AddressEvent::Lost));
        assert_eq!(
            watch.observe(Some(([10, 0, 2, 16], 24)), 3),
            Some(AddressEvent::Changed {
                address: [10, 0, 2, 16],
                prefix_len: 24
            })
        );
    }
}
