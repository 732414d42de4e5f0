//! IPv4 addressing of the interface: applies static settings or those of a DHCPv4 lease
//! (smoltcp's `dhcpv4` socket) to a smoltcp `Interface`, and logs each change once.

use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::dhcpv4;
use smoltcp::wire::{IpAddress, IpCidr, Ipv4Address, Ipv4Cidr};

use crate::config::Ipv4Config;

/// IPv4 settings of the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Settings {
    /// Interface address.
    pub address: [u8; 4],
    /// Network prefix length (0..=32).
    pub prefix_len: u8,
    /// Default gateway, if any.
    pub gateway: Option<[u8; 4]>,
}

impl Ipv4Settings {
    /// Settings for [`Ipv4Config::Static`]; `None` for [`Ipv4Config::Dhcp`].
    pub fn from_static(config: &Ipv4Config) -> Option<Self> {
        match *config {
            Ipv4Config::Dhcp => None,
            Ipv4Config::Static {
                address,
                prefix_len,
                gateway,
            } => Some(Self {
                address,
                prefix_len: prefix_len.min(32),
                gateway,
            }),
        }
    }

    fn from_dhcp(config: &dhcpv4::Config<'_>) -> Self {
        Self {
            address: config.address.address().octets(),
            prefix_len: config.address.prefix_len(),
            gateway: config.router.map(|router| router.octets()),
        }
    }
}

/// Reads the interface's current IPv4 settings (first IPv4 address and default route).
pub fn current(iface: &Interface) -> Option<Ipv4Settings> {
    // The wildcard arms matter only if another crate enables smoltcp's `proto-ipv6`.
    let cidr = iface.ip_addrs().iter().find_map(|cidr| match cidr {
        IpCidr::Ipv4(cidr) => Some(*cidr),
        #[allow(unreachable_patterns)]
        _ => None,
    })?;
    let gateway =
        iface
            .routes()
            .get_default_ipv4_route()
            .and_then(|route| match route.via_router {
                IpAddress::Ipv4(router) => Some(router.octets()),
                #[allow(unreachable_patterns)]
                _ => None,
            });
    Some(Ipv4Settings {
        address: cidr.address().octets(),
        prefix_len: cidr.prefix_len(),
        gateway,
    })
}

/// Replaces the interface's IPv4 address and default route with `settings` (`None`
/// removes both). Logs at info level when the settings change; returns whether they did.
pub fn apply(iface: &mut Interface, settings: Option<Ipv4Settings>, source: &str) -> bool {
    if current(iface) == settings {
        return false;
    }
    iface.update_ip_addrs(|addrs| {
        addrs.clear();
        if let Some(settings) = settings {
            let cidr = Ipv4Cidr::new(
                Ipv4Address::from(settings.address),
                settings.prefix_len.min(32),
            );
            // Cannot fail: the list was just emptied and holds at least one address.
            let _ = addrs.push(IpCidr::Ipv4(cidr));
        }
    });
    let routes = iface.routes_mut();
    routes.remove_default_ipv4_route();
    if let Some(gateway) = settings.and_then(|settings| settings.gateway) {
        // Cannot fail: the only IPv4 default route was just removed.
        let _ = routes.add_default_ipv4_route(Ipv4Address::from(gateway));
    }
    match settings {
        Some(Ipv4Settings {
            address: [a, b, c, d],
            prefix_len,
            gateway,
        }) => match gateway {
            Some([w, x, y, z]) => log::info!(
                "net: IPv4 {a}.{b}.{c}.{d}/{prefix_len} gateway {w}.{x}.{y}.{z} ({source})"
            ),
            None => log::info!("net: IPv4 {a}.{b}.{c}.{d}/{prefix_len}, no gateway ({source})"),
        },
        None => log::info!("net: IPv4 address removed ({source})"),
    }
    true
}

/// A DHCPv4 client socket with smoltcp's defaults (discover retried every 10 s, lease
/// renewed at T1, rebinding at T2, deconfigured on expiry or NAK).
pub fn dhcp_socket() -> dhcpv4::Socket<'static> {
    dhcpv4::Socket::new()
}

/// Applies a pending event of the DHCP socket `handle` (new lease, changed lease, lease
/// lost) to the interface. Returns whether the interface settings changed.
pub fn process_dhcp(
    iface: &mut Interface,
    sockets: &mut SocketSet<'_>,
    handle: SocketHandle,
) -> bool {
    let settings = match sockets.get_mut::<dhcpv4::Socket>(handle).poll() {
        None => return false,
        Some(dhcpv4::Event::Configured(config)) => Some(Ipv4Settings::from_dhcp(&config)),
        Some(dhcpv4::Event::Deconfigured) => None,
    };
    apply(iface, settings, "dhcp")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nic::NicDevice;
    use crate::testkit::QueueNic;
    use smoltcp::iface::Config;
    use smoltcp::time::Instant;
    use smoltcp::wire::{EthernetAddress, HardwareAddress};

    fn interface() -> Interface {
        let (nic, _) = QueueNic::pair();
        let mut device = NicDevice::new(nic);
        let config = Config::new(HardwareAddress::Ethernet(EthernetAddress([
            2, 0, 0, 0, 0, 1,
        ])));
        Interface::new(config, &mut device, Instant::from_millis(0))
    }

    #[test]
    fn static_settings_come_from_static_config_only() {
        assert_eq!(Ipv4Settings::from_static(&Ipv4Config::Dhcp), None);
        let settings = Ipv4Settings::from_static(&Ipv4Config::Static {
            address: [192, 168, 1, 5],
            prefix_len: 99,
            gateway: Some([192, 168, 1, 1]),
        });
        assert_eq!(
            settings,
            Some(Ipv4Settings {
                address: [192, 168, 1, 5],
                prefix_len: 32,
                gateway: Some([192, 168, 1, 1]),
            })
        );
    }

    #[test]
    fn apply_sets_replaces_and_removes_address_and_route() {
        let mut iface = interface();
        assert_eq!(current(&iface), None);
        let first = Ipv4Settings {
            address: [10, 0, 2, 15],
            prefix_len: 24,
            gateway: Some([10, 0, 2, 2]),
        };
        assert!(apply(&mut iface, Some(first), "test"));
        assert_eq!(current(&iface), Some(first));
        assert!(
            !apply(&mut iface, Some(first), "test"),
            "unchanged settings are not re-applied"
        );

        let second = Ipv4Settings {
            address: [10, 0, 3, 7],
            prefix_len: 16,
            gateway: None,
        };
        assert!(apply(&mut iface, Some(second), "test"));
        assert_eq!(current(&iface), Some(second));
        assert_eq!(iface.ip_addrs().len(), 1);
        assert!(iface.routes().get_default_ipv4_route().is_none());

        assert!(apply(&mut iface, None, "test"));
        assert_eq!(current(&iface), None);
        assert!(iface.ip_addrs().is_empty());
    }
}
