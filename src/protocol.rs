//! The virt-server line protocol, without any I/O: parsing of command lines
//! and formatting of replies, as autopkgtest's VirtSubproc.py does them.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

/// A command the caller may send. Copy paths stay raw bytes, since Python's
/// unquote hands any byte sequence to the filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
// Variants are named after the protocol's words: print-execute-command.
#[allow(clippy::enum_variant_names)]
pub enum Command {
    Capabilities,
    Open,
    Close,
    Revert,
    /// `reboot [prepare-only]`: only the word `prepare-only` makes it so,
    /// as in VirtSubproc's cmd_reboot; any other argument is a full reboot.
    Reboot {
        prepare_only: bool,
    },
    PrintExecuteCommand,
    CopyDown {
        host: Vec<u8>,
        testbed: Vec<u8>,
    },
    CopyUp {
        testbed: Vec<u8>,
        host: Vec<u8>,
    },
    Shell {
        dir: String,
        env: Vec<String>,
    },
    Quit,
    AuxverbDebugFail,
}

/// What a line turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Blank lines are ignored, as the reference does.
    Blank,
    Command(Command),
    /// A protocol violation: the reference bombs (exit 12) with this text.
    Error(String),
}

/// Parse one line (without its newline).
pub fn parse_line(line: &[u8]) -> Parsed {
    // Python's str.split() with no argument: runs of whitespace separate.
    let words: Vec<&[u8]> = line
        .split(|b| b.is_ascii_whitespace() || *b == 0x0b)
        .filter(|w| !w.is_empty())
        .collect();
    let Some(first) = words.first() else {
        return Parsed::Blank;
    };
    let raw_name = String::from_utf8_lossy(first).into_owned();
    let name = String::from_utf8_lossy(&unquote(first)).replace('-', "_");
    let args: Vec<Vec<u8>> = words[1..].iter().map(|w| unquote(w)).collect();

    let nargs = |n: usize, cmd: Command| -> Parsed {
        if args.len() < n {
            Parsed::Error(format!("too few arguments to command `{raw_name}'"))
        } else if args.len() > n {
            Parsed::Error(format!("too many arguments to command `{raw_name}'"))
        } else {
            Parsed::Command(cmd)
        }
    };
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();

    match name.as_str() {
        "capabilities" => nargs(0, Command::Capabilities),
        "open" => nargs(0, Command::Open),
        "close" => nargs(0, Command::Close),
        "revert" => nargs(0, Command::Revert),
        "print_execute_command" => nargs(0, Command::PrintExecuteCommand),
        "quit" => nargs(0, Command::Quit),
        "auxverb_debug_fail" => nargs(0, Command::AuxverbDebugFail),
        // reboot takes an optional `prepare-only`
        "reboot" if args.len() <= 1 => Parsed::Command(Command::Reboot {
            prepare_only: args.first().is_some_and(|a| a == b"prepare-only"),
        }),
        "reboot" => Parsed::Error(format!("too many arguments to command `{raw_name}'")),
        "copydown" => nargs(
            2,
            Command::CopyDown {
                host: arg(0),
                testbed: arg(1),
            },
        ),
        "copyup" => nargs(
            2,
            Command::CopyUp {
                testbed: arg(0),
                host: arg(1),
            },
        ),
        "shell" if args.is_empty() => {
            Parsed::Error(format!("too few arguments to command `{raw_name}'"))
        }
        "shell" => Parsed::Command(Command::Shell {
            dir: String::from_utf8_lossy(&args[0]).into_owned(),
            env: args[1..]
                .iter()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect(),
        }),
        _ => Parsed::Error(format!("unknown command `{raw_name}'")),
    }
}

/// urllib.parse.unquote on bytes: valid %XX escapes decode, anything else
/// stays as it is.
pub fn unquote(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// urllib.parse.quote with its default safe='/'.
pub fn quote(s: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s {
        if b.is_ascii_alphanumeric() || b"_.-~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The reply to print-execute-command: the argv, each word quoted, joined
/// by commas.
pub fn execute_command_reply(argv: &[String]) -> String {
    let words: Vec<String> = argv.iter().map(|a| quote(a.as_bytes())).collect();
    format!("ok {}", words.join(","))
}

/// Whether a copy path names a directory (trailing slash).
pub fn is_dir_path(p: &[u8]) -> bool {
    p.last() == Some(&b'/')
}

pub fn to_os(p: &[u8]) -> OsString {
    OsString::from_vec(p.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(line: &str) -> Command {
        match parse_line(line.as_bytes()) {
            Parsed::Command(c) => c,
            other => panic!("{line:?} gave {other:?}"),
        }
    }

    fn err(line: &str) -> String {
        match parse_line(line.as_bytes()) {
            Parsed::Error(e) => e,
            other => panic!("{line:?} gave {other:?}"),
        }
    }

    #[test]
    fn blank_lines_are_ignored() {
        assert_eq!(parse_line(b""), Parsed::Blank);
        assert_eq!(parse_line(b"  \t \r"), Parsed::Blank);
    }

    #[test]
    fn dashes_and_underscores_are_the_same() {
        assert_eq!(cmd("print-execute-command"), Command::PrintExecuteCommand);
        assert_eq!(cmd("print_execute_command"), Command::PrintExecuteCommand);
        assert_eq!(cmd("auxverb-debug-fail"), Command::AuxverbDebugFail);
        assert_eq!(cmd("  open  "), Command::Open);
    }

    #[test]
    fn argument_counts() {
        assert_eq!(err("open now"), "too many arguments to command `open'");
        assert_eq!(err("copydown a"), "too few arguments to command `copydown'");
        assert_eq!(
            err("copyup a b c"),
            "too many arguments to command `copyup'"
        );
        assert_eq!(err("shell"), "too few arguments to command `shell'");
        assert_eq!(
            cmd("reboot prepare-only"),
            Command::Reboot { prepare_only: true }
        );
        assert_eq!(
            cmd("reboot"),
            Command::Reboot {
                prepare_only: false
            }
        );
        assert_eq!(
            cmd("reboot now"),
            Command::Reboot {
                prepare_only: false
            }
        );
    }

    #[test]
    fn unknown_commands_are_named() {
        assert_eq!(err("frobnicate x"), "unknown command `frobnicate'");
        assert_eq!(err("op\0en"), "unknown command `op\0en'");
    }

    #[test]
    fn paths_are_unquoted() {
        assert_eq!(
            cmd("copydown /tmp/a%20b%25c/ /x/%C3%A9/"),
            Command::CopyDown {
                host: b"/tmp/a b%c/".to_vec(),
                testbed: "/x/é/".as_bytes().to_vec(),
            }
        );
    }

    #[test]
    fn bad_escapes_stay_literal() {
        assert_eq!(unquote(b"100%"), b"100%");
        assert_eq!(unquote(b"%zz%4"), b"%zz%4");
        assert_eq!(unquote(b"%41%4a"), b"AJ");
        assert_eq!(unquote(b"%"), b"%");
    }

    #[test]
    fn quote_matches_python() {
        assert_eq!(quote(b"/usr/bin/x"), "/usr/bin/x");
        assert_eq!(quote(b"a b,c"), "a%20b%2Cc");
        assert_eq!(quote("é".as_bytes()), "%C3%A9");
        assert_eq!(quote(b"--exec=1.41"), "--exec%3D1.41");
    }

    #[test]
    fn quote_roundtrips() {
        let all: Vec<u8> = (1u8..=255).collect();
        assert_eq!(unquote(quote(&all).as_bytes()), all);
    }

    #[test]
    fn execute_reply_joins_with_commas() {
        let argv = vec!["/usr/bin/rd".to_string(), "a,b".to_string()];
        assert_eq!(execute_command_reply(&argv), "ok /usr/bin/rd,a%2Cb");
    }

    /// A small deterministic generator: the property test needs no crate.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Lines built from the pieces that matter to the parser: command
    /// names, escapes (valid, truncated, bad), whitespace, NUL, high bytes.
    fn random_line(r: &mut XorShift) -> Vec<u8> {
        const PIECES: &[&[u8]] = &[
            b"copydown",
            b"copyup",
            b"open",
            b"close",
            b"revert",
            b"reboot",
            b"shell",
            b"print-execute-command",
            b"print_execute_command",
            b"quit",
            b"capabilities",
            b"auxverb_debug_fail",
            b"%",
            b"%2",
            b"%2F",
            b"%zz",
            b"%00",
            b"%C3%A9",
            b" ",
            b"  ",
            b"\t",
            b"\x0b",
            b"\x0c",
            b"\r",
            b"\0",
            b"/",
            b"-",
            b"_",
            b"a",
            b"\xff",
            b"\xc3",
            b"/tmp/x/",
            b"prepare-only",
        ];
        let mut line = Vec::new();
        for _ in 0..r.below(12) {
            if r.below(8) == 0 {
                line.push(r.next() as u8);
            } else {
                line.extend_from_slice(PIECES[r.below(PIECES.len())]);
            }
        }
        line
    }

    fn iterations() -> u64 {
        std::env::var("RDOCKER_FUZZ_ITERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50_000)
    }

    /// Property: no line makes the parser panic; every error is one of the
    /// reference's messages; a parsed copy re-encodes to the same command.
    #[test]
    fn parser_property() {
        let seed = std::env::var("RDOCKER_FUZZ_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0x9e3779b97f4a7c15u64);
        let mut r = XorShift(seed | 1);
        for _ in 0..iterations() {
            let line = random_line(&mut r);
            match parse_line(&line) {
                Parsed::Blank => assert!(line
                    .split(|b| b.is_ascii_whitespace() || *b == 0x0b)
                    .all(|w| w.is_empty())),
                Parsed::Error(m) => assert!(
                    m.starts_with("too few arguments to command `")
                        || m.starts_with("too many arguments to command `")
                        || m.starts_with("unknown command `"),
                    "{m:?} for {line:?}"
                ),
                Parsed::Command(Command::CopyDown { host, testbed }) => {
                    let again = format!("copydown {} {}", quote(&host), quote(&testbed));
                    assert_eq!(
                        parse_line(again.as_bytes()),
                        Parsed::Command(Command::CopyDown { host, testbed }),
                        "{line:?}"
                    );
                }
                Parsed::Command(Command::CopyUp { testbed, host }) => {
                    let again = format!("copyup {} {}", quote(&testbed), quote(&host));
                    assert_eq!(
                        parse_line(again.as_bytes()),
                        Parsed::Command(Command::CopyUp { testbed, host }),
                        "{line:?}"
                    );
                }
                Parsed::Command(_) => {}
            }
        }
    }

    /// Property: unquote(quote(b)) == b for any bytes, and quote's output
    /// is one protocol word.
    #[test]
    fn quote_round_trip_property() {
        let mut r = XorShift(0x2545f4914f6cdd1d);
        for _ in 0..iterations() {
            let bytes: Vec<u8> = (0..r.below(40)).map(|_| r.next() as u8).collect();
            let q = quote(&bytes);
            assert!(q.bytes().all(|b| b.is_ascii_graphic() && b != b','), "{q}");
            assert_eq!(unquote(q.as_bytes()), bytes);
        }
    }
}
