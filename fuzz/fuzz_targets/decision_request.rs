//! Any bytes as a decision request body: parsed and validated against the bundled schema, or
//! refused with a client error; never a panic.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use policyd::policy::{PolicySnapshot, load_dir};

static SNAPSHOT: LazyLock<PolicySnapshot> = LazyLock::new(|| {
    load_dir(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"))
        .expect("bundled policies")
});

fuzz_target!(|data: &[u8]| {
    if let Err(e) = policyd::api::parse_decision_request(&SNAPSHOT, data) {
        assert!(e.status_and_code().0.is_client_error(), "{e}");
    }
});
