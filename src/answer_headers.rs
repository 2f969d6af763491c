//! Headers plugins add to the answer the client gets, whoever made it (`rate-limiting`'s
//! `RateLimit-*` on every answer), kept as ready-made HTTP/1 header lines.
//!
//! Inserting a header into an answer's `HeaderMap` hashes its name byte by byte, may grow the
//! map, and the server encodes it from there again: with `rate-limiting`'s five headers that was
//! about a tenth of a proxied request's instructions. Written once as `name: value\r\n` lines,
//! an HTTP/1 server copies them as they are (the vendored hyper's `HeaderBlock`); HTTP/2 answers,
//! and answers whose headers a log phase reads, get them in the map as before
//! ([`AnswerHeaders::insert_into`]). A leaf: it knows header names and values, not the server.

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use smallvec::SmallVec;

/// Headers for the client's answer, each replacing a header of the same name the upstream sent
/// (Kong's `kong.response.set_header`). Empty, and without an allocation, until a plugin sets one.
#[derive(Default)]
pub struct AnswerHeaders {
    /// `name: value\r\n` lines, names lower-case (as `HeaderName` keeps them).
    lines: BytesMut,
    /// Where each line's name ends and its line ends in `lines`, in order.
    spans: SmallVec<[Span; 6]>,
    /// Bit `len % 64` set for each name's length: a name whose bit is clear is not here, which
    /// spares most lookups their scan (answer headers rarely share a length with these).
    lengths: u64,
}

/// One line of [`AnswerHeaders::lines`]: `start..name_end` is the name, `name_end + 2..end - 2`
/// the value.
#[derive(Clone, Copy)]
struct Span {
    start: usize,
    name_end: usize,
    end: usize,
}

impl AnswerHeaders {
    /// Sets `name` to `value`, replacing an earlier value this request set for it.
    pub fn set(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.put(name, value.as_bytes());
    }

    /// Sets `name` to the decimal digits of `n`, without making a `HeaderValue`.
    pub fn set_count(&mut self, name: &HeaderName, n: u64) {
        let mut digits = itoa::Buffer::new();
        self.put(name, digits.format(n).as_bytes());
    }

    /// Whether no header was set.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The headers set, in order, as (name, value) bytes.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans.iter().map(|s| {
            (
                &self.lines[s.start..s.name_end],
                &self.lines[s.name_end + 2..s.end - 2],
            )
        })
    }

    /// Inserts the headers into `headers`, replacing those of the same names. Names and values
    /// are parsed again from the lines: this path (HTTP/2, a log phase reading the headers) pays
    /// for it so that the HTTP/1 path keeps no `HeaderName` per line (keeping them cost that path
    /// ~480 instructions per request with `rate-limiting`'s five headers).
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        headers.reserve(self.spans.len());
        for (name, value) in self.iter() {
            // Made from a `HeaderName` and a `HeaderValue` (or digits): both parse again.
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            {
                headers.insert(name, value);
            }
        }
    }

    /// The headers as HTTP/1 header lines for a server to write beside `headers`' own (hyper's
    /// `HeaderBlock` goes out before the map's); headers of the same names are removed from
    /// `headers` first, so each name is sent once.
    pub fn into_lines(self, headers: &mut HeaderMap) -> Bytes {
        // One pass over the answer's few names, comparing lengths first and bytes when they
        // match: no hashing unless one clashes.
        let clashes = headers
            .keys()
            .any(|k| self.position(k.as_str().as_bytes()).is_some());
        if clashes {
            for (name, _) in self.iter() {
                if let Ok(name) = HeaderName::from_bytes(name) {
                    headers.remove(name);
                }
            }
        }
        self.lines.freeze()
    }

    /// Which line sets `name`.
    fn position(&self, name: &[u8]) -> Option<usize> {
        if self.lengths & length_bit(name.len()) == 0 {
            return None;
        }
        self.spans.iter().position(|s| {
            s.name_end - s.start == name.len() && self.lines[s.start..s.name_end] == *name
        })
    }

    fn put(&mut self, name: &HeaderName, value: &[u8]) {
        let name = name.as_str().as_bytes();
        if let Some(at) = self.position(name) {
            self.remove(at);
        }
        let start = self.lines.len();
        let name_end = start + name.len();
        let end = name_end + 2 + value.len() + 2;
        if self.lines.capacity() == 0 {
            // Room for `rate-limiting`'s five headers in one allocation.
            self.lines.reserve(192.max(end));
        } else {
            self.lines.reserve(end - start);
        }
        self.lines.extend_from_slice(name);
        self.lines.extend_from_slice(b": ");
        self.lines.extend_from_slice(value);
        self.lines.extend_from_slice(b"\r\n");
        self.spans.push(Span {
            start,
            name_end,
            end,
        });
        self.lengths |= length_bit(name.len());
    }

    /// Drops line `at`, moving the later ones down.
    fn remove(&mut self, at: usize) {
        let Span { start, end, .. } = self.spans.remove(at);
        let len = end - start;
        self.lines.copy_within(end.., start);
        self.lines.truncate(self.lines.len() - len);
        for s in &mut self.spans[at..] {
            s.start -= len;
            s.name_end -= len;
            s.end -= len;
        }
        self.lengths = self
            .spans
            .iter()
            .fold(0, |bits, s| bits | length_bit(s.name_end - s.start));
    }
}

/// A name length's bit in [`AnswerHeaders::lengths`].
fn length_bit(len: usize) -> u64 {
    1 << (len % 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: HeaderName = HeaderName::from_static("x-a");
    const B: HeaderName = HeaderName::from_static("ratelimit-remaining");

    #[test]
    fn headers_become_lines_in_order() {
        let mut h = AnswerHeaders::default();
        assert!(h.is_empty());
        h.set(&A, &HeaderValue::from_static("one"));
        h.set_count(&B, 42);
        assert!(!h.is_empty());
        let mut map = HeaderMap::new();
        map.insert("content-type", HeaderValue::from_static("text/plain"));
        assert_eq!(
            &h.into_lines(&mut map)[..],
            b"x-a: one\r\nratelimit-remaining: 42\r\n"
        );
        assert_eq!(map.len(), 1, "an unrelated header stays");
    }

    #[test]
    fn a_header_set_again_keeps_only_its_last_value() {
        let mut h = AnswerHeaders::default();
        h.set_count(&A, 1);
        h.set_count(&B, 2);
        h.set_count(&A, 3);
        let pairs: Vec<_> = h.iter().map(|(n, v)| (n.to_vec(), v.to_vec())).collect();
        assert_eq!(
            pairs,
            [
                (b"ratelimit-remaining".to_vec(), b"2".to_vec()),
                (b"x-a".to_vec(), b"3".to_vec())
            ]
        );
        assert_eq!(
            &h.into_lines(&mut HeaderMap::new())[..],
            b"ratelimit-remaining: 2\r\nx-a: 3\r\n"
        );
    }

    #[test]
    fn names_of_one_length_or_lengths_64_apart_are_told_apart() {
        let long = HeaderName::from_bytes(&[b'x'; 67]).unwrap();
        let mut h = AnswerHeaders::default();
        h.set_count(&A, 1);
        h.set_count(&HeaderName::from_static("x-b"), 2);
        h.set_count(&long, 3);
        h.set_count(&A, 4);
        let names: Vec<_> = h.iter().map(|(n, v)| (n.len(), v.to_vec())).collect();
        assert_eq!(
            names,
            [(3, b"2".to_vec()), (67, b"3".to_vec()), (3, b"4".to_vec())]
        );
        let mut map = HeaderMap::new();
        map.insert("x-c", HeaderValue::from_static("kept"));
        map.insert(&long, HeaderValue::from_static("replaced"));
        h.into_lines(&mut map);
        assert_eq!(map.len(), 1);
        assert_eq!(map["x-c"], "kept");
    }

    #[test]
    fn the_upstreams_header_of_the_same_name_is_replaced() {
        let mut h = AnswerHeaders::default();
        h.set_count(&B, 7);
        let mut map = HeaderMap::new();
        map.append(&B, HeaderValue::from_static("99"));
        map.append(&B, HeaderValue::from_static("98"));
        map.insert("x-other", HeaderValue::from_static("kept"));
        let lines = h.into_lines(&mut map);
        assert_eq!(&lines[..], b"ratelimit-remaining: 7\r\n");
        assert!(map.get(&B).is_none());
        assert_eq!(map["x-other"], "kept");
    }

    #[test]
    fn in_a_map_they_replace_too() {
        let mut h = AnswerHeaders::default();
        h.set(&A, &HeaderValue::from_static("mine"));
        h.set_count(&B, 0);
        let mut map = HeaderMap::new();
        map.insert(&A, HeaderValue::from_static("upstream's"));
        h.insert_into(&mut map);
        assert_eq!(map.get_all(&A).iter().collect::<Vec<_>>(), ["mine"]);
        assert_eq!(map[&B], "0");
    }
}
