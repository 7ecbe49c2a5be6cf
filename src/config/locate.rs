//! Where in the file a problem is: `line:column` for a key path such as
//! `upstream[1].url` or `server.auth.tokens_file`, and the path of a byte offset. Config
//! files are short and hand-written, so a line scan of table headers (`[a.b]`,
//! `[[upstream]]`) and `key =` lines is enough, and works on text that does not parse.

/// 1-based line and column of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

/// The table path in force at `line` (1-based): `upstream[1]`, `server.auth`, or empty.
pub fn table_at(text: &str, line: usize) -> String {
    let mut path = String::new();
    let mut arrays: Vec<(String, usize)> = Vec::new();
    for current in text.lines().take(line.saturating_sub(1)) {
        if let Some(header) = header(current) {
            path = match header {
                Header::Table(name) => name,
                Header::Array(name) => {
                    let index = match arrays.iter_mut().find(|(n, _)| *n == name) {
                        Some((_, count)) => {
                            *count += 1;
                            *count - 1
                        }
                        None => {
                            arrays.push((name.clone(), 1));
                            0
                        }
                    };
                    format!("{name}[{index}]")
                }
            };
        }
    }
    path
}

/// Where `path` (`upstream[1].url`, `cluster.members`, `listen`) is written: its key's
/// line, or its table's header when the key is missing.
pub fn find(text: &str, path: &str) -> Option<(usize, usize)> {
    let path = path.split(' ').next().unwrap_or(path);
    let (table, key) = match path.rsplit_once('.') {
        Some((table, key)) => (table, key.split('[').next().unwrap_or(key)),
        None => ("", path.split('[').next().unwrap_or(path)),
    };
    let mut header_line = None;
    for (n, line) in text.lines().enumerate() {
        let here = table_at(text, n + 1);
        if header(line).is_some() {
            if table_at(text, n + 2) == table {
                header_line = header_line.or(Some((n + 1, 1)));
            }
            continue;
        }
        let trimmed = line.trim_start();
        let written = trimmed
            .split('=')
            .next()
            .map(|k| k.trim().trim_matches('"'))
            .filter(|_| trimmed.contains('='));
        if here == table && written == Some(key) {
            return Some((n + 1, line.len() - trimmed.len() + 1));
        }
    }
    header_line
}

enum Header {
    Table(String),
    Array(String),
}

fn header(line: &str) -> Option<Header> {
    let line = line.split('#').next().unwrap_or("").trim();
    let clean = |name: &str| name.trim().replace(['"', ' '], "");
    if let Some(inner) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
        return Some(Header::Array(clean(inner)));
    }
    let inner = line.strip_prefix('[').and_then(|l| l.strip_suffix(']'))?;
    Some(Header::Table(clean(inner)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "listen = \"x\"\n[server.auth]\ntokens_file = \"t\"\n[[upstream]]\nurl = \"a\"\n[[upstream]]\n  url = \"b\"\n[cluster]\n";

    #[test]
    fn paths_are_found_by_table_and_key() {
        assert_eq!(find(TEXT, "listen"), Some((1, 1)));
        assert_eq!(find(TEXT, "server.auth.tokens_file"), Some((3, 1)));
        assert_eq!(find(TEXT, "upstream[1].url"), Some((7, 3)));
        assert_eq!(find(TEXT, "upstream[0].url"), Some((5, 1)));
        // A missing key points at its table.
        assert_eq!(find(TEXT, "cluster.secret_file"), Some((8, 1)));
        assert_eq!(table_at(TEXT, 7), "upstream[1]");
        assert_eq!(line_col(TEXT, 13), (2, 1));
    }
}
