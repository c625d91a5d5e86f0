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

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// The pieces that matter to the parser: command names, escapes
        /// (valid, truncated, bad), whitespace, NUL, high bytes.
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

        /// A line of pieces and stray bytes.
        fn line() -> impl Strategy<Value = Vec<u8>> {
            prop::collection::vec(
                prop_oneof![
                    7 => prop::sample::select(PIECES).prop_map(<[u8]>::to_vec),
                    1 => any::<u8>().prop_map(|b| vec![b]),
                ],
                0..12,
            )
            .prop_map(|p| p.concat())
        }

        /// What any parse must give: a blank line only for whitespace, an
        /// error only with one of the reference's messages, a copy that
        /// re-encodes to the same command.
        fn check(line: &[u8]) -> Result<(), TestCaseError> {
            match parse_line(line) {
                Parsed::Blank => prop_assert!(line
                    .split(|b| b.is_ascii_whitespace() || *b == 0x0b)
                    .all(|w| w.is_empty())),
                Parsed::Error(m) => prop_assert!(
                    m.starts_with("too few arguments to command `")
                        || m.starts_with("too many arguments to command `")
                        || m.starts_with("unknown command `"),
                    "{:?} for {:?}",
                    m,
                    line
                ),
                Parsed::Command(Command::CopyDown { host, testbed }) => {
                    let again = format!("copydown {} {}", quote(&host), quote(&testbed));
                    prop_assert_eq!(
                        parse_line(again.as_bytes()),
                        Parsed::Command(Command::CopyDown { host, testbed })
                    );
                }
                Parsed::Command(Command::CopyUp { testbed, host }) => {
                    let again = format!("copyup {} {}", quote(&testbed), quote(&host));
                    prop_assert_eq!(
                        parse_line(again.as_bytes()),
                        Parsed::Command(Command::CopyUp { testbed, host })
                    );
                }
                Parsed::Command(_) => {}
            }
            Ok(())
        }

        /// Lines of a MiB: a result.
        #[test]
        fn mib_long_lines_parse() {
            for w in [&b"copydown "[..], b"shell ", b"x"] {
                let mut l = w.to_vec();
                l.extend(std::iter::repeat_n(b'%', 1 << 20));
                check(&l).unwrap();
            }
        }

        proptest! {
            #[test]
            fn lines_of_protocol_pieces_parse_or_fail_cleanly(l in line()) {
                check(&l)?;
            }

            /// Any bytes at all, and long ones: a result, never a panic.
            #[test]
            fn any_bytes_parse_or_fail_cleanly(
                l in prop::collection::vec(any::<u8>(), 0..512),
                long in 0usize..4096,
            ) {
                check(&l)?;
                let mut huge = b"copydown ".to_vec();
                huge.extend(std::iter::repeat_n(b'%', long));
                huge.extend_from_slice(b" /x");
                check(&huge)?;
            }

            /// Copies of any two paths go through quote and back.
            #[test]
            fn copy_paths_round_trip(
                a in prop::collection::vec(any::<u8>(), 1..64),
                b in prop::collection::vec(any::<u8>(), 1..64),
            ) {
                let line = format!("copyup {} {}", quote(&a), quote(&b));
                prop_assert_eq!(
                    parse_line(line.as_bytes()),
                    Parsed::Command(Command::CopyUp { testbed: a, host: b })
                );
            }

            /// unquote(quote(b)) == b for any bytes, and quote's output is
            /// one protocol word.
            #[test]
            fn quote_round_trips_any_bytes(b in prop::collection::vec(any::<u8>(), 0..256)) {
                let q = quote(&b);
                prop_assert!(q.bytes().all(|c| c.is_ascii_graphic() && c != b','), "{}", q);
                prop_assert_eq!(unquote(q.as_bytes()), b);
            }

            /// unquote never panics and never lengthens.
            #[test]
            fn unquote_takes_any_bytes(b in prop::collection::vec(any::<u8>(), 0..256)) {
                prop_assert!(unquote(&b).len() <= b.len());
            }
        }
    }
}
