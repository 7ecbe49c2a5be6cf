//! What the config may not hold: a password in an upstream URL.

use std::process::Command;

#[test]
fn check_config_refuses_a_password_in_the_upstream_url_without_printing_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("regcache.toml");
    let text =
        "listen = \"127.0.0.1:5000\"\n[[upstream]]\nurl = \"http://user:secretpw@127.0.0.1:1\"\n";
    std::fs::write(&path, text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_regcache"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(1), "{printed}");
    assert!(printed.contains("upstream[0].url"), "{printed}");
    assert!(
        printed.contains("upstream[0].username and upstream[0].password"),
        "{printed}"
    );
    assert!(!printed.contains("secretpw"), "{printed}");
}
