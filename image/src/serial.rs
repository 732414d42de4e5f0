//! Reading facts out of the appliance's serial log.

/// The appliance logs `listening on port <port> after <N> ms ...` once when its API is up;
/// returns N (time from the UEFI entry point to listening, measured by the appliance itself).
pub fn listening_after_ms(serial_log: &str) -> Option<u64> {
    serial_log.lines().find_map(|line| {
        let rest = line.split_once("listening on port ")?.1;
        let rest = rest.split_once(" after ")?.1;
        let number = rest.split_once(" ms")?.0;
        number.trim().parse().ok()
    })
}

/// The API token the appliance generated and printed once
/// (`... generated API token (from RDRAND, shown once): <hex>`), if it did.
pub fn generated_token(serial_log: &str) -> Option<String> {
    serial_log.lines().find_map(|line| {
        let rest = line.split_once("generated API token")?.1;
        let token = rest.rsplit_once(": ")?.1.trim();
        (!token.is_empty()).then(|| token.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_listening_time() {
        let log = "\x1b[2J boot\n[    0.051] INFO  appliance: listening on port 8080 after 51 ms at 10.0.2.15/24\n";
        assert_eq!(listening_after_ms(log), Some(51));
    }

    #[test]
    fn finds_the_generated_token() {
        let log = "[    0.008] WARN  appliance: no api.token configured; generated API token (from RDRAND, shown once): 9185ed14\r\n";
        assert_eq!(generated_token(log).as_deref(), Some("9185ed14"));
        assert_eq!(generated_token("no token here"), None);
    }

    #[test]
    fn missing_or_garbled_lines_give_none() {
        assert_eq!(listening_after_ms(""), None);
        assert_eq!(
            listening_after_ms("listening on port 8080 after soon ms"),
            None
        );
        assert_eq!(listening_after_ms("listening on port 8080"), None);
    }
}
