//! Which URIs an upstream's resource template (RFC 6570 URI Template) can produce, to route a
//! `resources/read` of a URI that no upstream lists. Each expression matches only the
//! characters its expansion can contain (§3.2: simple expansion percent-encodes everything but
//! unreserved characters; `+` and `#` keep reserved ones; `.`, `/`, `;`, `?`, `&` add their
//! prefix and separator). Compiled to a `regex`, which matches in linear time whatever URI a
//! client sends.

use std::borrow::Cow;

use regex::Regex;

/// Unreserved characters (RFC 3986 §2.3), percent-encoded triplets and the list separator.
const UNRESERVED: &str = r"A-Za-z0-9\-._~%,";
/// The same, and the reserved characters (RFC 3986 §2.2).
const RESERVED: &str = r"A-Za-z0-9\-._~%,:/?#\[\]@!$&'()*+;=";

/// A checked URI template.
#[derive(Debug, Clone)]
pub struct UriTemplate {
    pattern: Regex,
}

impl UriTemplate {
    /// The template `template`; `None` when it is malformed (an unclosed or empty expression,
    /// an unknown operator), or when it does not begin with a literal scheme (`{+uri}`, `/{x}`),
    /// which would claim URIs of every kind.
    pub fn parse(template: &str) -> Option<Self> {
        let literal_start = template.split('{').next().unwrap_or_default();
        if !literal_start.contains(':') {
            return None;
        }
        let mut pattern = String::from("^");
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            pattern.push_str(&regex::escape(&rest[..open]));
            let after = &rest[open + 1..];
            let close = after.find('}')?;
            let expression = &after[..close];
            let (operator, variables) = match expression.chars().next()? {
                op @ ('+' | '#' | '.' | '/' | ';' | '?' | '&') => (Some(op), &expression[1..]),
                _ => (None, expression),
            };
            let valid = !variables.is_empty()
                && variables
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.,:*%".contains(c));
            if !valid {
                return None;
            }
            pattern.push_str(&match operator {
                None => format!("[{UNRESERVED}]*"),
                Some('+') => format!("[{RESERVED}]*"),
                Some('#') => format!("(?:#[{RESERVED}]*)?"),
                Some('.') => format!(r"(?:\.[{UNRESERVED}]*)*"),
                Some('/') => format!("(?:/[{UNRESERVED}]*)*"),
                Some(';') => format!("(?:;[{UNRESERVED}=]*)*"),
                Some('?') => format!(r"(?:\?[{UNRESERVED}=&]*)?"),
                _ => format!("(?:&[{UNRESERVED}=]*)*"),
            });
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return None;
        }
        pattern.push_str(&regex::escape(rest));
        pattern.push('$');
        Regex::new(&pattern).ok().map(|pattern| Self { pattern })
    }

    /// Whether an expansion of the template can be `uri`.
    pub fn matches(&self, uri: &str) -> bool {
        self.pattern.is_match(uri)
    }
}

/// `uri` with percent-encoded unreserved characters decoded (RFC 3986 §6.2.2.2), so that
/// `crm://c/%76ip` and `crm://c/vip`, which name the same resource, are decided on alike.
pub fn normalize(uri: &str) -> Cow<'_, str> {
    if !uri.contains('%') {
        return Cow::Borrowed(uri);
    }
    let bytes = uri.as_bytes();
    let mut out = String::with_capacity(uri.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| uri.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .filter(|b| b.is_ascii_alphanumeric() || b"-._~".contains(b));
        match decoded {
            Some(b) => {
                out.push(char::from(b));
                i += 3;
            }
            None => {
                let c = uri[i..].chars().next().unwrap_or_default();
                out.push(c);
                i += c.len_utf8().max(1);
            }
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(template: &str) -> UriTemplate {
        UriTemplate::parse(template).unwrap_or_else(|| panic!("{template}"))
    }

    #[test]
    fn expressions_match_only_what_their_expansion_can_hold() {
        let customer = t("crm://customers/{id}");
        assert!(customer.matches("crm://customers/42"));
        assert!(customer.matches("crm://customers/a%20b"));
        assert!(
            !customer.matches("crm://customers/42/notes"),
            "a simple expression holds no /"
        );
        assert!(!customer.matches("crm://customers/42?x=1"));
        assert!(!customer.matches("crm://other/42"));
        let notes = t("crm://customers/{id}/notes");
        assert!(notes.matches("crm://customers/42/notes"));
        assert!(!notes.matches("crm://customers/42"));
        let file = t("file:///{+path}");
        assert!(file.matches("file:///etc/hosts"));
        let query = t("search://q{?term,page}");
        assert!(query.matches("search://q?term=a&page=2"));
        assert!(query.matches("search://q"));
        let fixed = t("fixed://one");
        assert!(fixed.matches("fixed://one"));
        assert!(!fixed.matches("fixed://one/more"));
        assert!(
            t("demo://resource/dynamic/text/{resourceId}")
                .matches("demo://resource/dynamic/text/3")
        );
        // Regex syntax in the literal is literal.
        assert!(!t("a://x.y/{id}").matches("a://xzy/1"));
    }

    #[test]
    fn templates_that_would_claim_everything_or_are_malformed_are_refused() {
        for bad in [
            "{+uri}",
            "/{path}",
            "{scheme}://x",
            "a://{",
            "a://{}",
            "a://{id}}",
            "a://{!x}",
            "a://{a b}",
        ] {
            assert!(UriTemplate::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn percent_encoded_unreserved_characters_are_decoded_and_nothing_else() {
        assert_eq!(normalize("crm://c/%76ip"), "crm://c/vip");
        assert_eq!(normalize("crm://c/%7e%2D"), "crm://c/~-");
        assert_eq!(normalize("crm://c/a%2Fb%20c"), "crm://c/a%2Fb%20c");
        assert_eq!(normalize("crm://c/%zz%4"), "crm://c/%zz%4");
        assert_eq!(normalize("crm://c/é%41"), "crm://c/éA");
    }
}
