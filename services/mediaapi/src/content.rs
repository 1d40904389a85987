//! What media is served as: content types checked against the bytes,
//! inline display only for a few safe types, file names made harmless, and
//! the headers every media answer carries.

use axum::http::{HeaderMap, HeaderValue, header};

/// Types a browser may show inline when the bytes agree: images, audio
/// and video it renders without running anything, and plain text. Every
/// other type (HTML, SVG, PDF, scripts…) is served as an attachment.
const INLINE_TYPES: &[&str] = &[
    "text/css",
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wav",
    "audio/wave",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

/// Types whose bytes carry no magic number to check (text): taken inline
/// only when nothing binary is detected in them.
const TEXT_TYPES: &[&str] = &[
    "text/css",
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
];

/// The longest content type or file name kept.
const MAX_FIELD_BYTES: usize = 255;

/// The uploader's `Content-Type`, if it is one (`type/subtype` with
/// optional parameters, printable ASCII); the type and subtype lowercased.
pub(crate) fn declared_type(headers: &HeaderMap) -> Option<String> {
    type_of(headers.get(header::CONTENT_TYPE)?.to_str().ok()?)
}

/// A `Content-Type` value as [`declared_type`] takes it (another server's
/// too), or `None`.
pub(crate) fn type_of(value: &str) -> Option<String> {
    let value = value.trim();
    if value.is_empty() || value.len() > MAX_FIELD_BYTES {
        return None;
    }
    let (essence, params) = match value.split_once(';') {
        Some((essence, params)) => (essence.trim(), Some(params)),
        None => (value, None),
    };
    let (kind, subtype) = essence.split_once('/')?;
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    if !token(kind) || !token(subtype) {
        return None;
    }
    if params.is_some_and(|p| p.bytes().any(|b| b.is_ascii_control())) {
        return None;
    }
    let essence = format!(
        "{}/{}",
        kind.to_ascii_lowercase(),
        subtype.to_ascii_lowercase()
    );
    Some(match params {
        Some(params) => format!("{essence};{params}"),
        None => essence,
    })
}

/// `type/subtype` of a content type, without parameters.
fn essence(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or_default().trim()
}

/// The type the first bytes of a blob show, when they carry a known magic
/// number.
pub(crate) fn sniff(head: &[u8]) -> Option<&'static str> {
    infer::get(head).map(|kind| kind.mime_type())
}

/// Whether media may be shown inline: its declared type is a safe one and
/// its bytes agree (binary types by their magic number, text types by
/// carrying none).
pub(crate) fn inline(declared: Option<&str>, sniffed: Option<&str>) -> bool {
    let Some(declared) = declared.map(essence) else {
        return false;
    };
    if !INLINE_TYPES.contains(&declared) {
        return false;
    }
    if TEXT_TYPES.contains(&declared) {
        return sniffed.is_none();
    }
    match sniffed {
        Some(sniffed) => same_family(declared, sniffed),
        None => false,
    }
}

/// Whether a sniffed type confirms a declared one (magic numbers do not
/// tell every alias apart: `audio/x-wav` and `audio/wav`, MP4 audio and
/// video, APNG and PNG).
fn same_family(declared: &str, sniffed: &str) -> bool {
    if declared == sniffed {
        return true;
    }
    fn canonical(t: &str) -> &str {
        match t {
            "audio/wav" | "audio/wave" | "audio/x-wav" | "audio/x-pn-wav" => "audio/wav",
            "audio/flac" | "audio/x-flac" => "audio/flac",
            "image/apng" => "image/png",
            "audio/mp4" | "audio/m4a" | "audio/x-m4a" | "video/mp4" => "video/mp4",
            "video/quicktime" => "video/quicktime",
            "audio/webm" | "video/webm" => "video/webm",
            "audio/ogg" | "video/ogg" | "application/ogg" => "audio/ogg",
            other => other,
        }
    }
    canonical(declared) == canonical(sniffed)
}

/// A file name as a client gave it, made harmless: no control characters,
/// no path separators, at most 255 bytes; nothing left: none.
/// The file name another server's `Content-Disposition` gives, cleaned as
/// [`file_name`]: its `filename*` (RFC 8187, UTF-8) when there is one,
/// else its `filename`.
pub(crate) fn file_name_in_disposition(value: &str) -> Option<String> {
    let mut plain = None;
    let mut extended = None;
    for param in value.split(';').skip(1) {
        let Some((name, value)) = param.split_once('=') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "filename*" => {
                let Some((charset, rest)) = value.split_once('\'') else {
                    continue;
                };
                let Some((_language, encoded)) = rest.split_once('\'') else {
                    continue;
                };
                if charset.eq_ignore_ascii_case("utf-8")
                    && let Some(decoded) = percent_decode(encoded)
                {
                    extended = Some(decoded);
                }
            }
            "filename" => plain = Some(value.trim_matches('"').replace("\\\"", "\"")),
            _ => {}
        }
    }
    extended.or(plain).as_deref().and_then(file_name)
}

fn percent_decode(encoded: &str) -> Option<String> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

pub(crate) fn file_name(name: &str) -> Option<String> {
    let mut cleaned = String::with_capacity(name.len().min(MAX_FIELD_BYTES));
    for c in name.chars() {
        if c.is_control() || c == '/' || c == '\\' {
            continue;
        }
        if cleaned.len() + c.len_utf8() > MAX_FIELD_BYTES {
            break;
        }
        cleaned.push(c);
    }
    let cleaned = cleaned.trim();
    (!cleaned.is_empty() && cleaned != "." && cleaned != "..").then(|| cleaned.to_owned())
}

/// `Content-Disposition`: `inline` or `attachment`, with the file name as
/// RFC 6266 gives it (`filename*`, UTF-8 percent-encoded, and a plain
/// `filename` too when the name is plain ASCII).
pub(crate) fn disposition(inline: bool, name: Option<&str>) -> HeaderValue {
    let mut value = String::from(if inline { "inline" } else { "attachment" });
    if let Some(name) = name {
        let plain = name
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
        if plain {
            value.push_str(&format!("; filename=\"{name}\""));
        }
        value.push_str("; filename*=utf-8''");
        for byte in name.bytes() {
            if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
                value.push(char::from(byte));
            } else {
                value.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("attachment"))
}

/// A media answer: its bytes with their type, length and disposition (the
/// headers of [`secure`] are added to every answer by the router).
pub(crate) fn answer(
    body: axum::body::Body,
    length: u64,
    content_type: &str,
    disposition: HeaderValue,
) -> axum::response::Response {
    let mut response = axum::response::Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(header::CONTENT_DISPOSITION, disposition);
    response
}

/// The headers every media answer carries, errors included: nothing served
/// here runs as a page of this origin (a sandbox without scripts), the
/// browser keeps to the declared type, and other origins' pages may embed
/// media (web clients on another host).
pub(crate) fn secure(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; \
             style-src 'unsafe-inline'; media-src 'self'; object-src 'self';",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("cross-origin"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_type(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
        headers
    }

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

    /// Another server's `Content-Disposition`: `filename*` before
    /// `filename`, cleaned like an uploader's name.
    #[test]
    fn other_servers_file_names_are_read_and_cleaned() {
        let name = file_name_in_disposition;
        assert_eq!(
            name("inline; filename=\"a.png\"; filename*=utf-8''gr%C3%BC%C3%9Fe.png").as_deref(),
            Some("grüße.png")
        );
        assert_eq!(
            name("attachment; filename=plain.txt").as_deref(),
            Some("plain.txt")
        );
        assert_eq!(
            name("attachment; FILENAME=\"q\\\"d.txt\"").as_deref(),
            Some("q\"d.txt")
        );
        assert_eq!(
            name("attachment; filename=\"../../etc/passwd\"").as_deref(),
            Some("....etcpasswd")
        );
        // Undecodable or other charsets: the plain name, else none.
        assert_eq!(name("inline; filename*=utf-8''%ZZ").as_deref(), None);
        assert_eq!(
            name("inline; filename*=iso-8859-1''a.txt; filename=b.txt").as_deref(),
            Some("b.txt")
        );
        assert_eq!(name("inline").as_deref(), None);
        assert_eq!(name("").as_deref(), None);
    }

    #[test]
    fn declared_types_are_checked() {
        assert_eq!(
            declared_type(&with_type("Image/PNG")).as_deref(),
            Some("image/png")
        );
        assert_eq!(
            declared_type(&with_type("text/plain; charset=utf-8")).as_deref(),
            Some("text/plain; charset=utf-8")
        );
        for bad in ["", "png", "image/", "/png", "image/p ng", "a/b/c"] {
            assert_eq!(declared_type(&with_type(bad)), None, "{bad:?}");
        }
        assert_eq!(declared_type(&HeaderMap::new()), None);
    }

    #[test]
    fn only_safe_types_whose_bytes_agree_are_inline() {
        assert!(inline(Some("image/png"), sniff(PNG)));
        assert!(inline(Some("text/plain; charset=utf-8"), sniff(b"hello")));
        // HTML and SVG never; a PNG declared as text is not text.
        assert!(!inline(Some("text/html"), sniff(b"<html>")));
        assert!(!inline(Some("image/svg+xml"), sniff(b"<svg/>")));
        assert!(!inline(Some("text/plain"), sniff(PNG)));
        // Declared an image, but the bytes are not that image.
        assert!(!inline(
            Some("image/png"),
            sniff(b"<script>alert(1)</script>")
        ));
        assert!(!inline(Some("image/jpeg"), sniff(PNG)));
        assert!(!inline(None, sniff(PNG)));
    }

    #[test]
    fn file_names_lose_what_could_harm() {
        assert_eq!(file_name("cat.png").as_deref(), Some("cat.png"));
        assert_eq!(
            file_name("../../etc/passwd").as_deref(),
            Some("....etcpasswd")
        );
        assert_eq!(
            file_name("a\r\nSet-Cookie: x").as_deref(),
            Some("aSet-Cookie: x")
        );
        assert_eq!(file_name("  "), None);
        assert_eq!(file_name(".."), None);
        let long = "é".repeat(200);
        assert!(file_name(&long).is_some_and(|n| n.len() <= 255));
    }

    #[test]
    fn dispositions_quote_names_safely() {
        assert_eq!(
            disposition(true, Some("cat.png")),
            "inline; filename=\"cat.png\"; filename*=utf-8''cat.png"
        );
        assert_eq!(
            disposition(false, Some("say \"hi\" é.txt")),
            "attachment; filename*=utf-8''say%20%22hi%22%20%C3%A9.txt"
        );
        assert_eq!(disposition(false, None), "attachment");
    }
}
