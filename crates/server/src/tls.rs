//! TLS for the HTTPS listener: a private CA and server certificate that qtask
//! generates on its own, and the rustls server configuration.
//!
//! The legacy API 2.0 clients speak HTTPS only, so a qtask that was given no
//! certificate makes one: [`ensure_generated`] keeps a private CA in
//! `DATA_DIR/tls` (which clients are told to trust) and a server certificate
//! signed by it. [`server_config`] turns any PEM certificate chain and key
//! (generated or supplied by the operator) into a rustls configuration.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    Ia5String, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::oid_registry::{
    OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER, OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
};
use x509_parser::prelude::FromDer;

/// Common name of the CA that qtask generates.
const CA_COMMON_NAME: &str = "qtask local CA";
/// Common name of the server certificate (clients check the SANs, not this).
const SERVER_COMMON_NAME: &str = "qtask server";
const DAY: i64 = 86_400;
const CA_VALIDITY: i64 = 3650 * DAY;
const SERVER_VALIDITY: i64 = 365 * DAY;
/// A server certificate that expires sooner than this is issued anew.
const RENEW_BEFORE: i64 = 30 * DAY;
/// Certificates start to be valid this long before they were made (clock skew).
const BACKDATE: i64 = 3600;

const CA_CERT_FILE: &str = "ca.crt";
const CA_KEY_FILE: &str = "ca.key";
const SERVER_CERT_FILE: &str = "server.crt";
const SERVER_KEY_FILE: &str = "server.key";
const SERVER_NAMES_FILE: &str = "server.names";

const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o700;

/// Paths of the PEM files the HTTPS listener uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// The server certificate (chain), PEM.
    pub cert: PathBuf,
    /// The server's private key, PEM.
    pub key: PathBuf,
    /// the CA clients should trust, when qtask generated it
    pub ca: Option<PathBuf>,
}

/// Why TLS material could not be generated or loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate file could not be read.
    #[error("cannot read certificate {path}: {source}")]
    ReadCert {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A private key file could not be read.
    #[error("cannot read private key {path}: {source}")]
    ReadKey {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A file is not valid PEM.
    #[error("invalid PEM in {path}: {source}")]
    InvalidPem {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A certificate file holds no certificate.
    #[error("no certificate in {path}")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A key file holds no private key (PKCS#8, PKCS#1 or SEC1).
    #[error("no private key in {path}")]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// A certificate that qtask generated earlier cannot be used.
    #[error("unusable certificate {path}: {reason}")]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A private key that qtask generated earlier cannot be used.
    #[error("unusable private key {path}: {reason}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The CA directory holds a CA certificate without its key.
    #[error(
        "CA certificate {cert} exists but its key {key} is missing; \
         remove {cert} to have a new CA generated (clients must then trust the new CA)"
    )]
    IncompleteCa {
        /// The CA certificate.
        cert: PathBuf,
        /// The missing key.
        key: PathBuf,
    },
    /// The CA key is not the key of the CA certificate.
    #[error("CA key {key} does not belong to CA certificate {cert}")]
    CaKeyMismatch {
        /// The CA certificate.
        cert: PathBuf,
        /// The CA key.
        key: PathBuf,
    },
    /// A name given for the server certificate is neither an IP address nor a DNS name.
    #[error("invalid TLS server name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The TLS directory could not be created.
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A file could not be written (or its permissions set).
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// rcgen failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificate chain or key.
    #[error("cannot use certificate {cert} with key {key}: {source}")]
    Config {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// The cause.
        source: rustls::Error,
    },
}

/// Makes sure DATA_DIR/tls holds a private CA (ca.crt, ca.key) and a server certificate (server.crt, server.key) signed by it,
/// valid for 127.0.0.1, ::1, localhost and every name in `extra_names` (DNS names or IP addresses).
/// Creates what is missing; keeps an existing CA; re-issues the server certificate when the set of names changed
/// (record the names in DATA_DIR/tls/server.names, one per line) or when it expires within 30 days. Key files are written mode 0600.
/// Files are written atomically (write to a temp file in the same dir, then rename).
pub fn ensure_generated(tls_dir: &Path, extra_names: &[String]) -> Result<TlsPaths, TlsError> {
    ensure_generated_at(tls_dir, extra_names, unix_now())
}

/// Loads a PEM certificate chain and private key (PKCS#8, PKCS#1 or SEC1) into a rustls server config that offers h2 and http/1.1 via ALPN,
/// using the ring crypto provider explicitly (do not rely on a process-default provider).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = read_certs(cert)?;
    let key_bytes = fs::read(key).map_err(|source| TlsError::ReadKey {
        path: key.to_path_buf(),
        source,
    })?;
    let private_key = rustls_pemfile::private_key(&mut key_bytes.as_slice())
        .map_err(|source| TlsError::InvalidPem {
            path: key.to_path_buf(),
            source,
        })?
        .ok_or_else(|| TlsError::NoPrivateKey {
            path: key.to_path_buf(),
        })?;
    let config_error = |source| TlsError::Config {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        source,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(config_error)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// [`ensure_generated`] with the current time given (tests move it).
fn ensure_generated_at(
    tls_dir: &Path,
    extra_names: &[String],
    now: i64,
) -> Result<TlsPaths, TlsError> {
    let names = server_names(extra_names)?;
    create_private_dir(tls_dir)?;
    let files = Files::new(tls_dir);
    let ca = load_or_create_ca(&files, now)?;
    let reason = if ca.created {
        Some("the CA is new".to_owned())
    } else {
        server_reissue_reason(&files, &names, &ca, now)
    };
    if let Some(reason) = reason {
        tracing::info!(
            cert = %files.server_cert.display(),
            %reason,
            "issuing a TLS server certificate"
        );
        issue_server_cert(&files, &names, &ca, now)?;
    }
    restrict_permissions(&files.ca_key)?;
    restrict_permissions(&files.server_key)?;
    Ok(TlsPaths {
        cert: files.server_cert,
        key: files.server_key,
        ca: Some(files.ca_cert),
    })
}

/// The files in the TLS directory.
struct Files {
    ca_cert: PathBuf,
    ca_key: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    server_names: PathBuf,
}

impl Files {
    fn new(dir: &Path) -> Self {
        Files {
            ca_cert: dir.join(CA_CERT_FILE),
            ca_key: dir.join(CA_KEY_FILE),
            server_cert: dir.join(SERVER_CERT_FILE),
            server_key: dir.join(SERVER_KEY_FILE),
            server_names: dir.join(SERVER_NAMES_FILE),
        }
    }
}

/// A name the server certificate is valid for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ServerName {
    Ip(IpAddr),
    Dns(String),
}

impl fmt::Display for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerName::Ip(ip) => ip.fmt(f),
            ServerName::Dns(name) => f.write_str(name),
        }
    }
}

impl ServerName {
    fn parse(raw: &str) -> Result<Self, TlsError> {
        let invalid = |reason| TlsError::InvalidName {
            name: raw.to_owned(),
            reason,
        };
        let name = raw.trim();
        let unbracketed = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(name);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Ok(ServerName::Ip(ip));
        }
        let dns = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        if dns.is_empty() {
            return Err(invalid("empty name"));
        }
        if dns.len() > 253 {
            return Err(invalid("longer than 253 characters"));
        }
        let labels = dns.strip_prefix("*.").unwrap_or(&dns);
        for label in labels.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(invalid("each DNS label must have 1 to 63 characters"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(invalid(
                    "not an IP address, and a DNS name may only hold letters, digits, '-' and '_' \
                     (with an optional leading '*.')",
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(invalid("a DNS label may not start or end with '-'"));
            }
        }
        Ok(ServerName::Dns(dns))
    }

    fn san(&self) -> Result<SanType, TlsError> {
        Ok(match self {
            ServerName::Ip(ip) => SanType::IpAddress(*ip),
            ServerName::Dns(name) => SanType::DnsName(Ia5String::try_from(name.as_str())?),
        })
    }
}

/// The built-in names followed by `extra`, without duplicates.
fn server_names(extra: &[String]) -> Result<Vec<ServerName>, TlsError> {
    let mut names = vec![
        ServerName::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ServerName::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ServerName::Dns("localhost".to_owned()),
    ];
    for raw in extra {
        let name = ServerName::parse(raw)?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// The CA that signs the server certificate.
struct Ca {
    key: KeyPair,
    /// Only used as the issuer when signing: its subject and key identifier
    /// are those of the CA certificate on disk.
    issuer: rcgen::Certificate,
    /// DER of the CA's subject name.
    subject: Vec<u8>,
    key_id: Vec<u8>,
    not_after: i64,
    /// Whether this call made the CA.
    created: bool,
}

fn ca_params(now: i64) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, now - BACKDATE, now + CA_VALIDITY);
    params
}

fn set_validity(params: &mut CertificateParams, from: i64, until: i64) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let secs = |t: i64| Duration::from_secs(u64::try_from(t).unwrap_or(0));
    params.not_before = epoch + secs(from);
    params.not_after = epoch + secs(until);
}

fn load_or_create_ca(files: &Files, now: i64) -> Result<Ca, TlsError> {
    match (files.ca_cert.exists(), files.ca_key.exists()) {
        (true, true) => load_ca(files, now),
        (false, false) => {
            tracing::info!(cert = %files.ca_cert.display(), "generating a private TLS CA");
            let key = KeyPair::generate()?;
            write_atomic(&files.ca_key, key.serialize_pem().as_bytes(), KEY_MODE)?;
            create_ca_cert(files, key, now)
        }
        (false, true) => {
            tracing::warn!(
                cert = %files.ca_cert.display(),
                "the CA certificate is missing; making it anew from the existing CA key"
            );
            let key = read_key_pair(&files.ca_key)?;
            create_ca_cert(files, key, now)
        }
        (true, false) => Err(TlsError::IncompleteCa {
            cert: files.ca_cert.clone(),
            key: files.ca_key.clone(),
        }),
    }
}

fn create_ca_cert(files: &Files, key: KeyPair, now: i64) -> Result<Ca, TlsError> {
    let issuer = ca_params(now).self_signed(&key)?;
    write_atomic(&files.ca_cert, issuer.pem().as_bytes(), CERT_MODE)?;
    let info = parse_cert(issuer.der()).map_err(|reason| TlsError::BadCertificate {
        path: files.ca_cert.clone(),
        reason,
    })?;
    let subject = info.subject().as_raw().to_vec();
    let not_after = info.validity().not_after.timestamp();
    Ok(Ca {
        key_id: issuer.key_identifier(),
        key,
        issuer,
        subject,
        not_after,
        created: true,
    })
}

fn load_ca(files: &Files, now: i64) -> Result<Ca, TlsError> {
    let bad = |reason: String| TlsError::BadCertificate {
        path: files.ca_cert.clone(),
        reason,
    };
    let key = read_key_pair(&files.ca_key)?;
    let der = read_certs(&files.ca_cert)?.swap_remove(0);
    let info = parse_cert(&der).map_err(bad)?;
    if info.public_key().raw != key.public_key_der() {
        return Err(TlsError::CaKeyMismatch {
            cert: files.ca_cert.clone(),
            key: files.ca_key.clone(),
        });
    }
    // Rebuild the CA's parameters to sign with; the authority key identifier
    // of what it signs must be the subject key identifier on disk.
    let mut params = ca_params(now);
    if let Some(ski) = subject_key_id(&info) {
        params.key_identifier_method = KeyIdMethod::PreSpecified(ski);
    }
    let issuer = params.self_signed(&key)?;
    let rebuilt = parse_cert(issuer.der()).map_err(bad)?;
    if rebuilt.subject().as_raw() != info.subject().as_raw() {
        return Err(bad(format!(
            "its subject is not CN={CA_COMMON_NAME}, so qtask cannot sign with it; \
             remove {} and {} to have a new CA generated",
            files.ca_cert.display(),
            files.ca_key.display()
        )));
    }
    let not_after = info.validity().not_after.timestamp();
    if not_after - now < RENEW_BEFORE {
        tracing::warn!(
            cert = %files.ca_cert.display(),
            "the private TLS CA expires within 30 days (or has expired); remove ca.crt and ca.key \
             to have a new one generated, and make clients trust it"
        );
    }
    Ok(Ca {
        key_id: issuer.key_identifier(),
        key,
        issuer,
        subject: info.subject().as_raw().to_vec(),
        not_after,
        created: false,
    })
}

/// Why the server certificate on disk must be issued anew, if it must.
fn server_reissue_reason(files: &Files, names: &[ServerName], ca: &Ca, now: i64) -> Option<String> {
    let Ok(recorded) = fs::read_to_string(&files.server_names) else {
        return Some("no record of the names it was issued for".to_owned());
    };
    let recorded: BTreeSet<&str> = recorded
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let wanted: Vec<String> = names.iter().map(ToString::to_string).collect();
    let wanted: BTreeSet<&str> = wanted.iter().map(String::as_str).collect();
    if recorded != wanted {
        return Some("the set of names changed".to_owned());
    }
    let der = match read_certs(&files.server_cert) {
        Ok(mut certs) => certs.swap_remove(0),
        Err(e) => return Some(e.to_string()),
    };
    let info = match parse_cert(&der) {
        Ok(info) => info,
        Err(e) => return Some(format!("the certificate cannot be parsed: {e}")),
    };
    if info.validity().not_after.timestamp() - now < RENEW_BEFORE {
        return Some("it expires within 30 days".to_owned());
    }
    if info.issuer().as_raw() != ca.subject.as_slice()
        || authority_key_id(&info).as_ref() != Some(&ca.key_id)
    {
        return Some("it was not issued by the current CA".to_owned());
    }
    match read_key_pair(&files.server_key) {
        Ok(key) if key.public_key_der() == info.public_key().raw => None,
        Ok(_) => Some("the server key does not match the certificate".to_owned()),
        Err(e) => Some(e.to_string()),
    }
}

fn issue_server_cert(
    files: &Files,
    names: &[ServerName],
    ca: &Ca,
    now: i64,
) -> Result<(), TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, SERVER_COMMON_NAME);
    params.subject_alt_names = names
        .iter()
        .map(ServerName::san)
        .collect::<Result<_, _>>()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(
        &mut params,
        now - BACKDATE,
        (now + SERVER_VALIDITY).min(ca.not_after),
    );
    let cert = params.signed_by(&key, &ca.issuer, &ca.key)?;

    // Key first, names last: an interrupted run leaves a state that the
    // checks in `server_reissue_reason` catch.
    write_atomic(&files.server_key, key.serialize_pem().as_bytes(), KEY_MODE)?;
    write_atomic(&files.server_cert, cert.pem().as_bytes(), CERT_MODE)?;
    let mut record = String::new();
    for name in names {
        record.push_str(&name.to_string());
        record.push('\n');
    }
    write_atomic(&files.server_names, record.as_bytes(), CERT_MODE)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = fs::read(path).map_err(|source| TlsError::ReadCert {
        path: path.to_path_buf(),
        source,
    })?;
    let certs = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::InvalidPem {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Parses one DER certificate (whatever follows it is ignored).
fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    X509Certificate::from_der(der)
        .map(|(_rest, cert)| cert)
        .map_err(|e| e.to_string())
}

/// The key identifier in the certificate's subjectKeyIdentifier extension.
fn subject_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    let ext = cert
        .iter_extensions()
        .find(|e| e.oid == OID_X509_EXT_SUBJECT_KEY_IDENTIFIER)?;
    match ext.parsed_extension() {
        ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
        _ => None,
    }
}

/// The keyIdentifier in the certificate's authorityKeyIdentifier extension.
fn authority_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    let ext = cert
        .iter_extensions()
        .find(|e| e.oid == OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER)?;
    match ext.parsed_extension() {
        ParsedExtension::AuthorityKeyIdentifier(aki) => {
            aki.key_identifier.as_ref().map(|id| id.0.to_vec())
        }
        _ => None,
    }
}

/// Reads a key pair that qtask wrote (PKCS#8 PEM).
fn read_key_pair(path: &Path) -> Result<KeyPair, TlsError> {
    let pem = fs::read_to_string(path).map_err(|source| TlsError::ReadKey {
        path: path.to_path_buf(),
        source,
    })?;
    KeyPair::from_pem(&pem).map_err(|e| TlsError::BadKey {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn create_private_dir(dir: &Path) -> Result<(), TlsError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    builder.create(dir).map_err(|source| TlsError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes `data` to a temporary file beside `path`, then renames it over `path`.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    let write_error = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(".{file_name}.tmp-{}-{nanos}", std::process::id()));
    let result = (|| {
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
        let mut file = options.open(&tmp)?;
        // The umask may have narrowed the mode; set it exactly.
        set_mode(&tmp, mode)?;
        file.write_all(data)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(write_error(e));
    }
    // Make the rename durable; not every file system allows syncing a directory.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> io::Result<()> {
    Ok(())
}

/// Makes a key file readable by its owner only, if it is not already.
fn restrict_permissions(path: &Path) -> Result<(), TlsError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let write_error = |source| TlsError::Write {
            path: path.to_path_buf(),
            source,
        };
        let mode = fs::metadata(path)
            .map_err(write_error)?
            .permissions()
            .mode()
            & 0o777;
        if mode != KEY_MODE {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "restricting key file to mode 600");
            set_mode(path, KEY_MODE).map_err(write_error)?;
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use x509_parser::der_parser::ber::BerObjectContent;
    use x509_parser::der_parser::der::parse_der_sequence;
    use x509_parser::extensions::GeneralName;

    const BODY: &str = "hello from qtask tls test";

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn read(path: &Path) -> Vec<u8> {
        fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    /// The DER of the first certificate in a PEM file; [`parse`] reads it.
    fn cert_der(path: &Path) -> CertificateDer<'static> {
        read_certs(path).unwrap().swap_remove(0)
    }

    fn parse(der: &[u8]) -> X509Certificate<'_> {
        parse_cert(der).unwrap()
    }

    fn not_after(cert: &X509Certificate<'_>) -> i64 {
        cert.validity().not_after.timestamp()
    }

    /// The subjectAltName entries, in order, as "IP addr" or "DNS name".
    fn san_names(cert: &X509Certificate<'_>) -> Vec<String> {
        let san = cert.subject_alternative_name().unwrap().expect("SANs");
        san.value
            .general_names
            .iter()
            .map(|name| match name {
                GeneralName::DNSName(dns) => format!("DNS {dns}"),
                GeneralName::IPAddress(ip) => {
                    let ip = match ip.len() {
                        4 => IpAddr::from(<[u8; 4]>::try_from(*ip).unwrap()),
                        16 => IpAddr::from(<[u8; 16]>::try_from(*ip).unwrap()),
                        n => panic!("IP address SAN of {n} bytes"),
                    };
                    format!("IP {ip}")
                }
                other => panic!("unexpected SAN {other:?}"),
            })
            .collect()
    }

    fn all_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
        [
            CA_CERT_FILE,
            CA_KEY_FILE,
            SERVER_CERT_FILE,
            SERVER_KEY_FILE,
            SERVER_NAMES_FILE,
        ]
        .iter()
        .map(|f| ((*f).to_owned(), read(&dir.join(f))))
        .collect()
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn generates_ca_and_server_certificate() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data").join("tls");
        let paths = ensure_generated(&dir, &names(&["qtask.example", "192.0.2.7"])).unwrap();
        assert_eq!(paths.cert, dir.join("server.crt"));
        assert_eq!(paths.key, dir.join("server.key"));
        assert_eq!(paths.ca, Some(dir.join("ca.crt")));
        assert_eq!(
            fs::read_to_string(dir.join("server.names")).unwrap(),
            "127.0.0.1\n::1\nlocalhost\nqtask.example\n192.0.2.7\n"
        );
        // No temporary files left behind.
        let mut entries: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        entries.sort();
        assert_eq!(
            entries,
            [
                "ca.crt",
                "ca.key",
                "server.crt",
                "server.key",
                "server.names"
            ]
        );

        let ca_der = cert_der(&dir.join("ca.crt"));
        let ca = parse(&ca_der);
        assert_eq!(
            ca.issuer().as_raw(),
            ca.subject().as_raw(),
            "the CA is self-signed"
        );
        let ca_cn = ca.subject().iter_common_name().next().expect("CA CN");
        assert_eq!(ca_cn.as_str().unwrap(), CA_COMMON_NAME);
        let bc = ca
            .basic_constraints()
            .unwrap()
            .expect("CA basicConstraints");
        assert!(bc.critical, "CA basicConstraints must be critical");
        assert!(bc.value.ca, "CA:TRUE");
        assert_eq!(bc.value.path_len_constraint, Some(0));
        let ku = ca.key_usage().unwrap().expect("CA keyUsage");
        assert!(ku.critical);
        assert!(
            ku.value.key_cert_sign() && ku.value.crl_sign(),
            "keyCertSign and cRLSign: {}",
            ku.value
        );
        let ca_ski = subject_key_id(&ca).expect("CA subject key identifier");
        let year = 365 * DAY;
        let ca_left = not_after(&ca) - unix_now();
        assert!(ca_left > 9 * year && ca_left <= 10 * year, "{ca_left}");

        let leaf_der = cert_der(&dir.join("server.crt"));
        let leaf = parse(&leaf_der);
        assert_eq!(leaf.issuer().as_raw(), ca.subject().as_raw());
        assert_eq!(authority_key_id(&leaf), Some(ca_ski));
        let bc = leaf
            .basic_constraints()
            .unwrap()
            .expect("leaf basicConstraints");
        assert!(!bc.value.ca, "leaf is no CA");
        let eku = leaf
            .extended_key_usage()
            .unwrap()
            .expect("extendedKeyUsage");
        assert!(eku.value.server_auth);
        assert_eq!(
            san_names(&leaf),
            [
                "IP 127.0.0.1",
                "IP ::1",
                "DNS localhost",
                "DNS qtask.example",
                "IP 192.0.2.7"
            ]
        );
        let leaf_left = not_after(&leaf) - unix_now();
        assert!(leaf_left > year - DAY && leaf_left <= year, "{leaf_left}");

        server_config(&paths.cert, &paths.key).unwrap();
    }

    #[test]
    fn second_call_keeps_every_file() {
        let tmp = tempfile::tempdir().unwrap();
        let extra = names(&["qtask.example"]);
        ensure_generated(tmp.path(), &extra).unwrap();
        let before = all_files(tmp.path());
        // The same names in another spelling are the same set.
        ensure_generated(tmp.path(), &names(&["QTASK.example.", "localhost"])).unwrap();
        assert!(before == all_files(tmp.path()), "files changed");
    }

    #[test]
    fn changed_names_reissue_the_server_certificate_and_keep_the_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        ensure_generated(dir, &names(&["a.example"])).unwrap();
        let ca_cert = read(&dir.join("ca.crt"));
        let ca_key = read(&dir.join("ca.key"));
        let server_cert = read(&dir.join("server.crt"));
        let server_key = read(&dir.join("server.key"));

        ensure_generated(dir, &names(&["b.example", "10.1.2.3"])).unwrap();
        assert_eq!(read(&dir.join("ca.crt")), ca_cert);
        assert_eq!(read(&dir.join("ca.key")), ca_key);
        assert_ne!(read(&dir.join("server.crt")), server_cert);
        assert_ne!(read(&dir.join("server.key")), server_key);
        assert_eq!(
            fs::read_to_string(dir.join("server.names")).unwrap(),
            "127.0.0.1\n::1\nlocalhost\nb.example\n10.1.2.3\n"
        );
        let ca_der = cert_der(&dir.join("ca.crt"));
        let ca = parse(&ca_der);
        let leaf_der = cert_der(&dir.join("server.crt"));
        let leaf = parse(&leaf_der);
        assert_eq!(leaf.issuer().as_raw(), ca.subject().as_raw());
        assert_eq!(authority_key_id(&leaf), subject_key_id(&ca));
        assert!(subject_key_id(&ca).is_some());
        assert_eq!(
            san_names(&leaf),
            [
                "IP 127.0.0.1",
                "IP ::1",
                "DNS localhost",
                "DNS b.example",
                "IP 10.1.2.3"
            ]
        );
        server_config(&dir.join("server.crt"), &dir.join("server.key")).unwrap();
    }

    #[test]
    fn expiring_server_certificate_is_reissued() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let now = unix_now();
        ensure_generated_at(dir, &[], now).unwrap();
        let before = all_files(dir);
        // 65 days left: kept.
        ensure_generated_at(dir, &[], now + 300 * DAY).unwrap();
        assert!(before == all_files(dir));
        // 25 days left: issued anew, CA kept.
        ensure_generated_at(dir, &[], now + 340 * DAY).unwrap();
        assert_eq!(read(&dir.join("ca.crt")), before[0].1);
        assert_ne!(read(&dir.join("server.crt")), before[2].1);
        let leaf_der = cert_der(&dir.join("server.crt"));
        assert!(not_after(&parse(&leaf_der)) >= now + 340 * DAY + 364 * DAY);
    }

    #[test]
    fn missing_or_foreign_server_files_are_reissued() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        ensure_generated(dir, &[]).unwrap();
        let ca_cert = read(&dir.join("ca.crt"));

        fs::remove_file(dir.join("server.key")).unwrap();
        ensure_generated(dir, &[]).unwrap();
        server_config(&dir.join("server.crt"), &dir.join("server.key")).unwrap();

        // A server certificate of another CA.
        let other = tempfile::tempdir().unwrap();
        ensure_generated(other.path(), &[]).unwrap();
        for f in ["server.crt", "server.key"] {
            fs::copy(other.path().join(f), dir.join(f)).unwrap();
        }
        ensure_generated(dir, &[]).unwrap();
        assert_ne!(
            read(&dir.join("server.crt")),
            read(&other.path().join("server.crt"))
        );
        let leaf_der = cert_der(&dir.join("server.crt"));
        let ca_der = cert_der(&dir.join("ca.crt"));
        assert_eq!(
            parse(&leaf_der).issuer().as_raw(),
            parse(&ca_der).subject().as_raw()
        );
        assert_eq!(read(&dir.join("ca.crt")), ca_cert);
    }

    #[test]
    fn ca_problems_are_reported_not_papered_over() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        ensure_generated(dir, &[]).unwrap();
        let ca_key = read(&dir.join("ca.key"));

        // A CA key that is not the CA certificate's.
        let other = tempfile::tempdir().unwrap();
        ensure_generated(other.path(), &[]).unwrap();
        fs::copy(other.path().join("ca.key"), dir.join("ca.key")).unwrap();
        let err = ensure_generated(dir, &[]).unwrap_err();
        assert!(matches!(err, TlsError::CaKeyMismatch { .. }), "{err}");

        // A CA certificate without its key.
        fs::remove_file(dir.join("ca.key")).unwrap();
        let err = ensure_generated(dir, &[]).unwrap_err();
        assert!(matches!(err, TlsError::IncompleteCa { .. }), "{err}");
        assert!(err
            .to_string()
            .contains(&*dir.join("ca.key").to_string_lossy()));

        // A CA key without its certificate: the certificate is made anew.
        fs::write(dir.join("ca.key"), &ca_key).unwrap();
        fs::remove_file(dir.join("ca.crt")).unwrap();
        ensure_generated(dir, &[]).unwrap();
        let ca_der = cert_der(&dir.join("ca.crt"));
        let ca = parse(&ca_der);
        let key = read_key_pair(&dir.join("ca.key")).unwrap();
        assert_eq!(ca.public_key().raw, key.public_key_der());
        let leaf_der = cert_der(&dir.join("server.crt"));
        assert!(subject_key_id(&ca).is_some());
        assert_eq!(authority_key_id(&parse(&leaf_der)), subject_key_id(&ca));
    }

    #[test]
    fn invalid_names_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        for bad in [
            "",
            "host:8443",
            "a..b",
            "bad name",
            "-x.example",
            "ünï.example",
        ] {
            let err = ensure_generated(tmp.path(), &names(&[bad])).unwrap_err();
            assert!(
                matches!(err, TlsError::InvalidName { .. }),
                "{bad:?}: {err}"
            );
        }
        let ok = names(&["[2001:db8::1]", "*.qtask.example", "under_score.example"]);
        ensure_generated(tmp.path(), &ok).unwrap();
        assert_eq!(
            fs::read_to_string(tmp.path().join("server.names")).unwrap(),
            "127.0.0.1\n::1\nlocalhost\n2001:db8::1\n*.qtask.example\nunder_score.example\n"
        );
    }

    #[test]
    fn key_files_have_mode_0600() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tls");
        let paths = ensure_generated(&dir, &[]).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("ca.key")), 0o600);
        assert_eq!(mode(&paths.key), 0o600);
        assert_eq!(mode(&paths.cert), 0o644);
        assert_eq!(mode(paths.ca.as_ref().unwrap()), 0o644);

        // Loosened permissions are tightened again.
        set_mode(&paths.key, 0o644).unwrap();
        ensure_generated(&dir, &[]).unwrap();
        assert_eq!(mode(&paths.key), 0o600);
    }

    #[test]
    fn server_config_loads_keys_and_offers_h2_and_http1() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = ensure_generated(tmp.path(), &[]).unwrap();
        let config = server_config(&paths.cert, &paths.key).unwrap();
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );

        // The same key as SEC1 ("EC PRIVATE KEY"): PKCS#8 wraps it in an OCTET STRING.
        let pkcs8 = read_key_pair(&paths.key).unwrap().serialize_der();
        // PrivateKeyInfo ::= SEQUENCE { version, algorithm, privateKey OCTET STRING, .. }
        let (_, info) = parse_der_sequence(&pkcs8).unwrap();
        let fields = info.as_sequence().unwrap();
        assert!(matches!(fields[0].content, BerObjectContent::Integer(_)));
        assert!(matches!(fields[1].content, BerObjectContent::Sequence(_)));
        let BerObjectContent::OctetString(sec1) = fields[2].content else {
            panic!("PKCS#8 privateKey is no OCTET STRING: {:?}", fields[2]);
        };
        let pem = format!(
            "-----BEGIN EC PRIVATE KEY-----\n{}\n-----END EC PRIVATE KEY-----\n",
            {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(sec1)
            }
        );
        let sec1_path = tmp.path().join("sec1.pem");
        fs::write(&sec1_path, pem).unwrap();
        server_config(&paths.cert, &sec1_path).unwrap();
    }

    #[test]
    fn server_config_errors_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = ensure_generated(tmp.path(), &[]).unwrap();
        let missing = tmp.path().join("missing.pem");
        let shown = |p: &Path| p.display().to_string();

        let err = server_config(&missing, &paths.key).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("cannot read certificate ") && text.contains(&shown(&missing)));

        let err = server_config(&paths.cert, &missing).unwrap_err();
        assert!(
            err.to_string().starts_with("cannot read private key "),
            "{err}"
        );

        // A key file with no key in it.
        let err = server_config(&paths.cert, &paths.cert).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("no private key in {}", shown(&paths.cert))
        );

        let err = server_config(&paths.key, &paths.key).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("no certificate in {}", shown(&paths.key))
        );

        // A key that is not the certificate's.
        let other = tempfile::tempdir().unwrap();
        let other = ensure_generated(other.path(), &[]).unwrap();
        let err = server_config(&paths.cert, &other.key).unwrap_err();
        assert!(matches!(err, TlsError::Config { .. }), "{err}");
    }

    /// Serves one fixed HTTP/1.1 answer on every TLS connection.
    async fn spawn_https(config: Arc<rustls::ServerConfig>) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut request = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
                         connection: close\r\n\r\n{BODY}",
                        BODY.len()
                    );
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        addr
    }

    fn client(
        roots: Option<&Path>,
        resolve: &[&str],
        addr: std::net::SocketAddr,
    ) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .http1_only()
            .timeout(Duration::from_secs(10));
        if let Some(ca) = roots {
            builder =
                builder.add_root_certificate(reqwest::Certificate::from_pem(&read(ca)).unwrap());
        }
        for host in resolve {
            builder = builder.resolve(host, addr);
        }
        builder.build().unwrap()
    }

    #[tokio::test]
    async fn reqwest_trusts_only_the_generated_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = ensure_generated(tmp.path(), &names(&["qtask.test"])).unwrap();
        let ca = paths.ca.clone().unwrap();
        let addr = spawn_https(server_config(&paths.cert, &paths.key).unwrap()).await;
        let port = addr.port();

        let trusting = client(Some(&ca), &["localhost", "qtask.test", "other.test"], addr);
        for host in ["127.0.0.1", "localhost", "qtask.test"] {
            let url = format!("https://{host}:{port}/");
            let answer = trusting
                .get(&url)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{url}: {e:?}"));
            assert_eq!(answer.status(), 200);
            assert_eq!(answer.text().await.unwrap(), BODY, "{url}");
        }
        // A name the certificate does not hold.
        let err = trusting
            .get(format!("https://other.test:{port}/"))
            .send()
            .await
            .unwrap_err();
        assert!(err.is_connect(), "{err:?}");
        // Without the CA nothing is trusted.
        let err = client(None, &[], addr)
            .get(format!("https://127.0.0.1:{port}/"))
            .send()
            .await
            .unwrap_err();
        assert!(err.is_connect(), "{err:?}");
    }

    const PYTHON_STRICT_CLIENT: &str = r#"
import socket, ssl, sys
cafile, port, expected = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
for host in ("127.0.0.1", "localhost"):
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with ctx.wrap_socket(sock, server_hostname=host) as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: " + host.encode() + b"\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                data += chunk
            version = tls.version()
    if not data.startswith(b"HTTP/1.1 200") or not data.endswith(expected):
        sys.exit("unexpected answer via %s: %r" % (host, data))
    print("ok", host, version)
"#;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn python_strict_x509_verification_accepts_the_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = ensure_generated(tmp.path(), &[]).unwrap();
        let ca = paths.ca.clone().unwrap();
        let addr = spawn_https(server_config(&paths.cert, &paths.key).unwrap()).await;
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new("python3")
                .arg("-c")
                .arg(PYTHON_STRICT_CLIENT)
                .arg(&ca)
                .arg(addr.port().to_string())
                .arg(BODY)
                .output()
        })
        .await
        .unwrap()
        .expect("python3 is required for this test and could not be run");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "python3 strict verification failed ({}):\n{stdout}\n{stderr}",
            output.status
        );
        assert!(
            stdout.contains("ok 127.0.0.1") && stdout.contains("ok localhost"),
            "{stdout}"
        );
    }
}
