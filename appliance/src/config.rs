//! The appliance's configuration.
//!
//! For now it is fixed at build time: defaults (DHCPv4, API on port 8080), optionally with a
//! static IPv4 setting given in the `APPLIANCE_IPV4` environment variable when the image is
//! built (`dhcp`, or `address/prefix[,gateway]`, e.g. `10.0.2.15/24,10.0.2.2`). A boot-time
//! config file replaces this later. An invalid setting is an error, never silently ignored.

use core::fmt;
use core::net::Ipv4Addr;

use log::LevelFilter;
use mgmt_api::Limits;
use net::{Ipv4Config, ServerConfig};

use crate::idle::IdlePolicy;

/// Everything the appliance is configured with.
#[derive(Debug, Clone)]
pub struct ApplianceConfig {
    /// Network and TCP server settings (address, port, listener pool, buffers).
    pub server: ServerConfig,
    /// HTTP limits of the management API.
    pub api_limits: Limits,
    /// Global log level (smoltcp is capped at Info regardless).
    pub log_level: LevelFilter,
    /// Adaptive idle policy of the main loop.
    pub idle: IdlePolicy,
    /// Firmware timer tick to ask for, in microseconds.
    pub timer_tick_us: u64,
}

impl Default for ApplianceConfig {
    /// DHCPv4, port 8080, 8 listeners, default HTTP limits, Info logging, 1 ms tick.
    fn default() -> Self {
        Self {
            server: ServerConfig {
                ipv4: Ipv4Config::Dhcp,
                port: 8080,
                listeners: 8,
                ..ServerConfig::default()
            },
            api_limits: Limits::default(),
            log_level: LevelFilter::Info,
            idle: IdlePolicy::default(),
            timer_tick_us: 1_000,
        }
    }
}

/// An invalid IPv4 setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigError {
    /// Not `dhcp` and no `/prefix` after the address.
    MissingPrefix,
    /// The address is not a dotted-quad IPv4 address.
    BadAddress,
    /// The prefix is not a number from 0 to 32.
    BadPrefix,
    /// The gateway is not a dotted-quad IPv4 address.
    BadGateway,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::MissingPrefix => "expected `dhcp` or `address/prefix[,gateway]`",
            Self::BadAddress => "the address is not an IPv4 address",
            Self::BadPrefix => "the prefix length is not a number from 0 to 32",
            Self::BadGateway => "the gateway is not an IPv4 address",
        })
    }
}

/// Parses `dhcp` or `address/prefix[,gateway]`.
pub fn parse_ipv4_setting(text: &str) -> Result<Ipv4Config, ConfigError> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("dhcp") {
        return Ok(Ipv4Config::Dhcp);
    }
    let (network, gateway) = match text.split_once(',') {
        Some((network, gateway)) => (network, Some(gateway)),
        None => (text, None),
    };
    let (address, prefix) = network.split_once('/').ok_or(ConfigError::MissingPrefix)?;
    let address: Ipv4Addr = address
        .trim()
        .parse()
        .map_err(|_| ConfigError::BadAddress)?;
    let prefix_len: u8 = prefix
        .trim()
        .parse()
        .ok()
        .filter(|&len| len <= 32)
        .ok_or(ConfigError::BadPrefix)?;
    let gateway = gateway
        .map(|gateway| gateway.trim().parse::<Ipv4Addr>())
        .transpose()
        .map_err(|_| ConfigError::BadGateway)?;
    Ok(Ipv4Config::Static {
        address: address.octets(),
        prefix_len,
        gateway: gateway.map(|gateway| gateway.octets()),
    })
}

/// Displays an [`Ipv4Config`] for the log: `DHCPv4` or `static 10.0.2.15/24 via 10.0.2.2`.
pub struct ShowIpv4<'a>(pub &'a Ipv4Config);

impl fmt::Display for ShowIpv4<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self.0 {
            Ipv4Config::Dhcp => f.write_str("DHCPv4"),
            Ipv4Config::Static {
                address,
                prefix_len,
                gateway,
            } => {
                write!(f, "static {}/{prefix_len}", Ipv4Addr::from(address))?;
                match gateway {
                    Some(gateway) => write!(f, " via {}", Ipv4Addr::from(gateway)),
                    None => f.write_str(" (no gateway)"),
                }
            }
        }
    }
}

impl ApplianceConfig {
    /// The configuration this image was built with: defaults, plus `APPLIANCE_IPV4` if it
    /// was set at build time.
    pub fn built_in() -> Result<Self, ConfigError> {
        Self::with_ipv4_setting(option_env!("APPLIANCE_IPV4"))
    }

    /// Defaults with an optional IPv4 setting (see [`parse_ipv4_setting`]).
    pub fn with_ipv4_setting(setting: Option<&str>) -> Result<Self, ConfigError> {
        let mut config = Self::default();
        if let Some(setting) = setting {
            config.server.ipv4 = parse_ipv4_setting(setting)?;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_dhcp_on_port_8080() {
        let config = ApplianceConfig::default();
        assert_eq!(config.server.ipv4, Ipv4Config::Dhcp);
        assert_eq!(config.server.port, 8080);
        assert!(
            config.server.listeners >= 8,
            "eight clients may connect at once"
        );
        assert_eq!(config.log_level, LevelFilter::Info);
    }

    #[test]
    fn parses_dhcp_and_static_settings() {
        assert_eq!(parse_ipv4_setting(" DHCP "), Ok(Ipv4Config::Dhcp));
        assert_eq!(
            parse_ipv4_setting("10.0.2.15/24,10.0.2.2"),
            Ok(Ipv4Config::Static {
                address: [10, 0, 2, 15],
                prefix_len: 24,
                gateway: Some([10, 0, 2, 2]),
            })
        );
        assert_eq!(
            parse_ipv4_setting("192.168.1.9/32"),
            Ok(Ipv4Config::Static {
                address: [192, 168, 1, 9],
                prefix_len: 32,
                gateway: None,
            })
        );
    }

    #[test]
    fn rejects_invalid_settings() {
        assert_eq!(
            parse_ipv4_setting("10.0.2.15"),
            Err(ConfigError::MissingPrefix)
        );
        assert_eq!(
            parse_ipv4_setting("10.0.2/24"),
            Err(ConfigError::BadAddress)
        );
        assert_eq!(
            parse_ipv4_setting("10.0.2.15/33"),
            Err(ConfigError::BadPrefix)
        );
        assert_eq!(
            parse_ipv4_setting("10.0.2.15/x"),
            Err(ConfigError::BadPrefix)
        );
        assert_eq!(
            parse_ipv4_setting("10.0.2.15/24,gw"),
            Err(ConfigError::BadGateway)
        );
        assert_eq!(
            ApplianceConfig::with_ipv4_setting(Some("nonsense")).map(|c| c.server.port),
            Err(ConfigError::MissingPrefix)
        );
    }

    #[test]
    fn ipv4_settings_display_for_the_log() {
        use alloc::string::ToString;
        assert_eq!(ShowIpv4(&Ipv4Config::Dhcp).to_string(), "DHCPv4");
        let fixed = parse_ipv4_setting("10.0.2.15/24,10.0.2.2").expect("valid");
        assert_eq!(
            ShowIpv4(&fixed).to_string(),
            "static 10.0.2.15/24 via 10.0.2.2"
        );
        let alone = parse_ipv4_setting("10.0.2.15/32").expect("valid");
        assert_eq!(
            ShowIpv4(&alone).to_string(),
            "static 10.0.2.15/32 (no gateway)"
        );
    }

    #[test]
    fn the_built_in_config_is_valid() {
        assert!(ApplianceConfig::built_in().is_ok());
    }
}
