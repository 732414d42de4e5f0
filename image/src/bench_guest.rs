//! `cargo xtask bench guest`: Debian's `OVMF.fd` as a TD on the appliance (the software
//! module's SVM engine) against the same file booted directly by QEMU TCG, in one run.
//!
//! 1. Boots the appliance (1 GiB, 2 CPUs), measures the QEMU process's CPU use over
//!    [`IDLE_WINDOW`] with no TD (the idle appliance).
//! 2. Uploads `OVMF.fd`, creates a TD (1 vCPU, 256 MiB), starts it and times `start` → the
//!    first `Shell> ` on the TD console; reads the guest engine's #VMEXIT count and median
//!    exit overhead from `/v1/metrics`.
//! 3. Measures the QEMU process's CPU use again over [`IDLE_WINDOW`] with the TD idle at its
//!    Shell; the difference is the idle TD's cost.
//! 4. Boots the same `OVMF.fd` directly (`-bios`, 1 vCPU, 256 MiB, serial on stdout) and
//!    times QEMU start → `Shell> `.
//!
//! Last line:
//! `guest: tdvf_shell_s=A direct_shell_s=B ratio=C exit_overhead_us=D exits_per_s=E idle_td_cpu_pct=F`
//! (CPU percentages are of one host core; QEMU runs its TCG vCPUs on host threads).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::bench_api::{IO_TIMEOUT, OVMF_PATH, boot_appliance, expect, request};
use crate::error::{ImageError, Result};
use crate::http::Connection;
use crate::qemu::Qemu;
use crate::workspace::Workspace;

/// How long each CPU-use window lasts.
pub const IDLE_WINDOW: Duration = Duration::from_secs(10);
/// How long a boot to `Shell> ` may take.
const SHELL_TIMEOUT: Duration = Duration::from_secs(300);
/// What the firmware's Shell prints when it waits for a command.
const PROMPT: &str = "Shell> ";

/// CPU time (user + system) of process `pid`, in seconds, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|source| ImageError::Io {
        action: "read",
        path: path.clone().into(),
        source,
    })?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or(ImageError::BadResponse("unreadable /proc/<pid>/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    // `rest` starts at field 3 (state), so field n is at index n - 3.
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => Ok((user + system) as f64 / clock_ticks_per_second()),
        _ => Err(ImageError::BadResponse("unreadable /proc/<pid>/stat")),
    }
}

/// `sysconf(_SC_CLK_TCK)`, from `getconf` (100 on Linux everywhere we run).
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// Percent of one core process `pid` used over `window`.
fn cpu_percent(pid: u32, window: Duration) -> Result<f64> {
    let before = cpu_seconds(pid)?;
    let started = Instant::now();
    std::thread::sleep(window);
    let used = cpu_seconds(pid)? - before;
    Ok(used / started.elapsed().as_secs_f64() * 100.0)
}

/// A metric's value from a Prometheus text page (first sample of `name` without labels).
pub(crate) fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The unsigned integer member `key` of a flat JSON object (the first occurrence).
pub(crate) fn json_u64(body: &str, key: &str) -> Option<u64> {
    let at = body.find(&format!("\"{key}\":"))? + key.len() + 3;
    let digits: String = body[at..]
        .chars()
        .skip_while(|c| c.is_whitespace())
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The body of a `GET path` that must answer 200.
pub(crate) fn get_text(connection: &mut Connection, path: &str) -> Result<String> {
    let response = request(connection, "GET", path, None, b"")?;
    expect(&response, 200, "GET during a bench")?;
    Ok(response.body_text())
}

/// What the appliance part measured.
struct TdRun {
    shell_s: f64,
    exits: f64,
    overhead_ns: Option<f64>,
    idle_appliance_pct: f64,
    idle_td_pct: f64,
}

/// Steps 1–3 on a booted appliance.
fn run_td(vm: &Qemu, port: u16) -> Result<TdRun> {
    let idle_appliance_pct = cpu_percent(vm.pid(), IDLE_WINDOW)?;
    let firmware = std::fs::read(OVMF_PATH).map_err(|source| ImageError::Io {
        action: "read the firmware to upload",
        path: OVMF_PATH.into(),
        source,
    })?;
    let mut c = Connection::open(port, IO_TIMEOUT)?;
    let response = request(
        &mut c,
        "PUT",
        "/v1/images/ovmf",
        Some("application/octet-stream"),
        &firmware,
    )?;
    expect(&response, 201, "upload OVMF.fd")?;
    let spec = br#"{"name":"shell","image":"ovmf","vcpus":1,"memory_mib":256}"#;
    let response = request(&mut c, "POST", "/v1/tds", Some("application/json"), spec)?;
    expect(&response, 201, "create the TD")?;
    let id = json_u64(&response.body_text(), "id")
        .ok_or(ImageError::BadResponse("create without an id"))?;
    let building = Instant::now();
    loop {
        let td = get_text(&mut c, &format!("/v1/tds/{id}"))?;
        if td.contains("\"state\":\"runnable\"") {
            break;
        }
        if building.elapsed() > SHELL_TIMEOUT {
            return Err(ImageError::BadResponse("the TD did not become runnable"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let exits_before =
        metric(&get_text(&mut c, "/v1/metrics")?, "tdx_guest_vmexits_total").unwrap_or(0.0);
    let started = Instant::now();
    let response = request(&mut c, "POST", &format!("/v1/tds/{id}/start"), None, b"")?;
    expect(&response, 202, "start the TD")?;
    loop {
        let console = get_text(&mut c, &format!("/v1/tds/{id}/console?offset=0"))?;
        if console.contains(PROMPT) {
            break;
        }
        if started.elapsed() > SHELL_TIMEOUT {
            return Err(ImageError::BadResponse("no Shell> on the TD console"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let shell_s = started.elapsed().as_secs_f64();
    let page = get_text(&mut c, "/v1/metrics")?;
    let exits = metric(&page, "tdx_guest_vmexits_total").unwrap_or(0.0) - exits_before;
    let overhead_ns = metric(&page, "tdx_guest_exit_overhead_median_ns");
    // Let the Shell's start-up countdown and screen output settle.
    std::thread::sleep(Duration::from_secs(2));
    let idle_td_pct = cpu_percent(vm.pid(), IDLE_WINDOW)?;
    Ok(TdRun {
        shell_s,
        exits,
        overhead_ns,
        idle_appliance_pct,
        idle_td_pct,
    })
}

/// Step 4: QEMU start → `Shell> ` on the serial port, booting `OVMF.fd` directly.
fn direct_boot(qemu: &std::path::Path) -> Result<f64> {
    let started = Instant::now();
    let mut child = Command::new(qemu)
        .args(["-nodefaults", "-machine", "q35", "-accel", "tcg"])
        .args(["-cpu", "qemu64", "-m", "256", "-smp", "1"])
        .args(["-bios", OVMF_PATH, "-display", "none", "-serial", "stdio"])
        .args(["-monitor", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| ImageError::Spawn {
            program: qemu.display().to_string(),
            source,
        })?;
    let result = match watch_output(&mut child, SHELL_TIMEOUT, |text| text.contains(PROMPT)) {
        Watched::Matched(_) => Ok(started.elapsed().as_secs_f64()),
        Watched::TimedOut(_) => Err(ImageError::BadResponse("no Shell> from the direct boot")),
        Watched::Ended(_) => Err(ImageError::BadResponse("QEMU ended before Shell>")),
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// How watching a process's output ended; each carries the output seen.
#[derive(Debug, PartialEq)]
pub(crate) enum Watched {
    /// `done` said so.
    Matched(String),
    /// The timeout passed first.
    TimedOut(String),
    /// The output ended first (the process exited).
    Ended(String),
}

/// Reads `child`'s stdout until `done` accepts all the text so far, the output ends, or
/// `timeout` passes. A thread reads, so that a process that stops printing (a crashed guest)
/// cannot hold the caller past the timeout.
pub(crate) fn watch_output(
    child: &mut std::process::Child,
    timeout: Duration,
    mut done: impl FnMut(&str) -> bool,
) -> Watched {
    let started = Instant::now();
    let Some(mut out) = child.stdout.take() else {
        return Watched::Ended(String::new());
    };
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    loop {
        let text = |seen: &[u8]| String::from_utf8_lossy(seen).into_owned();
        match rx.recv_timeout(timeout.saturating_sub(started.elapsed())) {
            Ok(chunk) => {
                seen.extend_from_slice(&chunk);
                let so_far = text(&seen);
                if done(&so_far) {
                    return Watched::Matched(so_far);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                return Watched::TimedOut(text(&seen));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Watched::Ended(text(&seen));
            }
        }
    }
}

/// The final line.
pub fn summary_line(
    tdvf_shell_s: f64,
    direct_shell_s: f64,
    exit_overhead_us: f64,
    exits_per_s: f64,
    idle_td_cpu_pct: f64,
) -> String {
    format!(
        "guest: tdvf_shell_s={tdvf_shell_s:.1} direct_shell_s={direct_shell_s:.1} ratio={:.2} \
         exit_overhead_us={exit_overhead_us:.1} exits_per_s={exits_per_s:.0} \
         idle_td_cpu_pct={idle_td_cpu_pct:.1}",
        tdvf_shell_s / direct_shell_s
    )
}

/// Runs the benchmark; prints its report.
pub fn run(ws: &Workspace) -> Result<()> {
    let (mut vm, port, firmware) = boot_appliance(ws, "guest")?;
    let outcome = run_td(&vm, port);
    if outcome.is_err() {
        eprintln!("bench guest: serial log:\n{}", vm.serial_log());
    }
    vm.kill();
    let td = outcome?;
    println!(
        "bench guest: TD: Shell> after {:.1} s, {:.0} #VMEXITs, median exit overhead {}",
        td.shell_s,
        td.exits,
        td.overhead_ns
            .map_or("n/a".to_string(), |ns| format!("{ns:.0} ns"))
    );
    println!(
        "bench guest: QEMU CPU: idle appliance {:.1} %, with the TD idle at Shell> {:.1} %",
        td.idle_appliance_pct, td.idle_td_pct
    );
    let direct = direct_boot(&firmware.qemu)?;
    println!("bench guest: direct QEMU boot of the same OVMF.fd: Shell> after {direct:.1} s");
    println!(
        "{}",
        summary_line(
            td.shell_s,
            direct,
            td.overhead_ns.unwrap_or(f64::NAN) / 1000.0,
            td.exits / td.shell_s,
            (td.idle_td_pct - td.idle_appliance_pct).max(0.0),
        )
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line_has_the_documented_shape() {
        assert_eq!(
            summary_line(12.0, 8.0, 1.75, 20_000.4, 3.25),
            "guest: tdvf_shell_s=12.0 direct_shell_s=8.0 ratio=1.50 exit_overhead_us=1.8 \
             exits_per_s=20000 idle_td_cpu_pct=3.2"
        );
    }

    #[test]
    fn metrics_are_read_by_exact_name() {
        let page = "# HELP x\ntdx_guest_vmexits_total 1234\ntdx_guest_vmexits_total_x 9\n";
        assert_eq!(metric(page, "tdx_guest_vmexits_total"), Some(1234.0));
        assert_eq!(metric(page, "tdx_guest_exit_overhead_median_ns"), None);
    }

    #[test]
    fn the_created_td_id_is_read_from_its_json() {
        assert_eq!(json_u64(r#"{"id":17,"name":"x"}"#, "id"), Some(17));
        assert_eq!(json_u64(r#"{"id": 3}"#, "id"), Some(3));
        assert_eq!(json_u64(r#"{"name":"x"}"#, "id"), None);
    }

    #[test]
    fn output_is_watched_until_a_match_its_end_or_the_timeout() {
        let spawn = |script: &str| {
            Command::new("sh")
                .args(["-c", script])
                .stdout(Stdio::piped())
                .spawn()
                .expect("sh")
        };
        let mut child = spawn("echo booting; echo 'Shell> '; sleep 5");
        let seen = watch_output(&mut child, Duration::from_secs(4), |t| t.contains(PROMPT));
        assert!(matches!(&seen, Watched::Matched(t) if t.starts_with("booting")));
        let _ = child.kill();
        let mut child = spawn("echo panic");
        let seen = watch_output(&mut child, Duration::from_secs(4), |t| t.contains(PROMPT));
        assert_eq!(seen, Watched::Ended("panic\n".into()));
        // A process that prints nothing more cannot hold the watcher past its timeout.
        let mut child = spawn("echo quiet; sleep 5");
        let seen = watch_output(&mut child, Duration::from_millis(300), |t| {
            t.contains(PROMPT)
        });
        assert_eq!(seen, Watched::TimedOut("quiet\n".into()));
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn this_process_has_a_cpu_time() {
        assert!(cpu_seconds(std::process::id()).is_ok());
    }
}
