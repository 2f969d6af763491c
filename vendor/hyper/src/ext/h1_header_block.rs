// Portcullis patch (PATCH.md §3): the whole file.

use bytes::Bytes;

/// Header lines an HTTP/1 server writes verbatim into a response head, right after the status
/// line and before the headers of the response's `HeaderMap`.
///
/// An application that adds the same few headers to most responses (a rate limiter's counters)
/// can write them once as `name: value\r\n` lines instead of inserting each into the map, which
/// hashes the name, may grow the map, and is encoded again from there. HTTP/2 connections ignore
/// this extension: the application adds such headers to the map there.
///
/// # Servers
///
/// When a `HeaderBlock` is present in the extensions of the `http::Response` written by a server
/// over HTTP/1, its bytes are written as they are. The application must give only valid,
/// complete header lines (each a lower-case field name, `: `, a value without CR, LF or NUL, and
/// `\r\n`), none of them a header that frames the message (`Content-Length`,
/// `Transfer-Encoding`, `Connection`) or one the map also holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderBlock(Bytes);

impl HeaderBlock {
    /// Header lines as described on the type. Debug builds check the shape of each line.
    pub fn from_lines(lines: Bytes) -> Self {
        debug_assert!(
            well_formed(&lines),
            "a header block holds only complete `name: value\\r\\n` lines"
        );
        Self(lines)
    }

    /// The lines as they are written.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Whether `lines` is a sequence of `name: value\r\n` lines.
fn well_formed(mut lines: &[u8]) -> bool {
    while !lines.is_empty() {
        let Some(end) = lines.windows(2).position(|w| w == b"\r\n") else {
            return false;
        };
        let line = &lines[..end];
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return false;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty()
            || !name
                .iter()
                .all(|&b| b.is_ascii_graphic() && !b.is_ascii_uppercase())
            || value.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0))
        {
            return false;
        }
        lines = &lines[end + 2..];
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_complete_lines_are_well_formed() {
        assert!(well_formed(b""));
        assert!(well_formed(b"x-a: 1\r\nx-b: two\r\n"));
        assert!(!well_formed(b"x-a: 1"));
        assert!(!well_formed(b"X-A: 1\r\n"));
        assert!(!well_formed(b"x-a 1\r\n"));
        assert!(!well_formed(b": 1\r\n"));
        assert!(!well_formed(b"x-a: 1\nx-b: 2\r\n"));
    }
}
