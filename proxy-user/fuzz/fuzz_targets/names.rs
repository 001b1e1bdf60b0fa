//! Name normalisation on arbitrary strings: no panic, the normal form is valid ASCII
//! within the length limits, and normalising it again changes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy_user::names::{MAX_LABEL_LEN, MAX_NAME_LEN, normalize};

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(normal) = normalize(name) {
        assert!(normal.len() <= MAX_NAME_LEN && normal.is_ascii());
        assert!(
            normal
                .split('.')
                .all(|l| !l.is_empty() && l.len() <= MAX_LABEL_LEN)
        );
        assert_eq!(normalize(&normal).as_ref(), Ok(&normal));
    }
});
