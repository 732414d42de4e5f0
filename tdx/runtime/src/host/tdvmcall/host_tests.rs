//! The host's TDVMCALL answers, end to end: a TD on the software module whose declared
//! workload makes each request and checks the answer it gets back (a wrong answer fails the
//! TD with `ANSWER_MISMATCH`), through the runner, the exit dispatcher and the device buses.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use tdx_abi::exit::{
    TDVMCALL_CPUID, TDVMCALL_GET_QUOTE, TDVMCALL_GET_TD_VM_CALL_INFO, TDVMCALL_IO, TDVMCALL_MMIO,
    TDVMCALL_RDMSR, TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT,
    TDVMCALL_STATUS_INVALID_OPERAND as INVALID, TDVMCALL_STATUS_SUCCESS as OK, TDVMCALL_WRMSR,
};
use tdx_abi::software::GuestProgram;
use tdx_abi::td_params::attributes::SEPT_VE_DISABLE;
use tdx_emu::workload::{Step, Workload};

use crate::host::testing::{
    ThreadTopology, emulated_host_parts, small_config, step_until, synthetic_tdvf_image,
    upload_image,
};
use crate::host::{Host, TdId, TdSpec};
use crate::td::lifecycle::TdState;

fn call(subfunction: u64, args: [u64; 4], status: u64, value: Option<u64>) -> Step {
    Step::Tdvmcall {
        subfunction,
        args,
        expect_status: status,
        expect_value: value,
    }
}

/// A one-vCPU TD of image `fw` running `steps`.
fn spec(name: &str, steps: Vec<Step>) -> TdSpec {
    TdSpec {
        name: String::from(name),
        image: String::from("fw"),
        vcpus: 1,
        memory_mib: 64,
        attributes: SEPT_VE_DISABLE,
        huge_pages: false,
        workload: Some(GuestProgram::new(Workload { steps })),
        linux: None,
        disk: None,
    }
}

fn run(h: &mut Host, name: &str, steps: Vec<Step>) -> TdId {
    let id = h.create_td(spec(name, steps), 0).unwrap().id;
    assert!(step_until(h, 20_000, |h| h
        .td(id)
        .is_ok_and(|t| t.state == TdState::Runnable)));
    h.start_td(id, h.now_ms()).unwrap();
    assert!(
        step_until(h, 20_000, |h| h.td(id).is_ok_and(|t| matches!(
            t.state,
            TdState::Stopped | TdState::Failed | TdState::Bugged
        ))),
        "{:?}",
        h.td(id)
    );
    id
}

#[test]
fn every_sub_function_gets_the_expected_answer() {
    let mut e = emulated_host_parts(small_config(), ThreadTopology::default());
    let h = &mut e.host;
    upload_image(h, "fw", &synthetic_tdvf_image()).unwrap();
    let shared = 1u64 << 47;
    let steps = vec![
        call(TDVMCALL_CPUID, [0x4000_0000, 0, 0, 0], OK, None),
        call(
            TDVMCALL_RDMSR,
            [0x277, 0, 0, 0],
            OK,
            Some(0x0007_0406_0007_0406),
        ),
        call(TDVMCALL_WRMSR, [0x277, 0x0606, 0, 0], OK, None),
        call(TDVMCALL_RDMSR, [0x277, 0, 0, 0], OK, Some(0x0606)),
        // The TSC is the module's, not the host's.
        call(TDVMCALL_RDMSR, [0x10, 0, 0, 0], INVALID, None),
        call(TDVMCALL_GET_TD_VM_CALL_INFO, [0; 4], OK, Some(0)),
        call(TDVMCALL_GET_TD_VM_CALL_INFO, [1, 0, 0, 0], INVALID, None),
        call(
            TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT,
            [0x40, 0, 0, 0],
            OK,
            None,
        ),
        call(
            TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT,
            [5, 0, 0, 0],
            INVALID,
            None,
        ),
        call(
            TDVMCALL_GET_QUOTE,
            [shared | 0x10_0000, 4096, 0, 0],
            INVALID,
            None,
        ),
        // COM1's line status: transmitter empty, nothing received.
        call(TDVMCALL_IO, [1, 0, 0x3FD, 0], OK, Some(0x60)),
        // Nothing decodes the keyboard controller: all ones.
        call(TDVMCALL_IO, [1, 0, 0x64, 0], OK, Some(0xFF)),
        call(TDVMCALL_IO, [3, 0, 0x80, 0], INVALID, None),
        call(TDVMCALL_IO, [1, 7, 0x80, 0], INVALID, None),
        call(
            TDVMCALL_MMIO,
            [4, 0, shared | 0xFEC0_0000, 0],
            OK,
            Some(0xFFFF_FFFF),
        ),
        call(TDVMCALL_MMIO, [8, 1, shared | 0xFEC0_0000, 1], OK, None),
        // Unknown sub-functions are refused, not fatal.
        call(0x2_0000, [0; 4], INVALID, None),
        Step::Print {
            line: String::from("answers ok"),
        },
        Step::Shutdown,
    ];
    let id = run(h, "answers", steps);
    let td = h.td(id).unwrap();
    assert_eq!(td.state, TdState::Stopped, "{:?}", td.reason);
    let console = h.console(id, 0, 1 << 10).unwrap();
    assert_eq!(console.data, b"answers ok\n");
}

#[test]
fn a_wrong_answer_fails_the_td() {
    let mut e = emulated_host_parts(small_config(), ThreadTopology::default());
    let h = &mut e.host;
    upload_image(h, "fw", &synthetic_tdvf_image()).unwrap();
    // The check itself must be able to fail: expect a value the host does not give.
    let id = run(
        h,
        "wrong",
        vec![
            call(TDVMCALL_IO, [1, 0, 0x3FD, 0], OK, Some(0x61)),
            Step::Shutdown,
        ],
    );
    let td = h.td(id).unwrap();
    assert_eq!(td.state, TdState::Failed);
    assert!(td.reason.unwrap().contains("0xbada45e"));
}

#[test]
fn the_platform_devices_answer_and_s5_powers_the_td_off() {
    let mut e = emulated_host_parts(small_config(), ThreadTopology::default());
    let h = &mut e.host;
    upload_image(h, "fw", &synthetic_tdvf_image()).unwrap();
    let out =
        |size: u64, port: u64, value: u64| call(TDVMCALL_IO, [size, 1, port, value], OK, None);
    let inp =
        |size: u64, port: u64, want: u64| call(TDVMCALL_IO, [size, 0, port, 0], OK, Some(want));
    let id = run(
        h,
        "devices",
        vec![
            // The 440FX host bridge at 00:00.0.
            out(4, 0xCF8, 0x8000_0000),
            inp(4, 0xCFC, 0x1237_8086),
            // Nothing at 00:02.0.
            out(4, 0xCF8, 0x8000_1000),
            inp(2, 0xCFC, 0xFFFF),
            // The ACPI block is decoded only once PMBA and PMREGMISC place it.
            inp(2, 0xB004, 0xFFFF),
            out(4, 0xCF8, 0x8000_0B40),
            out(4, 0xCFC, 0xB001),
            out(4, 0xCF8, 0x8000_0B80),
            out(1, 0xCFC, 1),
            inp(2, 0xB004, 0),
            // CMOS status D: valid RAM and time.
            out(1, 0x70, 0x0D),
            inp(1, 0x71, 0x80),
            Step::Print {
                line: String::from("powering off"),
            },
            // PM1 control: SLP_TYP 0 (S5) with SLP_EN.
            out(2, 0xB004, 1 << 13),
            Step::Print {
                line: String::from("still on"),
            },
        ],
    );
    let td = h.td(id).unwrap();
    assert_eq!(td.state, TdState::Stopped, "{:?}", td.reason);
    let console = h.console(id, 0, 1 << 10).unwrap();
    assert_eq!(console.data, b"powering off\n");
}

#[test]
fn typed_console_input_reaches_the_guest_uart() {
    let mut e = emulated_host_parts(small_config(), ThreadTopology::default());
    let h = &mut e.host;
    upload_image(h, "fw", &synthetic_tdvf_image()).unwrap();
    let mut steps = vec![Step::Print {
        line: String::from("ready"),
    }];
    // Idle long enough for the input to arrive (each HLT wakes after `idle_wakeup_ms`).
    steps.extend((0..200).map(|_| Step::Halt));
    steps.extend([
        // Line status: data ready, transmitter empty; then the byte itself.
        call(TDVMCALL_IO, [1, 0, 0x3FD, 0], OK, Some(0x61)),
        call(TDVMCALL_IO, [1, 0, 0x3F8, 0], OK, Some(u64::from(b'x'))),
        call(TDVMCALL_IO, [1, 0, 0x3FD, 0], OK, Some(0x60)),
        Step::Shutdown,
    ]);
    let id = h.create_td(spec("typed", steps), 0).unwrap().id;
    assert!(step_until(h, 20_000, |h| h
        .td(id)
        .is_ok_and(|t| t.state == TdState::Runnable)));
    assert!(
        h.type_console(id, b"x").is_err(),
        "a TD that is not running takes no input"
    );
    h.start_td(id, h.now_ms()).unwrap();
    assert!(step_until(h, 20_000, |h| h
        .console(id, 0, 64)
        .is_ok_and(|c| c.data == b"ready\n")));
    assert_eq!(h.type_console(id, b"x").unwrap(), 1);
    assert!(step_until(h, 20_000, |h| h.td(id).is_ok_and(|t| matches!(
        t.state,
        TdState::Stopped | TdState::Failed
    ))));
    let td = h.td(id).unwrap();
    assert_eq!(td.state, TdState::Stopped, "{:?}", td.reason);
}

/// A halt with an interrupt already posted to the vCPU does not sleep: the guest sends itself
/// an IPI (x2APIC SELF_IPI through TDVMCALL WRMSR), then halts with interrupts on. The idle
/// period here is ten minutes, so a halt that slept would not end within the test's wait.
#[test]
fn a_halt_with_an_interrupt_pending_does_not_sleep() {
    let config = crate::host::HostConfig {
        idle_wakeup_ms: 600_000,
        ..small_config()
    };
    let mut e = emulated_host_parts(config, ThreadTopology::default());
    let h = &mut e.host;
    upload_image(h, "fw", &synthetic_tdvf_image()).unwrap();
    let steps = vec![
        call(TDVMCALL_WRMSR, [0x83F, 0x30, 0, 0], OK, None),
        call(tdx_abi::exit::TDVMCALL_HLT, [0; 4], OK, None),
        Step::Print {
            line: String::from("woke"),
        },
        Step::Shutdown,
    ];
    let id = run(h, "halt", steps);
    assert_eq!(h.td(id).unwrap().state, TdState::Stopped);
    assert_eq!(h.console(id, 0, 64).unwrap().data, b"woke\n");
}
