//! copydown and copyup on both routes (straight through the testbed's root
//! beside this daemon, and the Engine API alone with --remote): names,
//! symlinks, modes, timestamps, merging, failures and the copy timeout.

use crate::util::*;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

const AWKWARD: &str = "sp ace %41 ünï";
const MTIME: i64 = 1_000_000_000;

fn set_mtime(p: &Path, t: i64) {
    let ts = nix::sys::time::TimeSpec::new(t, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &ts,
        &ts,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

/// A tree with everything a package's tests might leave in a directory.
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join(AWKWARD).join("deep/er")).unwrap();
    fs::write(root.join(AWKWARD).join("deep/er/file %2F.txt"), "nested\n").unwrap();
    fs::write(root.join("script"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("script"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::write(root.join("private"), "secret").unwrap();
    fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(root.join("dated"), "old").unwrap();
    set_mtime(&root.join("dated"), MTIME);
    symlink("script", root.join("link-rel")).unwrap();
    symlink("/nonexistent/target", root.join("link-dangling")).unwrap();
    fs::create_dir(root.join("empty")).unwrap();
    fs::write(root.join("binary"), (0..=255u8).collect::<Vec<_>>()).unwrap();
    // Read-only once filled: the copies must still get its entries in.
    fs::create_dir(root.join("ro")).unwrap();
    fs::write(root.join("ro/kept"), "kept\n").unwrap();
    fs::set_permissions(root.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
}

/// Compare two host trees: names, types, contents, modes, link targets.
fn assert_same_tree(a: &Path, b: &Path) {
    let mut names_a: Vec<_> = fs::read_dir(a)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut names_b: Vec<_> = fs::read_dir(b)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names_a.sort();
    names_b.sort();
    assert_eq!(names_a, names_b, "{} vs {}", a.display(), b.display());
    for n in names_a {
        let (pa, pb) = (a.join(&n), b.join(&n));
        let (ma, mb) = (
            fs::symlink_metadata(&pa).unwrap(),
            fs::symlink_metadata(&pb).unwrap(),
        );
        assert_eq!(ma.file_type(), mb.file_type(), "{}", pa.display());
        assert_eq!(
            ma.mode() & 0o7777,
            mb.mode() & 0o7777,
            "mode of {}",
            pb.display()
        );
        if ma.file_type().is_symlink() {
            assert_eq!(fs::read_link(&pa).unwrap(), fs::read_link(&pb).unwrap());
        } else if ma.is_dir() {
            assert_same_tree(&pa, &pb);
        } else {
            assert_eq!(
                fs::read(&pa).unwrap(),
                fs::read(&pb).unwrap(),
                "{}",
                pb.display()
            );
            assert_eq!(ma.mtime(), mb.mtime(), "mtime of {}", pb.display());
        }
    }
}

/// The default route (direct, beside this daemon) and the Engine API
/// alone (trees through tar in the testbed, files through the archive
/// endpoints).
const ROUTES: [&[&str]; 2] = [&[], &["--remote"]];

fn open_on(route: &[&str]) -> (Server, String, Vec<String>) {
    let img = image();
    let mut args = route.to_vec();
    args.push(&img);
    let mut s = Server::start(&args);
    let d = s.open();
    let argv = s.exec_argv();
    (s, d, argv)
}

#[test]
fn directory_round_trip_keeps_names_modes_links_times() {
    for route in ROUTES {
        directory_round_trip_keeps_names_modes_links_times_on(route);
    }
}

fn directory_round_trip_keeps_names_modes_links_times_on(route: &[&str]) {
    let (mut s, d, argv) = open_on(route);
    let host = TempDir::new("tree");
    let src = host.path().join("src");
    make_tree(&src);
    let tb = format!("{d}/{AWKWARD} dir/");
    s.ok(&format!(
        "copydown {}/ {}",
        quote(&src.to_string_lossy()),
        quote(&tb)
    ));
    // Seen from inside the testbed.
    let q = tb.replace('\'', "'\\''");
    let seen = sh_ok(
        &argv,
        &format!(
            "cd '{q}' && stat -c '%a %Y' script private dated | tr '\\n' ' '; \
             readlink link-rel link-dangling | tr '\\n' ' '; cat '{AWKWARD}/deep/er/file %2F.txt'"
        ),
    );
    assert!(seen.starts_with("750 "), "{seen}");
    assert!(
        seen.contains(&format!(
            " 600 {} ",
            fs::metadata(src.join("private")).unwrap().mtime()
        )),
        "{seen}"
    );
    assert!(
        seen.contains(&format!("644 {MTIME}")) || seen.contains(&format!(" {MTIME} ")),
        "{seen}"
    );
    assert!(seen.contains("script /nonexistent/target nested"), "{seen}");
    // Owned by root in the testbed, not by the host's uid.
    assert_eq!(sh_ok(&argv, &format!("stat -c %u '{q}/script'")), "0\n");

    let back = host.path().join("back");
    s.ok(&format!(
        "copyup {} {}/",
        quote(&tb),
        quote(&back.to_string_lossy())
    ));
    assert_same_tree(&src, &back);
    s.quit();
}

#[test]
fn file_copies_with_awkward_names() {
    for route in ROUTES {
        file_copies_with_awkward_names_on(route);
    }
}

fn file_copies_with_awkward_names_on(route: &[&str]) {
    let (mut s, d, argv) = open_on(route);
    let host = TempDir::new("file");
    let src = host.path().join(format!("{AWKWARD}.bin"));
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    fs::write(&src, &data).unwrap();
    fs::set_permissions(&src, fs::Permissions::from_mode(0o755)).unwrap();
    let tb = format!("{d}/dest {AWKWARD}");
    s.ok(&format!(
        "copydown {} {}",
        quote(&src.to_string_lossy()),
        quote(&tb)
    ));
    let q = tb.replace('\'', "'\\''");
    assert_eq!(
        sh_ok(&argv, &format!("stat -c '%a %s' '{q}'")),
        format!("755 {}\n", data.len())
    );
    let back = host.path().join("back %20 é");
    s.ok(&format!(
        "copyup {} {}",
        quote(&tb),
        quote(&back.to_string_lossy())
    ));
    assert!(fs::read(&back).unwrap() == data);
    // copyup of a symlink to a file copies the file it names.
    sh_ok(&argv, &format!("ln -s '{q}' {d}/alias"));
    let back2 = host.path().join("via-link");
    s.ok(&format!(
        "copyup {d}/alias {}",
        quote(&back2.to_string_lossy())
    ));
    assert!(fs::read(&back2).unwrap() == data);
    assert!(!fs::symlink_metadata(&back2)
        .unwrap()
        .file_type()
        .is_symlink());
    s.quit();
}

#[test]
fn directories_merge_into_existing_targets() {
    for route in ROUTES {
        directories_merge_into_existing_targets_on(route);
    }
}

fn directories_merge_into_existing_targets_on(route: &[&str]) {
    let (mut s, d, argv) = open_on(route);
    let host = TempDir::new("merge");
    let src = host.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("sub/new"), "new").unwrap();
    fs::write(src.join("replaced"), "from host").unwrap();
    sh_ok(
        &argv,
        &format!("mkdir -p {d}/t/sub && echo old > {d}/t/sub/old && echo tb > {d}/t/replaced"),
    );
    s.ok(&format!("copydown {}/ {d}/t/", src.display()));
    assert_eq!(
        sh_ok(
            &argv,
            &format!("cd {d}/t && ls sub | tr '\\n' ' ' && cat replaced")
        ),
        "new old from host"
    );
    // And upward, into a host directory that already has files.
    let up = host.path().join("up");
    fs::create_dir_all(up.join("sub")).unwrap();
    fs::write(up.join("sub/host-only"), "keep").unwrap();
    s.ok(&format!("copyup {d}/t/ {}/", up.display()));
    let mut names: Vec<_> = fs::read_dir(up.join("sub"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["host-only", "new", "old"]);
    s.quit();
}

#[test]
fn missing_sources_fail_without_a_partial_target() {
    for route in ROUTES {
        missing_sources_fail_without_a_partial_target_on(route);
    }
}

fn missing_sources_fail_without_a_partial_target_on(route: &[&str]) {
    let (mut s, d, _argv) = open_on(route);
    let host = TempDir::new("missing");
    let target = host.path().join("target");
    assert_eq!(
        s.cmd(&format!("copyup {d}/no-such-file {}", target.display())),
        "copy-failed"
    );
    assert!(
        !target.exists(),
        "copyup of a missing file created {}",
        target.display()
    );
    assert_eq!(
        s.cmd(&format!("copyup {d}/no-such-dir/ {}/", target.display())),
        "copy-failed"
    );
    assert!(
        !target.exists(),
        "copyup of a missing dir created {}",
        target.display()
    );
    assert_eq!(
        s.cmd(&format!("copydown {}/absent {d}/x", host.path().display())),
        "copy-failed"
    );
    assert_eq!(
        s.cmd(&format!(
            "copydown {}/absent/ {d}/y/",
            host.path().display()
        )),
        "copy-failed"
    );
    // The failures were reported on stderr, and the server goes on.
    assert!(s.stderr_says("copyup failed"), "{}", s.stderr());
    let argv = s.exec_argv();
    assert_eq!(sh_ok(&argv, &format!("ls -A {d}")), "");
    s.quit();
}

#[test]
fn directoryness_must_agree() {
    let (mut s, d, _) = open_on(&[]);
    s.send(&format!("copyup {d}/ /tmp/x"));
    let st = s.wait(Duration::from_secs(30));
    assert_eq!(st.code(), Some(12));
    assert!(
        s.stderr_says("paths must agree about directoryness"),
        "{}",
        s.stderr()
    );
    assert_no_containers(s.pid());
}

#[test]
fn copy_timeout_answers_timeout_and_leaves_nothing() {
    // Through the Engine API: the daemon's archive has no holes, so it
    // streams all 200 GiB of a sparse file (the direct route copies only
    // its data, at once; hostile.rs).
    let mut s = Server::start_env(
        &["--remote", &image()],
        &[("AUTOPKGTEST_VIRT_COPY_TIMEOUT", "1")],
    );
    let d = s.open();
    let argv = s.exec_argv();
    // A sparse file far too big to copy in a second.
    sh_ok(&argv, &format!("truncate -s 200G {d}/huge"));
    let host = TempDir::new("timeout");
    let target = host.path().join("huge");
    let t = std::time::Instant::now();
    assert_eq!(
        s.cmd(&format!("copyup {d}/huge {}", target.display())),
        "timeout"
    );
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert!(
        s.stderr_says("AUTOPKGTEST_VIRT_COPY_TIMEOUT"),
        "{}",
        s.stderr()
    );
    // No partial target, and no temporary file left once the copy stops.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<_> = fs::read_dir(host.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left on the host: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The session goes on, and ends cleanly.
    assert_eq!(sh_ok(&argv, "echo alive"), "alive\n");
    s.quit();
}

#[test]
fn remote_trees_go_through_tar_and_do_without_it() {
    let (mut s, d, argv) = open_on(&["--remote", "-d"]);
    let host = TempDir::new("notar");
    let src = host.path().join("src");
    make_tree(&src);
    // A missing parent is named, on the tar route as on the others.
    assert_eq!(
        s.cmd(&format!("copydown {}/ /nonexistent/t/", src.display())),
        "copy-failed"
    );
    assert!(
        s.stderr_says("/nonexistent does not exist in the testbed"),
        "{}",
        s.stderr()
    );
    // A testbed without tar still gets its trees, through the archive
    // endpoints.
    sh_ok(&argv, "rm -f /bin/tar /usr/bin/tar");
    s.ok(&format!("copydown {}/ {d}/t/", src.display()));
    assert!(s.stderr_says("cannot run tar"), "{}", s.stderr());
    let back = host.path().join("back");
    s.ok(&format!("copyup {d}/t/ {}/", back.display()));
    assert_same_tree(&src, &back);
    s.quit();
}

/// A tree of many small files goes, through the Engine API, to two tars
/// at once (one from a file the script unlinks at once, one from the
/// stream); each creates every directory. Nothing may be lost or doubled,
/// and every directory must end with its own mode and time, whichever tar
/// finished last.
#[test]
fn many_files_go_to_two_tars_and_keep_everything() {
    let (mut s, d, argv) = open_on(&["--remote", "-d"]);
    let host = TempDir::new("split");
    let src = host.path().join("src");
    let dirs = ["a", "b/c", "b/c/deeper", "ro", AWKWARD];
    for (k, dir) in dirs.iter().enumerate() {
        let p = src.join(dir);
        fs::create_dir_all(&p).unwrap();
        for i in 0..160 {
            let f = p.join(format!("f{i}"));
            fs::write(&f, format!("{dir}/{i}\n").repeat(i % 7 + 1)).unwrap();
            let mode = match i % 11 {
                0 => 0o755,
                1 => 0o600,
                _ => 0o644,
            };
            fs::set_permissions(&f, fs::Permissions::from_mode(mode)).unwrap();
            set_mtime(&f, MTIME + (k * 1000 + i) as i64);
        }
        symlink(format!("f{k}"), p.join("link")).unwrap();
    }
    // Deepest first, so that setting a directory's time is not undone by
    // the next one made inside it.
    for (k, dir) in dirs.iter().enumerate().rev() {
        set_mtime(&src.join(dir), MTIME - 100 * k as i64);
    }
    fs::set_permissions(src.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
    set_mtime(&src.join("b"), MTIME - 7);
    set_mtime(&src, MTIME - 9);

    let tb = format!("{d}/dest/");
    s.ok(&format!("copydown {}/ {tb}", src.display()));
    assert!(s.stderr_says("two tars at once"), "{}", s.stderr());

    // Directories and files as the testbed sees them: type, mode, time.
    let listing = |root: &str| {
        sh_ok(
            &argv,
            &format!("cd '{}' && find . -printf '%p %y %m %T@\\n' | sed 's/\\.[0-9]*$//' | LC_ALL=C sort", root.replace('\'', "'\\''")),
        )
    };
    let mut want = Vec::new();
    let mut stack = vec![(src.clone(), ".".to_string())];
    while let Some((p, name)) = stack.pop() {
        let md = fs::symlink_metadata(&p).unwrap();
        let y = if md.is_dir() {
            "d"
        } else if md.file_type().is_symlink() {
            "l"
        } else {
            "f"
        };
        want.push(format!(
            "{name} {y} {:o} {}",
            md.mode() & 0o7777,
            md.mtime()
        ));
        if md.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                let e = e.unwrap();
                let n = format!("{name}/{}", e.file_name().to_string_lossy());
                stack.push((e.path(), n));
            }
        }
    }
    want.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let got = listing(&tb);
    let got: Vec<&str> = got.lines().collect();
    assert_eq!(got.len(), want.len(), "{got:?}");
    for (g, w) in got.iter().zip(&want) {
        // A symlink's own mode is 777 on both sides; its time is the
        // moment it was made.
        if w.contains(" l ") {
            assert_eq!(
                g.split(' ').take(2).collect::<Vec<_>>(),
                w.split(' ').take(2).collect::<Vec<_>>()
            );
        } else {
            assert_eq!(g, w);
        }
    }
    // The script's temporary file is gone.
    assert_eq!(
        sh_ok(&argv, &format!("ls -A {d} | grep -c rdocker || true")),
        "0\n"
    );

    // Contents, modes and file times, back on the host.
    let back = host.path().join("back");
    s.ok(&format!("copyup {tb} {}/", back.display()));
    assert_same_tree(&src, &back);
    s.quit();
}
