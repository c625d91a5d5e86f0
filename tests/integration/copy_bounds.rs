//! Copies are bounded in time and memory whatever the testbed holds: a
//! copy that answers `timeout` stops at once (no thread keeps copying, no
//! host file keeps growing), holes stay holes in tree copies, and trees of
//! 150,000 files or 50,000 directories cost the server a few MiB.

use crate::util::*;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROUTES: [&[&str]; 2] = [&[], &["--remote"]];

/// A process's CPU time so far, in clock ticks (utime + stime).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn threads(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task")).unwrap().count()
}

/// Entries below `dir` and the bytes they claim (apparent sizes).
fn tree_size(dir: &Path) -> (u64, u64) {
    let (mut n, mut bytes) = (0, 0);
    let Ok(rd) = fs::read_dir(dir) else {
        return (0, 0);
    };
    for e in rd.flatten() {
        let Ok(md) = fs::symlink_metadata(e.path()) else {
            continue;
        };
        n += 1;
        bytes += md.len();
        if md.is_dir() {
            let (a, b) = tree_size(&e.path());
            n += a;
            bytes += b;
        }
    }
    (n, bytes)
}

/// `copyup` that must answer `timeout`, at the copy timeout.
fn times_out(s: &mut Server, from: &str, to: &Path, what: &str) {
    let t = Instant::now();
    let reply = s.cmd(&format!("copyup {from} {}", to.display()));
    assert_eq!(reply, "timeout", "{what}: {}", s.stderr());
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "{what}: {:?}",
        t.elapsed()
    );
}

/// From one second after the last reply on, the server is idle and the
/// host side (`host`) still.
fn stopped(s: &Server, host: &Path, what: &str) {
    std::thread::sleep(Duration::from_secs(1));
    let (cpu, size) = (cpu_ticks(s.pid()), tree_size(host));
    std::thread::sleep(Duration::from_secs(1));
    let (cpu2, size2) = (cpu_ticks(s.pid()), tree_size(host));
    // An idle server takes a tick or two a second; a copy thread left
    // running takes about 100.
    assert!(
        cpu2 - cpu <= 10,
        "{what}: the server used {} ticks of CPU in a second, from a second after its \
         timeout reply",
        cpu2 - cpu
    );
    assert_eq!(size, size2, "{what}: the host side kept growing");
}

#[test]
fn a_copy_that_times_out_stops_within_a_second() {
    for route in ROUTES {
        let mut args = route.to_vec();
        let img = image();
        args.push(&img);
        let mut s = Server::start_env(&args, &[("AUTOPKGTEST_VIRT_COPY_TIMEOUT", "1")]);
        let d = s.open();
        let argv = s.exec_argv();
        // 50,000 files: more than a second to copy on any route.
        sh_ok(
            &argv,
            &format!(
                "mkdir {d}/many && cd {d}/many && \
                 perl -e 'for (1..50000) {{ open F, \">\", \"f$_\" or die }}' && \
                 truncate -s 15T {d}/huge"
            ),
        );
        let host = TempDir::new("copy-timeout");
        // Three in a row: a thread left copying by one would show.
        let tasks = threads(s.pid());
        for i in 0..3 {
            let to = host.path().join(format!("many{i}/"));
            times_out(
                &mut s,
                &format!("{d}/many/"),
                &to,
                &format!("{route:?} tree {i}"),
            );
        }
        stopped(&s, host.path(), &format!("{route:?} trees"));
        let mut after = vec![threads(s.pid())];
        if !route.is_empty() {
            // The archive endpoint sends holes as 15 TiB of zeros: the
            // copy times out, and its temporary file goes.
            let files = host.path().join("huge");
            fs::create_dir(&files).unwrap();
            for i in 0..3 {
                times_out(
                    &mut s,
                    &format!("{d}/huge"),
                    &files.join(format!("f{i}")),
                    "file",
                );
            }
            stopped(&s, host.path(), "15 TiB file");
            assert_eq!(
                fs::read_dir(&files).unwrap().count(),
                0,
                "a timed-out file copy left a file behind"
            );
            after.push(threads(s.pid()));
        }
        // Threads of copies that stopped are reused, not stacked.
        assert!(
            after.iter().all(|n| *n <= tasks + 2),
            "{route:?}: {tasks} threads before the copies, {after:?} after"
        );
        eprintln!("{route:?}: {tasks} threads before the copies, {after:?} after");
        // The session carries on.
        s.ok(&format!(
            "copyup /etc/hostname {}/hostname",
            host.path().display()
        ));
        s.quit();
    }
}

#[test]
fn a_15_tib_file_of_holes_in_a_tree_copies_up_in_no_time() {
    for route in ROUTES {
        let mut args = route.to_vec();
        let img = image();
        args.push(&img);
        let mut s = Server::start_env(&args, &[("AUTOPKGTEST_VIRT_COPY_TIMEOUT", "20")]);
        let d = s.open();
        let argv = s.exec_argv();
        sh_ok(
            &argv,
            &format!(
                "mkdir {d}/t && truncate -s 15T {d}/t/huge && printf tail | \
                 dd of={d}/t/huge bs=1 seek=10000000000000 conv=notrunc 2>/dev/null"
            ),
        );
        let host = TempDir::new("holes");
        let cpu = cpu_ticks(s.pid());
        let t = Instant::now();
        s.ok(&format!("copyup {d}/t/ {}/t/", host.path().display()));
        let (took, used) = (t.elapsed(), cpu_ticks(s.pid()) - cpu);
        let f = host.path().join("t/huge");
        let md = fs::metadata(&f).unwrap();
        assert_eq!(md.len(), 15 << 40, "{route:?}");
        assert!(
            md.blocks() * 512 <= 1 << 20,
            "{route:?}: {} blocks",
            md.blocks()
        );
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 4];
        fs::File::open(&f)
            .unwrap()
            .read_exact_at(&mut buf, 10_000_000_000_000)
            .unwrap();
        assert_eq!(&buf, b"tail", "{route:?}");
        // Reading the holes as zeros took minutes of a core.
        assert!(took < Duration::from_secs(5), "{route:?}: took {took:?}");
        assert!(used < 200, "{route:?}: {used} ticks of CPU");
        // And down again, into another directory of the testbed.
        let t = Instant::now();
        s.ok(&format!("copydown {}/t/ {d}/back/", host.path().display()));
        let down = t.elapsed();
        let out = sh_ok(
            &argv,
            &format!(
                "stat -c '%s %b' {d}/back/huge; tail -c +10000000000001 {d}/back/huge | head -c 4"
            ),
        );
        let mut words = out.split_whitespace();
        assert_eq!(words.next(), Some("16492674416640"), "{route:?}");
        let blocks: u64 = words.next().unwrap().parse().unwrap();
        assert!(
            blocks * 512 <= 1 << 20,
            "{route:?}: {blocks} blocks in the testbed"
        );
        assert_eq!(words.next(), Some("tail"), "{route:?}");
        assert!(
            down < Duration::from_secs(5),
            "{route:?}: copydown took {down:?}"
        );
        eprintln!(
            "{route:?}: 15 TiB of holes in a tree: up {took:?} ({used} ticks), down {down:?}"
        );
        s.quit();
    }
}

/// Copy up the tree that `make` builds in the testbed while sampling the
/// server's memory; it must stay under 32 MiB and grow by less than 8 MiB,
/// and the tree must arrive whole (`entries` below its top).
fn tree_in_bounded_memory(route: &[&str], make: &str, entries: u64) {
    let mut args = route.to_vec();
    let img = image();
    args.push(&img);
    let mut s = Server::start_env(&args, &[("AUTOPKGTEST_VIRT_COPY_TIMEOUT", "120")]);
    let d = s.open();
    let argv = s.exec_argv();
    sh_ok(&argv, &format!("mkdir {d}/t && cd {d}/t && {make}"));
    let pid = s.pid();
    let before = rss_kib(pid);
    let peak = Arc::new(AtomicU64::new(before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let host = TempDir::new("wide");
    let t = Instant::now();
    s.ok(&format!("copyup {d}/t/ {}/t/", host.path().display()));
    let took = t.elapsed();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    eprintln!("{route:?}: {entries} entries in {took:?}, server {before} -> {peak} KiB");
    assert_eq!(tree_size(&host.path().join("t")).0, entries, "{route:?}");
    assert!(peak < 32 << 10, "{route:?}: the server reached {peak} KiB");
    assert!(
        peak - before < 8 << 10,
        "{route:?}: the server grew from {before} to {peak} KiB"
    );
    s.quit();
}

const WIDE: &str = "perl -e 'for (1..150000) { open F, \">\", \"f$_\" or die }'";
/// 250 directories of 200: 50,250.
const DEEP: &str =
    "perl -e 'for $a (1..250) { mkdir \"d$a\"; for (1..200) { mkdir \"d$a/$_\" or die } }'";

#[test]
fn a_tree_of_150000_files_copies_up_in_bounded_memory() {
    tree_in_bounded_memory(&[], WIDE, 150_000);
}

#[test]
fn a_tree_of_150000_files_copies_up_in_bounded_memory_remote() {
    tree_in_bounded_memory(&["--remote"], WIDE, 150_000);
}

#[test]
fn a_tree_of_50000_directories_copies_up_in_bounded_memory() {
    tree_in_bounded_memory(&[], DEEP, 50_250);
}

#[test]
fn a_tree_of_50000_directories_copies_up_in_bounded_memory_remote() {
    tree_in_bounded_memory(&["--remote"], DEEP, 50_250);
}
