//! Names rdocker makes and splits: random tokens (containers, exec
//! commands, scratch directories) and testbed paths.

/// Some random hex for names, without another crate.
pub fn random_hex(bytes: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        buf = t.to_le_bytes()[..bytes.min(16)].to_vec();
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Split a testbed path into the directory to extract in and the name of
/// the entry; "/" itself has no name.
pub fn split_testbed_path(path: &str) -> (String, String) {
    let trimmed = path.trim_end_matches('/');
    let abs = if trimmed.starts_with('/') {
        trimmed.to_string()
    } else {
        format!("/{trimmed}")
    };
    if abs == "/" {
        return ("/".into(), String::new());
    }
    let (parent, name) = abs.rsplit_once('/').unwrap_or(("", &abs));
    let parent = if parent.is_empty() { "/" } else { parent };
    (parent.to_string(), name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn testbed_paths_split() {
        assert_eq!(split_testbed_path("/a/b/c"), ("/a/b".into(), "c".into()));
        assert_eq!(split_testbed_path("/a/b/"), ("/a".into(), "b".into()));
        assert_eq!(split_testbed_path("/top"), ("/".into(), "top".into()));
        assert_eq!(split_testbed_path("/"), ("/".into(), "".into()));
        assert_eq!(split_testbed_path("rel/x"), ("/rel".into(), "x".into()));
    }
}
