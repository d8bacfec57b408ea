//! Redis' glob language in pure Rust: matching a key against a pattern, and the literal text
//! before a pattern's first wildcard. Used by fencing (which warm families a target may touch),
//! dry runs and tests; never does I/O.

/// Redis' glob matching (`*`, `?`, `[...]` with ranges and `^`, `\` escapes), byte-wise:
/// [`glob_match_bytes`] on the two texts.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    glob_match_bytes(pattern.as_bytes(), text.as_bytes())
}

/// Stars nested deeper than this match nothing (as in Redis 7.2 and later), so a hostile
/// pattern cannot exhaust the stack.
const MAX_NESTING: usize = 1000;

/// Matches as `SCAN MATCH` and `KEYS` decide (case-sensitive), quirks included, so a key this
/// process matches against a pattern is exactly a key Redis would return for it: `*` alone
/// matches every key (even the empty one); otherwise Redis' `stringmatchlen`, where a class
/// range compares bytes as C's signed `char` (x86), `[a-]` is the range from `a` to `]`, an
/// unclosed `[` ends at the pattern's end, and a trailing `\\` is a literal `\\`.
/// Property-tested against a real Redis (`tests/glob_redis.rs`).
pub fn glob_match_bytes(pattern: &[u8], text: &[u8]) -> bool {
    if pattern == b"*" {
        return true;
    }
    let mut skip_longer = false;
    matches(pattern, text, &mut skip_longer, 0)
}

/// `stringmatchlen_impl`: `p` and `t` are what is left of the pattern and the text.
fn matches(mut p: &[u8], mut t: &[u8], skip_longer: &mut bool, nesting: usize) -> bool {
    if nesting > MAX_NESTING {
        return false;
    }
    let signed = |b: u8| b as i8 as i32;
    while !p.is_empty() && !t.is_empty() {
        match p[0] {
            b'*' => {
                while p.len() > 1 && p[1] == b'*' {
                    p = &p[1..];
                }
                if p.len() == 1 {
                    return true;
                }
                while !t.is_empty() {
                    if matches(&p[1..], t, skip_longer, nesting + 1) {
                        return true;
                    }
                    if *skip_longer {
                        return false;
                    }
                    t = &t[1..];
                }
                // Nothing after this star matches anywhere in the rest of the text, so no
                // earlier star can help by matching more: stop them all.
                *skip_longer = true;
                return false;
            }
            b'?' => p = &p[1..],
            b'[' => {
                p = &p[1..];
                let negate = p.first() == Some(&b'^');
                if negate {
                    p = &p[1..];
                }
                let c = t[0];
                let mut hit = false;
                let mut i = 0;
                // Where the pattern goes on after the class (its end if it is not closed).
                let after = loop {
                    let left = p.len() - i;
                    if left == 0 {
                        break p.len();
                    }
                    if p[i] == b'\\' && left >= 2 {
                        i += 1;
                        hit |= p[i] == c;
                    } else if p[i] == b']' {
                        break i + 1;
                    } else if left >= 3 && p[i + 1] == b'-' {
                        let (mut lo, mut hi) = (signed(p[i]), signed(p[i + 2]));
                        if lo > hi {
                            std::mem::swap(&mut lo, &mut hi);
                        }
                        i += 2;
                        hit |= (lo..=hi).contains(&signed(c));
                    } else {
                        hit |= p[i] == c;
                    }
                    i += 1;
                };
                if hit == negate {
                    return false;
                }
                p = &p[after..];
            }
            first => {
                let literal = if first == b'\\' && p.len() >= 2 {
                    p = &p[1..];
                    p[0]
                } else {
                    first
                };
                if literal != t[0] {
                    return false;
                }
                p = &p[1..];
            }
        }
        t = &t[1..];
        if t.is_empty() {
            while p.first() == Some(&b'*') {
                p = &p[1..];
            }
            break;
        }
    }
    p.is_empty() && t.is_empty()
}

/// The literal text before a glob's first wildcard.
pub fn literal_prefix(glob: &str) -> &str {
    let end = glob.find(['*', '?', '[', '\\']).unwrap_or(glob.len());
    &glob[..end]
}

/// Whether two globs may match a common key, judged by their literal prefixes (one is a prefix
/// of the other). Conservative: `true` may be a false positive, `false` never a false negative.
pub fn may_overlap(a: &str, b: &str) -> bool {
    let (a, b) = (literal_prefix(a), literal_prefix(b));
    a.starts_with(b) || b.starts_with(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_like_redis() {
        assert!(glob_match("catalog:page:*", "catalog:page:3"));
        assert!(!glob_match("catalog:page:*", "catalog:pages"));
        assert!(glob_match("c?t", "cat"));
        assert!(glob_match("c[a-c]t", "cbt"));
        assert!(!glob_match("c[^a-c]t", "cbt"));
        assert!(glob_match("a\\*b", "a*b"));
        assert!(!glob_match("a\\*b", "axb"));
        assert!(glob_match("*", ""));
        assert!(glob_match(":1:course:*", ":1:course:42"));
    }

    #[test]
    fn overlap_by_literal_prefix() {
        assert_eq!(literal_prefix("p:cour*"), "p:cour");
        assert!(may_overlap("p:cour*", "p:course:*"));
        assert!(!may_overlap("p:catalog:*", "p:course:*"));
    }
}
