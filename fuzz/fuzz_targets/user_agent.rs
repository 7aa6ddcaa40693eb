//! Fuzz target `user_agent`: the bot classifier and browser/device parser on arbitrary strings.
//! It must never panic; bots never carry a browser or device breakdown. (Linear time is checked
//! by libFuzzer's `-timeout` and by the classifier's 512-byte cap.)

#![no_main]

use libfuzzer_sys::fuzz_target;
use pulse_engine::{Browser, DeviceType};
use pulse_server::user_agent::classify;

fuzz_target!(|ua: &str| {
    let class = classify(ua);
    if class.is_bot {
        assert_eq!(class.browser, Browser::Other);
        assert_eq!(class.device, DeviceType::Other);
    }
    assert_eq!(classify(ua), class, "classification is not deterministic");
});
