//! The one escape function every value from the event store goes through, and the URL
//! encoding of query values (whose result is escaped again where it lands in HTML).

/// Escapes `text` for HTML element content and quoted attribute values: `&`, `<`, `>`,
/// `"` and `'` become character references, so a payload or stream id holding markup
/// renders as text.
///
/// # Examples
/// ```
/// assert_eq!(
///     cqrs_console::escape(r#"<script>alert("x")</script>"#),
///     "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"
/// );
/// ```
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes `text` for a URL query value: everything but the unreserved
/// characters of RFC 3986, byte by byte of its UTF-8.
pub(crate) fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b));
            }
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A query string from name/value pairs, values percent-encoded and the whole escaped
/// for an `href` attribute.
pub(crate) fn href(path: &str, query: &[(&str, &str)]) -> String {
    let mut url = path.to_owned();
    for (i, (name, value)) in query.iter().enumerate() {
        url.push(if i == 0 { '?' } else { '&' });
        url.push_str(name);
        url.push('=');
        url.push_str(&url_encode(value));
    }
    escape(&url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_becomes_text() {
        assert_eq!(
            escape("<script>alert(1)</script>"),
            "&lt;script&gt;alert(1)&lt;/script&gt;"
        );
        assert_eq!(
            escape(r#""><img src=x onerror=alert(1)>"#),
            "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"
        );
        assert_eq!(escape("it's a & b"), "it&#39;s a &amp; b");
        assert_eq!(escape("café ✓ plain"), "café ✓ plain");
        assert_eq!(escape(""), "");
    }

    #[test]
    fn escaping_twice_escapes_the_ampersands_again() {
        assert_eq!(escape(&escape("<")), "&amp;lt;");
    }

    #[test]
    fn query_values_are_percent_encoded_then_escaped() {
        assert_eq!(url_encode("a b/é&\"<"), "a%20b%2F%C3%A9%26%22%3C");
        assert_eq!(
            href("/console/stream", &[("type", "account"), ("id", "<x>&y")]),
            "/console/stream?type=account&amp;id=%3Cx%3E%26y"
        );
    }
}
