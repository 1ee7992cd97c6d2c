//! The systemd packaging in `deploy/systemd/` and the production config it goes with.
//!
//! Two layers:
//! - Always: the unit, sysusers.d and tmpfiles.d files are parsed here (plain line parsing, no
//!   extra dependencies) and checked for the settings the deployment relies on, and the three
//!   files and `deploy/cluster.example.toml` are checked to agree on users and paths.
//! - When `systemd-analyze` is on PATH: `systemd-analyze verify` on a copy of the unit whose
//!   ExecStart points at the binary cargo built (verify refuses a unit whose command does not
//!   exist). This needs no running systemd: verify loads the unit in a private test-mode manager,
//!   so it works in containers and CI. Without the tool those tests print why and pass.
//!
//! What `systemd-analyze verify` reports (observed with systemd 252): a setting systemd cannot
//! parse ("Unknown key 'NoNewPrivilegez' in section [Service], ignoring.", "Failed to parse
//! service restart specifier, ignoring: sometimes") is printed as `<file>:<line>: ...` at log
//! level *warning* and the exit status stays 0, because systemd would still start the service,
//! just without that setting. For a hardening directive that is exactly the failure to catch, so
//! any diagnostic naming our unit fails the test, whatever the exit status. Lines that do not name
//! our unit (complaints about other units on the machine running the check) are printed, not
//! failed on. `User=shardkv` does not need the account to exist for verify (no message at all on
//! 252); should a version report an unknown `shardkv` user or group, that is the build machine
//! lacking the account created by `shardkv.sysusers` at install time, and is tolerated.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use shardkv::config::ClusterConfig;

const UNIT: &str = include_str!("../deploy/systemd/shardkv.service");
const SYSUSERS: &str = include_str!("../deploy/systemd/shardkv.sysusers");
const TMPFILES: &str = include_str!("../deploy/systemd/shardkv.tmpfiles");
const UNIT_NAME: &str = "shardkv.service";
const EXAMPLE_CONFIG: &str = "deploy/cluster.example.toml";

// ---------------------------------------------------------------------------------------------
// A unit file, as systemd reads it: `[Section]` headers, `Key=Value` lines (whitespace around
// `=` ignored), `#`/`;` comments, `\` at the end of a line continuing it.

#[derive(Debug, Clone)]
struct Setting {
    key: String,
    value: String,
    line: usize,
}

#[derive(Debug, Default)]
struct UnitFile {
    /// Sections in file order, each with its settings in file order.
    sections: Vec<(String, Vec<Setting>)>,
}

impl UnitFile {
    fn parse(text: &str) -> Result<Self, String> {
        let mut unit = UnitFile::default();
        let mut pending: Option<(String, usize)> = None; // a line ending in `\`
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let (line, start) = match pending.take() {
                Some((mut acc, start)) => {
                    acc.push(' ');
                    acc.push_str(raw.trim());
                    (acc, start)
                }
                None => (raw.trim().to_string(), n),
            };
            if let Some(head) = line.strip_suffix('\\') {
                pending = Some((head.trim_end().to_string(), start));
                continue;
            }
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[') {
                let name = name
                    .strip_suffix(']')
                    .ok_or_else(|| format!("line {start}: unterminated section header {line:?}"))?;
                unit.sections.push((name.to_string(), Vec::new()));
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("line {start}: not Key=Value: {line:?}"))?;
            let (_, settings) = unit
                .sections
                .last_mut()
                .ok_or_else(|| format!("line {start}: {key} before any [Section]"))?;
            settings.push(Setting {
                key: key.trim().to_string(),
                value: value.trim().to_string(),
                line: start,
            });
        }
        if let Some((_, start)) = pending {
            return Err(format!(
                "line {start}: continuation runs off the end of the file"
            ));
        }
        Ok(unit)
    }

    fn section(&self, name: &str) -> &[Setting] {
        self.sections
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.as_slice())
            .unwrap_or_else(|| panic!("unit has no [{name}] section"))
    }

    /// The effective value of `key` in `section` (the last assignment wins, as in systemd).
    fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.section(section)
            .iter()
            .rev()
            .find(|s| s.key == key)
            .map(|s| s.value.as_str())
    }

    fn require(&self, section: &str, key: &str) -> &str {
        self.get(section, key)
            .unwrap_or_else(|| panic!("[{section}] {key}= is missing from {UNIT_NAME}"))
    }
}

fn unit() -> UnitFile {
    UnitFile::parse(UNIT).unwrap_or_else(|e| panic!("{UNIT_NAME}: {e}"))
}

/// Splits a line of a sysusers.d/tmpfiles.d file into fields: whitespace separated, with
/// double-quoted fields (sysusers' GECOS) kept whole. `None` for blank and comment lines.
fn fields(line: &str) -> Option<Vec<String>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut field = String::new();
        if c == '"' {
            chars.next();
            for c in chars.by_ref() {
                if c == '"' {
                    break;
                }
                field.push(c);
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                field.push(c);
                chars.next();
            }
        }
        out.push(field);
    }
    Some(out)
}

/// `(type, path, mode, user, group)` of every tmpfiles.d line.
fn tmpfiles_entries() -> Vec<(String, String, String, String, String)> {
    TMPFILES
        .lines()
        .filter_map(fields)
        .map(|f| {
            assert!(
                f.len() >= 5,
                "tmpfiles line with fewer than 5 fields: {f:?}"
            );
            (
                f[0].clone(),
                f[1].clone(),
                f[2].clone(),
                f[3].clone(),
                f[4].clone(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The unit, parsed.

#[test]
fn unit_has_only_unit_service_and_install_sections_each_once() {
    let u = unit();
    let names: Vec<&str> = u.sections.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["Unit", "Service", "Install"]);
}

#[test]
fn unit_sets_no_service_key_twice() {
    // A second assignment silently replaces the first (or, for list settings, extends it), so a
    // duplicate is almost always an editing mistake that weakens the first one.
    let u = unit();
    let mut seen = BTreeMap::new();
    for s in u.section("Service") {
        if let Some(first) = seen.insert(s.key.as_str(), s.line) {
            panic!(
                "{}= is set on line {first} and again on line {}",
                s.key, s.line
            );
        }
    }
}

#[test]
fn exec_start_runs_serve_with_the_shared_config_and_the_host_id_from_host_env() {
    let u = unit();
    let exec = u.require("Service", "ExecStart");
    let argv: Vec<&str> = exec.split_whitespace().collect();
    // No `+`, `!`, `-` or `@` prefix: the daemon runs with the sandbox and user below, and a
    // failing start is a failure.
    assert_eq!(argv[0], "/usr/local/bin/shardkv", "ExecStart={exec}");
    assert_eq!(argv[1], "serve", "ExecStart={exec}");
    let after = |flag: &str| {
        argv.iter()
            .position(|a| *a == flag)
            .and_then(|i| argv.get(i + 1).copied())
            .unwrap_or_else(|| panic!("ExecStart={exec} lacks {flag} VALUE"))
    };
    assert_eq!(after("--config"), "/etc/shardkv/cluster.toml");
    assert_eq!(after("--host"), "${SHARDKV_HOST}");
    // Without a leading `-`, a missing host.env stops the start instead of running `--host ""`.
    assert_eq!(
        u.require("Service", "EnvironmentFile"),
        "/etc/shardkv/host.env"
    );
}

#[test]
fn unit_waits_for_sd_notify_readiness_and_restarts_only_on_failure() {
    let u = unit();
    for (key, want) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("Restart", "on-failure"),
        ("RestartSec", "2s"),
        ("TimeoutStartSec", "60"),
        // Room for the leadership transfer of a graceful stop before SIGKILL.
        ("TimeoutStopSec", "30"),
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(u.require("Service", key), want, "[Service] {key}=");
    }
    assert_eq!(u.require("Install", "WantedBy"), "multi-user.target");
}

#[test]
fn unit_runs_as_user_shardkv_with_no_capabilities_and_a_read_only_system() {
    let u = unit();
    for (key, want) in [
        ("User", "shardkv"),
        ("Group", "shardkv"),
        ("WorkingDirectory", "/var/lib/shardkv"),
        ("NoNewPrivileges", "true"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "true"),
        ("PrivateTmp", "true"),
        ("PrivateDevices", "true"),
        ("ProtectKernelTunables", "true"),
        ("ProtectKernelModules", "true"),
        ("ProtectControlGroups", "true"),
        ("RestrictNamespaces", "true"),
        ("LockPersonality", "true"),
        ("MemoryDenyWriteExecute", "true"),
        ("SystemCallArchitectures", "native"),
        ("ReadWritePaths", "/var/lib/shardkv"),
        ("ReadOnlyPaths", "/etc/shardkv"),
        ("LimitNOFILE", "65536"),
    ] {
        assert_eq!(u.require("Service", key), want, "[Service] {key}=");
    }
    // Present and empty means "no capabilities"; absent would mean "all of them".
    assert_eq!(u.require("Service", "CapabilityBoundingSet"), "");
    let families: BTreeSet<&str> = u
        .require("Service", "RestrictAddressFamilies")
        .split_whitespace()
        .collect();
    assert_eq!(
        families,
        BTreeSet::from(["AF_INET", "AF_INET6", "AF_UNIX"]),
        "QUIC needs AF_INET/AF_INET6, sd_notify needs AF_UNIX, nothing else"
    );
    assert!(
        u.get("Service", "AmbientCapabilities").is_none(),
        "the daemon needs no capabilities"
    );
}

// ---------------------------------------------------------------------------------------------
// sysusers.d and tmpfiles.d, and how they fit the unit and the example config.

#[test]
fn sysusers_creates_system_user_shardkv_with_its_own_group_and_home_var_lib_shardkv() {
    let lines: Vec<Vec<String>> = SYSUSERS.lines().filter_map(fields).collect();
    assert_eq!(lines.len(), 1, "one entry expected: {lines:?}");
    let f = &lines[0];
    assert_eq!(
        f[0], "u",
        "type u: a system user (and a group of the same name)"
    );
    assert_eq!(f[1], "shardkv");
    assert_eq!(
        f[2], "-",
        "ID -: systemd-sysusers picks a free system uid/gid"
    );
    assert!(!f[3].is_empty(), "GECOS");
    assert_eq!(f[4], "/var/lib/shardkv", "home directory");
    assert!(f.len() <= 6, "unexpected fields: {f:?}");
}

#[test]
fn tmpfiles_creates_the_data_dir_for_shardkv_and_the_config_dir_readable_by_its_group() {
    let entries = tmpfiles_entries();
    let want = |t: &str, p: &str, m: &str, u: &str, g: &str| {
        (
            t.to_string(),
            p.to_string(),
            m.to_string(),
            u.to_string(),
            g.to_string(),
        )
    };
    assert_eq!(
        entries,
        vec![
            want("d", "/var/lib/shardkv", "0750", "shardkv", "shardkv"),
            want("d", "/etc/shardkv", "0750", "root", "shardkv"),
        ]
    );
}

#[test]
fn unit_paths_exist_with_the_owners_tmpfiles_gives_them() {
    // ProtectSystem=strict + ReadWritePaths/ReadOnlyPaths fail the start (status 226/NAMESPACE)
    // when the directory is missing, so tmpfiles must create both, owned as the unit expects.
    let u = unit();
    let user = u.require("Service", "User");
    let group = u.require("Service", "Group");
    let entries = tmpfiles_entries();
    let entry = |path: &str| {
        entries
            .iter()
            .find(|e| e.1 == path)
            .unwrap_or_else(|| panic!("tmpfiles does not create {path}"))
    };
    let data = entry(u.require("Service", "ReadWritePaths"));
    assert_eq!(
        (data.3.as_str(), data.4.as_str()),
        (user, group),
        "data dir owner"
    );
    let etc = entry(u.require("Service", "ReadOnlyPaths"));
    assert_eq!(
        etc.4, group,
        "the daemon reads its config through the group"
    );
    assert_eq!(
        &entry(u.require("Service", "WorkingDirectory")).1,
        u.require("Service", "ReadWritePaths")
    );
    let home = SYSUSERS
        .lines()
        .filter_map(fields)
        .next()
        .expect("user line")[4]
        .clone();
    assert_eq!(home, u.require("Service", "WorkingDirectory"));
}

#[test]
fn example_config_keeps_data_under_the_writable_dir_and_certs_under_the_read_only_dir() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(EXAMPLE_CONFIG);
    let cfg = ClusterConfig::load(&path).unwrap_or_else(|e| panic!("{EXAMPLE_CONFIG}: {e}"));
    let u = unit();
    let writable = Path::new(u.require("Service", "ReadWritePaths"));
    let readable = Path::new(u.require("Service", "ReadOnlyPaths"));
    assert_eq!(cfg.hosts.len(), 3);
    assert!(
        cfg.cluster.tls.ca.starts_with(readable),
        "{}",
        cfg.cluster.tls.ca.display()
    );
    for h in &cfg.hosts {
        assert!(
            h.data_dir.starts_with(writable),
            "host {} data_dir {} is outside {}",
            h.host.id,
            h.data_dir.display(),
            writable.display()
        );
        for file in [&h.cert, &h.key] {
            assert!(
                file.starts_with(readable),
                "host {}: {}",
                h.host.id,
                file.display()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// systemd-analyze verify.

fn systemd_analyze() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("systemd-analyze"))
        .find(|p| p.is_file())
}

/// A copy of `unit_text` as `<dir>/shardkv.service` with ExecStart's command replaced by the
/// binary cargo built (verify checks that the command exists and is executable).
fn write_verifiable_unit(dir: &Path, unit_text: &str) -> PathBuf {
    let bin = env!("CARGO_BIN_EXE_shardkv");
    let mut replaced = 0;
    let text: String = unit_text
        .lines()
        .map(|line| match line.trim_start().strip_prefix("ExecStart=") {
            Some(rest) => {
                replaced += 1;
                let args = rest
                    .trim_start()
                    .split_once(char::is_whitespace)
                    .map(|x| x.1);
                format!("ExecStart={bin} {}\n", args.unwrap_or(""))
            }
            None => format!("{line}\n"),
        })
        .collect();
    assert_eq!(replaced, 1, "expected exactly one ExecStart= line");
    let path = dir.join(UNIT_NAME);
    std::fs::write(&path, text).expect("write unit copy");
    path
}

/// What `systemd-analyze verify` said, sorted.
#[derive(Debug, Default)]
struct Verdict {
    /// Whether the tool exited 0.
    success: bool,
    /// Diagnostics about our unit: real errors.
    unit_errors: Vec<String>,
    /// Diagnostics about our unit that only reflect this machine (no `shardkv` account).
    tolerated: Vec<String>,
    /// Output that does not name our unit (other units, the environment).
    other: Vec<String>,
}

fn classify(output: &str, unit_path: &Path) -> (Vec<String>, Vec<String>, Vec<String>) {
    let path = unit_path.to_string_lossy().into_owned();
    let (mut errors, mut tolerated, mut other) = (Vec::new(), Vec::new(), Vec::new());
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !line.contains(path.as_str()) && !line.contains(UNIT_NAME) {
            other.push(line.to_string());
            continue;
        }
        // With the unit's own names removed, does the line say the account is unknown?
        let rest = line
            .replace(path.as_str(), "")
            .replace(UNIT_NAME, "")
            .to_lowercase();
        let about_account =
            rest.contains("shardkv") && (rest.contains("user") || rest.contains("group"));
        let unknown = [
            "not found",
            "does not exist",
            "failed to resolve",
            "no such",
            "unknown",
        ]
        .iter()
        .any(|p| rest.contains(p));
        if about_account && unknown {
            tolerated.push(line.to_string());
        } else {
            errors.push(line.to_string());
        }
    }
    (errors, tolerated, other)
}

/// Runs `systemd-analyze verify` on `unit_text`, or says why it cannot run here.
fn verify(unit_text: &str) -> Result<Verdict, String> {
    let Some(tool) = systemd_analyze() else {
        return Err(
            "systemd-analyze is not on PATH (apt-get install systemd to run this check)".into(),
        );
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let unit_path = write_verifiable_unit(dir.path(), unit_text);
    let out = Command::new(&tool)
        .arg("verify")
        // Do not run man(1) for Documentation= entries; CI images rarely have it.
        .arg("--man=no")
        .arg(&unit_path)
        .current_dir(dir.path())
        // Unit file problems are logged at "warning"; a caller's SYSTEMD_LOG_LEVEL=err would
        // hide them and debug would bury them. Always to stderr, no colour codes.
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .env("SYSTEMD_LOG_TARGET", "console")
        .env("SYSTEMD_LOG_COLOR", "0")
        .env_remove("SYSTEMD_UNIT_PATH")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", tool.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (unit_errors, tolerated, other) = classify(&text, &unit_path);
    if !out.status.success() && unit_errors.is_empty() && tolerated.is_empty() {
        // Nothing about our unit, yet a failure: the tool itself cannot work in this
        // environment (e.g. no /run, no permission to set up its test manager).
        return Err(format!(
            "{} verify failed without naming the unit ({}):\n{text}",
            tool.display(),
            out.status
        ));
    }
    Ok(Verdict {
        success: out.status.success(),
        unit_errors,
        tolerated,
        other,
    })
}

#[test]
fn systemd_analyze_verify_reports_nothing_wrong_with_the_unit() {
    let v = match verify(UNIT) {
        Ok(v) => v,
        Err(why) => {
            eprintln!("skipping systemd-analyze verify: {why}");
            return;
        }
    };
    for line in &v.other {
        eprintln!("note (not about {UNIT_NAME}): {line}");
    }
    for line in &v.tolerated {
        eprintln!("tolerated (the shardkv account is made at install time): {line}");
    }
    assert!(
        v.unit_errors.is_empty(),
        "systemd-analyze verify found problems in {UNIT_NAME}:\n{}",
        v.unit_errors.join("\n")
    );
    assert!(v.success, "systemd-analyze verify failed: {v:?}");
}

#[test]
fn systemd_analyze_verify_check_catches_a_misspelt_hardening_directive() {
    // systemd ignores an unknown key with a warning and exit status 0; this proves the check
    // above still sees such warnings with the systemd-analyze installed here.
    let broken = UNIT.replace("NoNewPrivileges=", "NoNewPrivilegez=");
    assert_ne!(broken, UNIT);
    let v = match verify(&broken) {
        Ok(v) => v,
        Err(why) => {
            eprintln!("skipping systemd-analyze verify: {why}");
            return;
        }
    };
    assert!(
        v.unit_errors.iter().any(|l| l.contains("NoNewPrivilegez")),
        "expected a diagnostic about NoNewPrivilegez, got {v:?}"
    );
}

#[test]
fn verify_output_is_split_into_unit_errors_account_lookups_and_unrelated_lines() {
    let unit = Path::new("/tmp/x/shardkv.service");
    let output = "\
/tmp/x/shardkv.service:40: Unknown key 'NoNewPrivilegez' in section [Service], ignoring.
shardkv.service: Command /usr/local/bin/shardkv is not executable: No such file or directory
shardkv.service: Failed to resolve user shardkv: No such process
/lib/systemd/system/dbus.socket:4: ListenStream= references a path below legacy directory /var/run/
";
    let (errors, tolerated, other) = classify(output, unit);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(
        tolerated,
        ["shardkv.service: Failed to resolve user shardkv: No such process"]
    );
    assert_eq!(other.len(), 1, "{other:?}");
}
