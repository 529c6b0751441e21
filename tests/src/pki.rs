//! A test PKI made with the openssl CLI, for the etcd the fleet tests run
//! with TLS.

use std::{
    fs,
    io::Write,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Stdio},
};

use crate::etcd::Mode;

/// Makes the test PKI in `pki` with the openssl CLI: EC P-256 keys
/// (PKCS#8), a CA, a server certificate for 127.0.0.1 and localhost, and a
/// client certificate (CN=stopguard, or no CN in `Mode::TlsAuth`).
pub fn make_pki(pki: &Path, mode: Mode) {
    fs::create_dir_all(pki).unwrap();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(pki)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running openssl: {e}"));
        assert!(
            out.status.success(),
            "openssl {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let leaf = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n";
    let client_subject = if mode == Mode::TlsAuth {
        "/O=stopguard"
    } else {
        "/CN=stopguard"
    };
    // The server's certificate is also its gateway's client certificate.
    let certs = [
        (
            "ca",
            "/CN=stopguard test CA",
            "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n\
             subjectKeyIdentifier=hash\n"
                .to_string(),
        ),
        (
            "server",
            "/CN=localhost",
            format!(
                "{leaf}extendedKeyUsage=serverAuth,clientAuth\n\
                 subjectAltName=IP:127.0.0.1,DNS:localhost\n"
            ),
        ),
        (
            "client",
            client_subject,
            format!("{leaf}extendedKeyUsage=clientAuth\n"),
        ),
    ];
    for (serial, (name, subject, ext)) in certs.iter().enumerate() {
        let (key, csr, crt, extfile) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        fs::write(pki.join(&extfile), ext).unwrap();
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &key,
        ]);
        fs::set_permissions(pki.join(&key), fs::Permissions::from_mode(0o600)).unwrap();
        openssl(&["req", "-new", "-key", &key, "-subj", subject, "-out", &csr]);
        let signer: &[&str] = if *name == "ca" {
            &["-signkey", "ca.key"]
        } else {
            &["-CA", "ca.crt", "-CAkey", "ca.key"]
        };
        let serial = (serial + 1).to_string();
        let mut args = vec!["x509", "-req", "-in", &csr];
        args.extend_from_slice(signer);
        args.extend([
            "-sha256",
            "-days",
            "3650",
            "-set_serial",
            &serial,
            "-extfile",
            &extfile,
            "-out",
            &crt,
        ]);
        openssl(&args);
    }
}

/// Writes `text` to `path`, mode 0600 from the start.
pub fn write_secret(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    file.write_all(text.as_bytes()).unwrap();
}

/// 32 random hex digits from /dev/urandom.
pub fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
