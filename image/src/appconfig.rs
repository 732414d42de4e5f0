//! The `appliance.toml` written into images: the operator's `--config FILE`, with `--token T`
//! set in it, checked with the appliance's own parser before anything boots, so a mistake
//! is reported on the host with the same line/key messages the console would show.

use std::net::Ipv4Addr;
use std::path::Path;

use appliance::config::{ApplianceConfig, parse_config};
use mgmt_api::{BearerToken, Role};
use net::Ipv4Config;

use crate::error::{ImageError, Result};

/// The configuration written when the operator gives none: every key, commented out, with
/// its default. The appliance then runs on defaults and generates its token at boot.
pub const TEMPLATE: &str = r#"# appliance.toml: configuration of the TDX host appliance, read at boot from the
# directory of the .efi (\EFI\BOOT\ on a disk, the boot file's directory on a TFTP server).
# Every key is optional; the values shown are the defaults. Unknown or misspelled keys,
# duplicates and invalid values stop the appliance with a message naming the line.

[api]
# port = 8080              # TCP port of the management API (1-65535)
# token = "..."            # admin bearer token (A-Z a-z 0-9 - . _ ~ + /, up to 256
                           # characters)
# tokens = [               # more tokens, each with its role: "admin" may call everything,
#   { token = "...", role = "reader" },  # "reader" only GET (no console input)
# ]                        # without any admin token, a random one is generated at every
                           # boot and printed once on the console
# tls = true               # HTTPS only on the API port; false: plain HTTP only
# tls_certificate = """    # PEM certificate chain (server certificate first) ...
# -----BEGIN CERTIFICATE-----
# ...
# """
# tls_key = """            # ... and its PEM private key; both or neither. Without them a
# ...                      # key and self-signed certificate are generated at first boot,
# """                      # kept in a UEFI variable; the console prints the fingerprint
# health_port = 8081       # with TLS: plain HTTP answering only GET /v1/health

[network]
# mode = "dhcp"            # "dhcp" or "static"
# address = "192.168.1.20/24"  # static only (required): address/prefix length
# gateway = "192.168.1.1"  # static only (optional): default gateway, inside the subnet

[td]
# memory_mib = "auto"      # memory set aside for TD private memory: "auto" or MiB (even)

[log]
# level = "info"           # off, error, warn, info, debug, trace
"#;

/// What `--config` and `--token` asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigArgs {
    /// `--config FILE`.
    pub file: Option<std::path::PathBuf>,
    /// `--token T`.
    pub token: Option<String>,
}

/// A configuration ready to be written next to the `.efi`, with what the host needs to
/// reach the booted appliance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposedConfig {
    /// The file's text.
    pub text: String,
    /// The API port it sets.
    pub api_port: u16,
    /// The static address it sets, if any (QEMU forwards the host port there).
    pub static_address: Option<Ipv4Addr>,
    /// An admin token it sets, if any (else the appliance generates one at boot).
    pub token: Option<String>,
}

impl ComposedConfig {
    fn checked(text: String, origin: &str) -> Result<Self> {
        let config: ApplianceConfig =
            parse_config(text.as_bytes()).map_err(|errors| ImageError::InvalidConfig {
                origin: origin.to_string(),
                errors,
            })?;
        Ok(Self {
            api_port: config.server.port,
            static_address: match config.server.ipv4 {
                Ipv4Config::Static { address, .. } => Some(Ipv4Addr::from(address)),
                Ipv4Config::Dhcp => None,
            },
            token: config
                .api_tokens
                .first_with(Role::Admin)
                .map(|token| token.as_str().to_string()),
            text,
        })
    }
}

/// The configuration for `args`: the file (or [`TEMPLATE`]) with `api.token` set to the
/// token, checked with the appliance's parser.
pub fn compose(args: &ConfigArgs) -> Result<ComposedConfig> {
    let (text, origin) = match &args.file {
        Some(path) => (
            std::fs::read_to_string(path).map_err(|source| ImageError::Io {
                action: "read the configuration file",
                path: path.clone(),
                source,
            })?,
            format!("in {}", path.display()),
        ),
        None => (TEMPLATE.to_string(), "in the built-in template".to_string()),
    };
    let from_file = ComposedConfig::checked(text, &origin)?;
    let Some(token) = &args.token else {
        return Ok(from_file);
    };
    BearerToken::new(token).map_err(ImageError::InvalidToken)?;
    let text = with_token(&from_file.text, token).ok_or_else(|| ImageError::InvalidConfig {
        origin: origin.clone(),
        errors: appliance::config::ConfigErrors(Vec::new()),
    })?;
    ComposedConfig::checked(text, &format!("{origin} with --token"))
}

/// `text` with `api.token` set to `token` (comments and layout kept). `None` if `text` is
/// not TOML or `api` is not a table (both already refused by the parser before this runs).
fn with_token(text: &str, token: &str) -> Option<String> {
    let mut doc: toml_edit::DocumentMut = text.parse().ok()?;
    if !doc.contains_key("api") {
        doc.insert("api", toml_edit::table());
    }
    let api = doc.get_mut("api")?.as_table_like_mut()?;
    api.insert("token", toml_edit::value(token));
    Some(doc.to_string())
}

/// Writes `text` as `appliance.toml` into `dir`.
pub fn write_into(dir: &Path, text: &str) -> Result<()> {
    let path = dir.join(appliance::config::CONFIG_FILE_NAME);
    std::fs::write(&path, text).map_err(|source| ImageError::Io {
        action: "write",
        path,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch_file(name: &str, text: &str) -> std::path::PathBuf {
        let path =
            std::env::temp_dir().join(format!("appconfig-{name}-{}.toml", std::process::id()));
        std::fs::write(&path, text).expect("write");
        path
    }

    #[test]
    fn the_template_means_defaults() {
        let composed = compose(&ConfigArgs::default()).expect("template");
        assert_eq!(composed.text, TEMPLATE);
        assert_eq!(composed.api_port, 8080);
        assert_eq!(composed.static_address, None);
        assert_eq!(composed.token, None);
    }

    #[test]
    fn the_token_is_set_into_the_template() {
        let composed = compose(&ConfigArgs {
            file: None,
            token: Some("T".into()),
        })
        .expect("composed");
        assert_eq!(composed.token.as_deref(), Some("T"));
        assert!(composed.text.contains("# port = 8080"), "comments kept");
    }

    #[test]
    fn the_token_overrides_the_file_and_keeps_its_settings() {
        let path = scratch_file(
            "override",
            "# mine\n[api]\nport = 9000\ntoken = \"old\"\n[network]\nmode = \"static\"\naddress = \"10.0.2.15/24\"\n",
        );
        let composed = compose(&ConfigArgs {
            file: Some(path.clone()),
            token: Some("new-token".into()),
        })
        .expect("composed");
        assert_eq!(composed.token.as_deref(), Some("new-token"));
        assert_eq!(composed.api_port, 9000);
        assert_eq!(composed.static_address, Some(Ipv4Addr::new(10, 0, 2, 15)));
        assert!(composed.text.starts_with("# mine\n"));
        assert!(!composed.text.contains("old"));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn dotted_and_missing_api_sections_take_the_token() {
        for text in ["api.port = 9001\n", "[log]\nlevel = \"warn\"\n"] {
            let path = scratch_file("dotted", text);
            let composed = compose(&ConfigArgs {
                file: Some(path.clone()),
                token: Some("tok".into()),
            })
            .expect("composed");
            assert_eq!(composed.token.as_deref(), Some("tok"), "{text}");
            let _ = std::fs::remove_file(path);
        }
    }

    #[test]
    fn invalid_files_and_tokens_are_refused_with_the_appliance_messages() {
        let path = scratch_file("bad", "[api]\nport = 0\n");
        let err = compose(&ConfigArgs {
            file: Some(path.clone()),
            token: Some("T".into()),
        })
        .expect_err("invalid");
        let text = err.to_string();
        assert!(
            text.contains("line 2, api.port: must be a TCP port"),
            "{text}"
        );
        let _ = std::fs::remove_file(path);
        let err = compose(&ConfigArgs {
            file: None,
            token: Some("two words".into()),
        })
        .expect_err("bad token");
        assert!(matches!(err, ImageError::InvalidToken(_)), "{err}");
        assert!(
            compose(&ConfigArgs {
                file: Some("/nonexistent/appliance.toml".into()),
                token: None,
            })
            .is_err()
        );
    }
}
