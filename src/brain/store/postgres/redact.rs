//! Database URLs as messages and logs may show them: without their passwords.

/// The URL with its password replaced, for messages and logs: the userinfo's password, and the
/// `password` and `sslpassword` parameters of the query string (whatever their case or percent
/// encoding). When in doubt it hides more (a host with a port before an `@` in the query):
/// a message may lose a detail, never leak a secret. A string that is not a URL (libpq's
/// `key=value` form, which the brain refuses) is not shown at all.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparseable URL>".to_owned();
    };
    // The userinfo ends at the last '@', wherever a password's raw '/', '?' or '@' put others.
    // A userinfo without ':' has no password to hide: the rest is left whole for the query.
    let (userinfo, tail) = match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => (format!("{user}:***@"), host),
            None => (String::new(), rest),
        },
        None => (String::new(), rest),
    };
    // Every `key=value` between '?' and '&' separators is a parameter, even where a password's
    // raw '?' moved the query's start into the userinfo.
    let mut shown = String::with_capacity(tail.len());
    let mut rest = tail;
    loop {
        let end = rest.find(['?', '&']).unwrap_or(rest.len());
        let param = &rest[..end];
        match param.split_once('=') {
            Some((key, _)) if is_password_key(key) => {
                shown.push_str(key);
                shown.push_str("=***");
            }
            _ => shown.push_str(param),
        }
        let Some(separator) = rest[end..].chars().next() else {
            break;
        };
        shown.push(separator);
        rest = &rest[end + 1..];
    }
    let tail = shown;
    format!("{scheme}://{userinfo}{tail}")
}

/// Whether a query parameter's name, percent-decoded and in any case, names a password.
fn is_password_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                decoded.push(b);
                i += 3;
            }
            (b'+', _) => {
                decoded.push(b' ');
                i += 1;
            }
            (b, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    let name = String::from_utf8_lossy(&decoded)
        .trim()
        .to_ascii_lowercase();
    name == "password" || name == "sslpassword"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_the_password_only() {
        assert_eq!(
            redact("postgres://u:pw@h:5432/db?x=1"),
            "postgres://u:***@h:5432/db?x=1"
        );
        assert_eq!(redact("postgresql://u@h/db"), "postgresql://u@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }

    #[test]
    fn redaction_hides_every_form_of_password() {
        let cases = [
            ("postgres://u:pw@h/db", "postgres://u:***@h/db"),
            // A raw '/', '?' or '@' in the password does not end the userinfo early.
            ("postgres://u:p/w@h/db", "postgres://u:***@h/db"),
            ("postgres://u:p?w@h/db", "postgres://u:***@h/db"),
            ("postgres://u:p@w@h/db", "postgres://u:***@h/db"),
            (
                "postgres://u@h/db?password=pw",
                "postgres://u@h/db?password=***",
            ),
            (
                "postgres://h/db?sslmode=require&PASSWORD=pw&x=1",
                "postgres://h/db?sslmode=require&PASSWORD=***&x=1",
            ),
            (
                "postgres://h/db?Pass%77ord=pw",
                "postgres://h/db?Pass%77ord=***",
            ),
            (
                "postgres://h/db?%70%61%73%73%77%6F%72%64=pw",
                "postgres://h/db?%70%61%73%73%77%6F%72%64=***",
            ),
            (
                "postgres://h/db?sslpassword=pw",
                "postgres://h/db?sslpassword=***",
            ),
            (
                "postgres://h/db?password=p@w",
                "postgres://h/db?password=***",
            ),
            (
                "postgres://u:pw@h/db?password=pw2",
                "postgres://u:***@h/db?password=***",
            ),
            (
                "postgres://h/db?passwords=1&password",
                "postgres://h/db?passwords=1&password",
            ),
            ("host=h password=pw dbname=db", "<unparseable URL>"),
        ];
        for (url, expected) in cases {
            let shown = redact(url);
            assert_eq!(shown, expected, "{url}");
            assert!(
                !shown.contains("pw") && !shown.contains("p/w"),
                "{url}: {shown}"
            );
        }
        // When in doubt, more is hidden, never less.
        let shown = redact("postgres://h:5432/db?application_name=a@b&password=pw");
        assert!(!shown.contains("pw"), "{shown}");
    }
}
