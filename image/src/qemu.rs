//! Booting the appliance image in QEMU (q35, TCG, OVMF, virtio-net with user networking) and
//! waiting until its management API answers.
//!
//! Every instance gets a private directory with its own copy of the OVMF variable store and of
//! the ESP, so several instances (a developer's `cargo xtask run` and the e2e tests) can run at
//! once. The guest's serial console is captured (and optionally echoed line by line to stdout);
//! QEMU is killed when the [`Qemu`] value is dropped.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::build::{BuiltImage, describe, layout_esp};
use crate::deps::Firmware;
use crate::error::{ImageError, Result};
use crate::http;

/// What the appliance prints before the API's certificate fingerprint (`appliance::boot`).
pub const FINGERPRINT_MARKER: &str = "TLS certificate SHA-256 fingerprint ";

/// The API certificate's fingerprint the console printed last (the current boot's), if any.
pub fn api_fingerprint(serial: &str) -> Option<http::Fingerprint> {
    let start = serial.rfind(FINGERPRINT_MARKER)? + FINGERPRINT_MARKER.len();
    let text = serial.get(start..)?.lines().next()?;
    http::parse_fingerprint(text.get(..95)?)
}

/// The NIC: virtio-net with `romfile=` (empty), so the firmware drives it with OVMF's own
/// virtio-net driver (edk2 `OvmfPkg/VirtioNetDxe`, fixed descriptor rings) instead of the
/// iPXE option ROM QEMU attaches by default. iPXE's SNP queues received frames in its own
/// small heap; with ~140 API connections that heap was corrupted and the appliance died
/// with a page fault inside `virtio-net.efidrv` (measured with QEMU 7.2 and Debian's
/// ipxe-qemu). A flashed server uses its NIC vendor's driver either way. It also saves
/// iPXE's 2 s prompt when netbooting.
const NIC_DEVICE: &str = "virtio-net-pci,netdev=n0,romfile=";
/// The port the appliance's API listens on inside the guest by default.
pub const GUEST_API_PORT: u16 = 8080;

/// What the guest boots from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootMedium {
    /// A directory presented as a FAT disk (`fat:rw:`), holding `EFI/BOOT/BOOTX64.EFI` and
    /// `appliance.toml` when `config` is given.
    EspDir {
        /// Text of `EFI/BOOT/appliance.toml`; `None` writes no file.
        config: Option<String>,
    },
    /// A disk image (copied into the instance directory first, so it stays pristine),
    /// attached as a virtio disk that the firmware boots first, as on a flashed node.
    Disk(PathBuf),
    /// No disk at all: the firmware's own PXE client (OVMF VirtioNetDxe, no iPXE option ROM)
    /// boots [`crate::netboot::BOOT_FILE`] from QEMU's built-in DHCP/TFTP server serving a
    /// copy of this directory.
    Netboot(PathBuf),
}

/// How one QEMU instance is started.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// The appliance's `.efi` file (used by [`BootMedium::EspDir`]).
    pub efi: PathBuf,
    /// What the guest boots from.
    pub medium: BootMedium,
    /// Port on 127.0.0.1 forwarded to the guest's API port.
    pub host_port: u16,
    /// The API port inside the guest (`api.port` of the configuration).
    pub guest_port: u16,
    /// The guest address the forward goes to (a static `network.address`); `None` for
    /// QEMU's DHCP address.
    pub guest_address: Option<Ipv4Addr>,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Number of virtual CPUs.
    pub cpus: u32,
    /// Echo the serial console to this process's stdout as lines arrive.
    pub echo_serial: bool,
    /// More ports forwarded from 127.0.0.1 to the guest (host port, guest port), e.g. an
    /// `api.health_port`.
    pub extra_forwards: Vec<(u16, u16)>,
    /// Private directory for this instance (created; removed again on drop).
    pub instance_dir: PathBuf,
}

impl QemuConfig {
    /// Defaults: boots the image's ESP directory without a configuration file, 1 GiB (room
    /// for a 256 MiB TD beside the appliance),
    /// 2 CPUs, API on the default guest port, serial captured but not echoed.
    pub fn new(image: &BuiltImage, host_port: u16, instance_dir: PathBuf) -> Self {
        Self {
            efi: image.efi.clone(),
            medium: BootMedium::EspDir { config: None },
            host_port,
            guest_port: GUEST_API_PORT,
            guest_address: None,
            memory_mib: 1024,
            cpus: 2,
            echo_serial: false,
            extra_forwards: Vec::new(),
            instance_dir,
        }
    }
}

/// Reserves a free TCP port on 127.0.0.1 (bind to port 0, read it, release it).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(ImageError::NoFreePort)?;
    let port = listener
        .local_addr()
        .map_err(ImageError::NoFreePort)?
        .port();
    Ok(port)
}

/// Captured console output, shared with the reader threads.
#[derive(Debug, Default)]
struct Captured {
    serial: Vec<u8>,
    stderr: Vec<u8>,
}

/// A running QEMU instance.
#[derive(Debug)]
pub struct Qemu {
    child: Child,
    host_port: u16,
    started: Instant,
    captured: Arc<Mutex<Captured>>,
    readers: Vec<JoinHandle<()>>,
    instance_dir: PathBuf,
    command_line: String,
    /// QEMU and its arguments, to start it again on the same instance directory.
    program: PathBuf,
    args: Vec<std::ffi::OsString>,
    echo_serial: bool,
}

impl Qemu {
    /// Prepares the instance directory and starts QEMU.
    pub fn start(firmware: &Firmware, config: &QemuConfig) -> Result<Self> {
        let dir = &config.instance_dir;
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir).map_err(|source| ImageError::Io {
            action: "create directory",
            path: dir.clone(),
            source,
        })?;
        let vars = dir.join("OVMF_VARS.fd");
        copy_writable(&firmware.ovmf_vars, &vars)?;

        let mut command = Command::new(&firmware.qemu);
        command
            .args(["-nodefaults", "-machine", "q35", "-accel", "tcg"])
            // RDRAND for the generated API token, and AMD SVM with nested paging, on which
            // the software TDX module runs TD code (`max` would offer both, but Debian's
            // 4 MiB OVMF prints nothing under it with QEMU 7.2). 48 physical address bits so
            // that a TD's shared bit (GPA bit 47) reaches the nested page tables instead of
            // faulting in the guest's own tables.
            .args(["-cpu", "qemu64,+rdrand,+svm,+npt,phys-bits=48"])
            .args(["-m", &config.memory_mib.to_string()])
            // All of the appliance's RAM backed from the start, as on a server: otherwise the
            // first touch of each page (a TD accepting its memory) costs a page fault in
            // the host kernel, ten times the software module's own zeroing of it.
            .arg("-mem-prealloc")
            .args(["-smp", &config.cpus.to_string()])
            .args(["-display", "none", "-monitor", "none", "-no-reboot"])
            .args(["-serial", "stdio"])
            .arg("-drive")
            .arg(drive_arg(
                "if=pflash,format=raw,readonly=on",
                &firmware.ovmf_code,
            ))
            .arg("-drive")
            .arg(drive_arg("if=pflash,format=raw", &vars));
        let guest = config
            .guest_address
            .map_or_else(String::new, |address| address.to_string());
        let forward = std::iter::once((config.host_port, config.guest_port))
            .chain(config.extra_forwards.iter().copied())
            .map(|(host, port)| format!("hostfwd=tcp:127.0.0.1:{host}-{guest}:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        match &config.medium {
            BootMedium::EspDir { config: text } => {
                let esp = layout_esp(&config.efi, &dir.join("esp"))?;
                if let Some(text) = text {
                    let boot_dir = esp.boot_file().parent().map(Path::to_path_buf);
                    if let Some(boot_dir) = boot_dir {
                        crate::appconfig::write_into(&boot_dir, text)?;
                    }
                }
                command
                    .arg("-drive")
                    .arg(format!("format=raw,file=fat:rw:{}", esp.esp_dir.display()))
                    .arg("-netdev")
                    .arg(format!("user,id=n0,{forward}"))
                    .args(["-device", NIC_DEVICE]);
            }
            BootMedium::Disk(image) => {
                let disk = dir.join("disk.img");
                fs::copy(image, &disk).map_err(|source| ImageError::Io {
                    action: "copy the disk image to",
                    path: disk.clone(),
                    source,
                })?;
                command
                    .arg("-drive")
                    .arg(drive_arg("if=none,id=disk0,format=raw", &disk))
                    .args(["-device", "virtio-blk-pci,drive=disk0,bootindex=0"])
                    .arg("-netdev")
                    .arg(format!("user,id=n0,{forward}"))
                    .args(["-device", NIC_DEVICE]);
            }
            BootMedium::Netboot(source_dir) => {
                let tftp = dir.join("tftp");
                copy_dir_files(source_dir, &tftp)?;
                command
                    .arg("-netdev")
                    .arg(format!(
                        "user,id=n0,tftp={},bootfile={},{forward}",
                        tftp.display().to_string().replace(',', ",,"),
                        crate::netboot::BOOT_FILE
                    ))
                    // OVMF's own PXE client (see `NIC_DEVICE`), first in the boot order.
                    .args(["-device", &format!("{NIC_DEVICE},bootindex=1")]);
            }
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let command_line = describe(&command);
        let args = command.get_args().map(ToOwned::to_owned).collect();
        let (child, captured, readers) = spawn(&mut command, config.echo_serial)?;
        Ok(Self {
            child,
            host_port: config.host_port,
            started: Instant::now(),
            captured,
            readers,
            instance_dir: dir.clone(),
            command_line,
            program: firmware.qemu.clone(),
            args,
            echo_serial: config.echo_serial,
        })
    }

    /// Powers the machine off and on again: QEMU is stopped and started with the same
    /// instance directory, so its disk and its UEFI variable store (NVRAM) are kept, as when
    /// a server is power-cycled. The serial log starts afresh.
    pub fn power_cycle(&mut self) -> Result<()> {
        self.stop_process();
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (child, captured, readers) = spawn(&mut command, self.echo_serial)?;
        self.child = child;
        self.captured = captured;
        self.readers = readers;
        self.started = Instant::now();
        Ok(())
    }

    /// The host port forwarded to the guest API.
    pub fn host_port(&self) -> u16 {
        self.host_port
    }

    /// The QEMU command line used.
    pub fn command_line(&self) -> &str {
        &self.command_line
    }

    /// Time since QEMU was started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Everything the guest wrote to its serial console so far (lossy UTF-8).
    pub fn serial_log(&self) -> String {
        let captured = self.captured.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&captured.serial).into_owned()
    }

    /// Everything QEMU itself wrote to stderr so far.
    pub fn stderr_log(&self) -> String {
        let captured = self.captured.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&captured.stderr).into_owned()
    }

    /// QEMU's exit status if it has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Polls `GET /v1/health` until it answers 200; returns the time from QEMU start.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Duration> {
        self.wait_ready_or_cancel(timeout, &AtomicBool::new(false))
    }

    /// Like [`Qemu::wait_ready`], but gives up with [`ImageError::Cancelled`] once `cancel` is set.
    pub fn wait_ready_or_cancel(
        &mut self,
        timeout: Duration,
        cancel: &AtomicBool,
    ) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Err(ImageError::Cancelled);
            }
            if let Some(status) = self.exit_status() {
                return Err(ImageError::QemuExited { status });
            }
            // slirp accepts the host side at once and only then connects to the guest, so a
            // guest that is not listening yet shows up as a closed or silent connection:
            // keep each attempt short and retry with a fresh connection.
            // An HTTPS appliance prints its certificate's fingerprint before it listens:
            // pin it, so that every connection to this port speaks TLS and trusts exactly it.
            match api_fingerprint(&self.serial_log()) {
                Some(fingerprint) => http::pin_certificate(self.host_port, fingerprint),
                None => http::unpin_certificate(self.host_port),
            }
            let attempt = http::get(self.host_port, "/v1/health", Duration::from_millis(700));
            if matches!(attempt, Ok(ref response) if response.status == 200) {
                return Ok(self.started.elapsed());
            }
            if Instant::now() >= deadline {
                return Err(ImageError::ReadyTimeout(timeout));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the serial log contains `needle` (or `timeout` passes); true if it did.
    pub fn wait_for_serial(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.serial_log().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// QEMU's process ID (for its CPU time in `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills QEMU and waits for it and the reader threads to finish.
    pub fn kill(&mut self) {
        self.stop_process();
    }

    fn stop_process(&mut self) {
        if self.exit_status().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

/// A started QEMU process, what its readers capture, and the reader threads.
type Spawned = (Child, Arc<Mutex<Captured>>, Vec<JoinHandle<()>>);

/// Starts `command` (stdout: the serial console, stderr) with reader threads capturing both.
fn spawn(command: &mut Command, echo_serial: bool) -> Result<Spawned> {
    let mut child = command.spawn().map_err(|source| ImageError::Spawn {
        program: command.get_program().to_string_lossy().into_owned(),
        source,
    })?;
    let captured = Arc::new(Mutex::new(Captured::default()));
    let mut readers = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        readers.push(spawn_serial_reader(
            stdout,
            Arc::clone(&captured),
            echo_serial,
        ));
    }
    if let Some(stderr) = child.stderr.take() {
        readers.push(spawn_stderr_reader(stderr, Arc::clone(&captured)));
    }
    Ok((child, captured, readers))
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
        let _ = fs::remove_dir_all(&self.instance_dir);
    }
}

/// A `-drive` argument with a file path (commas in the path are doubled as QEMU requires).
fn drive_arg(options: &str, file: &Path) -> String {
    format!(
        "{options},file={}",
        file.display().to_string().replace(',', ",,")
    )
}

/// Copies the regular files of `from` into `to` (created).
fn copy_dir_files(from: &Path, to: &Path) -> Result<()> {
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageError::Io {
            action,
            path,
            source,
        }
    };
    fs::create_dir_all(to).map_err(io("create directory", to))?;
    for entry in fs::read_dir(from).map_err(io("read directory", from))? {
        let entry = entry.map_err(io("read directory", from))?;
        if entry.file_type().is_ok_and(|kind| kind.is_file()) {
            let target = to.join(entry.file_name());
            fs::copy(entry.path(), &target).map_err(io("copy to", &target))?;
        }
    }
    Ok(())
}

/// Copies a (read-only, root-owned) firmware file and makes the copy writable.
fn copy_writable(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to).map_err(|source| ImageError::Io {
        action: "copy firmware variables to",
        path: to.to_path_buf(),
        source,
    })?;
    let mut permissions = fs::metadata(to)
        .map_err(|source| ImageError::Io {
            action: "stat",
            path: to.to_path_buf(),
            source,
        })?
        .permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    permissions.set_readonly(false);
    fs::set_permissions(to, permissions).map_err(|source| ImageError::Io {
        action: "make writable",
        path: to.to_path_buf(),
        source,
    })
}

/// Reads the guest's serial console, stores it and optionally echoes complete lines to stdout
/// (whole lines under the stdout lock, so lines printed by others never land mid-line).
fn spawn_serial_reader(
    mut stdout: ChildStdout,
    captured: Arc<Mutex<Captured>>,
    echo: bool,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        let mut line = Vec::new();
        loop {
            let n = match stdout.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let data = chunk.get(..n).unwrap_or_default();
            captured
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .serial
                .extend_from_slice(data);
            if echo {
                for &byte in data {
                    line.push(byte);
                    if byte == b'\n' {
                        let mut out = std::io::stdout().lock();
                        let _ = out.write_all(&line);
                        let _ = out.flush();
                        line.clear();
                    }
                }
            }
        }
        if echo && !line.is_empty() {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&line);
            let _ = out.write_all(b"\n");
        }
    })
}

fn spawn_stderr_reader(mut stderr: ChildStderr, captured: Arc<Mutex<Captured>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut chunk) {
            if n == 0 {
                break;
            }
            captured
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .stderr
                .extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable() {
        let port = free_port().expect("port");
        assert_ne!(port, 0);
        assert!(TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok());
    }

    #[test]
    fn drive_arg_escapes_commas() {
        assert_eq!(
            drive_arg("if=pflash", Path::new("/a,b/vars.fd")),
            "if=pflash,file=/a,,b/vars.fd"
        );
    }
}
