//! The appliance's configuration: the `appliance.toml` file read at boot.
//!
//! The file sits next to the `.efi` on the boot medium (`\EFI\BOOT\appliance.toml` on a flashed
//! disk) or, when netbooted, next to the boot file on the TFTP server. It is TOML (parsed by
//! the `toml` crate, no_std): four sections, every key optional, defaults below.
//!
//! ```toml
//! [api]
//! port = 8080                 # TCP port of the management API, 1-65535
//! token = "..."               # admin bearer token (RFC 6750 b64token, 1-256 chars)
//! tokens = [                  # more tokens, each with its role: "admin" (every call)
//!   { token = "...", role = "reader" },  # or "reader" (GET calls only)
//! ]                           # no admin token in either key: one is generated at
//!                             # boot and printed once on the console
//! tls = true                  # HTTPS only on the API port (false: plain HTTP only)
//! health_port = 8081          # with TLS: also a plain-HTTP port answering only
//!                             # GET /v1/health, for load balancers (default: none)
//! tls_certificate = """..."""  # PEM certificate chain, server certificate first, and
//! tls_key = """..."""          # its PEM private key (both or neither); neither: a key
//!                             # and self-signed certificate are generated at first boot
//!                             # and kept in a UEFI variable
//! [network]
//! mode = "dhcp"               # "dhcp" or "static"
//! address = "10.0.2.15/24"    # static only (required): address/prefix length
//! gateway = "10.0.2.2"        # static only (optional): default gateway, inside the subnet
//! [td]
//! memory_mib = "auto"         # memory set aside for TD private memory: "auto" or MiB (even)
//! [log]
//! level = "info"              # off, error, warn, info, debug, trace
//! ```
//!
//! Strictness is the point: an unknown section or key, a duplicate key, a value of the wrong
//! type or out of range, or a key that the chosen mode does not use (`address` with DHCP) is
//! an error naming the line and the key. The appliance shows every error on the console and
//! does not serve ([`ConfigErrors`]); it never runs with settings the operator did not ask for.
//! A missing file means defaults (and a generated token).

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::net::Ipv4Addr;
use core::ops::Range;

use api_tls::{IdentityError, TlsIdentity};
use log::LevelFilter;
use mgmt_api::{BearerToken, HostInfo, Limits, Role, TokenError, TokenSet, TokenSetError};
use net::{Ipv4Config, ServerConfig};
use toml::de::{DeTable, DeValue};

use crate::idle::IdlePolicy;

/// Name of the configuration file, next to the `.efi` image.
pub const CONFIG_FILE_NAME: &str = "appliance.toml";

/// Largest configuration file read, in bytes.
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;

/// Largest fixed TD memory reservation accepted, in MiB (16 TiB).
pub const MAX_TD_MEMORY_MIB: u64 = 16 * 1024 * 1024;

/// How much memory is set aside at boot for TD private memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TdMemory {
    /// Decided at boot from the firmware's memory map (the TD runtime's policy).
    #[default]
    Auto,
    /// Exactly this many MiB (a multiple of 2: TD memory is handed out in 2 MiB chunks).
    Mib(u64),
}

impl fmt::Display for TdMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Mib(mib) => write!(f, "{mib} MiB"),
        }
    }
}

/// How the API port speaks.
#[derive(Clone, Default)]
pub enum ApiTls {
    /// HTTPS with a key and self-signed certificate generated at first boot and kept across
    /// reboots (the default).
    #[default]
    Generated,
    /// HTTPS with the certificate chain and key from `appliance.toml`.
    Configured(TlsIdentity),
    /// Plain HTTP (`tls = false`).
    Off,
}

impl fmt::Debug for ApiTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Generated => f.write_str("Generated"),
            Self::Configured(identity) => write!(f, "Configured({:?})", identity.fingerprint()),
            Self::Off => f.write_str("Off"),
        }
    }
}

/// Everything the appliance is configured with.
#[derive(Debug, Clone)]
pub struct ApplianceConfig {
    /// Network and TCP server settings (address, port, listener pool, buffers).
    pub server: ServerConfig,
    /// HTTP limits of the management API.
    pub api_limits: Limits,
    /// The API's bearer tokens with their roles (`api.token` is an admin token); an admin
    /// token is generated at boot when none is configured.
    pub api_tokens: TokenSet,
    /// TLS on the API port.
    pub api_tls: ApiTls,
    /// Memory set aside for TDs (taken into account by the TD runtime).
    pub td_memory: TdMemory,
    /// Global log level (smoltcp is capped at Info regardless).
    pub log_level: LevelFilter,
    /// Adaptive idle policy of the main loop.
    pub idle: IdlePolicy,
    /// Firmware timer tick to ask for, in microseconds.
    pub timer_tick_us: u64,
}

impl Default for ApplianceConfig {
    /// DHCPv4, port 8080, 8 listeners, no token yet, TD memory auto, Info logging, 1 ms tick.
    fn default() -> Self {
        Self {
            server: ServerConfig {
                ipv4: Ipv4Config::Dhcp,
                port: 8080,
                listeners: 8,
                ..ServerConfig::default()
            },
            api_limits: Limits::default(),
            api_tokens: TokenSet::new(),
            api_tls: ApiTls::Generated,
            td_memory: TdMemory::Auto,
            log_level: LevelFilter::Info,
            idle: IdlePolicy::default(),
            timer_tick_us: 1_000,
        }
    }
}

/// What exactly is wrong with one setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    #[error("the file is {len} bytes; at most {MAX_CONFIG_BYTES} are accepted")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// The file is not UTF-8.
    #[error("the file is not UTF-8 text")]
    NotUtf8,
    /// TOML syntax (including duplicate keys), as the TOML parser words it.
    #[error("{0}")]
    Syntax(String),
    /// A section other than `[api]`, `[network]`, `[td]`, `[log]`.
    #[error("unknown section (known: [api], [network], [td], [log])")]
    UnknownSection,
    /// A known section given as a plain value.
    #[error("must be a section (a table), not {found}")]
    NotASection {
        /// TOML type found.
        found: &'static str,
    },
    /// A key the section does not have.
    #[error("unknown key (this section knows: {known})")]
    UnknownKey {
        /// The section's keys.
        known: &'static str,
    },
    /// A value of the wrong TOML type.
    #[error("expected {expected}, found {found}")]
    WrongType {
        /// What the key takes.
        expected: &'static str,
        /// TOML type found.
        found: &'static str,
    },
    /// `api.port` outside 1..=65535.
    #[error("must be a TCP port from 1 to 65535")]
    BadPort,
    /// `api.token` is not a usable token.
    #[error("{0}")]
    BadToken(TokenError),
    /// A token cannot join the token list (listed twice, too many).
    #[error("{0}")]
    BadTokenList(TokenSetError),
    /// An `api.tokens` entry's role is not `admin` or `reader`.
    #[error("must be \"admin\" or \"reader\"")]
    BadRole,
    /// `api.tls_certificate`/`api.tls_key` do not make a usable TLS identity.
    #[error("{0}")]
    BadTls(IdentityError),
    /// Only one of `api.tls_certificate` and `api.tls_key` is given.
    #[error("api.tls_certificate and api.tls_key go together: give both or neither")]
    TlsPairIncomplete,
    /// `api.health_port` equals `api.port`.
    #[error("must differ from api.port (the health port serves plain HTTP beside it)")]
    HealthPortIsApiPort,
    /// A certificate or key is given with `tls = false`.
    #[error("only used with api.tls = true")]
    OnlyForTls,
    /// An `api.tokens` entry lacks a required key.
    #[error("each entry needs `{0}`")]
    MissingTokenKey(&'static str),
    /// `network.mode` is neither `dhcp` nor `static`.
    #[error("must be \"dhcp\" or \"static\"")]
    BadMode,
    /// `network.address` is not `a.b.c.d/prefix`.
    #[error("must be an IPv4 address with its prefix length, like \"192.168.1.20/24\"")]
    BadAddress,
    /// The prefix length is not 0..=32.
    #[error("the prefix length must be a number from 1 to 32")]
    BadPrefix,
    /// The address is the subnet's network or broadcast address.
    #[error("{0} is the network or broadcast address of its subnet, not a host address")]
    NotAHostAddress(Ipv4Addr),
    /// `network.gateway` is not `a.b.c.d`.
    #[error("must be an IPv4 address, like \"192.168.1.1\"")]
    BadGateway,
    /// The gateway is outside the interface's subnet (or is the interface itself).
    #[error("{gateway} is not another host in the subnet {address}/{prefix_len}")]
    GatewayUnreachable {
        /// The gateway.
        gateway: Ipv4Addr,
        /// The interface address.
        address: Ipv4Addr,
        /// Its prefix length.
        prefix_len: u8,
    },
    /// `mode = "static"` without `address`.
    #[error("mode = \"static\" needs network.address (like \"192.168.1.20/24\")")]
    StaticNeedsAddress,
    /// `address`/`gateway` given while the mode is DHCP.
    #[error("only used with network.mode = \"static\" (the mode is DHCP)")]
    OnlyForStatic,
    /// `log.level` is not a level name.
    #[error("must be one of \"off\", \"error\", \"warn\", \"info\", \"debug\", \"trace\"")]
    BadLogLevel,
    /// `td.memory_mib` is neither `"auto"` nor an even number of MiB in range.
    #[error("must be \"auto\" or an even number of MiB from 2 to {MAX_TD_MEMORY_MIB}")]
    BadTdMemory,
}

/// One error in the configuration file: where, which key, what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line number, when the error has a place in the file.
    pub line: Option<usize>,
    /// The dotted key (`network.address`), when the error concerns one.
    pub key: Option<String>,
    /// What is wrong.
    pub problem: Problem,
}

impl fmt::Display for ConfigError {
    /// `line 4, network.address: must be an IPv4 address ...`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.line, &self.key) {
            (Some(line), Some(key)) => write!(f, "line {line}, {key}: {}", self.problem),
            (Some(line), None) => write!(f, "line {line}: {}", self.problem),
            (None, Some(key)) => write!(f, "{key}: {}", self.problem),
            (None, None) => write!(f, "{}", self.problem),
        }
    }
}

/// Every error found in one configuration file, in line order (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    /// One error per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// Where the configuration came from (for the console and `GET /v1/host`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A file on the medium the appliance booted from (path as UEFI writes it).
    BootMedium {
        /// `\EFI\BOOT\appliance.toml`.
        path: String,
    },
    /// A file fetched over TFTP from the boot server.
    Tftp {
        /// The TFTP server.
        server: Ipv4Addr,
        /// The file's path on it.
        path: String,
    },
    /// No file: defaults. `looked_for` says where the file was expected.
    Defaults {
        /// Where the file was looked for, as [`ConfigSource::BootMedium`] or
        /// [`ConfigSource::Tftp`] would show it.
        looked_for: String,
    },
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BootMedium { path } => write!(f, "boot medium {path}"),
            Self::Tftp { server, path } => {
                write!(f, "tftp://{server}/{}", path.trim_start_matches('/'))
            }
            Self::Defaults { looked_for } => write!(f, "defaults (no {looked_for})"),
        }
    }
}

/// Whether the API token was configured or generated at boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// From `api.token`.
    Configured,
    /// Generated from the CPU's random number instructions at boot.
    Generated,
}

impl TokenSource {
    /// `"configured"` or `"generated"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Configured => "configured",
            Self::Generated => "generated",
        }
    }
}

/// The keys of each section, as listed in error messages.
const API_KEYS: &str = "port, token, tokens, tls, tls_certificate, tls_key, health_port";
const TOKEN_ENTRY_KEYS: &str = "token, role";
const NETWORK_KEYS: &str = "mode, address, gateway";
const TD_KEYS: &str = "memory_mib";
const LOG_KEYS: &str = "level";

type Value<'i> = toml::Spanned<DeValue<'i>>;

/// Turns byte offsets into line numbers and collects errors.
struct Checker<'t> {
    text: &'t str,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn line_of(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        1 + self
            .text
            .as_bytes()
            .get(..end)
            .map_or(0, |bytes| bytes.iter().filter(|&&b| b == b'\n').count())
    }

    fn error(&mut self, span: Option<&Range<usize>>, key: Option<&str>, problem: Problem) {
        self.errors.push(ConfigError {
            line: span.map(|span| self.line_of(span)),
            key: key.map(ToOwned::to_owned),
            problem,
        });
    }

    fn wrong_type(&mut self, key: &str, value: &Value<'_>, expected: &'static str) {
        self.error(
            Some(&value.span()),
            Some(key),
            Problem::WrongType {
                expected,
                found: with_article(value.get_ref()),
            },
        );
    }

    fn string<'v>(&mut self, key: &str, value: &'v Value<'_>) -> Option<&'v str> {
        let text = value.get_ref().as_str();
        if text.is_none() {
            self.wrong_type(key, value, "a string");
        }
        text
    }

    fn integer(&mut self, key: &str, value: &Value<'_>) -> Option<i128> {
        match value.get_ref() {
            DeValue::Integer(int) => i128::from_str_radix(int.as_str(), int.radix()).ok(),
            _ => {
                self.wrong_type(key, value, "an integer");
                None
            }
        }
    }
}

impl Checker<'_> {
    /// Validates `text` as a token and adds it to `tokens` with `role`.
    fn add_token(
        &mut self,
        tokens: &mut TokenSet,
        key: &str,
        value: &Value<'_>,
        text: &str,
        role: Role,
    ) {
        let problem = match BearerToken::new(text) {
            Ok(token) => match tokens.insert(token, role) {
                Ok(()) => return,
                Err(err) => Problem::BadTokenList(err),
            },
            Err(err) => Problem::BadToken(err),
        };
        self.error(Some(&value.span()), Some(key), problem);
    }
}

/// `api.tokens`: an array of `{ token = "...", role = "admin" | "reader" }` tables (inline,
/// or written as `[[api.tokens]]` sections).
fn parse_token_list(checker: &mut Checker<'_>, tokens: &mut TokenSet, key: &str, list: &Value<'_>) {
    let Some(entries) = list.get_ref().as_array() else {
        checker.wrong_type(key, list, "an array of { token, role } tables");
        return;
    };
    for entry in entries.iter() {
        let Some(table) = entry.get_ref().as_table() else {
            checker.wrong_type(key, entry, "a { token, role } table");
            continue;
        };
        let mut text = None;
        let mut role = None;
        for (name, value) in table {
            let dotted = format!("{key}.{}", name.get_ref());
            match &**name.get_ref() {
                "token" => text = checker.string(&dotted, value).map(|t| (t, value)),
                "role" => {
                    if let Some(name) = checker.string(&dotted, value) {
                        role = Role::parse(name);
                        if role.is_none() {
                            checker.error(Some(&value.span()), Some(&dotted), Problem::BadRole);
                        }
                    }
                }
                _ => checker.error(
                    Some(&name.span()),
                    Some(&dotted),
                    Problem::UnknownKey {
                        known: TOKEN_ENTRY_KEYS,
                    },
                ),
            }
        }
        let has = |wanted: &str| table.iter().any(|(name, _)| &**name.get_ref() == wanted);
        match (text, role) {
            (Some((text, value)), Some(role)) => {
                checker.add_token(tokens, &format!("{key}.token"), value, text, role);
            }
            _ if !has("token") => checker.error(
                Some(&entry.span()),
                Some(key),
                Problem::MissingTokenKey("token"),
            ),
            _ if !has("role") => checker.error(
                Some(&entry.span()),
                Some(key),
                Problem::MissingTokenKey("role"),
            ),
            // A wrong token or role was reported where it was read.
            _ => {}
        }
    }
}

/// Parses a configuration file. Every problem is reported, each with its line and key.
pub fn parse_config(bytes: &[u8]) -> Result<ApplianceConfig, ConfigErrors> {
    let whole_file = |problem| {
        ConfigErrors(alloc::vec![ConfigError {
            line: None,
            key: None,
            problem,
        }])
    };
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(whole_file(Problem::TooLarge { len: bytes.len() }));
    }
    let text = core::str::from_utf8(bytes).map_err(|_| whole_file(Problem::NotUtf8))?;
    let mut checker = Checker {
        text,
        errors: Vec::new(),
    };
    let root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(err) => {
            let span = err.span();
            let key = span
                .as_ref()
                .and_then(|span| key_on_line(text, checker.line_of(span)));
            checker.error(
                span.as_ref(),
                key.as_deref(),
                Problem::Syntax(err.message().trim_end().to_owned()),
            );
            return Err(ConfigErrors(checker.errors));
        }
    };
    let mut config = ApplianceConfig::default();
    let mut network = NetworkKeys::default();
    let mut tls = TlsKeys::default();
    for (name, section) in root.get_ref() {
        let name_str: &str = name.get_ref();
        let known = match name_str {
            "api" => API_KEYS,
            "network" => NETWORK_KEYS,
            "td" => TD_KEYS,
            "log" => LOG_KEYS,
            _ => {
                checker.error(Some(&name.span()), Some(name_str), Problem::UnknownSection);
                continue;
            }
        };
        let Some(table) = section.get_ref().as_table() else {
            checker.error(
                Some(&section.span()),
                Some(name_str),
                Problem::NotASection {
                    found: with_article(section.get_ref()),
                },
            );
            continue;
        };
        for (key, value) in table {
            let dotted = format!("{name_str}.{}", key.get_ref());
            match (name_str, &**key.get_ref()) {
                ("api", "port") => {
                    if let Some(port) = checker.integer(&dotted, value) {
                        match u16::try_from(port) {
                            Ok(port) if port != 0 => config.server.port = port,
                            _ => {
                                checker.error(Some(&value.span()), Some(&dotted), Problem::BadPort)
                            }
                        }
                    }
                }
                ("api", "token") => {
                    if let Some(text) = checker.string(&dotted, value) {
                        checker.add_token(
                            &mut config.api_tokens,
                            &dotted,
                            value,
                            text,
                            Role::Admin,
                        );
                    }
                }
                ("api", "tokens") => {
                    parse_token_list(&mut checker, &mut config.api_tokens, &dotted, value)
                }
                ("api", "tls") => tls.enabled = Some(value),
                ("api", "health_port") => tls.health_port = Some(value),
                ("api", "tls_certificate") => tls.certificate = Some(value),
                ("api", "tls_key") => tls.key = Some(value),
                ("network", "mode") => network.mode = Some(value),
                ("network", "address") => network.address = Some(value),
                ("network", "gateway") => network.gateway = Some(value),
                ("td", "memory_mib") => {
                    if let Some(memory) = parse_td_memory(&mut checker, &dotted, value) {
                        config.td_memory = memory;
                    }
                }
                ("log", "level") => {
                    if let Some(text) = checker.string(&dotted, value) {
                        match parse_log_level(text) {
                            Some(level) => config.log_level = level,
                            None => checker.error(
                                Some(&value.span()),
                                Some(&dotted),
                                Problem::BadLogLevel,
                            ),
                        }
                    }
                }
                _ => checker.error(
                    Some(&key.span()),
                    Some(&dotted),
                    Problem::UnknownKey { known },
                ),
            }
        }
    }
    if let Some(ipv4) = network.resolve(&mut checker) {
        config.server.ipv4 = ipv4;
    }
    if let Some(api_tls) = tls.resolve(&mut checker) {
        config.api_tls = api_tls;
    }
    if let Some(value) = tls.health_port {
        config.server.second_port = parse_health_port(&mut checker, &config, value);
    }
    if checker.errors.is_empty() {
        Ok(config)
    } else {
        checker.errors.sort_by_key(|error| error.line);
        Err(ConfigErrors(checker.errors))
    }
}

/// The dotted key a line of a (syntactically broken) file is about, for error messages: the
/// section of a `[header]` line, or the section plus the text before `=` of a key line.
fn key_on_line(text: &str, line: usize) -> Option<String> {
    let mut section = "";
    for (index, content) in text.lines().enumerate() {
        let content = content.trim();
        let header = content
            .strip_prefix('[')
            .and_then(|rest| rest.split(']').next())
            .map(|name| name.trim_matches(['[', ' ']));
        if index + 1 == line {
            return match (header, content.split_once('=')) {
                (Some(name), _) if !name.is_empty() => Some(name.to_owned()),
                (_, Some((key, _))) if !key.trim().is_empty() => {
                    let key = key.trim();
                    Some(if section.is_empty() {
                        key.to_owned()
                    } else {
                        format!("{section}.{key}")
                    })
                }
                _ => None,
            };
        }
        if let Some(name) = header {
            section = name;
        }
    }
    None
}

/// A TOML value's type for messages: "an integer", "a string", ...
fn with_article(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// `off`, `error`, `warn`, `info`, `debug`, `trace` (any case).
fn parse_log_level(text: &str) -> Option<LevelFilter> {
    [
        LevelFilter::Off,
        LevelFilter::Error,
        LevelFilter::Warn,
        LevelFilter::Info,
        LevelFilter::Debug,
        LevelFilter::Trace,
    ]
    .into_iter()
    .find(|level| level.as_str().eq_ignore_ascii_case(text))
}

fn parse_td_memory(checker: &mut Checker<'_>, key: &str, value: &Value<'_>) -> Option<TdMemory> {
    let parsed = match value.get_ref() {
        DeValue::String(text) if text == "auto" => Some(TdMemory::Auto),
        DeValue::String(_) => None,
        DeValue::Integer(int) => i128::from_str_radix(int.as_str(), int.radix())
            .ok()
            .and_then(|mib| u64::try_from(mib).ok())
            .filter(|mib| *mib >= 2 && *mib <= MAX_TD_MEMORY_MIB && mib % 2 == 0)
            .map(TdMemory::Mib),
        _ => {
            checker.wrong_type(key, value, "\"auto\" or an integer");
            return None;
        }
    };
    if parsed.is_none() {
        checker.error(Some(&value.span()), Some(key), Problem::BadTdMemory);
    }
    parsed
}

/// `api.health_port`: a port other than `api.port`, only with TLS on (without TLS the API
/// port answers plain health checks itself).
fn parse_health_port(
    checker: &mut Checker<'_>,
    config: &ApplianceConfig,
    value: &Value<'_>,
) -> Option<u16> {
    let key = "api.health_port";
    let port = checker.integer(key, value)?;
    let problem = match u16::try_from(port) {
        Ok(0) | Err(_) => Problem::BadPort,
        Ok(port) if port == config.server.port => Problem::HealthPortIsApiPort,
        Ok(_) if matches!(config.api_tls, ApiTls::Off) => Problem::OnlyForTls,
        Ok(port) => return Some(port),
    };
    checker.error(Some(&value.span()), Some(key), problem);
    None
}

/// The `[api]` TLS keys, checked together because they depend on each other.
#[derive(Default)]
struct TlsKeys<'a, 'i> {
    enabled: Option<&'a Value<'i>>,
    health_port: Option<&'a Value<'i>>,
    certificate: Option<&'a Value<'i>>,
    key: Option<&'a Value<'i>>,
}

impl TlsKeys<'_, '_> {
    fn resolve(&self, checker: &mut Checker<'_>) -> Option<ApiTls> {
        let enabled = match self.enabled {
            None => true,
            Some(value) => match value.get_ref() {
                DeValue::Boolean(on) => *on,
                _ => {
                    checker.wrong_type("api.tls", value, "a boolean");
                    return None;
                }
            },
        };
        if !enabled {
            for (key, value) in [
                ("api.tls_certificate", self.certificate),
                ("api.tls_key", self.key),
            ] {
                if let Some(value) = value {
                    checker.error(Some(&value.span()), Some(key), Problem::OnlyForTls);
                }
            }
            return Some(ApiTls::Off);
        }
        match (self.certificate, self.key) {
            (None, None) => Some(ApiTls::Generated),
            (Some(certificate), Some(key)) => {
                let certificate_text = checker.string("api.tls_certificate", certificate);
                let key_text = checker.string("api.tls_key", key);
                // A wrong type was reported where it was read.
                let (certificate_text, key_text) = (certificate_text?, key_text?);
                match TlsIdentity::from_pem(certificate_text.as_bytes(), key_text.as_bytes()) {
                    Ok(identity) => Some(ApiTls::Configured(identity)),
                    Err(err) => {
                        checker.error(
                            Some(&certificate.span()),
                            Some("api.tls_certificate"),
                            Problem::BadTls(err),
                        );
                        None
                    }
                }
            }
            (Some(value), None) => pair_incomplete(checker, "api.tls_certificate", value),
            (None, Some(value)) => pair_incomplete(checker, "api.tls_key", value),
        }
    }
}

/// One of `api.tls_certificate` and `api.tls_key` without the other: its type is checked as
/// for any key, and the missing half is an error.
fn pair_incomplete(checker: &mut Checker<'_>, key: &str, value: &Value<'_>) -> Option<ApiTls> {
    let _ = checker.string(key, value);
    checker.error(Some(&value.span()), Some(key), Problem::TlsPairIncomplete);
    None
}

/// The `[network]` keys, checked together because they depend on each other.
#[derive(Default)]
struct NetworkKeys<'a, 'i> {
    mode: Option<&'a Value<'i>>,
    address: Option<&'a Value<'i>>,
    gateway: Option<&'a Value<'i>>,
}

impl NetworkKeys<'_, '_> {
    fn resolve(&self, checker: &mut Checker<'_>) -> Option<Ipv4Config> {
        let is_static = match self.mode {
            None => false,
            Some(value) => match checker.string("network.mode", value)? {
                "dhcp" => false,
                "static" => true,
                _ => {
                    checker.error(Some(&value.span()), Some("network.mode"), Problem::BadMode);
                    return None;
                }
            },
        };
        if !is_static {
            for (key, value) in [
                ("network.address", self.address),
                ("network.gateway", self.gateway),
            ] {
                if let Some(value) = value {
                    checker.error(Some(&value.span()), Some(key), Problem::OnlyForStatic);
                }
            }
            return Some(Ipv4Config::Dhcp);
        }
        let Some(address_value) = self.address else {
            checker.error(
                self.mode.map(|mode| mode.span()).as_ref(),
                Some("network.mode"),
                Problem::StaticNeedsAddress,
            );
            return None;
        };
        let address = checker
            .string("network.address", address_value)
            .map(|text| {
                parse_host_address(text).map_err(|problem| {
                    checker.error(
                        Some(&address_value.span()),
                        Some("network.address"),
                        problem,
                    )
                })
            });
        let gateway = self.gateway.map(|value| {
            let text = checker.string("network.gateway", value)?;
            match text.parse::<Ipv4Addr>() {
                Ok(gateway) => Some((gateway, value)),
                Err(_) => {
                    checker.error(
                        Some(&value.span()),
                        Some("network.gateway"),
                        Problem::BadGateway,
                    );
                    None
                }
            }
        });
        let (address, prefix_len) = address?.ok()?;
        let gateway = match gateway {
            None => None,
            Some(None) => return None,
            Some(Some((gateway, value))) => {
                if !same_subnet(address, gateway, prefix_len) || gateway == address {
                    checker.error(
                        Some(&value.span()),
                        Some("network.gateway"),
                        Problem::GatewayUnreachable {
                            gateway,
                            address,
                            prefix_len,
                        },
                    );
                    return None;
                }
                Some(gateway.octets())
            }
        };
        Some(Ipv4Config::Static {
            address: address.octets(),
            prefix_len,
            gateway,
        })
    }
}

/// `a.b.c.d/prefix` with a host address (not the subnet's network or broadcast address when
/// the subnet has those, i.e. prefix length up to 30).
fn parse_host_address(text: &str) -> Result<(Ipv4Addr, u8), Problem> {
    let (address, prefix) = text.split_once('/').ok_or(Problem::BadAddress)?;
    let address: Ipv4Addr = address.parse().map_err(|_| Problem::BadAddress)?;
    let prefix_len: u8 = prefix
        .parse()
        .ok()
        .filter(|len| (1..=32).contains(len))
        .ok_or(Problem::BadPrefix)?;
    if prefix_len <= 30 {
        let host_bits = u32::from(address) & !prefix_mask(prefix_len);
        if host_bits == 0 || host_bits == !prefix_mask(prefix_len) {
            return Err(Problem::NotAHostAddress(address));
        }
    }
    Ok((address, prefix_len))
}

fn prefix_mask(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len.min(32)))
        .unwrap_or(0)
}

fn same_subnet(a: Ipv4Addr, b: Ipv4Addr, prefix_len: u8) -> bool {
    let mask = prefix_mask(prefix_len);
    u32::from(a) & mask == u32::from(b) & mask
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
    /// What `GET /v1/host` reports about this configuration at boot (no address yet).
    pub fn host_info(&self, source: &ConfigSource, token: TokenSource) -> HostInfo {
        HostInfo {
            api_port: self.server.port,
            network: match self.server.ipv4 {
                Ipv4Config::Dhcp => "dhcp",
                Ipv4Config::Static { .. } => "static",
            },
            ipv4: None,
            config_source: format!("{source}"),
            token_source: token.as_str(),
            tls: None,
        }
    }
}

/// One-line summary of the settings in force, for the console.
pub struct Summary<'a>(pub &'a ApplianceConfig);

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config = self.0;
        write!(
            f,
            "network {}, API port {}, {} admin and {} reader token(s){}, TD memory {}, log level {}",
            ShowIpv4(&config.server.ipv4),
            config.server.port,
            config.api_tokens.count(Role::Admin),
            config.api_tokens.count(Role::Reader),
            if config.api_tokens.count(Role::Admin) == 0 {
                " (an admin token is generated)"
            } else {
                ""
            },
            config.td_memory,
            config.log_level.as_str().to_ascii_lowercase(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    fn errors(text: &str) -> Vec<String> {
        match parse_config(text.as_bytes()) {
            Ok(_) => panic!("expected errors for {text:?}"),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        }
    }

    fn parse(text: &str) -> ApplianceConfig {
        match parse_config(text.as_bytes()) {
            Ok(config) => config,
            Err(errors) => panic!("{text:?}: {errors}"),
        }
    }

    #[test]
    fn defaults_are_dhcp_on_port_8080_without_a_token() {
        let config = ApplianceConfig::default();
        assert_eq!(config.server.ipv4, Ipv4Config::Dhcp);
        assert_eq!(config.server.port, 8080);
        assert!(
            config.server.listeners >= 8,
            "eight clients may connect at once"
        );
        assert_eq!(config.log_level, LevelFilter::Info);
        assert_eq!(config.td_memory, TdMemory::Auto);
        assert!(config.api_tokens.is_empty());
    }

    #[test]
    fn an_empty_or_comment_only_file_means_defaults() {
        for text in ["", "# nothing here\n\n", "[api]\n[network]\n[td]\n[log]\n"] {
            let config = parse(text);
            assert_eq!(config.server.ipv4, Ipv4Config::Dhcp);
            assert_eq!(config.server.port, 8080);
            assert!(config.api_tokens.is_empty());
        }
    }

    #[test]
    fn a_full_static_file_parses() {
        let config = parse(
            "# lab node 7\n\
             [api]\n\
             port = 18080\n\
             token = \"s3cr3t-token\"\n\
             \n\
             [network]\n\
             mode = \"static\"\n\
             address = \"10.0.2.15/24\"\n\
             gateway = \"10.0.2.2\"\n\
             [td]\n\
             memory_mib = 4096\n\
             [log]\n\
             level = \"debug\"\n",
        );
        assert_eq!(config.server.port, 18080);
        assert_eq!(
            config.api_tokens.role_of(b"s3cr3t-token"),
            Some(Role::Admin)
        );
        assert_eq!(
            config.server.ipv4,
            Ipv4Config::Static {
                address: [10, 0, 2, 15],
                prefix_len: 24,
                gateway: Some([10, 0, 2, 2]),
            }
        );
        assert_eq!(config.td_memory, TdMemory::Mib(4096));
        assert_eq!(config.log_level, LevelFilter::Debug);
        assert_eq!(
            Summary(&config).to_string(),
            "network static 10.0.2.15/24 via 10.0.2.2, API port 18080, 1 admin and 0 reader \
             token(s), TD memory 4096 MiB, log level debug"
        );
    }

    /// A P-256 certificate and its key made with `openssl req -x509 -newkey ec`, and another
    /// key (test fixtures, not secrets of anything).
    const TEST_CERTIFICATE: &str = include_str!("config/test-certificate.pem");
    const TEST_KEY: &str = include_str!("config/test-key.pem");
    const OTHER_KEY: &str = include_str!("config/test-other-key.pem");

    fn tls_file(certificate: &str, key: &str) -> String {
        format!(
            "[api]\ntls_certificate = \"\"\"\n{certificate}\"\"\"\ntls_key = \"\"\"\n{key}\"\"\"\n"
        )
    }

    #[test]
    fn tls_is_on_with_a_generated_certificate_by_default() {
        assert!(matches!(parse("").api_tls, ApiTls::Generated));
        assert!(matches!(
            parse("[api]\ntls = true\n").api_tls,
            ApiTls::Generated
        ));
        assert!(matches!(parse("[api]\ntls = false\n").api_tls, ApiTls::Off));
    }

    #[test]
    fn a_configured_certificate_and_key_are_checked_at_parse_time() {
        let config = parse(&tls_file(TEST_CERTIFICATE, TEST_KEY));
        let ApiTls::Configured(identity) = &config.api_tls else {
            panic!("expected a configured identity, got {:?}", config.api_tls);
        };
        assert_eq!(format!("{}", identity.fingerprint()).len(), 95);

        let mismatch = errors(&tls_file(TEST_CERTIFICATE, OTHER_KEY));
        assert_eq!(mismatch.len(), 1, "{mismatch:?}");
        assert!(
            mismatch[0].starts_with("line 2, api.tls_certificate: "),
            "{mismatch:?}"
        );
        assert!(mismatch[0].contains("key"), "{mismatch:?}");

        let garbage = errors(&tls_file("not a certificate\n", TEST_KEY));
        assert_eq!(garbage.len(), 1, "{garbage:?}");
        assert!(garbage[0].contains("api.tls_certificate"), "{garbage:?}");
    }

    #[test]
    fn a_health_port_is_a_second_port_beside_tls() {
        let config = parse("[api]\nport = 8443\nhealth_port = 8081\n");
        assert_eq!(config.server.port, 8443);
        assert_eq!(config.server.second_port, Some(8081));
        assert_eq!(parse("").server.second_port, None);
        assert_eq!(
            errors("[api]\nhealth_port = 8080\n"),
            [
                "line 2, api.health_port: must differ from api.port (the health port serves plain HTTP beside it)"
            ]
        );
        assert_eq!(
            errors("[api]\ntls = false\nhealth_port = 8081\n"),
            ["line 3, api.health_port: only used with api.tls = true"]
        );
        assert_eq!(
            errors("[api]\nhealth_port = 0\n"),
            ["line 2, api.health_port: must be a TCP port from 1 to 65535"]
        );
    }

    #[test]
    fn tls_keys_must_come_in_pairs_and_only_with_tls_on() {
        let only_certificate =
            format!("[api]\ntls_certificate = \"\"\"\n{TEST_CERTIFICATE}\"\"\"\n");
        assert_eq!(
            errors(&only_certificate),
            [
                "line 2, api.tls_certificate: api.tls_certificate and api.tls_key go together: give both or neither"
            ]
        );
        assert_eq!(
            errors("[api]\ntls = false\ntls_key = \"x\"\n"),
            ["line 3, api.tls_key: only used with api.tls = true"]
        );
        assert_eq!(
            errors("[api]\ntls = \"yes\"\n"),
            ["line 2, api.tls: expected a boolean, found a string"]
        );
    }

    #[test]
    fn scoped_tokens_parse_inline_and_as_sections() {
        let inline = parse(
            "[api]\n\
             token = \"boss\"\n\
             tokens = [{ token = \"viewer\", role = \"reader\" }, { role = \"admin\", token = \"ops\" }]\n",
        );
        let sections = parse(
            "[api]\ntoken = \"boss\"\n\
             [[api.tokens]]\ntoken = \"viewer\"\nrole = \"reader\"\n\
             [[api.tokens]]\ntoken = \"ops\"\nrole = \"admin\"\n",
        );
        for config in [inline, sections] {
            assert_eq!(config.api_tokens.role_of(b"boss"), Some(Role::Admin));
            assert_eq!(config.api_tokens.role_of(b"viewer"), Some(Role::Reader));
            assert_eq!(config.api_tokens.role_of(b"ops"), Some(Role::Admin));
            assert_eq!(config.api_tokens.role_of(b"nobody"), None);
            assert!(
                Summary(&config)
                    .to_string()
                    .contains("2 admin and 1 reader token(s),")
            );
        }
        let readers_only = parse("api.tokens = [{ token = \"v\", role = \"reader\" }]\n");
        assert!(
            Summary(&readers_only)
                .to_string()
                .contains("0 admin and 1 reader token(s) (an admin token is generated)")
        );
    }

    #[test]
    fn bad_token_lists_name_the_entry_and_the_problem() {
        assert_eq!(
            errors("[api]\ntokens = \"abc\"\n"),
            ["line 2, api.tokens: expected an array of { token, role } tables, found a string"]
        );
        assert_eq!(
            errors("[api]\ntokens = [\"abc\"]\n"),
            ["line 2, api.tokens: expected a { token, role } table, found a string"]
        );
        assert_eq!(
            errors("[api]\ntokens = [{ token = \"a\", role = \"root\" }]\n"),
            ["line 2, api.tokens.role: must be \"admin\" or \"reader\""]
        );
        assert_eq!(
            errors("[api]\ntokens = [{ token = \"a\" }]\n"),
            ["line 2, api.tokens: each entry needs `role`"]
        );
        assert_eq!(
            errors("[api]\ntokens = [{ role = \"admin\" }]\n"),
            ["line 2, api.tokens: each entry needs `token`"]
        );
        assert_eq!(
            errors("[api]\ntokens = [{ token = \"a\", role = \"admin\", name = \"x\" }]\n"),
            ["line 2, api.tokens.name: unknown key (this section knows: token, role)"]
        );
        assert_eq!(
            errors("[api]\ntoken = \"same\"\ntokens = [{ token = \"same\", role = \"reader\" }]\n"),
            ["line 3, api.tokens.token: the same token is listed twice"]
        );
        assert_eq!(
            errors("[api]\ntokens = [{ token = \"a b\", role = \"reader\" }]\n"),
            [
                "line 2, api.tokens.token: character 2 of the token is not one of A-Z a-z 0-9 - . _ ~ + / (or `=` at the end)"
            ]
        );
    }

    #[test]
    fn dotted_and_inline_forms_are_the_same_keys() {
        let config = parse(
            "api.port = 9000\nnetwork = { mode = \"static\", address = \"192.168.7.9/32\" }\n",
        );
        assert_eq!(config.server.port, 9000);
        assert_eq!(
            config.server.ipv4,
            Ipv4Config::Static {
                address: [192, 168, 7, 9],
                prefix_len: 32,
                gateway: None,
            }
        );
    }

    #[test]
    fn explicit_dhcp_auto_and_level_names() {
        let config = parse(
            "[network]\nmode = \"dhcp\"\n[td]\nmemory_mib = \"auto\"\n[log]\nlevel = \"WARN\"\n",
        );
        assert_eq!(config.server.ipv4, Ipv4Config::Dhcp);
        assert_eq!(config.td_memory, TdMemory::Auto);
        assert_eq!(config.log_level, LevelFilter::Warn);
        assert_eq!(parse("[log]\nlevel = \"off\"").log_level, LevelFilter::Off);
    }

    #[test]
    fn unknown_sections_and_keys_name_line_and_key() {
        assert_eq!(
            errors("[api]\nport = 8080\nprot = 1\n"),
            [
                "line 3, api.prot: unknown key (this section knows: port, token, tokens, tls, tls_certificate, tls_key, health_port)"
            ]
        );
        assert_eq!(
            errors("\n[apl]\nport = 1\n"),
            ["line 2, apl: unknown section (known: [api], [network], [td], [log])"]
        );
        assert_eq!(
            errors("token = \"x\"\n"),
            ["line 1, token: unknown section (known: [api], [network], [td], [log])"]
        );
        assert_eq!(
            errors("api = 5\n"),
            ["line 1, api: must be a section (a table), not an integer"]
        );
    }

    #[test]
    fn duplicate_keys_and_syntax_errors_name_the_line() {
        assert_eq!(
            errors("[api]\nport = 1\nport = 2\n"),
            ["line 3, api.port: duplicate key"]
        );
        assert_eq!(
            errors("[api]\nport = 1\n[api]\ntoken = \"a\"\n"),
            ["line 3, api: duplicate key"]
        );
        let syntax = errors("[api]\nport = \n");
        assert_eq!(syntax.len(), 1);
        assert!(syntax[0].starts_with("line 2, api.port: "), "{syntax:?}");
        let unquoted = errors("[network]\nmode = dhcp\n");
        assert!(
            unquoted[0].starts_with("line 2, network.mode: string values must be quoted"),
            "{unquoted:?}"
        );
        let top = errors("x = = 1\n");
        assert!(top[0].starts_with("line 1, x: "), "{top:?}");
    }

    #[test]
    fn wrong_types_and_ranges() {
        assert_eq!(
            errors("[api]\nport = \"8080\"\n"),
            ["line 2, api.port: expected an integer, found a string"]
        );
        assert_eq!(
            errors("[api]\nport = 0\n"),
            ["line 2, api.port: must be a TCP port from 1 to 65535"]
        );
        assert_eq!(
            errors("[api]\nport = 65536\n"),
            ["line 2, api.port: must be a TCP port from 1 to 65535"]
        );
        assert_eq!(
            errors("[api]\ntoken = 12\n"),
            ["line 2, api.token: expected a string, found an integer"]
        );
        assert_eq!(
            errors("[api]\ntoken = \"has space\"\n"),
            [
                "line 2, api.token: character 4 of the token is not one of A-Z a-z 0-9 - . _ ~ + / (or `=` at the end)"
            ]
        );
        assert_eq!(
            errors("[api]\ntoken = \"\"\n"),
            ["line 2, api.token: the token is empty"]
        );
        assert_eq!(
            errors("[log]\nlevel = \"loud\"\n"),
            [
                "line 2, log.level: must be one of \"off\", \"error\", \"warn\", \"info\", \"debug\", \"trace\""
            ]
        );
        for bad in ["3", "0", "-2", "\"lots\"", "17592186044418"] {
            assert_eq!(
                errors(&format!("[td]\nmemory_mib = {bad}\n")),
                [
                    "line 2, td.memory_mib: must be \"auto\" or an even number of MiB from 2 to 16777216"
                ],
                "{bad}"
            );
        }
        assert_eq!(
            errors("[td]\nmemory_mib = 1.5\n"),
            ["line 2, td.memory_mib: expected \"auto\" or an integer, found a float"]
        );
    }

    #[test]
    fn network_settings_must_be_consistent() {
        assert_eq!(
            errors("[network]\nmode = \"manual\"\n"),
            ["line 2, network.mode: must be \"dhcp\" or \"static\""]
        );
        assert_eq!(
            errors("[network]\nmode = \"static\"\n"),
            [
                "line 2, network.mode: mode = \"static\" needs network.address (like \"192.168.1.20/24\")"
            ]
        );
        // An address without `mode = "static"` is not silently ignored.
        assert_eq!(
            errors("[network]\naddress = \"10.0.2.15/24\"\ngateway = \"10.0.2.2\"\n"),
            [
                "line 2, network.address: only used with network.mode = \"static\" (the mode is DHCP)",
                "line 3, network.gateway: only used with network.mode = \"static\" (the mode is DHCP)"
            ]
        );
        let static_with = |rest: &str| errors(&format!("[network]\nmode = \"static\"\n{rest}"));
        assert_eq!(
            static_with("address = \"10.0.2.15\"\n"),
            [
                "line 3, network.address: must be an IPv4 address with its prefix length, like \"192.168.1.20/24\""
            ]
        );
        assert_eq!(
            static_with("address = \"10.0.2/24\"\n"),
            [
                "line 3, network.address: must be an IPv4 address with its prefix length, like \"192.168.1.20/24\""
            ]
        );
        assert_eq!(
            static_with("address = \"10.0.2.15/33\"\n"),
            ["line 3, network.address: the prefix length must be a number from 1 to 32"]
        );
        assert_eq!(
            static_with("address = \"10.0.2.255/24\"\n"),
            [
                "line 3, network.address: 10.0.2.255 is the network or broadcast address of its subnet, not a host address"
            ]
        );
        assert_eq!(
            static_with("address = \"10.0.2.15/24\"\ngateway = \"10.0.3.1\"\n"),
            ["line 4, network.gateway: 10.0.3.1 is not another host in the subnet 10.0.2.15/24"]
        );
        assert_eq!(
            static_with("address = \"10.0.2.15/24\"\ngateway = \"gw\"\n"),
            ["line 4, network.gateway: must be an IPv4 address, like \"192.168.1.1\""]
        );
        // Both bad: both reported, in line order.
        assert_eq!(static_with("address = \"x\"\ngateway = \"y\"\n").len(), 2);
    }

    #[test]
    fn every_error_in_the_file_is_reported_in_line_order() {
        let all = errors("[log]\nlevel = \"x\"\n[api]\nport = 0\nextra = 1\n");
        assert_eq!(all.len(), 3, "{all:?}");
        assert!(all[0].starts_with("line 2, log.level"));
        assert!(all[1].starts_with("line 4, api.port"));
        assert!(all[2].starts_with("line 5, api.extra"));
    }

    #[test]
    fn bytes_that_are_not_a_small_text_file_are_refused() {
        let refusal = |bytes: &[u8]| match parse_config(bytes) {
            Ok(_) => panic!("accepted"),
            Err(errors) => errors,
        };
        let not_utf8 = refusal(b"[api]\ntoken = \"\xff\"\n");
        assert_eq!(not_utf8.to_string(), "the file is not UTF-8 text");
        let huge = alloc::vec![b'#'; MAX_CONFIG_BYTES + 1];
        assert!(matches!(
            refusal(&huge).0[0].problem,
            Problem::TooLarge { .. }
        ));
    }

    #[test]
    fn garbage_never_panics() {
        for text in [
            "[",
            "]]",
            "=",
            "a.b.c = 1",
            "[[api]]\nport=1",
            "[api.x]\ny=1",
            "\u{0}",
        ] {
            let _ = parse_config(text.as_bytes());
        }
        assert!(parse_config(b"[[api]]\nport=1").is_err());
    }

    #[test]
    fn sources_and_host_info_read_well() {
        let source = ConfigSource::Tftp {
            server: Ipv4Addr::new(10, 0, 2, 2),
            path: "/lab/appliance.toml".into(),
        };
        assert_eq!(source.to_string(), "tftp://10.0.2.2/lab/appliance.toml");
        let defaults = ConfigSource::Defaults {
            looked_for: "boot medium \\EFI\\BOOT\\appliance.toml".into(),
        };
        assert_eq!(
            defaults.to_string(),
            "defaults (no boot medium \\EFI\\BOOT\\appliance.toml)"
        );
        let config = parse("[network]\nmode = \"static\"\naddress = \"10.0.2.15/24\"\n");
        let info = config.host_info(&source, TokenSource::Generated);
        assert_eq!(info.network, "static");
        assert_eq!(info.api_port, 8080);
        assert_eq!(info.token_source, "generated");
        assert_eq!(info.config_source, "tftp://10.0.2.2/lab/appliance.toml");
    }

    #[test]
    fn ipv4_settings_display_for_the_log() {
        assert_eq!(ShowIpv4(&Ipv4Config::Dhcp).to_string(), "DHCPv4");
        let alone = Ipv4Config::Static {
            address: [10, 0, 2, 15],
            prefix_len: 32,
            gateway: None,
        };
        assert_eq!(
            ShowIpv4(&alone).to_string(),
            "static 10.0.2.15/32 (no gateway)"
        );
    }
}
