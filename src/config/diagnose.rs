//! What makes a configuration error actionable: where a key is in the file (section and key
//! to line and column), the values a key accepts, and a "did you mean" for near misses. Pure.

/// The 1-based line and column of `key` in `[section]` (`""` for top-level keys) of a TOML
/// text, when the key is written there.
pub fn key_position(text: &str, section: &str, key: &str) -> Option<(usize, usize)> {
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix('[') {
            current = rest
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            continue;
        }
        if current != section {
            continue;
        }
        let quoted = format!("\"{key}\"");
        let after = trimmed
            .strip_prefix(key)
            .or_else(|| trimmed.strip_prefix(quoted.as_str()));
        if after.is_some_and(|a| a.trim_start().starts_with('=')) {
            return Some((i + 1, line.len() - trimmed.len() + 1));
        }
    }
    None
}

/// The candidate closest to `word` when it is a near miss (at most two edits away, and
/// fewer than the word's length).
pub fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d > 0 && *d <= 2 && *d < word.chars().count())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The levels `[log] level` accepts on its own.
pub const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

/// Checks a `[log] level`: a level, or a tracing filter of `target=level` directives
/// (`info,cachewarden=debug`). A bare word that is not a level would be read by tracing as a
/// target name and silence every line: refused, with a suggestion.
pub fn check_log_level(level: &str) -> Result<(), String> {
    let accepted = || {
        format!(
            "expected one of {}, or a filter such as \"info,cachewarden=debug\"",
            LEVELS.join(", ")
        )
    };
    for directive in level.split(',').map(str::trim) {
        let lvl = match directive.rsplit_once('=') {
            Some((target, lvl)) if !target.is_empty() => lvl,
            _ => directive,
        };
        if !LEVELS.contains(&lvl.to_ascii_lowercase().as_str()) {
            let hint = did_you_mean(&lvl.to_ascii_lowercase(), &LEVELS)
                .map(|m| format!(" (did you mean \"{m}\"?)"))
                .unwrap_or_default();
            return Err(format!("{lvl:?} is not a level{hint}: {}", accepted()));
        }
    }
    Ok(())
}

/// For serde's "unknown field `x`, expected one of `a`, `b`" (and "unknown variant"), the
/// accepted value closest to `x`, when it is a near miss.
pub fn suggestion(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("unknown variant `"))?;
    let (word, rest) = rest.split_once('`')?;
    let candidates: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    did_you_mean(word, &candidates).map(str::to_string)
}

/// The identifier at the start of `text` (a TOML bare key).
pub fn leading_key(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .unwrap_or(text.len());
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_in_their_section() {
        let text = "rules_dir = \"r\"\n[redis]\nurl = \"x\"\n[status]\n  listen = \"y\"\n";
        assert_eq!(key_position(text, "status", "listen"), Some((5, 3)));
        assert_eq!(key_position(text, "redis", "url"), Some((3, 1)));
        assert_eq!(key_position(text, "", "rules_dir"), Some((1, 1)));
        assert_eq!(key_position(text, "status", "url"), None);
        assert_eq!(
            key_position("[kafka.properties]\na = 1\n", "kafka.properties", "a"),
            Some((2, 1))
        );
    }

    #[test]
    fn near_misses_get_a_suggestion() {
        assert_eq!(did_you_mean("inf", &LEVELS), Some("info"));
        assert_eq!(did_you_mean("verbose", &LEVELS), None);
        assert_eq!(did_you_mean("info", &LEVELS), None, "not a miss");
        assert_eq!(
            did_you_mean("key_prefx", &["key_prefix", "url"]),
            Some("key_prefix")
        );
    }

    #[test]
    fn serde_messages_get_the_near_miss() {
        assert_eq!(
            suggestion(
                "unknown field `key_prefx`, expected one of `url`, `key_prefix`, `scan_count`"
            )
            .as_deref(),
            Some("key_prefix")
        );
        assert_eq!(
            suggestion("unknown variant `postgress`, expected `postgres` or `kafka`").as_deref(),
            Some("postgres")
        );
        assert_eq!(suggestion("unknown field `zzz`, expected `url`"), None);
        assert_eq!(suggestion("missing field `url`"), None);
    }

    #[test]
    fn log_levels_and_filters() {
        for ok in [
            "info",
            "DEBUG",
            "off",
            "info,cachewarden=debug",
            "cachewarden::worker=trace",
        ] {
            assert_eq!(check_log_level(ok), Ok(()), "{ok}");
        }
        let e = check_log_level("verbose").unwrap_err();
        assert!(e.contains("error, warn, info, debug, trace, off"), "{e}");
        assert!(check_log_level("inf")
            .unwrap_err()
            .contains("did you mean \"info\""));
        assert!(check_log_level("info,cachewarden=loud").is_err());
    }
}
