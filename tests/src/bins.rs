//! Locating the binaries the tests run: `lb` (the agent) and `lb-testpod` (the pod workload).
//! `cargo xtask test` builds both and passes their paths in `LB_BIN` and `LB_TESTPOD_BIN`;
//! otherwise they are looked up next to the running test executable (`target/<profile>/`).

use std::path::PathBuf;

fn find(env: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/test-xxxx → target/debug/NAME; target/debug/xtask → target/debug/NAME
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("{name} not found: build it (`cargo build -p lb-userspace -p lb-tests`) or set {env}");
}

/// The `lb` binary.
pub fn lb() -> PathBuf {
    find("LB_BIN", "lb")
}

/// The `lb-testpod` binary.
pub fn testpod() -> PathBuf {
    find("LB_TESTPOD_BIN", "lb-testpod")
}
