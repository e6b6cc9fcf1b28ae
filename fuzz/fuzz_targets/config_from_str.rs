//! `corral::config::from_str` on any text: it never panics; a refusal
//! names at least one problem, each at a line and column of the text; and
//! a plan it accepts survives the trip to a worker (JSON, as the control
//! channel sends it) unchanged.
//!
//! Certificate paths are read: texts naming device or process files are
//! skipped, so that no input reads an endless file.
#![no_main]

use std::path::Path;

use corral::config::{ConfigError, from_str};
use corral::plan::Plan;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if ["/dev", "/proc", "/sys"].iter().any(|d| text.contains(d)) {
        return;
    }
    // Relative certificate paths resolve into a folder that is not there.
    let path = Path::new("/nonexistent-corral-fuzz/corral.toml");
    match from_str(path, text) {
        Ok(mut plan) => {
            let sent = serde_json::to_vec(&plan).expect("a plan serialises");
            let received: Plan = serde_json::from_slice(&sent).expect("a plan deserialises");
            // The admin token stays with the master: workers get none.
            if let Some(admin) = &mut plan.admin {
                admin.token = None;
            }
            assert_eq!(received, plan);
        }
        Err(ConfigError::Invalid { diagnostics }) => {
            assert!(!diagnostics.is_empty());
            let lines = text.split('\n').count();
            for d in &diagnostics {
                assert!(
                    d.line >= 1 && d.line <= lines && d.col >= 1,
                    "{d} in {lines} lines"
                );
                assert!(
                    d.to_string().starts_with(&format!("{}:", path.display())),
                    "{d}"
                );
            }
        }
        Err(e @ ConfigError::Read { .. }) => panic!("from_str read the config itself: {e}"),
    }
});
