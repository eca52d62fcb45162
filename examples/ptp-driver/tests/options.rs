//! Options are parsed once, into `PtpOptions`; bad input is refused naming the key and the value.

use cnm::{DriverOptions, ErrorKind};
use ptp_driver::PtpOptions;

fn opts(pairs: &[(&str, &str)]) -> DriverOptions {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn defaults_and_every_key_parse() {
    let default = PtpOptions::parse("ptp", &opts(&[])).unwrap();
    assert_eq!((default.prefix.as_str(), default.proxy_arp), ("ptp", true));
    let set = PtpOptions::parse(
        "ptp",
        &opts(&[("ptp.prefix", "pp"), ("ptp.proxy_arp", "false")]),
    );
    let set = set.unwrap();
    assert_eq!((set.prefix.as_str(), set.proxy_arp), ("pp", false));
}

#[test]
fn unknown_keys_and_bad_values_are_refused_naming_them() {
    for (key, value) in [
        ("ptp.prefix", "TOO-LONG"),
        ("ptp.prefix", ""),
        ("ptp.proxy_arp", "yes"),
        ("com.example.other", "1"),
    ] {
        let err = PtpOptions::parse("ptp", &opts(&[(key, value)])).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        let text = err.to_string();
        assert!(
            text.contains(key) && text.contains(&format!("{value:?}")),
            "{text}"
        );
        assert_eq!(err.driver(), "ptp");
    }
}
