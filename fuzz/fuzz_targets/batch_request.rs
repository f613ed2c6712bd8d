//! Any bytes as a batch body: parsed request by request, or refused with a client error.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use policyd::policy::{PolicySnapshot, load_dir};

static SNAPSHOT: LazyLock<PolicySnapshot> = LazyLock::new(|| {
    load_dir(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"))
        .expect("bundled policies")
});

fuzz_target!(|data: &[u8]| {
    if let Err(e) = policyd::api::parse_batch_request(&SNAPSHOT, data, 100) {
        assert!(e.status_and_code().0.is_client_error(), "{e}");
    }
});
