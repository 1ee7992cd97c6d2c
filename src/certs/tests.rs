//! Unit tests of certificate issuing: files, modes, chains to the CA, refusals.

use super::*;
use std::os::unix::fs::PermissionsExt;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::parse_x509_pem;

fn config(dir: &Path) -> ClusterConfig {
    ClusterConfig::parse(crate::config::SAMPLE, dir, &dir.join("cluster.toml"))
        .expect("sample parses")
}

fn all_targets(cfg: &ClusterConfig) -> Vec<PathBuf> {
    let mut v = vec![cfg.cluster.tls.ca.clone(), cfg.cluster.tls.ca_key.clone()];
    for h in &cfg.hosts {
        v.push(h.cert.clone());
        v.push(h.key.clone());
    }
    let (c, k) = cfg.cluster.tls.client_cert_paths(CLI_CLIENT);
    v.push(c);
    v.push(k);
    v
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

/// Parses a PEM certificate file into DER (x509-parser borrows from it).
fn der(path: &Path) -> Vec<u8> {
    let pem = fs::read(path).expect("read pem");
    let (_, pem) = parse_x509_pem(&pem).expect("pem");
    pem.contents
}

/// Asserts that the certificate at `leaf` was issued and signed by the CA at `ca`, and
/// returns its SANs rendered as strings.
fn verify_chain(leaf: &Path, ca: &Path) -> Vec<String> {
    let (leaf_der, ca_der) = (der(leaf), der(ca));
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).expect("leaf");
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).expect("ca");
    assert_eq!(
        leaf.issuer().as_raw(),
        ca.subject().as_raw(),
        "issuer bytes must equal the CA subject bytes"
    );
    leaf.verify_signature(Some(ca.public_key()))
        .expect("leaf signature verifies with the on-disk CA key");
    ca.verify_signature(None).expect("CA is self-signed");
    let now = x509_parser::time::ASN1Time::now();
    assert!(leaf.validity().is_valid_at(now));
    let san = leaf
        .subject_alternative_name()
        .expect("well-formed")
        .expect("has SANs");
    san.value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => format!("dns:{d}"),
            GeneralName::URI(u) => format!("uri:{u}"),
            GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
            other => format!("{other:?}"),
        })
        .collect()
}

#[test]
fn init_writes_every_file_with_private_keys_0600() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    let written = init(&cfg, false).expect("init");
    let targets = all_targets(&cfg);
    assert_eq!(written.paths.len(), targets.len());
    for p in &targets {
        assert!(written.paths.contains(p), "{} not reported", p.display());
        if p.extension().is_some_and(|e| e == "key") {
            assert_eq!(mode(p), 0o600, "{}", p.display());
        }
    }
    cfg.check_certs(None).expect("config sees every cert");

    for h in &cfg.hosts {
        let sans = verify_chain(&h.cert, &cfg.cluster.tls.ca);
        assert!(
            sans.contains(&format!("uri:{}", PeerIdentity::Host(h.host.id).uri())),
            "{sans:?}"
        );
        assert!(
            sans.contains(&format!("dns:host-{}", h.host.id)),
            "{sans:?}"
        );
        assert!(sans.contains(&"dns:localhost".to_string()), "{sans:?}");
        assert!(sans.iter().any(|s| s.starts_with("ip:")), "{sans:?}");
    }
    let (cli, _) = cfg.cluster.tls.client_cert_paths(CLI_CLIENT);
    let sans = verify_chain(&cli, &cfg.cluster.tls.ca);
    assert!(
        sans.contains(&"uri:shardkv://client/cli".to_string()),
        "{sans:?}"
    );
}

#[test]
fn second_init_without_force_fails_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    init(&cfg, false).expect("first init");
    let before: Vec<Vec<u8>> = all_targets(&cfg)
        .iter()
        .map(|p| fs::read(p).expect("read"))
        .collect();
    let e = init(&cfg, false).expect_err("must refuse");
    assert!(e.to_string().contains("--force"), "{e}");
    let after: Vec<Vec<u8>> = all_targets(&cfg)
        .iter()
        .map(|p| fs::read(p).expect("read"))
        .collect();
    assert_eq!(before, after);

    // Even a single existing target stops everything before any write.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let cfg2 = config(dir2.path());
    let host3_key = cfg2.host(3).expect("host 3").key.clone();
    write_file(&host3_key, b"mine", 0o600).expect("write");
    let e = init(&cfg2, false).expect_err("must refuse");
    assert!(e.to_string().contains("host-3.key"), "{e}");
    assert!(!cfg2.cluster.tls.ca.exists());
    assert_eq!(fs::read(&host3_key).expect("read"), b"mine");

    let written = init(&cfg, true).expect("forced init");
    assert_eq!(written.paths.len(), before.len());
    let ca_after = fs::read(&cfg.cluster.tls.ca).expect("read");
    assert_ne!(ca_after, before[0], "a forced init makes a new CA");
    assert_eq!(mode(&cfg.cluster.tls.ca_key), 0o600);
}

#[test]
fn forced_overwrite_tightens_a_loose_key_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    init(&cfg, false).expect("init");
    let key = cfg.host(1).expect("host 1").key.clone();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).expect("chmod");
    init(&cfg, true).expect("forced init");
    assert_eq!(mode(&key), 0o600);
}

#[test]
fn issue_client_chains_to_the_ca_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    init(&cfg, false).expect("init");
    let written = issue_client(&cfg, "bench-1", false).expect("issue");
    let (cert, key) = cfg.cluster.tls.client_cert_paths("bench-1");
    assert_eq!(written.paths, vec![cert.clone(), key.clone()]);
    assert_eq!(mode(&key), 0o600);
    let sans = verify_chain(&cert, &cfg.cluster.tls.ca);
    assert_eq!(
        sans,
        vec![
            "uri:shardkv://client/bench-1".to_string(),
            "dns:client-bench-1".to_string()
        ]
    );

    let e = issue_client(&cfg, "bench-1", false).expect_err("exists");
    assert!(matches!(e, CertError::Exists { .. }), "{e}");
    issue_client(&cfg, "bench-1", true).expect("forced");
    for bad in ["", "a b", "x/y", &"n".repeat(65), "é"] {
        let e = issue_client(&cfg, bad, false).expect_err("bad name");
        assert!(matches!(e, CertError::BadClientName { .. }), "{bad:?}: {e}");
    }
}

#[test]
fn issue_client_without_a_ca_says_to_run_init() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    let e = issue_client(&cfg, "x", false).expect_err("no CA");
    assert!(e.to_string().contains("shardkv certs init --config"), "{e}");
}

#[test]
fn a_ca_key_that_does_not_match_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    init(&cfg, false).expect("init");
    let other = KeyPair::generate().expect("key");
    write_file(
        &cfg.cluster.tls.ca_key,
        other.serialize_pem().as_bytes(),
        0o600,
    )
    .expect("write");
    let e = issue_client(&cfg, "x", false).expect_err("mismatched key");
    assert!(matches!(e, CertError::BadCa { .. }), "{e}");
    assert!(e.to_string().contains("does not match"), "{e}");
}

#[test]
fn ensure_fills_in_only_what_is_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    let first = ensure(&cfg).expect("ensure").expect("made everything");
    assert_eq!(first.paths.len(), all_targets(&cfg).len());
    assert_eq!(ensure(&cfg).expect("ensure"), None);

    let ca_before = fs::read(&cfg.cluster.tls.ca).expect("read");
    let h2 = cfg.host(2).expect("host 2").clone();
    fs::remove_file(&h2.cert).expect("rm");
    let made = ensure(&cfg).expect("ensure").expect("made host 2");
    assert_eq!(made.paths, vec![h2.cert.clone(), h2.key.clone()]);
    assert_eq!(fs::read(&cfg.cluster.tls.ca).expect("read"), ca_before);
    let sans = verify_chain(&h2.cert, &cfg.cluster.tls.ca);
    assert!(sans.contains(&format!("uri:{}", PeerIdentity::Host(2).uri())));
}

#[test]
fn issue_host_makes_what_init_makes_for_that_host() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    init(&cfg, false).expect("init");
    let h3 = cfg.host(3).expect("host 3").clone();
    fs::remove_file(&h3.cert).expect("rm cert");
    fs::remove_file(&h3.key).expect("rm key");
    let done = issue_host(&cfg, 3, false).expect("issue");
    assert_eq!(
        done,
        HostCertificate::Issued(Written {
            paths: vec![h3.cert.clone(), h3.key.clone()]
        })
    );
    assert_eq!(mode(&h3.key), 0o600);
    let sans = verify_chain(&h3.cert, &cfg.cluster.tls.ca);
    assert!(sans.contains(&format!("uri:{}", PeerIdentity::Host(3).uri())));
    assert!(sans.contains(&"dns:host-3".to_string()), "{sans:?}");
    host_check::check_host_files(&cfg.cluster.tls.ca, &h3).expect("valid pair");

    // A host whose address moved needs a new certificate: its IP is in the SAN.
    let mut moved = h3.clone();
    moved.host.addr = "127.0.0.99:7103".parse().expect("addr");
    let e = host_check::check_host_files(&cfg.cluster.tls.ca, &moved).expect_err("old IP");
    assert!(e.contains("127.0.0.99"), "{e}");
}

#[test]
fn issue_host_leaves_valid_files_alone_and_force_replaces_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    init(&cfg, false).expect("init");
    let h1 = cfg.host(1).expect("host 1").clone();
    let before = fs::read(&h1.cert).expect("read");
    let done = issue_host(&cfg, 1, false).expect("re-run");
    assert!(
        matches!(done, HostCertificate::AlreadyValid { .. }),
        "{done:?}"
    );
    assert_eq!(fs::read(&h1.cert).expect("read"), before);

    let done = issue_host(&cfg, 1, true).expect("forced");
    assert!(matches!(done, HostCertificate::Issued(_)), "{done:?}");
    assert_ne!(fs::read(&h1.cert).expect("read"), before);
    host_check::check_host_files(&cfg.cluster.tls.ca, &h1).expect("valid pair");
}

#[test]
fn issue_host_refuses_files_that_are_not_a_valid_pair_for_the_host() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    init(&cfg, false).expect("init");
    let (h1, h2) = (
        cfg.host(1).expect("host 1").clone(),
        cfg.host(2).expect("host 2").clone(),
    );
    let refused = |expect: &str| {
        let e = issue_host(&cfg, 1, false).expect_err("must refuse");
        assert!(
            matches!(e, CertError::HostFilesInvalid { id: 1, .. }),
            "{e}"
        );
        let text = e.to_string();
        assert!(text.contains(expect) && text.contains("--force"), "{text}");
    };

    // Another host's pair.
    fs::copy(&h2.cert, &h1.cert).expect("copy");
    fs::copy(&h2.key, &h1.key).expect("copy");
    refused("host-1");
    // Host 1's certificate with another key.
    issue_host(&cfg, 1, true).expect("forced");
    fs::copy(&h2.key, &h1.key).expect("copy");
    refused("is not the key of");
    // Only half a pair.
    fs::remove_file(&h1.key).expect("rm");
    refused("is missing");
    // A pair from an earlier CA.
    issue_host(&cfg, 1, true).expect("forced");
    let old = (
        fs::read(&h1.cert).expect("read"),
        fs::read(&h1.key).expect("read"),
    );
    init(&cfg, true).expect("new CA");
    fs::write(&h1.cert, &old.0).expect("write");
    fs::write(&h1.key, &old.1).expect("write");
    refused("is not valid from");
}

#[test]
fn issue_host_names_the_hosts_that_exist_and_needs_the_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    let e = issue_host(&cfg, 1, false).expect_err("no CA");
    assert!(matches!(e, CertError::ReadCa { .. }), "{e}");
    init(&cfg, false).expect("init");
    let e = issue_host(&cfg, 9, false).expect_err("unknown");
    assert!(matches!(e, CertError::UnknownHost { id: 9, .. }), "{e}");
    assert!(e.to_string().contains("the hosts there are 1, 2, 3"), "{e}");
}
