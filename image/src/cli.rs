//! The `cargo xtask` commands: `build`, `image`, `run`, `flash`, `test`.
//!
//! Argument parsing is hand-written: five subcommands and five flags, each `--name value` or
//! `--name=value`, do not justify a dependency (every case is unit-tested below).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::appconfig::{ComposedConfig, ConfigArgs, compose};
use crate::build::{
    BuiltImage, TD_GUEST_TARGET, build_appliance, describe, ensure_rustup_target,
    ensure_uefi_target, run_command, write_deploy_images,
};
use crate::deps;
use crate::error::{ImageError, Result};
use crate::http;
use crate::qemu::{BootMedium, GUEST_API_PORT, Qemu, QemuConfig};
use crate::serial::{generated_token, listening_after_ms};
use crate::workspace::{UEFI_TARGET, Workspace, cargo_binary};

/// Usage text.
pub const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  build                 build the appliance (release, x86_64-unknown-uefi) and lay out its ESP
  image [CONFIG]        build, then write under target/appliance/: appliance.efi, disk.img
                        (GPT + FAT32 ESP, ready for dd) and netboot/ (TFTP/HTTP boot files)
  run [MEDIUM] [--port N] [CONFIG]
                        build, boot it in QEMU, forward 127.0.0.1:N (default 8080) to its API;
                        prints `API ready at http://127.0.0.1:N` once it answers, runs until
                        Ctrl-C. MEDIUM: (none) the ESP directory, --disk boots disk.img as a
                        flashed node, --netboot boots through PXE/TFTP with no disk at all
  flash --device PATH [--image FILE]
                        write disk.img (default target/appliance/disk.img) to a whole block
                        device, after showing what it overwrites and asking to type YES
  test                  fmt --check, clippy, host unit tests, then the end-to-end tests (QEMU)

CONFIG (for image and run):
  --config FILE         appliance.toml to write next to the .efi (see README.md)
  --token T             API bearer token (overrides api.token of FILE); without one the
                        appliance generates a token at boot and prints it on its console
";

/// How long `run` waits for the API before giving up.
pub const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// What `run` boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMedium {
    /// The ESP directory (`fat:rw:`), the quickest.
    EspDir,
    /// `disk.img`, as a flashed node.
    Disk,
    /// PXE/TFTP, no disk.
    Netboot,
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XtaskCommand {
    /// `build`
    Build,
    /// `image [--config FILE] [--token T]`
    Image(ConfigArgs),
    /// `run [--disk|--netboot] [--port N] [--config FILE] [--token T]`
    Run {
        /// Host port forwarded to the guest API.
        port: u16,
        /// What QEMU boots.
        medium: RunMedium,
        /// Configuration written next to the `.efi`.
        config: ConfigArgs,
    },
    /// `flash --device PATH [--image FILE]`
    Flash {
        /// The block device.
        device: PathBuf,
        /// The image (default `target/appliance/disk.img`).
        image: Option<PathBuf>,
    },
    /// `test`
    Test,
    /// `help`, `-h`, `--help`
    Help,
}

/// A command-line mistake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    /// No subcommand given.
    #[error("no command given")]
    MissingCommand,
    /// An unknown subcommand.
    #[error("unknown command `{0}`")]
    UnknownCommand(String),
    /// An argument the command does not take.
    #[error("unexpected argument `{0}`")]
    UnexpectedArgument(String),
    /// A flag that takes a value without one.
    #[error("`{0}` needs a value")]
    MissingValue(&'static str),
    /// A flag given twice.
    #[error("`{0}` is given more than once")]
    Repeated(&'static str),
    /// `--port` with something that is not a port number 1..=65535.
    #[error("`{0}` is not a TCP port (1-65535)")]
    InvalidPort(String),
    /// Both `--disk` and `--netboot`.
    #[error("`--disk` and `--netboot` exclude each other")]
    ConflictingMedia,
    /// `flash` without `--device`.
    #[error("`flash` needs `--device PATH` (a whole block device such as /dev/sdb)")]
    MissingDevice,
}

/// Flags a command accepts: those taking a value, and switches.
struct FlagSpec {
    valued: &'static [&'static str],
    switches: &'static [&'static str],
}

/// Splits `args` into `(flag, value)` pairs per `spec` (`--name value`, `--name=value`;
/// switches get `None`). Each flag at most once.
fn parse_flags<'a>(
    mut args: impl Iterator<Item = &'a str>,
    spec: &FlagSpec,
) -> Result<Vec<(&'static str, Option<String>)>, UsageError> {
    let mut found: Vec<(&'static str, Option<String>)> = Vec::new();
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (arg, None),
        };
        let (flag, value) = if let Some(&flag) = spec.valued.iter().find(|&&f| f == name) {
            let value = match inline {
                Some(value) => value,
                None => args.next().ok_or(UsageError::MissingValue(flag))?,
            };
            (flag, Some(value.to_string()))
        } else if let Some(&flag) = spec.switches.iter().find(|&&f| f == arg) {
            (flag, None)
        } else {
            return Err(UsageError::UnexpectedArgument(arg.to_string()));
        };
        if found.iter().any(|(seen, _)| *seen == flag) {
            return Err(UsageError::Repeated(flag));
        }
        found.push((flag, value));
    }
    Ok(found)
}

fn flag_value(found: &[(&'static str, Option<String>)], flag: &str) -> Option<String> {
    found
        .iter()
        .find(|(name, _)| *name == flag)
        .and_then(|(_, value)| value.clone())
}

fn config_args(found: &[(&'static str, Option<String>)]) -> ConfigArgs {
    ConfigArgs {
        file: flag_value(found, "--config").map(PathBuf::from),
        token: flag_value(found, "--token"),
    }
}

/// `command`, if nothing follows it.
fn no_more<'a>(
    command: XtaskCommand,
    mut rest: impl Iterator<Item = &'a str>,
) -> Result<XtaskCommand, UsageError> {
    match rest.next() {
        Some(extra) => Err(UsageError::UnexpectedArgument(extra.to_string())),
        None => Ok(command),
    }
}

/// Parses the arguments after `cargo xtask`.
pub fn parse_args<S: AsRef<str>>(args: &[S]) -> Result<XtaskCommand, UsageError> {
    let mut args = args.iter().map(AsRef::as_ref);
    let command = args.next().ok_or(UsageError::MissingCommand)?;
    match command {
        "build" => no_more(XtaskCommand::Build, args),
        "test" => no_more(XtaskCommand::Test, args),
        "help" | "-h" | "--help" => no_more(XtaskCommand::Help, args),
        "image" => {
            let found = parse_flags(
                args,
                &FlagSpec {
                    valued: &["--config", "--token"],
                    switches: &[],
                },
            )?;
            Ok(XtaskCommand::Image(config_args(&found)))
        }
        "run" => {
            let found = parse_flags(
                args,
                &FlagSpec {
                    valued: &["--port", "--config", "--token"],
                    switches: &["--disk", "--netboot"],
                },
            )?;
            let has = |flag: &str| found.iter().any(|(name, _)| *name == flag);
            let medium = match (has("--disk"), has("--netboot")) {
                (true, true) => return Err(UsageError::ConflictingMedia),
                (true, false) => RunMedium::Disk,
                (false, true) => RunMedium::Netboot,
                (false, false) => RunMedium::EspDir,
            };
            let port = match flag_value(&found, "--port") {
                None => GUEST_API_PORT,
                Some(value) => match value.parse::<u16>() {
                    Ok(port) if port != 0 => port,
                    _ => return Err(UsageError::InvalidPort(value)),
                },
            };
            Ok(XtaskCommand::Run {
                port,
                medium,
                config: config_args(&found),
            })
        }
        "flash" => {
            let found = parse_flags(
                args,
                &FlagSpec {
                    valued: &["--device", "--image"],
                    switches: &[],
                },
            )?;
            Ok(XtaskCommand::Flash {
                device: flag_value(&found, "--device")
                    .map(PathBuf::from)
                    .ok_or(UsageError::MissingDevice)?,
                image: flag_value(&found, "--image").map(PathBuf::from),
            })
        }
        other => Err(UsageError::UnknownCommand(other.to_string())),
    }
}

/// Runs a parsed command.
pub fn execute(command: &XtaskCommand) -> Result<()> {
    let ws = Workspace::locate();
    match command {
        XtaskCommand::Help => {
            print!("{USAGE}");
            Ok(())
        }
        XtaskCommand::Build => {
            let image = build_appliance(&ws)?;
            println!("built {}", image.efi.display());
            println!("ESP   {}", image.esp_dir.display());
            println!("boot  {}", image.boot_file().display());
            Ok(())
        }
        XtaskCommand::Image(args) => {
            let composed = compose(args)?;
            let image = build_appliance(&ws)?;
            let written = write_deploy_images(&ws, &image, &composed.text)?;
            println!("appliance  {}", written.efi.display());
            println!(
                "disk       {} (dd it to a node's disk, or `cargo xtask flash`)",
                written.disk.display()
            );
            println!(
                "netboot    {}/ (see its README.txt)",
                written.netboot.display()
            );
            println!(
                "config     api.port {}, token {}",
                composed.api_port,
                if composed.token.is_some() {
                    "configured"
                } else {
                    "generated at boot"
                }
            );
            Ok(())
        }
        XtaskCommand::Run {
            port,
            medium,
            config,
        } => run(&ws, *port, *medium, config),
        XtaskCommand::Flash { device, image } => {
            let image = image.clone().unwrap_or_else(|| ws.disk_image());
            if !image.is_file() {
                return Err(ImageError::MissingImage(image));
            }
            crate::flash::flash(device, &image, &mut std::io::stdin().lock())
        }
        XtaskCommand::Test => test(&ws),
    }
}

/// The QEMU medium for `run`: the ESP directory gets the configuration only when one was
/// asked for; disk and netboot boot the artifacts `cargo xtask image` writes (with the
/// template when no configuration was asked for), as a node would.
fn prepare_medium(
    ws: &Workspace,
    image: &BuiltImage,
    medium: RunMedium,
    args: &ConfigArgs,
    composed: &ComposedConfig,
) -> Result<BootMedium> {
    let asked = args.file.is_some() || args.token.is_some();
    Ok(match medium {
        RunMedium::EspDir => BootMedium::EspDir {
            config: asked.then(|| composed.text.clone()),
        },
        RunMedium::Disk => BootMedium::Disk(write_deploy_images(ws, image, &composed.text)?.disk),
        RunMedium::Netboot => {
            BootMedium::Netboot(write_deploy_images(ws, image, &composed.text)?.netboot)
        }
    })
}

/// Fetches the API's certificate over a connection that pins the fingerprint the console
/// printed, and writes it as PEM for `curl --cacert` (the generated certificate names
/// `localhost`); returns the file.
fn save_api_certificate(ws: &Workspace, port: u16) -> Result<std::path::PathBuf> {
    let mut connection = http::Connection::open(port, Duration::from_secs(15))?;
    let chain = connection.handshake()?;
    let leaf = chain
        .first()
        .ok_or(ImageError::BadResponse("the API sent no certificate"))?;
    let path = ws
        .instances_dir()
        .join(format!("api-certificate-{port}.pem"));
    std::fs::write(&path, http::certificate_pem(leaf)).map_err(|source| ImageError::Io {
        action: "write the API certificate to",
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// `cargo xtask run`: build, boot, wait for the API, stream the console until Ctrl-C.
fn run(ws: &Workspace, port: u16, medium: RunMedium, args: &ConfigArgs) -> Result<()> {
    let composed = compose(args)?;
    let image = build_appliance(ws)?;
    let boot_medium = prepare_medium(ws, &image, medium, args, &composed)?;
    let firmware = deps::ensure()?;
    let stop = Arc::new(AtomicBool::new(false));
    let handler_flag = Arc::clone(&stop);
    if let Err(err) = ctrlc::set_handler(move || handler_flag.store(true, Ordering::SeqCst)) {
        eprintln!("xtask: could not install a Ctrl-C handler ({err}); QEMU still stops with it");
    }
    let mut config = QemuConfig::new(
        &image,
        port,
        ws.instances_dir()
            .join(format!("run-{}-{port}", std::process::id())),
    );
    config.medium = boot_medium;
    config.guest_port = composed.api_port;
    config.guest_address = composed.static_address;
    config.echo_serial = true;
    let mut vm = Qemu::start(&firmware, &config)?;
    eprintln!("xtask: {}", vm.command_line());
    match vm.wait_ready_or_cancel(READY_TIMEOUT, &stop) {
        Ok(ready_after) => {
            let pem = match http::pinned_certificate(port) {
                Some(_) => Some(save_api_certificate(ws, port)?),
                None => None,
            };
            let scheme = if pem.is_some() { "https" } else { "http" };
            println!("API ready at {scheme}://127.0.0.1:{port}");
            let appliance = listening_after_ms(&vm.serial_log())
                .map_or_else(|| "unknown".to_string(), |ms| format!("{ms} ms"));
            println!(
                "ready after {:.1} s (QEMU start to first 200 from /v1/health; appliance entry to listening: {appliance})",
                ready_after.as_secs_f64()
            );
            let token = composed
                .token
                .clone()
                .or_else(|| generated_token(&vm.serial_log()));
            match token {
                Some(token) => match &pem {
                    Some(pem) => println!(
                        "try: curl --cacert {} -H 'Authorization: Bearer {token}' \
                         https://localhost:{port}/v1/host",
                        pem.display()
                    ),
                    None => println!(
                        "try: curl -H 'Authorization: Bearer {token}' http://127.0.0.1:{port}/v1/host"
                    ),
                },
                None => println!("the API token is printed on the console above"),
            }
        }
        Err(ImageError::Cancelled) => {
            vm.kill();
            return Ok(());
        }
        Err(err) => {
            vm.kill();
            eprintln!("xtask: QEMU stderr:\n{}", vm.stderr_log());
            return Err(err);
        }
    }
    while !stop.load(Ordering::SeqCst) {
        if let Some(status) = vm.exit_status() {
            eprintln!("xtask: QEMU exited ({status})\n{}", vm.stderr_log());
            return Err(ImageError::QemuExited { status });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    vm.kill();
    eprintln!("xtask: stopped QEMU");
    Ok(())
}

/// One step of `cargo xtask test`.
struct Step {
    name: &'static str,
    command: Command,
}

fn cargo(ws: &Workspace, args: &[&str]) -> Command {
    let mut command = Command::new(cargo_binary());
    command.args(args).current_dir(&ws.root);
    command
}

/// `cargo xtask test`: every check CI enforces, failing fast.
fn test(ws: &Workspace) -> Result<()> {
    // The UEFI clippy step below needs the target before the build step would add it: rustup
    // does not install `rust-toolchain.toml`'s targets by itself when automatic installs are off.
    ensure_uefi_target(ws)?;
    ensure_rustup_target(ws, TD_GUEST_TARGET)?;
    let probe = |args: &[&str]| {
        let mut command = cargo(ws, args);
        command.current_dir(ws.root.join("tests/guests/td-probe"));
        command
    };
    let host_steps = [
        Step {
            name: "format (cargo fmt --check)",
            command: cargo(ws, &["fmt", "--all", "--check"]),
        },
        Step {
            name: "lints, host (cargo clippy --workspace --all-targets)",
            command: cargo(
                ws,
                &[
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ],
            ),
        },
        Step {
            name: "lints, UEFI appliance (cargo clippy --target x86_64-unknown-uefi)",
            command: cargo(
                ws,
                &[
                    "clippy",
                    "--package",
                    "appliance",
                    "--target",
                    UEFI_TARGET,
                    "--",
                    "-D",
                    "warnings",
                ],
            ),
        },
    ];
    let probe_steps = [
        Step {
            name: "format, TD test guest (tests/guests/td-probe: cargo fmt --check)",
            command: probe(&["fmt", "--check"]),
        },
        Step {
            name: "lints, TD test guest (tests/guests/td-probe: cargo clippy --release)",
            command: probe(&[
                "clippy",
                "--release",
                "--target-dir",
                "../../../target/td-probe",
                "--",
                "-D",
                "warnings",
            ]),
        },
    ];
    for mut step in host_steps.into_iter().chain(probe_steps) {
        run_step(step.name, &mut step.command)?;
    }
    // QEMU and OVMF first: host unit tests build TDs from Debian's OVMF.fd too.
    eprintln!("\n=== xtask test: QEMU and OVMF");
    let firmware = deps::ensure()?;
    eprintln!("using {}", firmware.qemu.display());
    let mut tally = TestTally::default();
    run_test_step(
        "host unit tests (cargo test --workspace --exclude e2e)",
        &mut cargo(ws, &["test", "--workspace", "--exclude", "e2e"]),
        &mut tally,
    )?;
    // The S-EPT freeze/publish protocol and the CPU call slot, model-checked with loom (own
    // target dir: the cfg changes every crate's build).
    let mut loom = cargo(
        ws,
        &[
            "test",
            "--package",
            "tdx-runtime",
            "--release",
            "--lib",
            "loom_tests",
        ],
    );
    loom.env("RUSTFLAGS", "--cfg loom")
        .env("CARGO_TARGET_DIR", ws.root.join("target").join("loom"));
    run_test_step(
        "model checking (RUSTFLAGS=\"--cfg loom\" cargo test -p tdx-runtime --release --lib loom_tests)",
        &mut loom,
        &mut tally,
    )?;
    eprintln!("\n=== xtask test: build the appliance image");
    build_appliance(ws)?;
    run_test_step(
        "end-to-end tests (cargo test -p e2e)",
        &mut cargo(ws, &["test", "--package", "e2e"]),
        &mut tally,
    )?;
    eprintln!(
        "\nxtask test: every step passed (fmt, clippy, unit tests, loom model checking, end-to-end tests)"
    );
    // Last line: the total over every runner, in the plain `N passed, M failed` form.
    println!("total: {} passed, {} failed", tally.passed, tally.failed);
    Ok(())
}

fn run_step(name: &str, command: &mut Command) -> Result<()> {
    eprintln!("\n=== xtask test: {name}\n$ {}", describe(command));
    run_command(command).inspect_err(|_| eprintln!("\nxtask test: FAILED at step: {name}"))
}

/// Passed/failed test counts summed over every test runner a step ran.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TestTally {
    /// Tests that passed.
    pub passed: u64,
    /// Tests that failed.
    pub failed: u64,
}

impl TestTally {
    /// Adds the counts of one runner's summary line, if `line` is one: libtest's
    /// `test result: ok. 12 passed; 0 failed; ...` or the e2e harness's `7 passed, 0 failed`.
    pub fn add_summary_line(&mut self, line: &str) -> bool {
        let line = line.trim();
        let counts = line
            .strip_prefix("test result: ")
            .and_then(|rest| rest.split_once(". "))
            .map(|(_, rest)| rest)
            .unwrap_or(line);
        let mut numbers = counts
            .split([';', ','])
            .map(str::trim)
            .take(2)
            .map(|part| part.split_once(' '));
        let (Some(Some((passed, "passed"))), Some(Some((failed, "failed")))) =
            (numbers.next(), numbers.next())
        else {
            return false;
        };
        let (Ok(passed), Ok(failed)) = (passed.parse::<u64>(), failed.parse::<u64>()) else {
            return false;
        };
        self.passed += passed;
        self.failed += failed;
        true
    }
}

/// Runs a test step with its stdout passed through line by line and its summaries tallied.
fn run_test_step(name: &str, command: &mut Command, tally: &mut TestTally) -> Result<()> {
    eprintln!("\n=== xtask test: {name}\n$ {}", describe(command));
    let text = describe(command);
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|source| ImageError::Spawn {
            program: command.get_program().to_string_lossy().into_owned(),
            source,
        })?;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            println!("{line}");
            tally.add_summary_line(&line);
        }
    }
    let status = child.wait().map_err(|source| ImageError::Spawn {
        program: text.clone(),
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        eprintln!("\nxtask test: FAILED at step: {name}");
        Err(ImageError::CommandFailed {
            command: text,
            status,
        })
    }
}

/// Entry point of the `xtask` binary; returns the process exit code.
pub fn main_with_args(args: &[String]) -> u8 {
    let command = match parse_args(args) {
        Ok(command) => command,
        Err(err) => {
            eprintln!("xtask: {err}\n\n{USAGE}");
            return 2;
        }
    };
    match execute(&command) {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("xtask: error: {err}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_commands() {
        assert_eq!(parse_args(&["build"]), Ok(XtaskCommand::Build));
        assert_eq!(parse_args(&["test"]), Ok(XtaskCommand::Test));
        assert_eq!(
            parse_args(&["run"]),
            Ok(XtaskCommand::Run {
                port: 8080,
                medium: RunMedium::EspDir,
                config: ConfigArgs::default()
            })
        );
        assert_eq!(parse_args(&["--help"]), Ok(XtaskCommand::Help));
    }

    #[test]
    fn parses_the_port_in_both_spellings() {
        let port_of = |args: &[&str]| match parse_args(args) {
            Ok(XtaskCommand::Run { port, .. }) => Some(port),
            _ => None,
        };
        assert_eq!(port_of(&["run", "--port", "18080"]), Some(18080));
        assert_eq!(port_of(&["run", "--port=9000"]), Some(9000));
    }

    #[test]
    fn parses_media_and_configuration_flags() {
        assert_eq!(
            parse_args(&["run", "--netboot", "--port", "18080", "--token", "T"]),
            Ok(XtaskCommand::Run {
                port: 18080,
                medium: RunMedium::Netboot,
                config: ConfigArgs {
                    file: None,
                    token: Some("T".into())
                }
            })
        );
        assert_eq!(
            parse_args(&["run", "--disk", "--config=lab.toml", "--token=a=b"]),
            Ok(XtaskCommand::Run {
                port: 8080,
                medium: RunMedium::Disk,
                config: ConfigArgs {
                    file: Some("lab.toml".into()),
                    token: Some("a=b".into())
                }
            })
        );
        assert_eq!(
            parse_args(&["image", "--token", "T"]),
            Ok(XtaskCommand::Image(ConfigArgs {
                file: None,
                token: Some("T".into())
            }))
        );
        assert_eq!(
            parse_args(&["flash", "--device", "/dev/sdz"]),
            Ok(XtaskCommand::Flash {
                device: "/dev/sdz".into(),
                image: None
            })
        );
    }

    #[test]
    fn tallies_libtest_and_e2e_summaries() {
        let mut tally = TestTally::default();
        assert!(tally.add_summary_line(
            "test result: ok. 32 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s"
        ));
        assert!(tally.add_summary_line(
            "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out"
        ));
        assert!(tally.add_summary_line("7 passed, 0 failed"));
        assert!(!tally.add_summary_line("test foo ... ok"));
        assert!(!tally.add_summary_line("e2e: 20 sequential GET /v1/health"));
        assert!(!tally.add_summary_line("x passed, 0 failed"));
        assert_eq!(
            tally,
            TestTally {
                passed: 42,
                failed: 2
            }
        );
    }

    #[test]
    fn rejects_bad_command_lines() {
        let none: [&str; 0] = [];
        assert_eq!(parse_args(&none), Err(UsageError::MissingCommand));
        assert_eq!(
            parse_args(&["deploy"]),
            Err(UsageError::UnknownCommand("deploy".into()))
        );
        assert_eq!(
            parse_args(&["run", "--port"]),
            Err(UsageError::MissingValue("--port"))
        );
        assert_eq!(
            parse_args(&["run", "--disk", "--netboot"]),
            Err(UsageError::ConflictingMedia)
        );
        assert_eq!(
            parse_args(&["run", "--token", "a", "--token", "b"]),
            Err(UsageError::Repeated("--token"))
        );
        assert_eq!(
            parse_args(&["run", "--disk=yes"]),
            Err(UsageError::UnexpectedArgument("--disk=yes".into()))
        );
        assert_eq!(parse_args(&["flash"]), Err(UsageError::MissingDevice));
        assert_eq!(
            parse_args(&["image", "--port", "1"]),
            Err(UsageError::UnexpectedArgument("--port".into()))
        );
        assert_eq!(
            parse_args(&["run", "--port", "0"]),
            Err(UsageError::InvalidPort("0".into()))
        );
        assert_eq!(
            parse_args(&["run", "--port", "70000"]),
            Err(UsageError::InvalidPort("70000".into()))
        );
        assert_eq!(
            parse_args(&["build", "--release"]),
            Err(UsageError::UnexpectedArgument("--release".into()))
        );
        assert_eq!(
            parse_args(&["run", "--verbose"]),
            Err(UsageError::UnexpectedArgument("--verbose".into()))
        );
    }
}
