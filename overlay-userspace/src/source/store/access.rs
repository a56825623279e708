//! How a component reaches the store: its members, TLS and etcd's own authentication.
//!
//! TLS is on when a CA is given: the server's certificate must be signed by it and valid for
//! the address dialled. A client certificate and key are presented when given (etcd's
//! `--client-cert-auth` asks for one). etcd's user/password authentication takes the password
//! from a file, never from the command line. Every component that talks to etcd (agent, CLI,
//! Docker plugin, CNI plugin) builds the same [`StoreAccess`], and a refusal is explained here
//! in terms of the files and flags given, not as a bare transport error.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use rustls::{AlertDescription, CertificateError};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

use super::StoreError;

/// What a component is given to prove itself to the store and to check the store.
/// Holds paths only: the password is read when connecting and never kept or logged. As JSON
/// (the CNI configuration's fields): `storeCACert`, `storeCert`, `storeKey`, `storeUser`,
/// `storePasswordFile`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Credentials {
    /// CA certificate (PEM) that signed etcd's server certificate; turns TLS on.
    #[serde(default, rename = "storeCACert")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM) presented to etcd.
    #[serde(default, rename = "storeCert")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[serde(default, rename = "storeKey")]
    pub key: Option<PathBuf>,
    /// etcd user (etcd's `auth enable`).
    #[serde(default, rename = "storeUser")]
    pub user: Option<String>,
    /// File holding the user's password (its first line).
    #[serde(default, rename = "storePasswordFile")]
    pub password_file: Option<PathBuf>,
}

/// The store's address and the credentials to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreAccess {
    /// etcd://HOST:PORT[,HOST:PORT...]
    pub url: String,
    pub creds: Credentials,
}

impl StoreAccess {
    /// No TLS, no user.
    pub fn plain(url: &str) -> Self {
        StoreAccess { url: url.to_string(), creds: Credentials::default() }
    }

    pub fn new(url: &str, creds: Credentials) -> Self {
        StoreAccess { url: url.to_string(), creds }
    }

    /// Checks the address and the credentials (combinations, files readable and well-formed)
    /// without connecting.
    pub fn check(&self) -> Result<(), StoreError> {
        super::parse_url(&self.url)?;
        self.creds.load().map(|_| ())
    }

    pub fn tls(&self) -> bool {
        self.creds.cacert.is_some()
    }
}

/// The flags, as a user would type them, for messages.
const CACERT: &str = "--store-cacert";
const CERT: &str = "--store-cert";
const KEY: &str = "--store-key";
const USER: &str = "--store-user";
const PASSWORD_FILE: &str = "--store-password-file";

fn bad(flag: &'static str, path: &Path, message: impl Into<String>) -> StoreError {
    StoreError::BadFile { flag, path: path.to_path_buf(), message: message.into() }
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, StoreError> {
    fs::read(path).map_err(|e| bad(flag, path, format!("cannot be read: {e}")))
}

/// Warns when a secret is readable by others (as ssh does for keys).
fn warn_if_exposed(flag: &'static str, path: &Path) {
    if let Ok(m) = fs::metadata(path) {
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o007 != 0 {
            tracing::warn!("{flag} {}: readable by every user (mode {mode:04o}); `chmod 600` it", path.display());
        }
    }
}

/// The credentials read and checked, ready for the client.
pub(super) struct Loaded {
    pub tls: Option<TlsOptions>,
    pub user: Option<(String, String)>,
}

impl Credentials {
    pub(super) fn load(&self) -> Result<Loaded, StoreError> {
        let combo = |m: &str| Err(StoreError::Access(m.to_string()));
        match (&self.cert, &self.key) {
            (Some(_), None) => return combo(&format!("{CERT} needs {KEY} (the certificate's private key)")),
            (None, Some(_)) => return combo(&format!("{KEY} needs {CERT} (the certificate it belongs to)")),
            (Some(_), Some(_)) if self.cacert.is_none() => {
                return combo(&format!("{CERT}/{KEY} need {CACERT}: TLS is used when a CA is given, and the client certificate is presented over TLS"));
            }
            _ => {}
        }
        if self.user.is_some() != self.password_file.is_some() {
            return combo(&format!("{USER} and {PASSWORD_FILE} go together"));
        }
        let tls = match &self.cacert {
            None => None,
            Some(ca_path) => {
                let ca = read(CACERT, ca_path)?;
                let n = CertificateDer::pem_slice_iter(&ca).filter(|c| c.is_ok()).count();
                if n == 0 {
                    return Err(bad(CACERT, ca_path, "holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
                }
                let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(&ca));
                if let (Some(cert_path), Some(key_path)) = (&self.cert, &self.key) {
                    let cert = read(CERT, cert_path)?;
                    if CertificateDer::pem_slice_iter(&cert).filter(|c| c.is_ok()).count() == 0 {
                        return Err(bad(CERT, cert_path, "holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
                    }
                    let key = read(KEY, key_path)?;
                    if let Err(e) = PrivateKeyDer::from_pem_slice(&key) {
                        return Err(bad(KEY, key_path, format!("holds no PEM private key ({e})")));
                    }
                    warn_if_exposed(KEY, key_path);
                    tls = tls.identity(Identity::from_pem(cert, key));
                }
                Some(tls)
            }
        };
        let user = match (&self.user, &self.password_file) {
            (Some(name), Some(path)) => {
                if name.is_empty() {
                    return combo(&format!("{USER} is empty"));
                }
                let text = read(PASSWORD_FILE, path)?;
                let text = String::from_utf8(text).map_err(|_| bad(PASSWORD_FILE, path, "is not UTF-8 text"))?;
                let password = text.lines().next().unwrap_or("").to_string();
                if password.is_empty() {
                    return Err(bad(PASSWORD_FILE, path, "is empty (the password is its first line)"));
                }
                warn_if_exposed(PASSWORD_FILE, path);
                Some((name.clone(), password))
            }
            _ => None,
        };
        Ok(Loaded { tls, user })
    }
}

impl Loaded {
    pub(super) fn apply(self, mut opts: ConnectOptions) -> ConnectOptions {
        if let Some(tls) = self.tls {
            opts = opts.with_tls(tls);
        }
        if let Some((name, password)) = self.user {
            // etcd's tokens expire (--auth-token-ttl, 5 min): a long-lived agent renews its own.
            opts = opts.with_user(name, password).with_auto_token_refresh(true);
        }
        opts
    }
}

/// The TLS error in `e`'s chain, if any (rustls errors travel inside `io::Error`s, whose
/// `source` skips them: look inside with `get_ref`).
fn tls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(t) = tls_error(inner) {
                    return Some(t);
                }
            }
        }
        cur = err.source();
    }
    None
}

/// Whether `member` (HOST:PORT) answers a TLS ClientHello with a TLS record: a plain client
/// that failed there met a TLS port (which closes on plain HTTP/2 without saying why).
pub(super) async fn serves_tls(member: &str) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let hello = || -> Option<Vec<u8>> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .ok()?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), rustls_pki_types::ServerName::try_from("etcd").ok()?).ok()?;
        let mut out = Vec::new();
        conn.write_tls(&mut out).ok()?;
        Some(out)
    };
    let Some(hello) = hello() else { return false };
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(member).await.ok()?;
        s.write_all(&hello).await.ok()?;
        let mut first = [0u8; 1];
        s.read_exact(&mut first).await.ok()?;
        // A TLS record: handshake (ServerHello) or alert.
        Some(first[0] == 0x16 || first[0] == 0x15)
    };
    tokio::time::timeout(std::time::Duration::from_secs(2), probe).await.ok().flatten().unwrap_or(false)
}

/// Completes a TLS handshake with `member` (HOST:PORT) with the credentials given and reads
/// what the server says next. A server that refuses our client certificate, or its absence,
/// sends an alert after the handshake, which the gRPC client usually loses in a broken pipe:
/// this returns it (and any handshake error) as the explanation. `None`: nothing refused.
pub(super) async fn tls_refusal(access: &StoreAccess, member: &str) -> Option<String> {
    let creds = access.creds.clone();
    let member = member.to_string();
    let probe = move || -> Option<rustls::Error> {
        use std::io::Read as _;
        let ca = fs::read(creds.cacert.as_ref()?).ok()?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&ca).flatten() {
            roots.add(c).ok()?;
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions().ok()?.with_root_certificates(roots);
        let config = match (&creds.cert, &creds.key) {
            (Some(cert), Some(key)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&fs::read(cert).ok()?).flatten().collect();
                let key = PrivateKeyDer::from_pem_slice(&fs::read(key).ok()?).ok()?;
                builder.with_client_auth_cert(chain, key).ok()?
            }
            _ => builder.with_no_client_auth(),
        };
        let (host, _) = member.rsplit_once(':')?;
        let name = rustls_pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_string()).ok()?;
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).ok()?;
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&member).ok()?.next()?;
        let mut sock = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).ok()?;
        sock.set_read_timeout(Some(std::time::Duration::from_secs(2))).ok()?;
        sock.set_write_timeout(Some(std::time::Duration::from_secs(2))).ok()?;
        let as_tls = |e: std::io::Error| e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()).cloned();
        while conn.is_handshaking() {
            if let Err(e) = conn.complete_io(&mut sock) {
                return as_tls(e);
            }
        }
        let mut first = [0u8; 1];
        match rustls::Stream::new(&mut conn, &mut sock).read_exact(&mut first) {
            Err(e) => as_tls(e),
            Ok(_) => None,
        }
    };
    let t = tokio::task::spawn_blocking(probe).await.ok()??;
    Some(explain_tls(&access.creds, &t))
}

/// The error inside an etcd client error, whose own `source` is always empty.
pub(super) fn inner(e: &etcd_client::Error) -> &(dyn std::error::Error + 'static) {
    match e {
        etcd_client::Error::GRpcStatus(s) => s,
        etcd_client::Error::TransportError(t) => t,
        etcd_client::Error::IoError(io) => io,
        other => other,
    }
}

/// A TLS failure in terms of the files given.
fn explain_tls(c: &Credentials, t: &rustls::Error) -> String {
    let ca = || c.cacert.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    let cert = || c.cert.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    match t {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            format!("the server's certificate is not signed by the CA in {CACERT} {} (certificate check: unknown issuer)", ca())
        }
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }) => {
            "the server's certificate is not valid for the address dialled (certificate check: name mismatch); its subjectAltName must list the IP or DNS name in --store".to_string()
        }
        rustls::Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            "the server's certificate has expired (certificate check: expired)".to_string()
        }
        rustls::Error::InvalidCertificate(other) => format!("the server's certificate was refused (certificate check: {other:?})"),
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => {
            format!("etcd requires a client certificate: pass {CERT} and {KEY} (signed by a CA in etcd's --trusted-ca-file)")
        }
        rustls::Error::AlertReceived(AlertDescription::BadCertificate | AlertDescription::UnknownCA | AlertDescription::CertificateUnknown)
            if c.cert.is_none() =>
        {
            format!("etcd requires a client certificate: pass {CERT} and {KEY} (signed by a CA in etcd's --trusted-ca-file)")
        }
        rustls::Error::AlertReceived(AlertDescription::BadCertificate | AlertDescription::UnknownCA | AlertDescription::CertificateUnknown) => {
            format!("etcd refused the client certificate {CERT} {}: it is not signed by a CA in etcd's --trusted-ca-file (TLS alert: {t})", cert())
        }
        rustls::Error::InvalidMessage(_) => {
            "the address does not speak TLS (plain HTTP?): drop --store-cacert, or use the member's TLS address".to_string()
        }
        other => format!("TLS handshake failed: {other}"),
    }
}

/// Explains a failed connection or request in terms of the credentials given, when it is a
/// refusal (TLS or authentication) rather than a member being away. `None`: not a refusal.
pub(super) fn refusal(access: &StoreAccess, e: &etcd_client::Error) -> Option<String> {
    tracing::debug!(error = ?e, "store request failed");
    let c = &access.creds;
    if let Some(t) = tls_error(inner(e)) {
        return Some(explain_tls(c, t));
    }
    if let etcd_client::Error::GRpcStatus(s) = e {
        // etcd's own authentication: codes 3 (invalid argument: authentication failed, user name
        // empty) and 7 (permission denied), 16 (unauthenticated: token invalid).
        match (s.code() as i32, &c.user) {
            (3, Some(user)) => {
                let file = c.password_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
                return Some(format!("etcd refused user {user:?}: wrong user or password (the password is the first line of {PASSWORD_FILE} {file}) [{}]", s.message()));
            }
            (3 | 16, None) => {
                return Some(format!("etcd requires authentication: pass {USER} and {PASSWORD_FILE}, or a client certificate whose CN is an etcd user [{}]", s.message()));
            }
            (7, _) => {
                return Some(format!("etcd denied the request: the user has no read-write permission on the overlay's keys (grant a role with readwrite on prefix {}) [{}]", super::records::PREFIX, s.message()));
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str, body: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("overlay-access-{}-{name}", std::process::id()));
        fs::write(&p, body).expect("write temp file");
        p
    }

    #[test]
    fn bad_combinations_and_files_are_named() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let ca = tmp("ca.pem", pem);
        let junk = tmp("junk.pem", "not a certificate\n");
        let empty_pw = tmp("pw", "\n");
        let missing = PathBuf::from("/nonexistent/overlay-ca.pem");
        let case = |creds: Credentials| StoreAccess::new("etcd://10.0.0.1:2379", creds).check().expect_err("must be refused").to_string();
        let e = case(Credentials { cacert: Some(ca.clone()), cert: Some(ca.clone()), ..Default::default() });
        assert!(e.contains("--store-cert needs --store-key"), "{e}");
        let e = case(Credentials { cert: Some(ca.clone()), key: Some(ca.clone()), ..Default::default() });
        assert!(e.contains("need --store-cacert"), "{e}");
        let e = case(Credentials { cacert: Some(missing.clone()), ..Default::default() });
        assert!(e.contains("--store-cacert /nonexistent/overlay-ca.pem: cannot be read"), "{e}");
        let e = case(Credentials { cacert: Some(junk.clone()), ..Default::default() });
        assert!(e.contains("holds no PEM certificate"), "{e}");
        let e = case(Credentials { cacert: Some(ca.clone()), cert: Some(ca.clone()), key: Some(junk.clone()), ..Default::default() });
        assert!(e.contains(&format!("--store-key {}: holds no PEM private key", junk.display())), "{e}");
        let e = case(Credentials { user: Some("u".into()), ..Default::default() });
        assert!(e.contains("--store-user and --store-password-file go together"), "{e}");
        let e = case(Credentials { user: Some("u".into()), password_file: Some(empty_pw.clone()), ..Default::default() });
        assert!(e.contains("is empty"), "{e}");
        for p in [ca, junk, empty_pw] {
            let _ = fs::remove_file(p);
        }
    }
}
