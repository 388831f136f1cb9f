//! Who may run a mutating action: a token compared in constant time, sent in a header
//! or a form field (never a cookie, so a cross-site page cannot make a browser send it),
//! and a same-origin check on browsers that say where a request comes from.

use axum::http::HeaderMap;
use axum::http::header::{HOST, ORIGIN};

/// The header a script sends the token in.
pub(crate) const TOKEN_HEADER: &str = "x-console-token";

/// Why an action was refused (answered 403 with this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    #[error("actions are disabled: this console was started without a console token")]
    Disabled,
    #[error(
        "a console token is required for this action (the X-Console-Token header or the \
         `token` form field)"
    )]
    Missing,
    #[error("the console token is wrong")]
    Wrong,
    #[error("cross-site request refused: actions must come from the console's own pages")]
    CrossSite,
}

/// Checks a mutating request: the origin first, then the token (`form_token` is the
/// form field's, used when the header is absent).
pub(crate) fn authorize(
    expected: Option<&str>,
    headers: &HeaderMap,
    form_token: Option<&str>,
) -> Result<(), Refused> {
    let Some(expected) = expected else {
        return Err(Refused::Disabled);
    };
    if !same_origin(headers) {
        return Err(Refused::CrossSite);
    }
    let header = headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok());
    let given = header.or(form_token).filter(|t| !t.is_empty());
    match given {
        None => Err(Refused::Missing),
        Some(given) if constant_time_eq(given.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(Refused::Wrong),
    }
}

/// False when the browser says the request comes from another site (`Sec-Fetch-Site`),
/// or its `Origin` names another host than `Host`. Clients that send neither (curl,
/// scripts) pass: they hold the token themselves.
fn same_origin(headers: &HeaderMap) -> bool {
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if fetch_site.is_some_and(|site| !matches!(site, "same-origin" | "none")) {
        return false;
    }
    let Some(origin) = headers.get(ORIGIN) else {
        return true;
    };
    let origin = origin.to_str().unwrap_or("");
    let host = headers.get(HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

/// Compares in time that depends only on the lengths, not on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn the_token_is_needed_and_must_match() {
        let h = headers(&[("host", "127.0.0.1:8080")]);
        assert_eq!(authorize(None, &h, Some("s")), Err(Refused::Disabled));
        assert_eq!(authorize(Some("s3cret"), &h, None), Err(Refused::Missing));
        assert_eq!(
            authorize(Some("s3cret"), &h, Some("")),
            Err(Refused::Missing)
        );
        assert_eq!(
            authorize(Some("s3cret"), &h, Some("s3cre")),
            Err(Refused::Wrong)
        );
        assert_eq!(authorize(Some("s3cret"), &h, Some("s3cret")), Ok(()));
        let h = headers(&[("x-console-token", "s3cret")]);
        assert_eq!(authorize(Some("s3cret"), &h, None), Ok(()));
    }

    #[test]
    fn cross_site_requests_are_refused_even_with_the_token() {
        let token = Some("t");
        let cross = headers(&[("sec-fetch-site", "cross-site"), ("x-console-token", "t")]);
        assert_eq!(authorize(token, &cross, None), Err(Refused::CrossSite));
        let other = headers(&[
            ("origin", "http://evil.example"),
            ("host", "127.0.0.1:8080"),
            ("x-console-token", "t"),
        ]);
        assert_eq!(authorize(token, &other, None), Err(Refused::CrossSite));
        let same = headers(&[
            ("origin", "http://127.0.0.1:8080"),
            ("host", "127.0.0.1:8080"),
            ("sec-fetch-site", "same-origin"),
            ("x-console-token", "t"),
        ]);
        assert_eq!(authorize(token, &same, None), Ok(()));
    }

    #[test]
    fn comparison_is_exact() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
