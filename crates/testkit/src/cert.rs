//! A TLS certificate for 127.0.0.1, signed by a CA of its own, made with
//! `openssl`: for tests that serve TLS (the server's `--tls-cert`) or reach
//! a TLS server (PostgreSQL), trusting that CA alone.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The PEM files of a test certificate.
pub struct TestCert {
    /// The CA's certificate: the one root to trust.
    pub ca: PathBuf,
    /// The certificate for 127.0.0.1, signed by the CA.
    pub cert: PathBuf,
    /// Its private key (mode 0600).
    pub key: PathBuf,
}

/// Makes a CA and a certificate for 127.0.0.1 in `dir` (P-256 keys, valid
/// two days). None, said, if `openssl` is not installed.
///
/// # Panics
/// If `openssl` fails.
pub fn localhost_cert(dir: &Path) -> Option<TestCert> {
    let openssl = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
    };
    const EC: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let ca = [
        &["req", "-x509", "-nodes", "-days", "2"][..],
        &EC,
        &[
            "-subj",
            "/CN=latchkey test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
        &["-addext", "basicConstraints=critical,CA:TRUE"],
        &["-addext", "keyUsage=critical,keyCertSign"],
    ]
    .concat();
    let Ok(status) = openssl(&ca) else {
        println!("skipped: openssl is not installed");
        return None;
    };
    assert!(status.success(), "openssl could not make a CA");
    std::fs::write(
        dir.join("cert.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
         extendedKeyUsage=serverAuth\n",
    )
    .expect("the certificate's extensions");
    let request = [
        &["req", "-new", "-nodes"][..],
        &EC,
        &[
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "key.pem",
            "-out",
            "cert.csr",
        ],
    ]
    .concat();
    let sign = [
        "x509", "-req", "-in", "cert.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-days", "2",
        "-out", "cert.pem", "-extfile", "cert.cnf",
    ];
    for args in [&request[..], &sign[..]] {
        let status = openssl(args).expect("run openssl");
        assert!(status.success(), "openssl {args:?} failed");
    }
    let key = dir.join("key.pem");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("the key's mode");
    Some(TestCert {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key,
    })
}
