//! The tar stream of a copyup is the testbed's: a root test can replace
//! its tar. The tar crate is the only parser of that stream, and what it
//! may read of one header (long names, pax records, sparse maps) is
//! bounded. The archive below mixes what a hand-written guard once
//! misread (base-256 sizes, pax `x` then `g`, old-GNU sparse with
//! extension blocks) before a 4 GiB GNU long name.

use crate::util::*;
use std::fs;
use std::time::{Duration, Instant};
use tar::{EntryType, GnuExtSparseHeader, Header};

fn block(h: &mut Header, name: &str, kind: EntryType, size: u64) -> Vec<u8> {
    h.set_path(name).unwrap();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_mtime(1_000_000_000);
    h.set_size(size);
    h.set_cksum();
    h.as_bytes().to_vec()
}

fn data(out: &mut Vec<u8>, d: &[u8]) {
    out.extend_from_slice(d);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn pax(records: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let body = format!(" {k}={v}\n");
        let mut n = body.len() + 1;
        while format!("{n}{body}").len() != n {
            n += 1;
        }
        out.extend_from_slice(format!("{n}{body}").as_bytes());
    }
    out
}

/// The archive up to the long name's data: what the crate reads of it
/// lands on the host before the long name fails the copy.
fn crafted_prefix() -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(block(&mut Header::new_gnu(), "t/", EntryType::Directory, 0));

    // Old-GNU sparse: 4 chunks in the header, 21 + 6 in two extension
    // blocks, the last one the trailing hole.
    let real = 30 * 65536;
    let mut chunks: Vec<(u64, u64)> = (0..30).map(|i| (i * 65536, 512)).collect();
    chunks.push((real, 0));
    let mut h = Header::new_gnu();
    h.set_path("t/sparse").unwrap();
    h.set_entry_type(EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_size(30 * 512);
    {
        let g = h.as_gnu_mut().unwrap();
        for (s, (o, l)) in g.sparse.iter_mut().zip(&chunks[..4]) {
            s.set_offset(*o);
            s.set_length(*l);
        }
        g.set_real_size(real);
        g.set_is_extended(true);
    }
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    for (part, more) in [(&chunks[4..25], true), (&chunks[25..], false)] {
        let mut e = GnuExtSparseHeader::new();
        for (s, (o, l)) in e.sparse.iter_mut().zip(part) {
            s.set_offset(*o);
            s.set_length(*l);
        }
        e.set_is_extended(more);
        out.extend_from_slice(e.as_bytes());
    }
    for i in 0..30u8 {
        out.extend(std::iter::repeat_n(b'a' + i % 26, 512));
    }

    // pax `x` (whose size record is for the next member only, and that is
    // the `g`), then a global header, then a plain file.
    let x = pax(&[("path", "t/ignored-by-g"), ("size", "5")]);
    out.extend(block(
        &mut Header::new_ustar(),
        "PaxHeader/x",
        EntryType::XHeader,
        x.len() as u64,
    ));
    data(&mut out, &x);
    let g = pax(&[("comment", "global")]);
    out.extend(block(
        &mut Header::new_ustar(),
        "GlobalHead",
        EntryType::XGlobalHeader,
        g.len() as u64,
    ));
    data(&mut out, &g);
    out.extend(block(
        &mut Header::new_ustar(),
        "t/after-pax",
        EntryType::Regular,
        12,
    ));
    data(&mut out, b"after pax g\n");

    // Base-256 size, with bytes the crate ignores (it reads the last 8).
    let mut h = Header::new_gnu();
    block(&mut h, "t/b256", EntryType::Regular, 9);
    h.as_old_mut().size = [0x80, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 9];
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    data(&mut out, b"base-256\n");

    // A 4 GiB GNU long name: its data is /dev/zero in the testbed.
    out.extend(block(
        &mut Header::new_gnu(),
        "././@LongLink",
        EntryType::GNULongName,
        4 << 30,
    ));
    out
}

/// A root test's tar sends the crafted archive: the copy fails at the long
/// name within the bound, with the server under +8 MiB, what came before
/// it extracted as the crate reads it, and the session going on.
#[test]
fn a_tar_with_a_huge_long_name_after_odd_headers_cannot_exhaust_memory() {
    let mut s = Server::start_env(
        &["--remote", &image()],
        &[("AUTOPKGTEST_VIRT_COPY_TIMEOUT", "60")],
    );
    s.open();
    let argv = s.exec_argv();
    let o = sh_stdin(&argv, "cat > /tmp/crafted.tar", &crafted_prefix());
    assert!(o.status.success(), "{o:?}");
    sh_ok(
        &argv,
        "printf '#!/bin/sh\\ncat /tmp/crafted.tar\\nexec head -c 4294967296 /dev/zero\\n' \
         > /usr/bin/tar.bomb && chmod 755 /usr/bin/tar.bomb && mv /usr/bin/tar.bomb /usr/bin/tar",
    );
    let host = TempDir::new("tar-guard");
    let before = rss_kib(s.pid());
    let t = Instant::now();
    let (reply, peak) = s.cmd_peak_rss(&format!("copyup /etc/ {}/", host.path().display()));
    eprintln!(
        "copyup: {reply} after {:?}, RSS {before} KiB before, peak {peak} KiB",
        t.elapsed()
    );
    assert_eq!(reply, "copy-failed", "{}", s.stderr());
    assert!(
        peak < before + 8 * 1024,
        "the server went from {before} to {peak} KiB"
    );
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "the copy took {:?}",
        t.elapsed()
    );
    assert!(
        s.stderr_says("a header of more than 1024 KiB"),
        "{}",
        s.stderr()
    );
    // What the crate read before the long name is on the host, as it read it.
    let sparse = fs::read(host.path().join("sparse")).unwrap();
    assert_eq!(sparse.len(), 30 * 65536);
    for i in 0..30usize {
        let chunk = &sparse[i * 65536..(i + 1) * 65536];
        assert!(chunk[..512].iter().all(|b| *b == b'a' + (i % 26) as u8));
        assert!(chunk[512..].iter().all(|b| *b == 0));
    }
    assert_eq!(
        fs::read(host.path().join("after-pax")).unwrap(),
        b"after pax g\n"
    );
    assert_eq!(fs::read(host.path().join("b256")).unwrap(), b"base-256\n");
    // The session goes on, and the sender is gone.
    assert_eq!(sh_ok(&argv, "echo alive"), "alive\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    while count_procs(&argv, "^head ") != 0 {
        assert!(
            Instant::now() < deadline,
            "the sending `head' outlived its copy"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    s.quit();
}

/// The costliest header the bound lets through: an old-GNU sparse map of
/// just under 1 MiB, 42,970 chunks of data and holes, which the crate
/// keeps as a list while it reads the member. The copy succeeds with the
/// server still under +8 MiB.
#[test]
fn a_sparse_map_as_big_as_the_bound_stays_within_memory() {
    const EXT: usize = 2046;
    let chunks: Vec<(u64, u64)> = (0..4 + 21 * EXT as u64).map(|i| (i * 1024, 512)).collect();
    let body = 512 * chunks.len() as u64;
    let real = chunks.last().map_or(0, |(o, l)| o + l);
    let mut prefix = block(&mut Header::new_gnu(), "t/", EntryType::Directory, 0);
    let mut h = Header::new_gnu();
    h.set_path("t/map").unwrap();
    h.set_entry_type(EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_size(body);
    {
        let g = h.as_gnu_mut().unwrap();
        for (s, (o, l)) in g.sparse.iter_mut().zip(&chunks[..4]) {
            s.set_offset(*o);
            s.set_length(*l);
        }
        g.set_real_size(real);
        g.set_is_extended(true);
    }
    h.set_cksum();
    prefix.extend_from_slice(h.as_bytes());
    for (k, part) in chunks[4..].chunks(21).enumerate() {
        let mut e = GnuExtSparseHeader::new();
        for (s, (o, l)) in e.sparse.iter_mut().zip(part) {
            s.set_offset(*o);
            s.set_length(*l);
        }
        e.set_is_extended(k + 1 < EXT);
        prefix.extend_from_slice(e.as_bytes());
    }

    let mut s = Server::start_env(
        &["--remote", &image()],
        &[("AUTOPKGTEST_VIRT_COPY_TIMEOUT", "60")],
    );
    s.open();
    let argv = s.exec_argv();
    let o = sh_stdin(&argv, "cat > /tmp/map.tar", &prefix);
    assert!(o.status.success(), "{o:?}");
    sh_ok(
        &argv,
        &format!(
            "printf '#!/bin/sh\\ncat /tmp/map.tar\\nhead -c {} /dev/zero\\n' \
             > /usr/bin/tar.map && chmod 755 /usr/bin/tar.map && mv /usr/bin/tar.map /usr/bin/tar",
            body + 1024
        ),
    );
    let host = TempDir::new("tar-map");
    let before = rss_kib(s.pid());
    let (reply, peak) = s.cmd_peak_rss(&format!("copyup /etc/ {}/", host.path().display()));
    eprintln!("copyup: {reply}, RSS {before} KiB before, peak {peak} KiB");
    assert_eq!(reply, "ok", "{}", s.stderr());
    assert!(
        peak < before + 8 * 1024,
        "the server went from {before} to {peak} KiB"
    );
    let md = fs::metadata(host.path().join("map")).unwrap();
    assert_eq!(md.len(), real);
    // The map's data regions are written as the map says (one in every
    // 1 KiB here, so every block); nothing past them.
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&md) * 512 <= real + (64 << 10),
        "more was written than the map holds"
    );
    s.quit();
}
