//! Test certificates made with the openssl command: a certificate authority and certificates
//! it signs, each `<name>.pem` with its key `<name>.key` in a directory of the test's.

use std::path::Path;
use std::process::Command;

/// Runs `cmd`, failing the test with its output when it fails.
pub fn run(cmd: &mut Command) {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed certificate authority `<name>`.
pub fn self_signed_ca(dir: &Path, name: &str, subject: &str) {
    let (key, pem, subj) = (
        format!("{name}.key"),
        format!("{name}.pem"),
        format!("/CN={subject}"),
    );
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", &subj, "-keyout", &key, "-out", &pem])
        .current_dir(dir));
}

/// A certificate `<name>` for `dns_name` (its only subject alternative name), signed by the
/// authority `<ca>`.
pub fn signed(dir: &Path, ca: &str, name: &str, dns_name: &str) {
    let (key, csr, pem, ext) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    run(Command::new("openssl")
        .args(["req", "-newkey", "rsa:2048", "-nodes"])
        .args([
            "-subj",
            &format!("/CN={dns_name}"),
            "-keyout",
            &key,
            "-out",
            &csr,
        ])
        .current_dir(dir));
    std::fs::write(dir.join(&ext), format!("subjectAltName=DNS:{dns_name}\n")).unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-in", &csr, "-CA", &format!("{ca}.pem")])
        .args([
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
        ])
        .args(["-extfile", &ext, "-out", &pem])
        .current_dir(dir));
}
