//! `cargo xtask bench linux`: Debian's cloud kernel as a TD on the appliance against the
//! same kernel, initramfs and disk booted directly by QEMU TCG through the same `OVMF.fd`,
//! in one run. Both get 2 vCPUs and 512 MiB. The initramfs's init (busybox) is the same for
//! both:
//!
//! 1. It loads virtio-blk, waits for `/dev/vda` and prints [`MARKER`]. The boot time is from
//!    `POST …/start` (the TD is built already) or from QEMU's start, to the marker on the
//!    console.
//! 2. Disk read: `dd` of the whole virtio disk ([`DISK_MIB`] MiB) to `/dev/null` in 1 MiB
//!    blocks, timed with `/proc/uptime`; it also reports how much memory Linux found
//!    unaccepted (`Unaccepted:` in `/proc/meminfo`).
//! 3. Accept rate: Debian's OVMF accepts all of the TD's memory itself during boot (Linux
//!    finds none unaccepted), so the rate is the firmware's, as the TD saw it: the bytes its
//!    TDG.MEM.PAGE.ACCEPTs accepted over the time they took, each from the TDCALL's first
//!    exit (through the host's PAGE.AUG) to its completion (`tdx_guest_accepted_bytes_total`,
//!    `tdx_guest_accept_nanoseconds_total`: the software module's).
//! 4. Shared conversions: a guest program cannot convert memory on its own (the kernel
//!    converts its swiotlb and DMA buffers), so the rate comes from the TD's MapGPA calls
//!    themselves: bytes of mapped private memory converted to shared / the time the vCPUs
//!    spent out of the TD for those calls (`tdx_td_shared_conversion_*`), which is what a
//!    converting guest waits for. Ranges the guest never accepted (the firmware converts
//!    the whole PCI window) cost nothing and are not counted.
//!
//! Last line:
//! `linux: td_boot_s=A direct_boot_s=B ratio=C accept_mib_per_s=D mapgpa_mib_per_s=E blk_read_mib_per_s=F`

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::bench_api::{IO_TIMEOUT, OVMF_PATH, boot_appliance, expect, request};
use crate::bench_guest::{Watched, get_text, json_u64, metric, watch_output};
use crate::error::{ImageError, Result};
use crate::http::Connection;
use crate::linux_guest::{self, LinuxGuest};
use crate::workspace::Workspace;

/// What the init prints once the disk is there.
pub const MARKER: &str = "BENCH-LINUX-BOOTED";
/// What starts the init's line of measurements.
const RESULT: &str = "BENCH-LINUX-RESULT";
/// Size of the virtio disk.
pub const DISK_MIB: u32 = 32;
/// vCPUs of both guests.
const VCPUS: u32 = 2;
/// Memory of both guests.
const MEMORY_MIB: u32 = 512;
/// The kernel command line of both: Debian's default `quiet` (the init prints at
/// KERN_CRIT, which `quiet` still shows).
const CMDLINE: &str = "console=ttyS0 rdinit=/init quiet";
/// The same with the kernel's whole log on the serial console, for the detail line: each
/// byte is two port accesses, in a TD each a #VE and a TDVMCALL.
const CMDLINE_VERBOSE: &str = "console=ttyS0 rdinit=/init";
/// How long a boot, or the measurements after it, may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(300);

/// The init script (busybox sh).
fn init_script() -> String {
    format!(
        "#!/bin/busybox sh\n\
         B=/bin/busybox\n\
         $B mkdir -p /proc /dev /sys\n\
         $B mount -t proc proc /proc\n\
         $B mount -t devtmpfs dev /dev\n\
         $B mount -t sysfs sys /sys\n\
         $B insmod /virtio_blk.ko\n\
         for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; $B sleep 1; done\n\
         echo '<2>{MARKER}' > /dev/kmsg\n\
         up() {{ $B cut -d' ' -f1 /proc/uptime; }}\n\
         t0=$(up)\n\
         $B dd if=/dev/vda of=/dev/null bs=1M 2>/dev/null\n\
         t1=$(up)\n\
         u=$($B awk '/^Unaccepted:/ {{print $2}}' /proc/meminfo)\n\
         echo \"<2>{RESULT} unaccepted_kb=${{u:-0}} disk_sectors=$($B cat /sys/block/vda/size) \
         read=$t0,$t1\" > /dev/kmsg\n\
         $B poweroff -f\n"
    )
}

/// The guest's measurements, from its result line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuestFigures {
    /// MiB Linux found unaccepted.
    pub unaccepted_mib: f64,
    /// MiB read from the disk.
    pub read_mib: f64,
    /// Seconds the read took.
    pub read_s: f64,
}

impl GuestFigures {
    /// Parses the init's result line out of `console`.
    pub fn parse(console: &str) -> Option<GuestFigures> {
        let line = console.lines().find_map(|l| {
            let at = l.find(RESULT)?;
            l.get(at + RESULT.len()..)
        })?;
        let value = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        };
        let number = |key: &str| value(key)?.parse::<f64>().ok();
        let (t0, t1) = value("read")?.split_once(',')?;
        let (t0, t1): (f64, f64) = (t0.parse().ok()?, t1.parse().ok()?);
        Some(GuestFigures {
            unaccepted_mib: number("unaccepted_kb")? / 1024.0,
            read_mib: number("disk_sectors")? * 512.0 / 1048576.0,
            read_s: t1 - t0,
        })
    }

    /// MiB per second of the disk read.
    pub fn read_mib_per_s(&self) -> Option<f64> {
        (self.read_s > 0.0).then(|| self.read_mib / self.read_s)
    }
}

/// The guest's files, as bytes to upload and as paths for QEMU.
struct GuestFiles {
    kernel: Vec<u8>,
    kernel_path: std::path::PathBuf,
    initrd: Vec<u8>,
    disk: Vec<u8>,
    disk_path: std::path::PathBuf,
    initrd_path: std::path::PathBuf,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| ImageError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|source| ImageError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    })
}

fn guest_files(ws: &Workspace, guest: &LinuxGuest) -> Result<GuestFiles> {
    let scratch = ws.root.join("target/bench-linux");
    std::fs::create_dir_all(&scratch).map_err(|source| ImageError::Io {
        action: "create directory",
        path: scratch.clone(),
        source,
    })?;
    let busybox = read(&guest.busybox)?;
    let virtio_blk = guest
        .modules
        .iter()
        .find(|(name, _)| *name == "virtio_blk.ko")
        .ok_or(ImageError::BadResponse(
            "no virtio_blk.ko among the guest's modules",
        ))?;
    let virtio_blk = read(&virtio_blk.1)?;
    let init = init_script();
    let initrd = linux_guest::cpio_newc(&[
        ("bin", 0o40755, b""),
        ("bin/busybox", 0o100755, &busybox),
        ("virtio_blk.ko", 0o100644, &virtio_blk),
        ("init", 0o100755, init.as_bytes()),
    ]);
    let disk = linux_guest::ext2_image(&scratch, &[("data", b"bench")], DISK_MIB)?;
    let initrd_path = scratch.join("initrd.cpio");
    write(&initrd_path, &initrd)?;
    Ok(GuestFiles {
        kernel: read(&guest.kernel)?,
        kernel_path: guest.kernel.clone(),
        initrd,
        disk,
        disk_path: scratch.join("disk.img"),
        initrd_path,
    })
}

/// The value of the per-TD metric `name` for TD `id` in a Prometheus page.
fn td_metric(page: &str, name: &str, id: u64) -> Option<f64> {
    let label = format!("id=\"{id}\"");
    page.lines()
        .filter(|l| l.starts_with(name) && l.get(name.len()..).is_some_and(|r| r.starts_with('{')))
        .find(|l| l.contains(&label))
        .and_then(|l| l.rsplit(' ').next()?.trim().parse().ok())
}

/// What the TD part measured.
struct TdRun {
    boot_s: f64,
    figures: GuestFigures,
    shared_mib: f64,
    shared_s: f64,
}

/// Uploads the guest's files.
fn upload(port: u16, files: &GuestFiles) -> Result<()> {
    let mut c = Connection::open(port, IO_TIMEOUT)?;
    let firmware = read(Path::new(OVMF_PATH))?;
    for (name, bytes) in [
        ("ovmf", &firmware),
        ("kernel", &files.kernel),
        ("initrd", &files.initrd),
        ("disk", &files.disk),
    ] {
        let path = format!("/v1/images/{name}");
        let response = request(
            &mut c,
            "PUT",
            &path,
            Some("application/octet-stream"),
            bytes,
        )?;
        expect(&response, 201, "upload a Linux bench image")?;
    }
    Ok(())
}

/// Creates a TD booting with `cmdline` and starts it; times start → marker; waits for the
/// result line and the stop.
fn run_td(port: u16, cmdline: &str, name: &str) -> Result<TdRun> {
    let mut c = Connection::open(port, IO_TIMEOUT)?;
    let spec = format!(
        "{{\"name\":\"{name}\",\"image\":\"ovmf\",\"kernel\":\"kernel\",\
         \"initrd\":\"initrd\",\"disk\":\"disk\",\"cmdline\":\"{cmdline}\",\
         \"attributes\":\"0x10000000\",\"vcpus\":{VCPUS},\"memory_mib\":{MEMORY_MIB}}}"
    );
    let response = request(
        &mut c,
        "POST",
        "/v1/tds",
        Some("application/json"),
        spec.as_bytes(),
    )?;
    expect(&response, 201, "create the Linux TD")?;
    let id = json_u64(&response.body_text(), "id")
        .ok_or(ImageError::BadResponse("create without an id"))?;
    let td_path = format!("/v1/tds/{id}");
    let console_path = format!("/v1/tds/{id}/console?offset=0");
    let waited = Instant::now();
    while !get_text(&mut c, &td_path)?.contains("\"state\":\"runnable\"") {
        if waited.elapsed() > STEP_TIMEOUT {
            return Err(ImageError::BadResponse(
                "the Linux TD did not become runnable",
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    let response = request(&mut c, "POST", &format!("{td_path}/start"), None, b"")?;
    expect(&response, 202, "start the Linux TD")?;
    let mut boot_s = None;
    let console = loop {
        let console = get_text(&mut c, &console_path)?;
        if boot_s.is_none() && console.contains(MARKER) {
            boot_s = Some(started.elapsed().as_secs_f64());
        }
        if console.contains(RESULT) && get_text(&mut c, &td_path)?.contains("\"state\":\"stopped\"")
        {
            break console;
        }
        if started.elapsed() > 2 * STEP_TIMEOUT {
            eprintln!("bench linux: the TD's console:\n{console}");
            return Err(ImageError::BadResponse(
                "the Linux TD did not finish its measurements",
            ));
        }
        std::thread::sleep(Duration::from_millis(if boot_s.is_none() {
            50
        } else {
            500
        }));
    };
    let figures = GuestFigures::parse(&console).ok_or_else(|| {
        eprintln!("bench linux: the TD's console:\n{console}");
        ImageError::BadResponse("the Linux TD's result line does not parse")
    })?;
    let page = get_text(&mut c, "/v1/metrics")?;
    delete_td(&mut c, &td_path)?;
    let bytes = td_metric(&page, "tdx_td_shared_conversion_bytes_total", id).unwrap_or(0.0);
    let ns = td_metric(&page, "tdx_td_shared_conversion_nanoseconds_total", id).unwrap_or(0.0);
    Ok(TdRun {
        boot_s: boot_s.unwrap_or(f64::NAN),
        figures,
        shared_mib: bytes / 1048576.0,
        shared_s: ns / 1e9,
    })
}

/// How often a direct boot whose kernel crashed is tried again.
const DIRECT_ATTEMPTS: u32 = 4;

/// The same guest booted directly by QEMU: QEMU start → marker. QEMU 7.2's TCG crashes
/// this kernel as an ordinary VM now and then (a general-protection fault or a double fault
/// in the slab allocator's CMPXCHG16B path, under `-cpu qemu64` and `max`, with one TCG
/// thread or several; about one boot in three); such a boot is tried again, and said so.
fn direct_boot(qemu: &Path, files: &GuestFiles, cmdline: &str) -> Result<f64> {
    let mut attempt = 1;
    loop {
        match direct_boot_once(qemu, files, cmdline) {
            Err(DirectBoot::KernelCrashed) if attempt < DIRECT_ATTEMPTS => {
                println!(
                    "bench linux: the direct boot's kernel crashed under TCG (attempt \
                     {attempt}); booting it again"
                );
                attempt += 1;
            }
            Err(DirectBoot::KernelCrashed) => {
                return Err(ImageError::BadResponse(
                    "the direct boot's kernel crashed in every attempt",
                ));
            }
            Err(DirectBoot::Failed(e)) => return Err(e),
            Ok(seconds) => return Ok(seconds),
        }
    }
}

/// Why a direct boot gave no time.
enum DirectBoot {
    /// The guest kernel crashed (under TCG) before the marker.
    KernelCrashed,
    /// Anything else.
    Failed(ImageError),
}

/// One direct boot.
fn direct_boot_once(
    qemu: &Path,
    files: &GuestFiles,
    cmdline: &str,
) -> std::result::Result<f64, DirectBoot> {
    let started = Instant::now();
    let drive = format!(
        "file={},format=raw,if=none,id=d0",
        files.disk_path.display()
    );
    let mut child = Command::new(qemu)
        .args([
            "-nodefaults",
            "-machine",
            "pc",
            "-accel",
            "tcg",
            "-cpu",
            "qemu64",
        ])
        .args(["-m", &MEMORY_MIB.to_string(), "-smp", &VCPUS.to_string()])
        .args(["-bios", OVMF_PATH, "-display", "none", "-serial", "stdio"])
        .args(["-monitor", "none", "-no-reboot", "-snapshot"])
        .arg("-kernel")
        .arg(&files.kernel_path)
        .arg("-initrd")
        .arg(&files.initrd_path)
        .args(["-append", cmdline, "-drive", &drive])
        .args(["-device", "virtio-blk-pci,drive=d0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| {
            DirectBoot::Failed(ImageError::Spawn {
                program: qemu.display().to_string(),
                source,
            })
        })?;
    let watched = watch_output(&mut child, STEP_TIMEOUT, |text| {
        text.contains(MARKER) || text.contains("Kernel panic")
    });
    let result = match watched {
        Watched::Matched(text) if text.contains(MARKER) => Ok(started.elapsed().as_secs_f64()),
        Watched::Matched(_) => Err(DirectBoot::KernelCrashed),
        Watched::TimedOut(_) => Err(DirectBoot::Failed(ImageError::BadResponse(
            "no marker from the direct boot",
        ))),
        Watched::Ended(_) => Err(DirectBoot::Failed(ImageError::BadResponse(
            "QEMU ended before the marker",
        ))),
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// The final line.
pub fn summary_line(
    td_boot_s: f64,
    direct_boot_s: f64,
    accept_mib_per_s: f64,
    mapgpa_mib_per_s: f64,
    blk_read_mib_per_s: f64,
) -> String {
    format!(
        "linux: td_boot_s={td_boot_s:.1} direct_boot_s={direct_boot_s:.1} ratio={:.2} \
         accept_mib_per_s={accept_mib_per_s:.0} mapgpa_mib_per_s={mapgpa_mib_per_s:.0} \
         blk_read_mib_per_s={blk_read_mib_per_s:.0}",
        td_boot_s / direct_boot_s
    )
}

/// Deletes the TD at `td_path` and waits until it is gone (its memory back in the pool).
fn delete_td(c: &mut Connection, td_path: &str) -> Result<()> {
    let response = request(c, "DELETE", td_path, None, b"")?;
    if !matches!(response.status, 202 | 204) {
        return Err(ImageError::BadResponse("delete the Linux TD"));
    }
    let waited = Instant::now();
    loop {
        let response = request(c, "GET", td_path, None, b"")?;
        if response.status == 404 {
            return Ok(());
        }
        if waited.elapsed() > STEP_TIMEOUT {
            return Err(ImageError::BadResponse("the Linux TD was not deleted"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The software module's accept counters (bytes, ns) from a metrics page.
fn accept_counters(page: &str) -> (f64, f64) {
    let value = |name| metric(page, name).unwrap_or(0.0);
    (
        value("tdx_guest_accepted_bytes_total"),
        value("tdx_guest_accept_nanoseconds_total"),
    )
}

/// The TD runs on the booted appliance: the measured one (quiet), then the verbose one;
/// the accept counters' growth over the first.
fn run_tds(port: u16, files: &GuestFiles) -> Result<(TdRun, TdRun, f64, f64)> {
    upload(port, files)?;
    let mut c = Connection::open(port, IO_TIMEOUT)?;
    let (bytes0, ns0) = accept_counters(&get_text(&mut c, "/v1/metrics")?);
    let quiet = run_td(port, CMDLINE, "bench-linux")?;
    let (bytes1, ns1) = accept_counters(&get_text(&mut c, "/v1/metrics")?);
    let verbose = run_td(port, CMDLINE_VERBOSE, "bench-linux-verbose")?;
    Ok((
        quiet,
        verbose,
        (bytes1 - bytes0) / 1048576.0,
        (ns1 - ns0) / 1e9,
    ))
}

/// Runs the benchmark; prints its report.
pub fn run(ws: &Workspace) -> Result<()> {
    let guest = linux_guest::ensure(ws)?;
    let files = guest_files(ws, &guest)?;
    let (mut vm, port, firmware) = boot_appliance(ws, "linux")?;
    let outcome = run_tds(port, &files);
    if outcome.is_err() {
        eprintln!("bench linux: serial log:\n{}", vm.serial_log());
    }
    vm.kill();
    let (td, verbose, accepted_mib, accept_s) = outcome?;
    let f = td.figures;
    println!(
        "bench linux: TD ({VCPUS} vCPUs, {MEMORY_MIB} MiB, `{CMDLINE}`): marker after {:.1} s; \
         its accepts took {accepted_mib:.0} MiB in {accept_s:.2} s (Linux found {:.0} MiB \
         unaccepted); {:.1} MiB of private memory converted to shared in {:.0} ms of exits; \
         {:.0} MiB read from /dev/vda in {:.2} s",
        td.boot_s,
        f.unaccepted_mib,
        td.shared_mib,
        td.shared_s * 1e3,
        f.read_mib,
        f.read_s
    );
    let direct = direct_boot(&firmware.qemu, &files, CMDLINE)?;
    println!("bench linux: direct QEMU boot (ordinary VM, same files): marker after {direct:.1} s");
    let direct_verbose = direct_boot(&firmware.qemu, &files, CMDLINE_VERBOSE)?;
    println!(
        "bench linux: without `quiet` (the whole kernel log on the serial console): TD {:.1} s, \
         direct {direct_verbose:.1} s, ratio {:.2}",
        verbose.boot_s,
        verbose.boot_s / direct_verbose
    );
    let rate = |mib: f64, s: f64, what: &'static str| {
        if mib > 0.0 && s > 0.0 {
            Ok(mib / s)
        } else {
            Err(ImageError::BadResponse(what))
        }
    };
    let accept = rate(accepted_mib, accept_s, "the TD accepted no memory")?;
    let mapgpa = rate(
        td.shared_mib,
        td.shared_s,
        "the TD converted no memory to shared",
    )?;
    let read = rate(f.read_mib, f.read_s, "the disk read took no time")?;
    println!("{}", summary_line(td.boot_s, direct, accept, mapgpa, read));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_result_line_parses() {
        let console = "[    9.1] BENCH-LINUX-RESULT unaccepted_kb=2048 disk_sectors=65536 \
                       read=14.20,14.60\n";
        let f = GuestFigures::parse(console).expect("parses");
        assert!((f.unaccepted_mib - 2.0).abs() < 1e-9);
        assert!((f.read_mib_per_s().expect("rate") - 80.0).abs() < 1e-6);
        assert_eq!(GuestFigures::parse("no result here"), None);
        assert_eq!(GuestFigures::parse(&console.replace("14.60", "x")), None);
    }

    #[test]
    fn per_td_metrics_are_found_by_id() {
        let page = "# TYPE tdx_td_shared_conversion_bytes_total counter\n\
                    tdx_td_shared_conversion_bytes_total{id=\"1\",name=\"a\"} 4096\n\
                    tdx_td_shared_conversion_bytes_total{id=\"2\",name=\"b\"} 8192\n";
        assert_eq!(
            td_metric(page, "tdx_td_shared_conversion_bytes_total", 2),
            Some(8192.0)
        );
        assert_eq!(td_metric(page, "tdx_td_shared_conversion_bytes", 2), None);
    }

    #[test]
    fn summary_line_has_the_documented_shape() {
        assert_eq!(
            summary_line(20.0, 10.0, 150.0, 900.0, 60.0),
            "linux: td_boot_s=20.0 direct_boot_s=10.0 ratio=2.00 accept_mib_per_s=150 \
             mapgpa_mib_per_s=900 blk_read_mib_per_s=60"
        );
    }

    #[test]
    fn the_init_prints_the_marker_and_one_result_line() {
        let init = init_script();
        assert!(init.starts_with("#!/bin/busybox sh\n"));
        assert_eq!(init.matches(MARKER).count(), 1);
        assert_eq!(init.matches(RESULT).count(), 1);
        assert!(init.ends_with("$B poweroff -f\n"));
    }
}
