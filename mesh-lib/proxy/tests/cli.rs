//! mesh-proxy's `--help`: it describes the proxies, not the library they are built from.

use std::process::Command;

#[test]
fn help_describes_the_proxies_not_the_library() {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-proxy"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(
        help.starts_with("mesh-proxy: proxies for the Bookinfo mesh"),
        "{help}"
    );
    assert!(!help.contains(env!("CARGO_PKG_DESCRIPTION")), "{help}");
    for mode in ["gateway", "sidecar"] {
        assert!(help.contains(mode), "{mode}: {help}");
    }
}
