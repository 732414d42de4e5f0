//! The `cargo xtask` commands: `build`, `run [--port N]`, `test`.
//!
//! Argument parsing is hand-written: three subcommands and one flag do not justify a dependency.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::build::{build_appliance, describe, run_command};
use crate::deps;
use crate::error::{ImageError, Result};
use crate::qemu::{GUEST_API_PORT, Qemu, QemuConfig};
use crate::serial::listening_after_ms;
use crate::workspace::{UEFI_TARGET, Workspace, cargo_binary};

/// Usage text.
pub const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  build            build the appliance (release, x86_64-unknown-uefi) and lay out its ESP
  run [--port N]   build, boot it in QEMU, forward 127.0.0.1:N (default 8080) to its API;
                   prints `API ready at http://127.0.0.1:N` once it answers, runs until Ctrl-C
  test             fmt --check, clippy, host unit tests, then the end-to-end tests (boots QEMU)
";

/// How long `run` waits for the API before giving up.
pub const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XtaskCommand {
    /// `build`
    Build,
    /// `run [--port N]`
    Run {
        /// Host port forwarded to the guest API.
        port: u16,
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
    /// `--port` without a value.
    #[error("`--port` needs a value")]
    MissingPortValue,
    /// `--port` with something that is not a port number 1..=65535.
    #[error("`{0}` is not a TCP port (1-65535)")]
    InvalidPort(String),
}

/// Parses the arguments after `cargo xtask`.
pub fn parse_args<S: AsRef<str>>(args: &[S]) -> Result<XtaskCommand, UsageError> {
    let mut args = args.iter().map(AsRef::as_ref);
    let command = match args.next() {
        None => return Err(UsageError::MissingCommand),
        Some("build") => XtaskCommand::Build,
        Some("test") => XtaskCommand::Test,
        Some("help" | "-h" | "--help") => XtaskCommand::Help,
        Some("run") => {
            let mut port = GUEST_API_PORT;
            while let Some(arg) = args.next() {
                let value = match arg.split_once('=') {
                    Some(("--port", value)) => value,
                    _ if arg == "--port" => args.next().ok_or(UsageError::MissingPortValue)?,
                    _ => return Err(UsageError::UnexpectedArgument(arg.to_string())),
                };
                port = match value.parse::<u16>() {
                    Ok(port) if port != 0 => port,
                    _ => return Err(UsageError::InvalidPort(value.to_string())),
                };
            }
            return Ok(XtaskCommand::Run { port });
        }
        Some(other) => return Err(UsageError::UnknownCommand(other.to_string())),
    };
    match args.next() {
        Some(extra) => Err(UsageError::UnexpectedArgument(extra.to_string())),
        None => Ok(command),
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
        XtaskCommand::Run { port } => run(&ws, *port),
        XtaskCommand::Test => test(&ws),
    }
}

/// `cargo xtask run`: build, boot, wait for the API, stream the console until Ctrl-C.
fn run(ws: &Workspace, port: u16) -> Result<()> {
    let image = build_appliance(ws)?;
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
    config.echo_serial = true;
    let mut vm = Qemu::start(&firmware, &config)?;
    eprintln!("xtask: {}", vm.command_line());
    match vm.wait_ready_or_cancel(READY_TIMEOUT, &stop) {
        Ok(ready_after) => {
            println!("API ready at http://127.0.0.1:{port}");
            let appliance = listening_after_ms(&vm.serial_log())
                .map_or_else(|| "unknown".to_string(), |ms| format!("{ms} ms"));
            println!(
                "ready after {:.1} s (QEMU start to first 200 from /v1/health; appliance entry to listening: {appliance})",
                ready_after.as_secs_f64()
            );
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
    for mut step in host_steps {
        run_step(step.name, &mut step.command)?;
    }
    let mut tally = TestTally::default();
    run_test_step(
        "host unit tests (cargo test --workspace --exclude e2e)",
        &mut cargo(ws, &["test", "--workspace", "--exclude", "e2e"]),
        &mut tally,
    )?;
    eprintln!("\n=== xtask test: build the appliance image");
    build_appliance(ws)?;
    eprintln!("\n=== xtask test: QEMU and OVMF");
    let firmware = deps::ensure()?;
    eprintln!("using {}", firmware.qemu.display());
    run_test_step(
        "end-to-end tests (cargo test -p e2e)",
        &mut cargo(ws, &["test", "--package", "e2e"]),
        &mut tally,
    )?;
    eprintln!("\nxtask test: every step passed (fmt, clippy, unit tests, end-to-end tests)");
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
        assert_eq!(parse_args(&["run"]), Ok(XtaskCommand::Run { port: 8080 }));
        assert_eq!(parse_args(&["--help"]), Ok(XtaskCommand::Help));
    }

    #[test]
    fn parses_the_port_in_both_spellings() {
        assert_eq!(
            parse_args(&["run", "--port", "18080"]),
            Ok(XtaskCommand::Run { port: 18080 })
        );
        assert_eq!(
            parse_args(&["run", "--port=9000"]),
            Ok(XtaskCommand::Run { port: 9000 })
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
            Err(UsageError::MissingPortValue)
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
