//! The systemd units under `scripts/systemd/` (a config-file node, a PD-mode store, a PD node)
//! pass `systemd-analyze verify` with the binaries this build made.

use std::path::Path;
use std::process::Command;

use rdb_tests::cluster::bin_dir;

#[test]
fn the_systemd_units_verify() {
    let found = Command::new("sh")
        .args(["-c", "command -v systemd-analyze"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "systemd-analyze is missing: run scripts/setup.sh (as root)"
    );
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/systemd");
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = bin_dir();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&units).expect("scripts/systemd") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string();
        let text = std::fs::read_to_string(&path).expect("unit");
        assert!(
            text.contains("KillSignal=SIGTERM"),
            "{name}: a stop is SIGTERM"
        );
        let text = text.replace("/usr/local/bin", &bin.display().to_string());
        std::fs::write(dir.path().join(&name), text).expect("write unit");
        // A template is verified through one instance of it.
        names.push(name.replace("@.service", "@1.service"));
    }
    assert_eq!(names.len(), 3, "{names:?}");
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .args(&names)
        .current_dir(dir.path())
        .output()
        .expect("systemd-analyze");
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{out}");
    for name in &names {
        let stem = name
            .split('@')
            .next()
            .unwrap_or(name)
            .trim_end_matches(".service");
        assert!(
            !out.lines().any(|l| l.contains(stem)),
            "systemd-analyze complains about {name}: {out}"
        );
    }
}

/// `flake.nix` parses (Debian's `nix-instantiate`; nothing can be fetched here, so the package
/// and the NixOS module are not built) and offers the package, the module and the dev shell.
#[test]
fn the_flake_parses_and_offers_a_package_a_module_and_a_shell() {
    let flake = Path::new(env!("CARGO_MANIFEST_DIR")).join("../flake.nix");
    let o = Command::new("nix-instantiate")
        .arg("--parse")
        .arg(&flake)
        .output()
        .expect("nix-instantiate is missing: run scripts/setup.sh (as root)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let parsed = String::from_utf8_lossy(&o.stdout);
    for output in ["packages", "nixosModules", "devShells"] {
        assert!(parsed.contains(output), "flake.nix has no {output}");
    }
}

/// Every binary says which build it is (`--version`), as the `rdb_build_info` metric does.
#[test]
fn every_binary_prints_its_version() {
    for name in ["rdb-server", "rdb-pd", "rdb-cli"] {
        let o = Command::new(bin_dir().join(name))
            .arg("--version")
            .output()
            .expect("run the binary (cargo build --workspace --bins)");
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{name}: {out}");
        assert_eq!(
            out.trim(),
            format!("{name} {}", env!("CARGO_PKG_VERSION")),
            "{name}"
        );
    }
}
