//! What a page says about itself, for its preview: its OpenGraph `meta`
//! tags (`og:*`), else its `<title>`, its `description` meta tag and its
//! first image. A tolerant scanner of tags and attributes, not an HTML
//! parser: it reads any bytes in one pass, never fails, and keeps at most
//! [`MAX_KEYS`] values of at most [`MAX_VALUE`] characters.

use std::collections::BTreeMap;

/// The most properties a preview keeps.
pub(crate) const MAX_KEYS: usize = 50;
/// The longest value kept (longer ones are cut, at a character boundary).
pub(crate) const MAX_VALUE: usize = 1000;

/// The page's OpenGraph properties, completed from its other tags;
/// relative image URLs resolved against `base`.
pub(crate) fn open_graph(page: &[u8], base: &url::Url) -> BTreeMap<String, String> {
    let text = String::from_utf8_lossy(page);
    let scan = scan(&text);
    let mut og = BTreeMap::new();
    for (key, value) in scan.meta_properties {
        if og.len() >= MAX_KEYS {
            break;
        }
        og.entry(key).or_insert(value);
    }
    if !og.contains_key("og:title")
        && let Some(title) = scan.title.filter(|t| !t.is_empty())
    {
        og.insert("og:title".to_owned(), title);
    }
    if !og.contains_key("og:description")
        && let Some(description) = scan.description.filter(|d| !d.is_empty())
    {
        og.insert("og:description".to_owned(), description);
    }
    if !og.contains_key("og:image")
        && let Some(image) = scan.image
    {
        og.insert("og:image".to_owned(), image);
    }
    if let Some(image) = og.get("og:image") {
        match base.join(image) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {
                og.insert("og:image".to_owned(), url.to_string());
            }
            _ => {
                og.remove("og:image");
            }
        }
    }
    og
}

/// What one pass over a page finds.
#[derive(Default, Debug)]
struct Scan {
    /// `og:*` meta tags, in page order.
    meta_properties: Vec<(String, String)>,
    title: Option<String>,
    description: Option<String>,
    /// The first `<img src>`.
    image: Option<String>,
}

fn scan(text: &str) -> Scan {
    let mut found = Scan::default();
    let mut rest = text;
    while let Some(at) = rest.find('<') {
        rest = &rest[at + 1..];
        if let Some(comment) = rest.strip_prefix("!--") {
            rest = comment.find("-->").map_or("", |end| &comment[end + 3..]);
            continue;
        }
        let name_end = rest
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(rest.len());
        let name = rest[..name_end].to_ascii_lowercase();
        if name.is_empty() {
            continue;
        }
        let (attributes, after) = attributes(&rest[name_end..]);
        rest = after;
        match name.as_str() {
            "meta" => meta(&attributes, &mut found),
            "title" if found.title.is_none() => {
                let end = find_ignoring_case(rest, "</title").unwrap_or(rest.len());
                found.title = Some(clean(&decode(&rest[..end])));
                rest = &rest[end..];
            }
            "img" if found.image.is_none() => {
                found.image = value(&attributes, "src").filter(|s| !s.is_empty());
            }
            // Their text is not the page's.
            "script" | "style" => {
                let closing = format!("</{name}");
                rest = find_ignoring_case(rest, &closing).map_or("", |end| &rest[end..]);
            }
            _ => {}
        }
    }
    found
}

fn meta(attributes: &[(String, String)], found: &mut Scan) {
    let key = value(attributes, "property").or_else(|| value(attributes, "name"));
    let Some(key) = key.map(|k| k.to_ascii_lowercase()) else {
        return;
    };
    let Some(content) = value(attributes, "content") else {
        return;
    };
    if key.starts_with("og:") && key.len() <= 100 {
        if found.meta_properties.len() < MAX_KEYS {
            found.meta_properties.push((key, clean(&content)));
        }
    } else if key == "description" && found.description.is_none() {
        found.description = Some(clean(&content));
    }
}

fn value(attributes: &[(String, String)], name: &str) -> Option<String> {
    attributes
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

/// A tag's attributes (names lowercased, values decoded), and what
/// follows the tag.
fn attributes(mut rest: &str) -> (Vec<(String, String)>, &str) {
    let mut found = Vec::new();
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '/');
        if rest.is_empty() {
            return (found, rest);
        }
        if let Some(after) = rest.strip_prefix('>') {
            return (found, after);
        }
        let name_end = rest
            .find(|c: char| c.is_whitespace() || c == '=' || c == '>' || c == '/')
            .unwrap_or(rest.len());
        // A name of nothing but what ends one: skip a character.
        if name_end == 0 {
            let skip = rest.chars().next().map_or(1, char::len_utf8);
            rest = &rest[skip..];
            continue;
        }
        let name = rest[..name_end].to_ascii_lowercase();
        rest = rest[name_end..].trim_start();
        let Some(after_equals) = rest.strip_prefix('=') else {
            found.push((name, String::new()));
            continue;
        };
        rest = after_equals.trim_start();
        let value;
        if let Some(quote) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') {
            let inner = &rest[1..];
            let end = inner.find(quote).unwrap_or(inner.len());
            value = &inner[..end];
            rest = inner.get(end + 1..).unwrap_or("");
        } else {
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '>')
                .unwrap_or(rest.len());
            value = &rest[..end];
            rest = &rest[end..];
        }
        if found.len() < 64 {
            found.push((name, decode(value)));
        }
    }
}

fn find_ignoring_case(haystack: &str, needle: &str) -> Option<usize> {
    let needle = needle.as_bytes();
    haystack
        .as_bytes()
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

/// Whitespace collapsed, cut to [`MAX_VALUE`] characters.
fn clean(text: &str) -> String {
    let mut out = String::new();
    for (i, word) in text.split_whitespace().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(word);
        if out.len() > MAX_VALUE * 4 {
            break;
        }
    }
    match out.char_indices().nth(MAX_VALUE) {
        Some((cut, _)) => out[..cut].to_owned(),
        None => out,
    }
}

/// Character references decoded: the five XML ones, `&nbsp;` and numeric
/// ones; anything else is kept as written.
fn decode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let Some(end) = rest[1..].find(';').map(|e| e + 1).filter(|e| *e <= 12) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "nbsp" => Some('\u{a0}'),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .map(|hex| u32::from_str_radix(hex, 16))
                .or_else(|| entity.strip_prefix('#').map(str::parse::<u32>))
                .and_then(Result::ok)
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn base() -> url::Url {
        url::Url::parse("https://example.org/articles/one.html").expect("url")
    }

    #[test]
    fn open_graph_tags_come_first() {
        let page = br#"<!doctype html><html><head>
            <title>The page's title</title>
            <meta property="og:title" content="Open &amp; Graph">
            <META PROPERTY='og:description' CONTENT='A  description
               over lines'>
            <meta property="og:image" content="/pictures/a.png" />
            <meta name="description" content="not this">
            <meta property="og:title" content="not the second">
            <meta property="twitter:card" content="ignored">
        </head><body><img src="other.png"></body></html>"#;
        let og = open_graph(page, &base());
        assert_eq!(og["og:title"], "Open & Graph");
        assert_eq!(og["og:description"], "A description over lines");
        assert_eq!(og["og:image"], "https://example.org/pictures/a.png");
        assert_eq!(og.len(), 3, "{og:?}");
    }

    #[test]
    fn a_page_without_open_graph_is_read_from_its_other_tags() {
        let page = b"<html><head><script>var x = '<title>no</title>';</script>
            <title>\n  Plain &#8211; page &#x263A; </title>
            <meta name=description content=short>
            <!-- <img src=commented.png> -->
            </head><body><p>text</p><img alt=x src=\"img/first.jpg\"><img src=second.jpg></body>";
        let og = open_graph(page, &base());
        assert_eq!(og["og:title"], "Plain \u{2013} page \u{263a}");
        assert_eq!(og["og:description"], "short");
        assert_eq!(og["og:image"], "https://example.org/articles/img/first.jpg");
    }

    #[test]
    fn images_that_are_not_http_are_dropped_and_values_are_cut() {
        let long = "x".repeat(5000);
        let page = format!(
            r#"<meta property="og:image" content="javascript:alert(1)"><meta property="og:title" content="{long}">"#
        );
        let og = open_graph(page.as_bytes(), &base());
        assert!(!og.contains_key("og:image"), "{og:?}");
        assert_eq!(og["og:title"].chars().count(), MAX_VALUE);
        let many: String = (0..200)
            .map(|i| format!(r#"<meta property="og:k{i}" content="v">"#))
            .collect();
        assert!(open_graph(many.as_bytes(), &base()).len() <= MAX_KEYS + 3);
    }

    #[test]
    fn references_are_decoded_where_they_are_known() {
        assert_eq!(
            decode("a &lt;b&gt; &quot;c&quot; &#39;d&#39;"),
            "a <b> \"c\" 'd'"
        );
        assert_eq!(
            decode("&unknown; & &#xZZ; &#1114112;"),
            "&unknown; & &#xZZ; &#1114112;"
        );
        assert_eq!(decode("tail &"), "tail &");
    }

    proptest! {
        /// Anything at all is scanned, never a panic, within the limits.
        #[test]
        fn any_page_is_scanned_within_limits(page in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let og = open_graph(&page, &base());
            prop_assert!(og.len() <= MAX_KEYS + 3);
            prop_assert!(og.values().all(|v| v.chars().count() <= MAX_VALUE * 4));
        }

        /// Pages made of tag-like pieces, the shapes a scanner trips on.
        #[test]
        fn tag_soup_is_scanned(pieces in proptest::collection::vec(prop_oneof![
            Just("<".to_owned()), Just(">".to_owned()), Just("<meta".to_owned()),
            Just(" property=\"og:title\"".to_owned()), Just(" content='".to_owned()),
            Just("<title>".to_owned()), Just("</title".to_owned()), Just("<!--".to_owned()),
            Just("-->".to_owned()), Just("<script>".to_owned()), Just("&#x".to_owned()),
            Just("&".to_owned()), Just(";".to_owned()), Just("é".to_owned()), Just("=".to_owned()),
            Just("\"".to_owned()), Just("'".to_owned()), Just("<img src=".to_owned()),
        ], 0..60)) {
            let page = pieces.concat();
            let _ = open_graph(page.as_bytes(), &base());
        }
    }
}
