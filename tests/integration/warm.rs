//! The spare testbed's warming (apt/warm.rs): after revert, the testbed's
//! /var/cache/apt holds what a fresh container of the image holds after
//! its first apt call, and apt finds its binary cache current; an image
//! whose apt writes no binary cache gets none.

use crate::util::*;
use std::process::Command;

/// /var/cache/apt's files and directories with their modes, no times.
fn apt_cache_listing(argv: &[String]) -> String {
    sh_ok(
        argv,
        "cd /var/cache/apt && find . -printf '%p %M %u:%g\\n' | LC_ALL=C sort",
    )
}

/// The user image with Docker's official images' setting that apt keeps
/// no binary cache (their docker-clean), made once by the docker CLI: a
/// commit of a created, never started, container.
fn image_without_apt_cache() -> String {
    let tag = "rdocker-test/no-apt-binary-cache:bookworm".to_string();
    let have = Command::new("docker")
        .args(["image", "inspect", &tag])
        .output()
        .expect("the docker CLI makes the test image");
    if have.status.success() {
        return tag;
    }
    let dir = TempDir::new("warm");
    let conf = dir.path().join("docker-clean");
    std::fs::write(
        &conf,
        "Dir::Cache::pkgcache \"\";\nDir::Cache::srcpkgcache \"\";\n",
    )
    .unwrap();
    let name = format!("rdocker-it-no-apt-cache-{}", std::process::id());
    let created = Command::new("docker")
        .args(["create", "--name", &name, &user_image()])
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    let copied = Command::new("docker")
        .args(["cp", conf.to_str().unwrap()])
        .arg(format!("{name}:/etc/apt/apt.conf.d/docker-clean"))
        .status()
        .unwrap();
    let committed = copied.success()
        && Command::new("docker")
            .args(["commit", &name, &tag])
            .output()
            .unwrap()
            .status
            .success();
    let _ = Command::new("docker").args(["rm", &name]).output();
    assert!(committed, "cannot make {tag} from {}", user_image());
    tag
}

#[test]
fn a_reverted_testbed_has_apt_s_cache_as_its_first_apt_call_leaves_it() {
    let image = user_image();
    let mut s = Server::start(&["-d", image.as_str()]);
    s.open();
    // The first testbed is the image as it is.
    let argv = s.exec_argv();
    let fresh = apt_cache_listing(&argv);
    assert!(
        !fresh.contains("pkgcache.bin"),
        "{image} has a binary cache already, so this test proves nothing: {fresh}"
    );
    sh_ok(&argv, "apt-cache policy '^base-files$' >/dev/null");
    let after_apt = apt_cache_listing(&argv);
    assert!(after_apt.contains("./pkgcache.bin "), "{after_apt}");

    // The spare made at open is not warmed (a session that never reverts
    // would waste it); the one made after the first revert is.
    s.ok("revert");
    assert_eq!(apt_cache_listing(&s.exec_argv()), fresh);
    s.ok("revert");
    let argv = s.exec_argv();
    assert_eq!(
        apt_cache_listing(&argv),
        after_apt,
        "the reverted testbed's /var/cache/apt is not what the image's first apt call leaves"
    );
    assert!(
        s.stderr_says("apt's binary cache generated"),
        "{}",
        s.stderr()
    );
    // Current: apt builds nothing anew (a rebuild renames a new file in).
    let inodes = "stat -c %i /var/cache/apt/pkgcache.bin /var/cache/apt/srcpkgcache.bin";
    let before = sh_ok(&argv, inodes);
    sh_ok(&argv, "apt-cache policy '^base-files$' >/dev/null");
    assert_eq!(
        sh_ok(&argv, inodes),
        before,
        "apt rebuilt the handed-over cache"
    );
    s.quit();
}

#[test]
fn an_image_whose_apt_keeps_no_binary_cache_gets_none() {
    let image = image_without_apt_cache();
    let mut s = Server::start(&["-d", image.as_str()]);
    s.open();
    let fresh = apt_cache_listing(&s.exec_argv());
    s.ok("revert");
    s.ok("revert");
    let argv = s.exec_argv();
    assert_eq!(apt_cache_listing(&argv), fresh);
    assert!(
        s.stderr_says("no apt binary cache to generate"),
        "{}",
        s.stderr()
    );
    s.quit();
}
