//! `--shared-dir` against a hostile root test (issue 26, item 1): what
//! the test does in the directory it shares with the host never makes
//! rdocker touch another host object, and what it leaves there is out of
//! reach of host users.

use crate::util::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// A host directory the test will aim at: mode 0755, with a file.
fn victim() -> TempDir {
    let v = TempDir::new("victim");
    std::fs::set_permissions(v.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(v.path().join("keep"), "keep\n").unwrap();
    std::fs::set_permissions(
        v.path().join("keep"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    v
}

/// Mode, owner and listing of the victim, and its file's content.
fn state(v: &Path) -> (u32, u32, u32, Vec<String>, String) {
    let md = std::fs::symlink_metadata(v).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(v)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let keep = std::fs::read_to_string(v.join("keep")).unwrap_or_default();
    (md.mode() & 0o7777, md.uid(), md.gid(), names, keep)
}

fn start(shared: &Path) -> (Server, String) {
    let dir = shared.display().to_string();
    let mut s = Server::start(&["--shared-dir", &dir, &image()]);
    let scratch = s.open();
    let host = s
        .capabilities()
        .into_iter()
        .find_map(|c| c.strip_prefix("downtmp-host=").map(str::to_string))
        .expect("no downtmp-host with --shared-dir");
    // Both sides see the scratch directory at the same path.
    assert_eq!(host, scratch);
    (s, scratch)
}

/// The test replaces the scratch directory with a symlink to a host
/// directory where it can (the directory is a plain one inside the
/// bind mount), else plants links to it, deep too, and takes the
/// directory's mode and owner; then revert and close.
const SWAP: &str = r#"S=$1 V=$2
cd /
rm -rf "$S" 2>/dev/null
if [ ! -e "$S" ] && ln -s "$V" "$S"; then echo swapped; exit 0; fi
rm -rf "$S"/* "$S"/.[!.]* 2>/dev/null
ln -s "$V" "$S/link"
mkdir -p "$S/sub/a"
ln -s "$V" "$S/sub/a/deep"
ln -s "$V/keep" "$S/file"
chown 1234:1234 "$S"
chmod 0700 "$S"
echo planted
"#;

fn attack(argv: &[String], scratch: &str, v: &Path) -> String {
    let o = run_sh(argv, SWAP, &[scratch, &v.display().to_string()]);
    assert!(o.status.success(), "{o:?}");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn run_sh(argv: &[String], script: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .args(["sh", "-c", script, "attack"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn a_swapped_scratch_dir_does_not_reach_the_host() {
    let shared = TempDir::new("shared");
    let v = victim();
    let before = state(v.path());
    let (mut s, scratch) = start(shared.path());
    let argv = s.exec_argv();
    let how = attack(&argv, &scratch, v.path());
    // Revert: the next testbed gets its scratch directory back, empty and
    // writable by all, at the same path; the victim is as it was.
    let again = s.ok("revert").remove(0);
    assert_eq!(again, scratch);
    assert_eq!(state(v.path()), before, "revert after the test {how}");
    let argv = s.exec_argv();
    assert_eq!(
        sh_ok(
            &argv,
            &format!("stat -c '%a %u' {scratch}; ls -A {scratch} | wc -l")
        ),
        "777 0\n0\n"
    );
    // Again, and close.
    let how = attack(&argv, &scratch, v.path());
    s.quit();
    assert_eq!(state(v.path()), before, "close after the test {how}");
    // Nothing of the session is left in the shared directory.
    let left: Vec<_> = std::fs::read_dir(shared.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left in the shared directory: {left:?}");
}

#[test]
fn copies_through_the_shared_dir_do_not_follow_the_tests_links() {
    let shared = TempDir::new("shared");
    let v = victim();
    std::fs::write(v.path().join("target"), "orig\n").unwrap();
    let before = state(v.path());
    let (mut s, scratch) = start(shared.path());
    let argv = s.exec_argv();
    let vd = v.path().display();
    // Links in the scratch directory name host paths: on the host they
    // would lead out of it.
    sh_ok(
        &argv,
        &format!(
            "ln -s {vd}/keep {scratch}/leak; ln -s {vd}/target {scratch}/over; \
             ln -s {vd} {scratch}/tree; ln -s {vd} {scratch}/tree2"
        ),
    );
    // copydown of a file, and of a tree, the test made links: the host's
    // files must not reach the testbed.
    s.cmd(&format!("copydown {scratch}/leak /tmp/got"));
    s.cmd(&format!("copydown {scratch}/tree/ /tmp/tree/"));
    let got = sh(&argv, "cat /tmp/got /tmp/tree/keep 2>/dev/null").stdout;
    assert!(
        !String::from_utf8_lossy(&got).contains("keep"),
        "a host file reached the testbed"
    );
    // copyup onto them: nothing is written through them on the host.
    s.cmd(&format!("copyup /etc/hostname {scratch}/over"));
    s.cmd(&format!("copyup /etc/apt/ {scratch}/tree2/"));
    assert_eq!(state(v.path()), before, "a copy wrote through a link");
    assert_eq!(
        std::fs::read_to_string(v.path().join("target")).unwrap(),
        "orig\n"
    );

    // What autopkgtest does with downtmp-host still works: it writes a
    // file there itself and copies it down to the same path, or
    // elsewhere; and copies up into it.
    std::fs::write(Path::new(&scratch).join("mine"), "mine\n").unwrap();
    s.ok(&format!("copydown {scratch}/mine {scratch}/mine"));
    s.ok(&format!("copydown {scratch}/mine /tmp/mine"));
    assert_eq!(
        sh_ok(&argv, &format!("cat {scratch}/mine /tmp/mine")),
        "mine\nmine\n"
    );
    sh_ok(
        &argv,
        &format!("mkdir -p {scratch}/d/e; echo deep >{scratch}/d/e/f"),
    );
    s.ok(&format!("copyup {scratch}/d/ {scratch}/d/"));
    s.ok(&format!("copyup /etc/hostname {scratch}/hn"));
    s.ok(&format!("copyup {scratch}/d/ {scratch}/d2/"));
    let hn = sh_ok(&argv, "cat /etc/hostname");
    assert_eq!(
        std::fs::read_to_string(Path::new(&scratch).join("hn")).unwrap(),
        hn
    );
    assert_eq!(
        std::fs::read_to_string(Path::new(&scratch).join("d2/e/f")).unwrap(),
        "deep\n"
    );
    s.quit();
}

/// Set-uid files and device nodes the test leaves in the scratch
/// directory cannot be reached by a host user: a directory above it is
/// rdocker's, root's and 0700.
#[test]
fn what_the_test_leaves_is_out_of_reach_of_host_users() {
    let shared = TempDir::new("shared");
    // The caller's directory may well be open to all.
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (mut s, scratch) = start(shared.path());
    let argv = s.exec_argv();
    sh_ok(
        &argv,
        &format!(
            "cp /bin/sh {scratch}/rootsh && chmod 4755 {scratch}/rootsh && \
             mknod {scratch}/mem c 1 1 && chmod 666 {scratch}/mem"
        ),
    );
    let suid = Path::new(&scratch).join("rootsh");
    assert_eq!(
        std::fs::symlink_metadata(&suid).unwrap().mode() & 0o7777,
        0o4755
    );
    // Some directory between the caller's and the scratch directory is
    // root's and 0700.
    let mut guarded = false;
    let mut p = Path::new(&scratch);
    while let Some(parent) = p.parent() {
        if parent == shared.path() {
            break;
        }
        let md = std::fs::symlink_metadata(parent).unwrap();
        guarded |= md.is_dir() && md.uid() == 0 && md.mode() & 0o777 == 0o700;
        p = parent;
    }
    assert!(guarded, "no root-only directory above {scratch}");
    // As nobody: neither the set-uid file nor the device can be reached.
    for f in ["rootsh", "mem"] {
        let path = Path::new(&scratch).join(f);
        let o = std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "stat",
                "-c",
                "%a",
            ])
            .arg(&path)
            .output()
            .expect("cannot run setpriv");
        assert!(
            !o.status.success(),
            "nobody reached {}: {}",
            path.display(),
            String::from_utf8_lossy(&o.stdout)
        );
    }
    s.quit();
}

/// A tree far deeper than rdocker holds directories open, a wide
/// directory, and links out at the bottom: revert empties it all, in
/// bounded memory, and follows none of the links.
#[test]
fn a_deep_and_wide_tree_is_cleaned_in_bounded_memory() {
    let shared = TempDir::new("shared");
    let v = victim();
    let before = state(v.path());
    let (mut s, scratch) = start(shared.path());
    let argv = s.exec_argv();
    let script = r#"S=$1 V=$2
cd "$S" && mkdir w && (cd w && seq 10000 | xargs touch) || exit 1
for i in $(seq 150); do mkdir d && cd d || exit 1; ln -s "$V" l; done
mkfifo f && ln -s "$V/keep" k && chmod 0 .
"#;
    let o = run_sh(&argv, script, &[&scratch, &v.path().display().to_string()]);
    assert!(o.status.success(), "{o:?}");
    let (reply, peak) = s.cmd_peak_rss("revert");
    assert!(reply.starts_with("ok "), "{reply}: {}", s.stderr());
    eprintln!("revert: peak {peak} KiB");
    assert!(peak < 32 * 1024, "the server reached {peak} KiB");
    assert_eq!(state(v.path()), before);
    let argv = s.exec_argv();
    assert_eq!(sh_ok(&argv, &format!("ls -A {scratch} | wc -l")), "0\n");
    s.quit();
}

/// Where the daemon binds a directory of its own machine under the same
/// name (rdocker in a container beside the host's socket), the test
/// would get another directory than the one rdocker cleans and
/// autopkgtest reads: open fails saying so, and leaves no container.
/// The server runs in a mount namespace of its own with a tmpfs over the
/// shared directory, which the daemon does not see.
#[test]
fn a_daemon_that_binds_another_directory_fails_open() {
    let shared = TempDir::new("shared-elsewhere");
    let dir = shared.path().display().to_string();
    let mut s = Server::start_under(
        &[
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            r#"mount -t tmpfs rdocker-test "$0" && exec "$@""#,
            &dir,
        ],
        &["--shared-dir", &dir, &image()],
    );
    s.send("open");
    let st = s.wait(std::time::Duration::from_secs(60));
    assert_eq!(st.code(), Some(12), "{}", s.stderr());
    assert!(
        s.stderr_says("the testbed does not see the shared directory"),
        "{}",
        s.stderr()
    );
    assert_no_containers(s.pid());
    // The daemon made the missing bind source on its side: the directory
    // the test would have had instead.
    let made: Vec<_> = std::fs::read_dir(shared.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(made.len(), 1, "{made:?}");
}
