//! The README's commands install what they need themselves: on a machine whose Rust lacks the
//! musl target the image is built from, `make image` adds it (hack/prerequisites.sh runs as its
//! first step) instead of stopping. The machine is simulated with a copy of `RUSTUP_HOME` from
//! which the target is removed; the real toolchain is checked to be untouched.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

const MUSL: &str = "x86_64-unknown-linux-musl";

fn rustup_home() -> PathBuf {
    std::env::var_os("RUSTUP_HOME").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap()).join(".rustup"),
        PathBuf::from,
    )
}

fn installed_targets(rustup_home: &Path) -> String {
    let output = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .env("RUSTUP_HOME", rustup_home)
        .output()
        .unwrap();
    assert!(output.status.success(), "rustup target list failed");
    String::from_utf8(output.stdout).unwrap()
}

fn run(command: &mut Command) {
    let status = command.status().unwrap();
    assert!(status.success(), "{command:?} failed: {status}");
}

/// A copy of `real` (a RUSTUP_HOME) in `copy`, cheap: toolchains are hard-linked, except the
/// files rustup rewrites when it adds or removes a component, which are copied. Toolchain
/// symlinks (`1.95.0-x86_64-unknown-linux-gnu -> <real>/toolchains/stable-…`) are re-pointed
/// into the copy, or removing a target there would remove it from the real toolchain.
fn copy_rustup_home(real: &Path, copy: &Path) {
    std::fs::create_dir_all(copy.join("toolchains")).unwrap();
    std::fs::copy(real.join("settings.toml"), copy.join("settings.toml")).unwrap();
    for entry in std::fs::read_dir(real.join("toolchains"))
        .unwrap()
        .flatten()
    {
        let (from, to) = (
            entry.path(),
            copy.join("toolchains").join(entry.file_name()),
        );
        let meta = std::fs::symlink_metadata(&from).unwrap();
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&from).unwrap();
            let target = match target.strip_prefix(real) {
                Ok(inside) => copy.join(inside),
                Err(_) => target,
            };
            std::os::unix::fs::symlink(target, &to).unwrap();
        } else if meta.is_dir() {
            run(Command::new("cp").arg("-al").arg(&from).arg(&to));
            let rustlib = to.join("lib/rustlib");
            for file in std::fs::read_dir(&rustlib).unwrap().flatten() {
                if file.file_type().unwrap().is_file() {
                    let contents = std::fs::read(file.path()).unwrap();
                    std::fs::remove_file(file.path()).unwrap();
                    std::fs::write(file.path(), contents).unwrap();
                }
            }
        }
    }
}

#[test]
fn make_image_adds_the_musl_target_a_machine_lacks() {
    let real = rustup_home();
    assert!(
        installed_targets(&real).lines().any(|t| t == MUSL),
        "make test built the image, so the real toolchain has {MUSL}"
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bare-machine");
    let _ = std::fs::remove_dir_all(&dir);
    let copy = dir.join("rustup");
    copy_rustup_home(&real, &copy);
    run(Command::new("rustup")
        .args(["target", "remove", MUSL])
        .env("RUSTUP_HOME", &copy));
    assert!(!installed_targets(&copy).lines().any(|t| t == MUSL));
    assert!(
        installed_targets(&real).lines().any(|t| t == MUSL),
        "removing the target from the copy removed it from the real toolchain"
    );

    // The image's binary and archive go to a directory of this test's: other tests run the
    // image's binary from target/image meanwhile (.dockerignore lets target/image*/ in).
    let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/image-bare-machine");
    let output = crate::support::as_from_a_shell(&mut Command::new("make"))
        .arg("image")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUSTUP_HOME", &copy)
        .env("BBO_IMAGE_DIR", &image)
        .env("IMAGE", "bitbucket-operator-bare-machine:test")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "make image failed:\n{said}");
    assert!(
        said.contains(&format!("prerequisites: adding the Rust target {MUSL}")),
        "make image did not add the target itself:\n{said}"
    );
    assert!(installed_targets(&copy).lines().any(|t| t == MUSL));
    assert!(image.join("bitbucket-operator").exists());
    assert!(installed_targets(&real).lines().any(|t| t == MUSL));
    let _ = Command::new("buildah")
        .args(["rmi", "bitbucket-operator-bare-machine:test"])
        .output();
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&image).unwrap();
}
