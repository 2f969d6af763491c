//! The `Basic` client authentication of RFC 6749 §2.3.1: the scheme (RFC 7617) at the start of
//! the header, base64 of `client_id:client_secret`, each form-urlencoded before encoding.

use base64::alphabet::STANDARD;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;

/// Standard alphabet, padding optional (clients differ; the meaning is the same).
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Credentials read from a `Basic` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicCredentials {
    /// The client_id, form-urldecoded.
    pub client_id: String,
    /// The secret, form-urldecoded; `None` when the decoded value has no `:` (a public client
    /// naming itself).
    pub client_secret: Option<String>,
}

/// A header that uses the `Basic` scheme but cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedBasic;

/// Reads a header value: `None` when it does not use the `Basic` scheme (a bearer token, say),
/// `Some(Err)` when it does but its credentials cannot be decoded.
pub fn parse(header: &str) -> Option<Result<BasicCredentials, MalformedBasic>> {
    let header = header.trim_start_matches([' ', '\t']);
    let (scheme, rest) = header.split_once([' ', '\t']).unwrap_or((header, ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    Some(decode(rest.trim_matches([' ', '\t'])))
}

fn decode(token: &str) -> Result<BasicCredentials, MalformedBasic> {
    if token.is_empty() {
        return Err(MalformedBasic);
    }
    let bytes = LENIENT.decode(token).map_err(|_| MalformedBasic)?;
    let text = String::from_utf8(bytes).map_err(|_| MalformedBasic)?;
    let (id, secret) = match text.split_once(':') {
        Some((id, secret)) => (id, Some(secret)),
        None => (text.as_str(), None),
    };
    Ok(BasicCredentials {
        client_id: form_decode(id)?,
        client_secret: secret.map(form_decode).transpose()?,
    })
}

/// `application/x-www-form-urlencoded` decoding of one value: `+` is a space, `%XX` a byte.
fn form_decode(value: &str) -> Result<String, MalformedBasic> {
    let spaced = value.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(std::borrow::Cow::into_owned)
        .map_err(|_| MalformedBasic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD as B64;
    use proptest::prelude::*;

    fn creds(id: &str, secret: Option<&str>) -> BasicCredentials {
        BasicCredentials {
            client_id: id.into(),
            client_secret: secret.map(Into::into),
        }
    }

    #[test]
    fn reads_the_scheme_only_at_the_start() {
        let value = format!("Basic {}", B64.encode("id:secret"));
        assert_eq!(parse(&value), Some(Ok(creds("id", Some("secret")))));
        let lower = format!("basic  {}", B64.encode("id:secret"));
        assert_eq!(parse(&lower), Some(Ok(creds("id", Some("secret")))));
        assert_eq!(parse(&format!("Bearer basic {}", B64.encode("id:s"))), None);
        assert_eq!(parse("Basically aWQ6cw=="), None);
        assert_eq!(parse("Basic"), Some(Err(MalformedBasic)));
        assert_eq!(parse("Basic !!!"), Some(Err(MalformedBasic)));
        assert_eq!(parse("Basic aWQ6cw== extra"), Some(Err(MalformedBasic)));
    }

    #[test]
    fn values_are_form_urldecoded() {
        let value = format!("Basic {}", B64.encode("my%20app:p%3Ass+word"));
        assert_eq!(parse(&value), Some(Ok(creds("my app", Some("p:ss word")))));
        let bad = format!("Basic {}", B64.encode("id:%ff"));
        assert_eq!(parse(&bad), Some(Err(MalformedBasic)));
    }

    #[test]
    fn no_colon_is_an_id_without_secret_and_padding_is_optional() {
        assert_eq!(
            parse("Basic Y2xpZW50aWQxMTIxMQ=="),
            Some(Ok(creds("clientid11211", None)))
        );
        assert_eq!(
            parse("Basic Y2xpZW50aWQxMTIxMQ"),
            Some(Ok(creds("clientid11211", None)))
        );
        assert_eq!(
            parse("Basic Y2xpZW50aWQxMTIxMTo="),
            Some(Ok(creds("clientid11211", Some(""))))
        );
    }

    fn form_encode(s: &str) -> String {
        url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Whatever a client encodes as the RFC says comes back exactly.
        #[test]
        fn encoded_credentials_round_trip(id in "\\PC*", secret in "\\PC*") {
            let raw = format!("{}:{}", form_encode(&id), form_encode(&secret));
            let value = format!("Basic {}", B64.encode(raw));
            prop_assert_eq!(parse(&value), Some(Ok(creds(&id, Some(&secret)))));
        }

        /// No header value makes the parser panic, and only the Basic scheme is read.
        #[test]
        fn any_header_is_answered(value in "\\PC*") {
            let result = parse(&value);
            let basic = value
                .trim_start_matches([' ', '\t'])
                .split([' ', '\t'])
                .next()
                .is_some_and(|s| s.eq_ignore_ascii_case("basic"));
            prop_assert_eq!(result.is_some(), basic);
        }
    }
}
