//! Kong's configuration file format (`kong.conf`): one `key = value` per line, values unquoted,
//! `#` starting a comment (a whole line, or the rest of a line; `\#` is a literal `#`), blank lines
//! ignored. Read as Kong's `conf_loader` reads it; [`crate::config`] types the values as it types
//! environment variables.

/// One setting of the file.
#[derive(Debug, PartialEq, Eq)]
pub struct Line {
    /// The key, as written.
    pub key: String,
    /// The value, trimmed, its comment removed and `\#` unescaped.
    pub value: String,
}

/// The settings of `text`, in order.
///
/// # Errors
/// The number of the first line that is neither blank, a comment nor `key = value`.
pub fn parse(text: &str) -> Result<Vec<Line>, usize> {
    let mut lines = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(number);
        };
        let key = key.trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(number);
        }
        lines.push(Line {
            key: key.to_string(),
            value: without_comment(value),
        });
    }
    Ok(lines)
}

/// `value` up to its first unescaped `#`, trimmed, with `\#` turned into `#`.
fn without_comment(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'#') => {
                out.push('#');
                chars.next();
            }
            '#' => break,
            c => out.push(c),
        }
    }
    out.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(text: &str) -> Vec<(String, String)> {
        parse(text)
            .unwrap()
            .into_iter()
            .map(|l| (l.key, l.value))
            .collect()
    }

    #[test]
    fn reads_kong_s_lines() {
        let text = "# Kong's defaults are comments\n\
                    \n\
                    database = postgres        # the store\n\
                    pg_password = p\\#ss#word\n\
                    \tadmin_listen = 127.0.0.1:8001 reuseport backlog=16384, 127.0.0.1:8444 http2 ssl\n\
                    log_level=notice\n\
                    pg_host =\n";
        assert_eq!(
            pairs(text),
            [
                ("database", "postgres"),
                ("pg_password", "p#ss"),
                (
                    "admin_listen",
                    "127.0.0.1:8001 reuseport backlog=16384, 127.0.0.1:8444 http2 ssl"
                ),
                ("log_level", "notice"),
                ("pg_host", ""),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert_eq!(parse("database = postgres\npg_host\n"), Err(2));
        assert_eq!(parse("= value\n"), Err(1));
        assert_eq!(parse("pg host = x\n"), Err(1));
    }
}
