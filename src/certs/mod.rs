//! `shardkv certs init` / `shardkv certs client NAME` / `shardkv certs host ID`: the cluster's
//! private CA and the certificates it issues.
//!
//! Every QUIC connection is mutually authenticated against one cluster CA, and a certificate's
//! role travels in a URI SAN: `shardkv://host/<id>` or `shardkv://client/<name>`. This module is
//! the only place those certificates are made; the names come from
//! `shardkv_transport::identity`, the same module the transport checks them with, so the two
//! cannot drift apart.
//!
//! Files are written whole or not at all (temp file + rename), private keys are created with
//! mode 0600, and nothing is overwritten unless the caller passes `force`.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

use shardkv_transport::identity::{host_server_name, PeerIdentity};
use shardkv_transport::HostId;

use crate::config::{ClusterConfig, HostConfig};

mod host_check;

/// Name of the client certificate `certs init` makes for the CLI.
pub const CLI_CLIENT: &str = "cli";

/// Longest client name accepted; keeps file names and SANs short.
pub const CLIENT_NAME_MAX: usize = 64;

/// Validity of every certificate: from a day ago (tolerates clock skew between hosts) to about
/// ten years ahead.
const BACKDATE: Duration = Duration::from_secs(24 * 60 * 60);
const LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// Why certificates could not be made. Each message names the file and what to do.
#[derive(thiserror::Error, Debug)]
pub enum CertError {
    /// A file to be written already exists and `force` was not given. Nothing was written.
    #[error("{} already exists; pass --force to overwrite it (and everything `certs init` makes)", path.display())]
    Exists {
        /// The first existing target found.
        path: PathBuf,
    },
    /// Writing a file or creating its directory failed.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file or directory being written.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The CA certificate or key could not be read.
    #[error("cannot read {}: {source}; run `shardkv certs init --config {}` to create the CA", path.display(), config.display())]
    ReadCa {
        /// The CA file.
        path: PathBuf,
        /// The config the CA belongs to, for the hint.
        config: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The CA files exist but cannot be used to issue certificates.
    #[error("{} is not a usable CA: {reason}; recreate it with `shardkv certs init --force --config {}`", path.display(), config.display())]
    BadCa {
        /// The offending CA file.
        path: PathBuf,
        /// The config the CA belongs to, for the hint.
        config: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The client name cannot be used in a SAN and a file name.
    #[error(
        "invalid client name {name:?}: use 1..={CLIENT_NAME_MAX} characters from A-Z a-z 0-9 _ . -"
    )]
    BadClientName {
        /// The rejected name.
        name: String,
    },
    /// `certs host ID` for an id with no `[[host]]` entry in the config.
    #[error("host {id} is not in {}: the hosts there are {}; add its [[host]] entry first", config.display(), list_ids(known))]
    UnknownHost {
        /// The requested id.
        id: HostId,
        /// The config that was read.
        config: PathBuf,
        /// The ids the config has, in file order.
        known: Vec<HostId>,
    },
    /// `certs host ID` found a host's certificate or key that is not a valid pair for that host
    /// from the CA on disk, and `force` was not given. Nothing was written.
    #[error("{} is not a valid certificate and key for host {id}: {reason}; pass --force to replace them", path.display())]
    HostFilesInvalid {
        /// The host.
        id: HostId,
        /// The host's certificate file.
        path: PathBuf,
        /// What is wrong (another CA, another host, a missing or foreign key, ...).
        reason: String,
    },
    /// rcgen refused to build a certificate (e.g. a SAN it cannot encode).
    #[error("cannot create the certificate for {subject}: {source}")]
    Generate {
        /// Whose certificate, e.g. "host 2".
        subject: String,
        /// rcgen's reason.
        source: rcgen::Error,
    },
}

/// Files a call wrote, in write order; the CLI prints them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Written {
    /// Paths written (certificates and keys).
    pub paths: Vec<PathBuf>,
}

/// What `certs host ID` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostCertificate {
    /// New certificate and key were written.
    Issued(Written),
    /// The files on disk were already a valid pair for the host from this CA; nothing written.
    AlreadyValid {
        /// The host's certificate file.
        cert: PathBuf,
        /// Its key file.
        key: PathBuf,
    },
}

/// One file to write: contents and whether it is a private key.
struct Pending {
    path: PathBuf,
    contents: String,
    private: bool,
}

/// A loaded or freshly made CA able to sign leaves.
struct Ca {
    cert: Certificate,
    key: KeyPair,
}

/// Makes a new CA, a certificate and key for every host, and the client certificate `cli`.
///
/// Refuses before writing anything if any target exists and `force` is false. Creates parent
/// directories. With `force` every file is replaced, so certificates issued by an earlier CA
/// stop being trusted.
pub fn init(cfg: &ClusterConfig, force: bool) -> Result<Written, CertError> {
    let (cli_cert, cli_key) = cfg.cluster.tls.client_cert_paths(CLI_CLIENT);
    let mut targets = vec![cfg.cluster.tls.ca.clone(), cfg.cluster.tls.ca_key.clone()];
    for h in &cfg.hosts {
        targets.push(h.cert.clone());
        targets.push(h.key.clone());
    }
    targets.push(cli_cert);
    targets.push(cli_key);
    if !force {
        refuse_existing(&targets)?;
    }

    let ca = make_ca(cfg)?;
    let mut files = vec![
        Pending {
            path: cfg.cluster.tls.ca.clone(),
            contents: ca.cert.pem(),
            private: false,
        },
        Pending {
            path: cfg.cluster.tls.ca_key.clone(),
            contents: ca.key.serialize_pem(),
            private: true,
        },
    ];
    for h in &cfg.hosts {
        files.extend(host_files(&ca, h)?);
    }
    files.extend(client_files(cfg, &ca, CLI_CLIENT)?);
    write_all(files)
}

/// Makes whatever is missing, for daemons started without a prior `certs init`: the whole set
/// if the CA certificate is missing (failing like `init` without `force` if other files are
/// already there), otherwise the missing host certificates (and the `cli` client certificate)
/// issued from the existing CA. `Ok(None)` when nothing was missing.
pub fn ensure(cfg: &ClusterConfig) -> Result<Option<Written>, CertError> {
    if !cfg.cluster.tls.ca.exists() {
        tracing::info!(ca = %cfg.cluster.tls.ca.display(), "no CA certificate; creating the cluster's TLS material");
        return init(cfg, false).map(Some);
    }
    let incomplete = |cert: &Path, key: &Path| !cert.exists() || !key.exists();
    let hosts: Vec<&HostConfig> = cfg
        .hosts
        .iter()
        .filter(|h| incomplete(&h.cert, &h.key))
        .collect();
    let (cli_cert, cli_key) = cfg.cluster.tls.client_cert_paths(CLI_CLIENT);
    let cli_missing = incomplete(&cli_cert, &cli_key);
    if hosts.is_empty() && !cli_missing {
        return Ok(None);
    }

    let ca = load_ca(cfg)?;
    let mut files = Vec::new();
    for h in hosts {
        // A certificate without its key (or the reverse) is useless: both are remade.
        tracing::info!(host = h.host.id, cert = %h.cert.display(), "issuing missing host certificate");
        files.extend(host_files(&ca, h)?);
    }
    if cli_missing {
        files.extend(client_files(cfg, &ca, CLI_CLIENT)?);
    }
    write_all(files).map(Some)
}

/// Issues the client certificate `name` (files from
/// [`TlsSettings::client_cert_paths`](crate::config::TlsSettings::client_cert_paths)) from the
/// CA on disk. Refuses to overwrite unless `force`.
pub fn issue_client(cfg: &ClusterConfig, name: &str, force: bool) -> Result<Written, CertError> {
    check_client_name(name)?;
    let (cert, key) = cfg.cluster.tls.client_cert_paths(name);
    if !force {
        refuse_existing(&[cert, key])?;
    }
    let ca = load_ca(cfg)?;
    write_all(client_files(cfg, &ca, name)?)
}

/// Issues the certificate and key of host `id`, which must have a `[[host]]` entry in `cfg`,
/// from the CA on disk, exactly as [`init`] makes them for every host.
///
/// Safe to re-run: when both files exist and are a valid pair for the host from this CA, they
/// are left alone ([`HostCertificate::AlreadyValid`]); when either exists but is not, nothing is
/// written unless `force`. With `force` both are always replaced.
pub fn issue_host(
    cfg: &ClusterConfig,
    id: HostId,
    force: bool,
) -> Result<HostCertificate, CertError> {
    let host = cfg.host(id).ok_or_else(|| CertError::UnknownHost {
        id,
        config: cfg.cluster.path.clone(),
        known: cfg.hosts.iter().map(|h| h.host.id).collect(),
    })?;
    let ca = load_ca(cfg)?;
    if !force && (host.cert.exists() || host.key.exists()) {
        let missing = [&host.cert, &host.key].into_iter().find(|p| !p.exists());
        let verdict = match missing {
            Some(path) => Err(format!("{} is missing", path.display())),
            None => host_check::check_host_files(&cfg.cluster.tls.ca, host),
        };
        return match verdict {
            Ok(()) => Ok(HostCertificate::AlreadyValid {
                cert: host.cert.clone(),
                key: host.key.clone(),
            }),
            Err(reason) => Err(CertError::HostFilesInvalid {
                id,
                path: host.cert.clone(),
                reason,
            }),
        };
    }
    write_all(host_files(&ca, host)?).map(HostCertificate::Issued)
}

fn list_ids(ids: &[HostId]) -> String {
    if ids.is_empty() {
        return "none".into();
    }
    let ids: Vec<String> = ids.iter().map(HostId::to_string).collect();
    ids.join(", ")
}

fn check_client_name(name: &str) -> Result<(), CertError> {
    let ok = (1..=CLIENT_NAME_MAX).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(CertError::BadClientName {
            name: name.to_string(),
        })
    }
}

fn refuse_existing(targets: &[PathBuf]) -> Result<(), CertError> {
    match targets.iter().find(|p| p.exists()) {
        Some(path) => Err(CertError::Exists { path: path.clone() }),
        None => Ok(()),
    }
}

/// Parameters shared by every certificate: validity window and subject common name.
fn base_params(common_name: String) -> CertificateParams {
    let mut params = CertificateParams::default();
    // rcgen stores times as `time::OffsetDateTime`; building them from the Unix epoch plus a
    // std Duration avoids a direct dependency on `time`. A clock before 1970 is treated as 1970.
    let since_epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + since_epoch.saturating_sub(BACKDATE);
    params.not_after = epoch + since_epoch + LIFETIME;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params
}

fn generate(subject: &str) -> impl Fn(rcgen::Error) -> CertError + '_ {
    move |source| CertError::Generate {
        subject: subject.to_string(),
        source,
    }
}

fn make_ca(cfg: &ClusterConfig) -> Result<Ca, CertError> {
    let subject = "the CA";
    let key = KeyPair::generate().map_err(generate(subject))?;
    let mut params = base_params(format!("shardkv {} CA", cfg.cluster.name));
    // Path length 0: the CA signs leaves only, never intermediate CAs.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).map_err(generate(subject))?;
    Ok(Ca { cert, key })
}

/// Reloads the CA from disk as an issuer. Re-signing the parsed parameters with the on-disk key
/// yields a certificate with the same subject and key identifier as `ca.pem`, which is all that
/// [`CertificateParams::signed_by`] takes from it, so leaves chain to the file on disk.
fn load_ca(cfg: &ClusterConfig) -> Result<Ca, CertError> {
    let read = |path: &Path| {
        fs::read_to_string(path).map_err(|source| CertError::ReadCa {
            path: path.to_path_buf(),
            config: cfg.cluster.path.clone(),
            source,
        })
    };
    let bad = |path: &Path, reason: String| CertError::BadCa {
        path: path.to_path_buf(),
        config: cfg.cluster.path.clone(),
        reason,
    };
    let cert_pem = read(&cfg.cluster.tls.ca)?;
    let key_pem = read(&cfg.cluster.tls.ca_key)?;
    let key =
        KeyPair::from_pem(&key_pem).map_err(|e| bad(&cfg.cluster.tls.ca_key, e.to_string()))?;
    let params = CertificateParams::from_ca_cert_pem(&cert_pem)
        .map_err(|e| bad(&cfg.cluster.tls.ca, e.to_string()))?;
    if !matches!(params.is_ca, IsCa::Ca(_)) {
        return Err(bad(
            &cfg.cluster.tls.ca,
            "it is not a CA certificate".into(),
        ));
    }
    let cert = params
        .self_signed(&key)
        .map_err(|e| bad(&cfg.cluster.tls.ca_key, e.to_string()))?;

    // `ca.pem` carries its subject key identifier; the CAs made here derive it with SHA-256 of
    // the public key. A mismatch means ca.key is not the key of ca.pem, and every leaf signed
    // with it would fail verification at the first handshake instead of here.
    let from_key = CertificateParams::default()
        .self_signed(&key)
        .map_err(|e| bad(&cfg.cluster.tls.ca_key, e.to_string()))?
        .key_identifier();
    if cert.key_identifier() != from_key {
        return Err(bad(
            &cfg.cluster.tls.ca_key,
            format!(
                "it does not match {} (or that CA was not made by shardkv)",
                cfg.cluster.tls.ca.display()
            ),
        ));
    }
    Ok(Ca { cert, key })
}

fn ia5(subject: &str, text: String) -> Result<rcgen::Ia5String, CertError> {
    text.try_into().map_err(generate(subject))
}

fn host_files(ca: &Ca, host: &HostConfig) -> Result<[Pending; 2], CertError> {
    let subject = format!("host {}", host.host.id);
    let key = KeyPair::generate().map_err(generate(&subject))?;
    let mut params = base_params(format!("shardkv host {}", host.host.id));
    params.subject_alt_names = vec![
        SanType::IpAddress(host.host.addr.ip()),
        SanType::DnsName(ia5(&subject, host_server_name(host.host.id))?),
        SanType::DnsName(ia5(&subject, "localhost".to_string())?),
        SanType::URI(ia5(&subject, PeerIdentity::Host(host.host.id).uri())?),
    ];
    // Hosts serve clients and peers, and dial peers as clients.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, &ca.cert, &ca.key)
        .map_err(generate(&subject))?;
    Ok(leaf_files(&host.cert, &host.key, &cert, &key))
}

fn client_files(cfg: &ClusterConfig, ca: &Ca, name: &str) -> Result<[Pending; 2], CertError> {
    check_client_name(name)?;
    let subject = format!("client {name}");
    let key = KeyPair::generate().map_err(generate(&subject))?;
    let mut params = base_params(format!("shardkv client {name}"));
    params.subject_alt_names = vec![
        SanType::URI(ia5(&subject, PeerIdentity::Client(name.to_string()).uri())?),
        SanType::DnsName(ia5(&subject, format!("client-{name}"))?),
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, &ca.cert, &ca.key)
        .map_err(generate(&subject))?;
    let (cert_path, key_path) = cfg.cluster.tls.client_cert_paths(name);
    Ok(leaf_files(&cert_path, &key_path, &cert, &key))
}

fn leaf_files(
    cert_path: &Path,
    key_path: &Path,
    cert: &Certificate,
    key: &KeyPair,
) -> [Pending; 2] {
    [
        Pending {
            path: cert_path.to_path_buf(),
            contents: cert.pem(),
            private: false,
        },
        Pending {
            path: key_path.to_path_buf(),
            contents: key.serialize_pem(),
            private: true,
        },
    ]
}

fn write_all(files: impl IntoIterator<Item = Pending>) -> Result<Written, CertError> {
    let mut written = Written::default();
    for f in files {
        write_file(
            &f.path,
            f.contents.as_bytes(),
            if f.private { 0o600 } else { 0o644 },
        )?;
        written.paths.push(f.path);
    }
    Ok(written)
}

/// Writes `contents` to `path` via a temp file in the same directory created with `mode`, then
/// renames it into place: readers never see half a PEM, and a key is never readable by others,
/// even for an instant and even when replacing a file that had looser permissions.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| CertError::Write { path: p, source }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(err(dir))?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    // A leftover from a crashed run of this same pid would make create_new fail.
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err(path))
}

#[cfg(test)]
mod tests;
