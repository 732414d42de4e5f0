//! One step of the main loop, independent of the platform: poll the network stack (which
//! drives the API), report address changes, decide whether to poll again or sleep.

use alloc::format;

use mgmt_api::Api;
use net::{NetStack, Nic};

use crate::config::ApplianceConfig;
use crate::idle::{AdaptiveIdle, IdleAction};
use crate::service::{ApiService, ApiTransport};
use crate::startup::{AddressEvent, AddressWatch};

/// The appliance's network side: TCP/IP stack, management API (served as `S`: plain HTTP or
/// through TLS) and idle policy.
pub struct Runtime<N: Nic, S: ApiTransport = ApiService> {
    stack: NetStack<N>,
    service: S,
    idle: AdaptiveIdle,
    watch: AddressWatch,
}

/// What one [`Runtime::step`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepOutcome {
    /// Poll again or sleep.
    pub action: IdleAction,
    /// An address change to log, if any.
    pub address_event: Option<AddressEvent>,
}

impl<N: Nic> Runtime<N> {
    /// Builds the stack on `nic` with `config`, serving `api` over plain HTTP; `now_ms` is the
    /// current time since entry.
    pub fn new(nic: N, config: &ApplianceConfig, api: Api, now_ms: u64, random_seed: u64) -> Self {
        let service = ApiService::new(api, config.api_limits.clone());
        Self::with_service(nic, config, service, now_ms, random_seed)
    }
}

impl<N: Nic, S: ApiTransport> Runtime<N, S>
where
    S::Conn: 'static,
{
    /// Builds the stack on `nic` with `config`, serving the API through `service`.
    pub fn with_service(
        nic: N,
        config: &ApplianceConfig,
        service: S,
        now_ms: u64,
        random_seed: u64,
    ) -> Self {
        Self {
            stack: NetStack::new(nic, config.server, now_ms, random_seed),
            service,
            idle: AdaptiveIdle::new(config.idle, now_ms),
            watch: AddressWatch::new(config.server.port),
        }
    }

    /// Polls once at `now_ms`, then advances the TD host's jobs by one slice.
    pub fn step(&mut self, now_ms: u64) -> StepOutcome {
        let mut activity = self.stack.poll(now_ms, &mut self.service);
        activity |= self.service.server_mut().handler_mut().step(now_ms);
        let address = self.stack.ipv4_address();
        let address_event = self.watch.observe(address, now_ms);
        if address_event.is_some() {
            let shown = address.map(|([a, b, c, d], len)| format!("{a}.{b}.{c}.{d}/{len}"));
            self.service.server_mut().handler_mut().set_ipv4(shown);
        }
        let deadline = self.stack.poll_delay_ms(now_ms);
        StepOutcome {
            action: self.idle.after_poll(now_ms, activity, deadline),
            address_event,
        }
    }

    /// The network stack.
    pub fn stack(&self) -> &NetStack<N> {
        &self.stack
    }

    /// The network stack, mutable (e.g. for the NIC).
    pub fn stack_mut(&mut self) -> &mut NetStack<N> {
        &mut self.stack
    }

    /// The management API (what it reports, its token).
    pub fn api(&self) -> &Api {
        self.service.server().handler()
    }

    /// The idle policy's counters.
    pub fn idle(&self) -> &AdaptiveIdle {
        &self.idle
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use net::Ipv4Config;

    /// A NIC on an empty wire: never receives, records what is sent.
    struct SilentNic {
        sent: Vec<Vec<u8>>,
    }

    impl Nic for SilentNic {
        fn mac_address(&self) -> [u8; 6] {
            [0x02, 0, 0, 0, 0, 1]
        }
        fn max_frame_len(&self) -> usize {
            1514
        }
        fn receive(&mut self, _buf: &mut [u8]) -> Option<usize> {
            None
        }
        fn transmit(&mut self, frame: &[u8]) -> bool {
            self.sent.push(frame.to_vec());
            true
        }
    }

    #[test]
    fn static_address_reports_listening_at_once_then_idles() {
        let mut config = ApplianceConfig::default();
        config.server.ipv4 = Ipv4Config::Static {
            address: [10, 0, 2, 15],
            prefix_len: 24,
            gateway: None,
        };
        let mut runtime = Runtime::new(SilentNic { sent: Vec::new() }, &config, Api::new(7), 7, 42);
        let first = runtime.step(7);
        let Some(AddressEvent::FirstListening(listening)) = first.address_event else {
            panic!("expected the listening event, got {first:?}");
        };
        assert_eq!(listening.address, [10, 0, 2, 15]);
        assert_eq!(listening.port, 8080);
        assert_eq!(listening.after_ms, 7);
        assert_eq!(
            runtime.api().host_info().ipv4.as_deref(),
            Some("10.0.2.15/24"),
            "GET /v1/host reports the address"
        );
        // Nothing arrives: once the busy window has passed the loop sleeps.
        let later = runtime.step(7 + config.idle.busy_window_ms + 1);
        assert!(
            matches!(later.action, IdleAction::Sleep { .. }),
            "{later:?}"
        );
        assert_eq!(later.address_event, None);
    }

    #[test]
    fn dhcp_sends_a_discover_and_is_not_listening_without_a_lease() {
        let config = ApplianceConfig::default();
        let mut runtime = Runtime::new(SilentNic { sent: Vec::new() }, &config, Api::new(0), 0, 1);
        for now in 0..20 {
            assert_eq!(runtime.step(now).address_event, None);
        }
        let sent = &runtime.stack_mut().nic_mut().sent;
        // A DHCPDISCOVER: an IPv4/UDP broadcast from port 68 to port 67.
        let discover = sent.iter().any(|frame| {
            frame.get(..6) == Some(&[0xff; 6][..])
                && frame.get(12..14) == Some(&[0x08, 0x00][..])
                && frame.get(34..38) == Some(&[0, 68, 0, 67][..])
        });
        assert!(discover, "no DHCP discover among {} frames", sent.len());
    }
}
