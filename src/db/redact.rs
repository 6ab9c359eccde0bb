//! Hiding passwords in database URLs before they are shown or logged (config check, errors, logs).

/// `url` with the password in its user info (`postgres://user:secret@host/db`) and in any
/// `password`-like query parameter (`?password=secret`) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    // Operators do not always percent-encode passwords, so the user info is taken to end at the
    // *last* `@`: a password with `@`, `/` or `?` in it is still hidden, at the price of
    // over-redacting the rare URL whose path contains `@`.
    let (user_info, rest) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at..]),
        None => (None, rest),
    };
    let mut out = scheme.to_owned();
    match user_info.map(|info| info.split_once(':')) {
        Some(Some((user, _password))) => {
            out.push_str(user);
            out.push_str(":***");
        }
        Some(None) => out.push_str(user_info.unwrap_or_default()),
        None => {}
    }
    match rest.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let params: Vec<String> = query.split('&').map(redact_param).collect();
            out.push_str(&params.join("&"));
        }
        None => out.push_str(rest),
    }
    out
}

fn redact_param(param: &str) -> String {
    match param.split_once('=') {
        Some((name, _)) if name.to_ascii_lowercase().ends_with("password") => format!("{name}=***"),
        _ => param.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_hidden_and_the_rest_is_kept() {
        let cases = [
            (
                "postgres://kn:s3cr@t/x?@db:5432/kn",
                "postgres://kn:***@db:5432/kn",
            ),
            (
                "postgresql://kn@db/kn?password=x&sslmode=require",
                "postgresql://kn@db/kn?password=***&sslmode=require",
            ),
            ("postgres://db/kn", "postgres://db/kn"),
            (
                "sqlite:///var/lib/kneenode/kneenode.sqlite",
                "sqlite:///var/lib/kneenode/kneenode.sqlite",
            ),
            ("", ""),
        ];
        for (url, shown) in cases {
            assert_eq!(super::redact_url(url), shown);
        }
    }
}
