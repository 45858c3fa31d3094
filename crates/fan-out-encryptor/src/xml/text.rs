//! XML written as text directly, without an element tree: a group message carries a `<key>` element per
//! recipient device (thousands), each written in the parallel per-device step and then joined. What is
//! written here parses to the same element the builders of [`super::v2`], [`super::v0_3`] and
//! [`super::stanza`] give (the tests of those modules compare the two).

use base64::Engine as _;

/// Appends `s` escaped as the value of an attribute quoted with `'` (whitespace other than a plain
/// space as character references, so that a parser's normalisation gives `s` back).
pub(crate) fn attr_value(out: &mut String, s: &str) {
    escape(out, s, true);
}

/// Appends `s` escaped as character data.
pub(crate) fn text(out: &mut String, s: &str) {
    escape(out, s, false);
}

fn escape(out: &mut String, s: &str, attr: bool) {
    let mut rest = s;
    while let Some(at) =
        rest.find(|c: char| matches!(c, '&' | '<' | '>' | '\r') || attr && matches!(c, '\'' | '"' | '\t' | '\n'))
    {
        let (plain, tail) = rest.split_at(at);
        out.push_str(plain);
        let mut chars = tail.chars();
        out.push_str(match chars.next() {
            Some('&') => "&amp;",
            Some('<') => "&lt;",
            Some('>') => "&gt;",
            Some('\'') => "&apos;",
            Some('"') => "&quot;",
            Some('\t') => "&#x9;",
            Some('\n') => "&#xA;",
            _ => "&#xD;",
        });
        rest = chars.as_str();
    }
    out.push_str(rest);
}

/// Appends `<name xmlns='ns' a='v' …` (no `>`): `ns` only where the namespace changes.
pub(crate) fn start(out: &mut String, name: &str, ns: Option<&str>, attrs: &[(&str, &str)]) {
    out.push('<');
    out.push_str(name);
    if let Some(ns) = ns {
        out.push_str(" xmlns='");
        attr_value(out, ns);
        out.push('\'');
    }
    for (k, v) in attrs {
        out.push(' ');
        out.push_str(k);
        out.push_str("='");
        attr_value(out, v);
        out.push('\'');
    }
}

/// Appends `</name>`.
pub(crate) fn end(out: &mut String, name: &str) {
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

/// Appends an element whose only content is `data` in base64.
pub(crate) fn base64_element(out: &mut String, name: &str, ns: Option<&str>, attrs: &[(&str, &str)], data: &[u8]) {
    start(out, name, ns, attrs);
    out.push('>');
    base64::engine::general_purpose::STANDARD.encode_string(data, out);
    end(out, name);
}

/// Appends an OMEMO `<key rid='…'>` with its data in base64, and the one flag its namespace may set
/// (`prekey` in OMEMO 0.3, `kex` in OMEMO 2), inside the `<header>` (or `<keys>`) of that namespace.
pub(crate) fn key(out: &mut String, rid: u32, flag: Option<(&str, &str)>, data: &[u8]) {
    let mut buf = [0; 10];
    let rid = decimal(rid, &mut buf);
    match flag {
        None => base64_element(out, "key", None, &[("rid", rid)], data),
        Some(flag) => base64_element(out, "key", None, &[("rid", rid), flag], data),
    }
}

/// Appends the frame both OMEMO namespaces share: `<encrypted xmlns='ns'><header sid='…'>`, what
/// `header` writes, `</header>`, the `<payload>` if there is one, `</encrypted>`.
pub(crate) fn encrypted(
    out: &mut String,
    ns: &str,
    sid: u32,
    header: impl FnOnce(&mut String),
    payload: Option<&[u8]>,
) {
    let mut buf = [0; 10];
    start(out, "encrypted", Some(ns), &[]);
    out.push('>');
    start(out, "header", None, &[("sid", decimal(sid, &mut buf))]);
    out.push('>');
    header(out);
    end(out, "header");
    if let Some(p) = payload {
        base64_element(out, "payload", None, &[], p);
    }
    end(out, "encrypted");
}

/// The decimal digits of a device id, without an allocation.
pub(crate) fn decimal(n: u32, buf: &mut [u8; 10]) -> &str {
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        if let Some(d) = buf.get_mut(i) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    std::str::from_utf8(buf.get(i..).unwrap_or_default()).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn escapes_read_back_as_written() {
        for s in ["plain", "a & b < c > d 'q' \"dq\"\r\n\tend", "ünïcödé ✓ &amp;", "", "'"] {
            let mut xml = String::new();
            start(&mut xml, "x", Some("urn:example"), &[("a", s), ("b", "")]);
            xml.push('>');
            text(&mut xml, s);
            end(&mut xml, "x");
            let e = crate::xml::parse_element(&xml).unwrap();
            assert_eq!(e.attr("a"), Some(s), "{xml}");
            assert_eq!(e.attr("b"), Some(""));
            assert_eq!(e.text(), s, "{xml}");
            assert!(e.is("x", "urn:example"));
        }
    }

    #[test]
    fn decimals() {
        let mut buf = [0; 10];
        for n in [0, 7, 10, 99, 100, 123_456, u32::MAX] {
            assert_eq!(decimal(n, &mut buf), n.to_string());
        }
    }
}
