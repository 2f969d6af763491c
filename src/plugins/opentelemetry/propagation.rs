//! Trace context on the wire: reading the formats a client may send (W3C `traceparent`, Zipkin
//! B3 multi and single header, Jaeger `uber-trace-id`, OpenTracing `ot-tracer-*`) and writing
//! them for the upstream, with Kong's rules for which format is read and which are written.

use std::fmt::Write as _;

use crate::plugin_api::{HeaderMap, HeaderName, RequestCtx};

// The headers injected into the upstream request, made at compile time (one set per request).
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const X_B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");
const X_B3_SPANID: HeaderName = HeaderName::from_static("x-b3-spanid");
const X_B3_PARENTSPANID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
const X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const B3: HeaderName = HeaderName::from_static("b3");
const UBER_TRACE_ID: HeaderName = HeaderName::from_static("uber-trace-id");
const OT_TRACER_TRACEID: HeaderName = HeaderName::from_static("ot-tracer-traceid");
const OT_TRACER_SPANID: HeaderName = HeaderName::from_static("ot-tracer-spanid");
const OT_TRACER_SAMPLED: HeaderName = HeaderName::from_static("ot-tracer-sampled");

/// A header format Kong's propagation knows that this build reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// W3C Trace Context (`traceparent`).
    W3c,
    /// Zipkin B3, multi-header (`x-b3-*`); reading it also reads the single `b3` header.
    B3,
    /// Zipkin B3, single header (`b3`).
    B3Single,
    /// Jaeger (`uber-trace-id`).
    Jaeger,
    /// OpenTracing (`ot-tracer-*`).
    Ot,
}

impl Format {
    /// The format of Kong's name, or `None` for one this build does not offer.
    pub fn named(name: &str) -> Option<Self> {
        Some(match name {
            "w3c" => Self::W3c,
            "b3" => Self::B3,
            "b3-single" => Self::B3Single,
            "jaeger" => Self::Jaeger,
            "ot" => Self::Ot,
            _ => return None,
        })
    }
}

/// Every format Kong can read, in Kong's order, less those this build does not offer.
pub const EXTRACT_ALL: &[Format] = &[Format::B3, Format::W3c, Format::Jaeger, Format::Ot];

/// Kong's format names that this build refuses: it neither reads nor writes them.
pub const UNSUPPORTED: &[&str] = &["aws", "gcp", "datadog", "instana"];

/// One entry of `inject`: a format, or the one the request came with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inject {
    /// The format the context was read from, else the default format.
    Preserve,
    /// Always this format.
    Format(Format),
}

/// Which formats are read, cleared and written for a request.
#[derive(Debug, Clone)]
pub struct Propagation {
    /// Tried in order; the first that yields a context wins.
    pub extract: Vec<Format>,
    /// Headers removed from the upstream request once read.
    pub clear: Vec<HeaderName>,
    /// Formats written to the upstream request.
    pub inject: Vec<Inject>,
    /// What `preserve` writes when nothing was read.
    pub default_format: Format,
}

/// A trace context read from a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extracted {
    /// The trace id, left-padded to 16 bytes.
    pub trace_id: Option<[u8; 16]>,
    /// Whether the trace id came as 8 bytes (B3, Jaeger and OT write it back that way).
    pub short_trace_id: bool,
    /// The caller's span: the parent of the gateway's span.
    pub span_id: Option<[u8; 8]>,
    /// The caller's sampling decision.
    pub sampled: Option<bool>,
    /// B3's debug flag.
    pub debug: bool,
    /// The B3 context came in the single `b3` header.
    pub single_header: bool,
}

/// Reads the first context `formats` find in `headers`, with the format it came in.
pub fn extract(headers: &HeaderMap, formats: &[Format]) -> Option<(Format, Extracted)> {
    formats.iter().find_map(|f| {
        let found = match f {
            Format::W3c => w3c(headers),
            Format::B3 | Format::B3Single => b3(headers),
            Format::Jaeger => jaeger(headers),
            Format::Ot => ot(headers),
        };
        found.map(|e| (*f, e))
    })
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Hex of at most `N` bytes, left-padded with zeros (Kong's `to_id_size`); `None` for other text.
fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if !is_hex(s) || s.len() > 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    let digits: Vec<u8> = s
        .bytes()
        .map(|b| match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => b - b'A' + 10,
        })
        .collect();
    // Right-aligned: the last digit is the low nibble of the last byte.
    for (i, d) in digits.iter().rev().enumerate() {
        let byte = N - 1 - i / 2;
        out[byte] |= if i % 2 == 0 { *d } else { d << 4 };
    }
    Some(out)
}

fn nonzero(id: &[u8]) -> bool {
    id.iter().any(|b| *b != 0)
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, ids not all zero.
fn w3c(headers: &HeaderMap) -> Option<Extracted> {
    let value = header(headers, "traceparent")?;
    let mut parts = value.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || version != "00" || trace.len() != 32 || parent.len() != 16 {
        return None;
    }
    if flags.len() != 2 || !is_hex(flags) {
        return None;
    }
    let trace_id = from_hex::<16>(trace).filter(|t| nonzero(t))?;
    let span_id = from_hex::<8>(parent).filter(|s| nonzero(s))?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(Extracted {
        trace_id: Some(trace_id),
        span_id: Some(span_id),
        sampled: Some(flags & 1 == 1),
        ..Extracted::default()
    })
}

/// A B3 trace id: 16 or 32 hex digits.
fn b3_trace_id(s: &str) -> Option<([u8; 16], bool)> {
    matches!(s.len(), 16 | 32)
        .then(|| from_hex::<16>(s))
        .flatten()
        .map(|id| (id, s.len() == 16))
}

fn b3_span_id(s: &str) -> Option<[u8; 8]> {
    (s.len() == 16).then(|| from_hex::<8>(s)).flatten()
}

/// The single header (`b3`, or a `b3=` entry of `tracestate`), then the `x-b3-*` headers for
/// what it left open. A B3 context is found whenever one of its headers is there, even without a
/// trace id (a bare sampling decision). Kong also counts any `tracestate` as a B3 header, so a
/// W3C caller's `tracestate` hides its `traceparent` from `preserve`; here only a `b3=` entry
/// does.
fn b3(headers: &HeaderMap) -> Option<Extracted> {
    const NAMES: &[&str] = &[
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
        "x-b3-sampled",
        "x-b3-flags",
    ];
    let single = header(headers, "b3").or_else(|| {
        headers
            .get_all("tracestate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.strip_prefix("b3="))
    });
    if single.is_none() && !NAMES.iter().any(|n| headers.contains_key(*n)) {
        return None;
    }
    let mut out = Extracted::default();
    if let Some(single) = single {
        out.single_header = true;
        read_b3_single(single, &mut out);
    }
    let sampled = match header(headers, "x-b3-sampled") {
        Some("1" | "true") => Some(true),
        Some("0" | "false") => Some(false),
        _ => None,
    };
    let debug = header(headers, "x-b3-flags") == Some("1");
    out.sampled = out.sampled.or(if debug { Some(true) } else { sampled });
    out.debug |= debug;
    let trace = header(headers, "x-b3-traceid");
    let span = header(headers, "x-b3-spanid");
    let parent = header(headers, "x-b3-parentspanid");
    let multi_valid = trace.is_none_or(|t| b3_trace_id(t).is_some())
        && span.is_none_or(|s| b3_span_id(s).is_some())
        && parent.is_none_or(|p| b3_span_id(p).is_some());
    if multi_valid && out.trace_id.is_none() {
        if let Some((id, short)) = trace.and_then(b3_trace_id) {
            out.trace_id = Some(id);
            out.short_trace_id = short;
            out.span_id = span.and_then(b3_span_id);
        }
    }
    if out.trace_id.is_none() {
        out.span_id = None;
    }
    Some(out)
}

/// `<trace id>-<span id>[-<sampled>[-<parent id>]]`, or a bare `0`, `1` or `d`.
fn read_b3_single(value: &str, out: &mut Extracted) {
    match value {
        "0" => out.sampled = Some(false),
        "1" => out.sampled = Some(true),
        "d" => {
            out.sampled = Some(true);
            out.debug = true;
        }
        _ => {
            let mut parts = value.split('-');
            let ids = parts
                .next()
                .and_then(b3_trace_id)
                .zip(parts.next().and_then(b3_span_id));
            let sampled = parts.next().unwrap_or("");
            let parent = parts.next().unwrap_or("");
            let valid = matches!(sampled, "" | "0" | "1" | "d")
                && (parent.is_empty() || b3_span_id(parent).is_some())
                && parts.next().is_none();
            if let (Some(((trace, short), span)), true) = (ids, valid) {
                out.trace_id = Some(trace);
                out.short_trace_id = short;
                out.span_id = Some(span);
                out.sampled = match sampled {
                    "0" => Some(false),
                    "1" | "d" => Some(true),
                    _ => None,
                };
                out.debug = sampled == "d";
            }
        }
    }
}

/// `<trace id>:<span id>:<parent id>:<flags>`.
fn jaeger(headers: &HeaderMap) -> Option<Extracted> {
    let value = header(headers, "uber-trace-id")?;
    let mut parts = value.split(':');
    let (trace, span, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !is_hex(parent) || !matches!(flags.len(), 1 | 2) {
        return None;
    }
    let trace_id = from_hex::<16>(trace).filter(|t| nonzero(t))?;
    let span_id = from_hex::<8>(span).filter(|s| nonzero(s))?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(Extracted {
        trace_id: Some(trace_id),
        short_trace_id: trace.len() <= 16,
        span_id: Some(span_id),
        sampled: Some(flags & 1 == 1),
        ..Extracted::default()
    })
}

/// `ot-tracer-traceid`, `ot-tracer-spanid`, `ot-tracer-sampled`.
fn ot(headers: &HeaderMap) -> Option<Extracted> {
    let trace = header(headers, "ot-tracer-traceid");
    let span = header(headers, "ot-tracer-spanid");
    let sampled = header(headers, "ot-tracer-sampled");
    if trace.is_none() && span.is_none() && sampled.is_none() {
        return None;
    }
    let mut out = Extracted {
        sampled: match sampled {
            Some("1" | "true") => Some(true),
            Some("0" | "false") => Some(false),
            _ => None,
        },
        ..Extracted::default()
    };
    let trace = trace.map(b3_trace_id);
    let span = span.map(b3_span_id);
    let valid = !matches!(trace, Some(None)) && !matches!(span, Some(None));
    if let (true, Some(Some((id, short)))) = (valid, trace) {
        out.trace_id = Some(id);
        out.short_trace_id = short;
        out.span_id = span.flatten();
    }
    Some(out)
}

/// What the gateway writes upstream: its trace, the span the upstream's work is a child of, and
/// that span's parent.
pub struct Outgoing {
    /// The trace id (16 bytes).
    pub trace_id: [u8; 16],
    /// The trace id came as 8 bytes.
    pub short_trace_id: bool,
    /// The gateway's CLIENT span: the upstream's parent.
    pub span_id: [u8; 8],
    /// The gateway's SERVER span: the CLIENT span's parent.
    pub parent_id: [u8; 8],
    /// The sampling decision.
    pub sampled: bool,
    /// B3's debug flag, passed on.
    pub debug: bool,
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The trace id in hex, 32 digits (W3C, OTLP) or 16 for a format that keeps an 8-byte id.
fn trace_hex(out: &Outgoing, keeps_short: bool) -> String {
    if keeps_short && out.short_trace_id {
        hex(&out.trace_id[8..])
    } else {
        hex(&out.trace_id)
    }
}

/// Writes the context in `format` to the upstream request.
pub fn inject(format: Format, out: &Outgoing, ctx: &mut RequestCtx) {
    let span = hex(&out.span_id);
    let parent = hex(&out.parent_id);
    let sampled = if out.sampled { "1" } else { "0" };
    match format {
        Format::W3c => {
            let flags = if out.sampled { "01" } else { "00" };
            let value = format!("00-{}-{span}-{flags}", hex(&out.trace_id));
            ctx.set_upstream(&TRACEPARENT, &value);
        }
        Format::B3 => {
            ctx.set_upstream(&X_B3_TRACEID, &trace_hex(out, true));
            ctx.set_upstream(&X_B3_SPANID, &span);
            ctx.set_upstream(&X_B3_PARENTSPANID, &parent);
            if out.debug {
                ctx.set_upstream(&X_B3_FLAGS, "1");
            } else {
                ctx.set_upstream(&X_B3_SAMPLED, sampled);
            }
        }
        Format::B3Single => {
            let flag = if out.debug { "d" } else { sampled };
            let value = format!("{}-{span}-{flag}-{parent}", trace_hex(out, true));
            ctx.set_upstream(&B3, &value);
        }
        Format::Jaeger => {
            let flags = if out.sampled { "01" } else { "00" };
            let value = format!("{}:{span}:{parent}:{flags}", trace_hex(out, true));
            ctx.set_upstream(&UBER_TRACE_ID, &value);
        }
        Format::Ot => {
            ctx.set_upstream(&OT_TRACER_TRACEID, &trace_hex(out, true));
            ctx.set_upstream(&OT_TRACER_SPANID, &span);
            ctx.set_upstream(&OT_TRACER_SAMPLED, sampled);
        }
    }
}

/// Kong's trace-id sampler: sampled when the trace id's first 8 bytes, read as a little-endian
/// number (Kong casts them to a `uint64_t` on x86), fall below `rate` of their range, so every
/// gateway of a trace, Kong's included, decides alike.
pub fn sampled_by_rate(trace_id: &[u8; 16], rate: f64) -> bool {
    if rate >= 1.0 {
        return true;
    }
    if rate <= 0.0 {
        return false;
    }
    let mut first = [0u8; 8];
    first.copy_from_slice(&trace_id[..8]);
    #[expect(
        clippy::cast_precision_loss,
        reason = "a probability bound; 53 bits of precision are plenty"
    )]
    let bound = rate * u64::MAX as f64;
    #[expect(
        clippy::cast_precision_loss,
        reason = "compared against a probability bound"
    )]
    let value = u64::from_le_bytes(first) as f64;
    value < bound
}

/// Hex of an id, for span ids in logs and the trace id response header.
pub fn to_hex(bytes: &[u8]) -> String {
    hex(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin_api::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    const SPAN: &str = "b7ad6b7169203331";

    #[test]
    fn w3c_traceparent_is_read_with_its_sampled_flag() {
        let h = headers(&[(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )]);
        let (f, e) = extract(&h, EXTRACT_ALL).unwrap();
        assert_eq!(f, Format::W3c);
        assert_eq!(to_hex(&e.trace_id.unwrap()), TRACE);
        assert_eq!(to_hex(&e.span_id.unwrap()), SPAN);
        assert_eq!(e.sampled, Some(true));
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        for bad in [
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b71692033zz-01",
            "garbage",
        ] {
            let mut h = HeaderMap::new();
            h.insert("traceparent", HeaderValue::from_str(bad).unwrap());
            assert_eq!(extract(&h, &[Format::W3c]), None, "{bad}");
        }
    }

    #[test]
    fn b3_multi_and_single_headers_are_read() {
        let h = headers(&[
            ("x-b3-traceid", "80f198ee56343ba8"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "0"),
        ]);
        let (f, e) = extract(&h, EXTRACT_ALL).unwrap();
        assert_eq!(f, Format::B3);
        assert!(e.short_trace_id);
        assert_eq!(
            to_hex(&e.trace_id.unwrap()),
            "000000000000000080f198ee56343ba8"
        );
        assert_eq!(to_hex(&e.span_id.unwrap()), "e457b5a2e4d86bd1");
        assert_eq!(e.sampled, Some(false));

        let h = headers(&[("b3", "0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-d")]);
        let (_, e) = extract(&h, EXTRACT_ALL).unwrap();
        assert!(e.single_header && e.debug && !e.short_trace_id);
        assert_eq!(to_hex(&e.trace_id.unwrap()), TRACE);
        assert_eq!(e.sampled, Some(true));

        let h = headers(&[("b3", "0")]);
        let (_, e) = extract(&h, EXTRACT_ALL).unwrap();
        assert_eq!((e.trace_id, e.sampled), (None, Some(false)));
    }

    #[test]
    fn a_w3c_tracestate_is_not_a_b3_context() {
        let h = headers(&[
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("tracestate", "vendor=opaque"),
        ]);
        let (f, _) = extract(&h, EXTRACT_ALL).unwrap();
        assert_eq!(f, Format::W3c);
        let h = headers(&[(
            "tracestate",
            "b3=0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
        )]);
        let (f, e) = extract(&h, EXTRACT_ALL).unwrap();
        assert_eq!(f, Format::B3);
        assert_eq!(to_hex(&e.trace_id.unwrap()), TRACE);
    }

    #[test]
    fn jaeger_and_ot_headers_are_read() {
        let h = headers(&[(
            "uber-trace-id",
            "0af7651916cd43dd8448eb211c80319c:b7ad6b7169203331:0:1",
        )]);
        let (f, e) = extract(&h, EXTRACT_ALL).unwrap();
        assert_eq!(f, Format::Jaeger);
        assert_eq!(to_hex(&e.trace_id.unwrap()), TRACE);
        assert_eq!(e.sampled, Some(true));

        let h = headers(&[
            ("ot-tracer-traceid", "0af7651916cd43dd8448eb211c80319c"),
            ("ot-tracer-spanid", "b7ad6b7169203331"),
            ("ot-tracer-sampled", "1"),
        ]);
        let (f, e) = extract(&h, EXTRACT_ALL).unwrap();
        assert_eq!(f, Format::Ot);
        assert_eq!(to_hex(&e.span_id.unwrap()), SPAN);
    }

    #[test]
    fn the_sampler_follows_the_rate_over_the_trace_id() {
        let low = [0u8; 16];
        let high = [0xffu8; 16];
        assert!(sampled_by_rate(&low, 0.5));
        assert!(!sampled_by_rate(&high, 0.5));
        assert!(sampled_by_rate(&high, 1.0));
        assert!(!sampled_by_rate(&low, 0.0));
        // Kong's exporter spec: at 0.5 the first is always sampled, the second never.
        let kong_sampled = from_hex::<16>("92a54b3e1a7c4f2da9e44b8a6f3e1dab").unwrap();
        let kong_not_sampled = from_hex::<16>("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        assert!(sampled_by_rate(&kong_sampled, 0.5));
        assert!(!sampled_by_rate(&kong_not_sampled, 0.5));
    }
}
