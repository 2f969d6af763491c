//! The PROXY protocol (HAProxy's, versions 1 and 2), read off a connection before TLS and HTTP
//! on listeners with Kong's `proxy_protocol` flag: a load balancer in front of the gateway says
//! who its client is. The header is parsed by the `ppp` crate; this module only peeks at the
//! connection until a whole header is there, consumes exactly it, and decides which address
//! counts.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::{HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The longest header accepted: a v1 line is at most 107 bytes; v2 carries TLVs, which a load
/// balancer keeps small.
const MAX_HEADER: usize = 4096;

/// Why a connection on a `proxy_protocol` listener was closed before HTTP.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The connection did not start with a PROXY header (or a malformed one).
    #[error("no valid PROXY protocol header: {0}")]
    Invalid(String),
    /// The header did not arrive within the head timeout.
    #[error("PROXY protocol header timed out")]
    Timeout,
    /// The connection failed or closed while the header was read.
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads and consumes the PROXY header at the start of `stream`; returns the source address it
/// names (`None` for `UNKNOWN`/`LOCAL`, a health check of the balancer itself).
///
/// # Errors
/// [`ProxyHeaderError`]; the caller closes the connection.
pub async fn read_header(
    stream: &mut TcpStream,
    within: Duration,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    tokio::time::timeout(within, read(stream))
        .await
        .map_err(|_| ProxyHeaderError::Timeout)?
}

/// The v2 signature (12 bytes), then version/command, family/protocol and a 2-byte length.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 line's longest length (`PROXY TCP6 …\r\n`).
const V1_MAX: usize = 107;

/// Reads exactly the header: byte by byte up to CRLF for v1 (at most 107 bytes), the fixed part
/// and then the declared length for v2. Nothing after the header is read, so TLS and HTTP start
/// on the stream as it is.
async fn read(stream: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut buf = vec![0u8; 5];
    stream.read_exact(&mut buf).await?;
    if buf == b"PROXY" {
        while !buf.ends_with(b"\r\n") {
            if buf.len() >= V1_MAX {
                return Err(ProxyHeaderError::Invalid("v1 line too long".into()));
            }
            buf.push(stream.read_u8().await?);
        }
    } else if buf[..] == V2_SIGNATURE[..5] {
        buf.resize(16, 0);
        stream.read_exact(&mut buf[5..]).await?;
        let length = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if 16 + length > MAX_HEADER {
            return Err(ProxyHeaderError::Invalid("v2 header too long".into()));
        }
        buf.resize(16 + length, 0);
        stream.read_exact(&mut buf[16..]).await?;
    } else {
        return Err(ProxyHeaderError::Invalid(
            "the connection does not start with a PROXY header".into(),
        ));
    }
    match HeaderResult::parse(&buf) {
        parsed if parsed.is_incomplete() => {
            Err(ProxyHeaderError::Invalid("incomplete header".into()))
        }
        HeaderResult::V1(Ok(header)) => Ok(v1_source(&header.addresses)),
        HeaderResult::V2(Ok(header)) => Ok(v2_source(&header.addresses)),
        HeaderResult::V1(Err(e)) => Err(ProxyHeaderError::Invalid(e.to_string())),
        HeaderResult::V2(Err(e)) => Err(ProxyHeaderError::Invalid(e.to_string())),
    }
}

fn v1_source(addresses: &ppp::v1::Addresses) -> Option<SocketAddr> {
    match addresses {
        ppp::v1::Addresses::Tcp4(a) => {
            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        ppp::v1::Addresses::Tcp6(a) => {
            Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
        }
        ppp::v1::Addresses::Unknown => None,
    }
}

fn v2_source(addresses: &ppp::v2::Addresses) -> Option<SocketAddr> {
    match addresses {
        ppp::v2::Addresses::IPv4(a) => {
            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        ppp::v2::Addresses::IPv6(a) => {
            Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
        }
        ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
    }
}
