//! The qemu-scripts' build step (`build_cenallocd` in qemu-scripts/lib.sh):
//! the test-only fault-injection build never lands where a user's
//! `cargo build --release` puts cenallocd, so `target/release/cenallocd`
//! always refuses `--fault-file`, whatever the scripts built last.
//!
//! `cargo` is replaced by a stub on PATH that "builds" into
//! `$CARGO_TARGET_DIR/release` a cenallocd which accepts `--fault-file`
//! only when asked for `--features fault-injection` (a real release build
//! takes minutes; `tests/cli.rs` checks the real binaries of both builds).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const STUB_CARGO: &str = r#"#!/bin/sh
# A stand-in for `cargo build --release --bin cenallocd --bin cenallocctl [--features X]`.
[ "$1" = build ] || { echo "stub cargo: only build" >&2; exit 1; }
features=
for arg in "$@"; do
	[ "$prev" = --features ] && features="$arg"
	prev="$arg"
done
out="${CARGO_TARGET_DIR:?stub cargo: no CARGO_TARGET_DIR}/release"
mkdir -p "$out"
if [ "$features" = fault-injection ]; then
	printf '#!/bin/sh\necho fault-injection build\nexit 0\n' >"$out/cenallocd"
else
	printf '#!/bin/sh\necho "error: unexpected argument '"'"'$1'"'"' found" >&2\nexit 2\n' >"$out/cenallocd"
fi
cp "$out/cenallocd" "$out/cenallocctl"
chmod +x "$out/cenallocd" "$out/cenallocctl"
"#;

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("cenalloc-scripts-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    let cargo = dir.join("bin/cargo");
    std::fs::write(&cargo, STUB_CARGO).unwrap();
    std::fs::set_permissions(&cargo, std::fs::Permissions::from_mode(0o755)).unwrap();
    Scratch(dir)
}

/// Runs the scripts' build step; returns the directory it printed.
fn build(scratch: &Path, mode: &str) -> PathBuf {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("qemu-scripts/lib.sh");
    let path = format!(
        "{}:{}",
        scratch.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(r#". "$1" && build_cenallocd "$2""#)
        .arg("build")
        .arg(&lib)
        .arg(mode)
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", scratch.join("target"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build_cenallocd {mode}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Whether the cenallocd in `dir` accepts `--fault-file`.
fn accepts_fault_file(dir: &Path) -> bool {
    Command::new(dir.join("cenallocd"))
        .args(["--fault-file", "x"])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn the_fault_injection_build_never_replaces_the_release_build() {
    for order in [
        ["release", "fault-injection"],
        ["fault-injection", "release"],
    ] {
        let scratch = scratch(order[0]);
        let release_dir = scratch.0.join("target/release");
        let mut dirs = Vec::new();
        for mode in order {
            dirs.push((mode, build(&scratch.0, mode)));
        }
        for (mode, dir) in &dirs {
            match *mode {
                "release" => assert_eq!(dir, &release_dir),
                _ => {
                    assert_ne!(
                        dir, &release_dir,
                        "the fault-injection build went to {dir:?}"
                    );
                    assert!(accepts_fault_file(dir), "{dir:?}: not the fault build");
                }
            }
        }
        // What a user runs after the scripts: the release build.
        assert!(
            !accepts_fault_file(&release_dir),
            "after building {order:?}, {}/cenallocd accepts --fault-file",
            release_dir.display()
        );
    }
}

/// Every script that builds cenallocd does it through `build_cenallocd`.
#[test]
fn the_scripts_build_cenallocd_only_through_build_cenallocd() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("qemu-scripts");
    let mut builders = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        // Scripts only (README.md quotes cargo commands for people).
        if !text.starts_with("#!") && !text.starts_with("# shellcheck shell=bash") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        for line in text.lines() {
            let code = line.trim_start();
            if code.starts_with('#') {
                continue;
            }
            if code.contains("cargo build") && name != "lib.sh" {
                panic!("{name} builds with cargo itself: {line}");
            }
            if code.contains("build_cenallocd") && name != "lib.sh" {
                builders.push(name.clone());
            }
        }
    }
    builders.sort();
    builders.dedup();
    assert_eq!(builders, ["run-libvirt", "run-two-vms", "run-vm"]);
}
