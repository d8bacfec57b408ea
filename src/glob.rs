//! Redis' glob language in pure Rust: matching a key against a pattern, and the literal text
//! before a pattern's first wildcard. Used by fencing (which warm families a target may touch),
//! dry runs and tests; never does I/O.

/// Redis' glob matching (`*`, `?`, `[...]` with ranges and `^`, `\` escapes), byte-wise.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    fn m(p: &[u8], t: &[u8]) -> bool {
        let (mut pi, mut ti) = (0, 0);
        let (mut star_p, mut star_t) = (None, 0);
        while ti < t.len() {
            if pi < p.len() {
                match p[pi] {
                    b'*' => {
                        star_p = Some(pi);
                        star_t = ti;
                        pi += 1;
                        continue;
                    }
                    b'?' => {
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                    b'[' => {
                        if let Some((matched, next)) = class(p, pi, t[ti]) {
                            if matched {
                                pi = next;
                                ti += 1;
                                continue;
                            }
                        }
                    }
                    b'\\' if pi + 1 < p.len() && p[pi + 1] == t[ti] => {
                        pi += 2;
                        ti += 1;
                        continue;
                    }
                    b'\\' if pi + 1 < p.len() => {}
                    c if c == t[ti] => {
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                    _ => {}
                }
            }
            match star_p {
                Some(sp) => {
                    pi = sp + 1;
                    star_t += 1;
                    ti = star_t;
                }
                None => return false,
            }
        }
        p[pi..].iter().all(|&c| c == b'*')
    }
    fn class(p: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
        let mut i = start + 1;
        let negate = p.get(i) == Some(&b'^');
        if negate {
            i += 1;
        }
        let mut matched = false;
        loop {
            match p.get(i)? {
                b']' => break,
                b'\\' => {
                    if *p.get(i + 1)? == c {
                        matched = true;
                    }
                    i += 2;
                }
                &lo if p.get(i + 1) == Some(&b'-') && p.get(i + 2).is_some_and(|&h| h != b']') => {
                    let hi = p[i + 2];
                    let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
                    if (lo..=hi).contains(&c) {
                        matched = true;
                    }
                    i += 3;
                }
                &x => {
                    if x == c {
                        matched = true;
                    }
                    i += 1;
                }
            }
        }
        Some((matched != negate, i + 1))
    }
    m(pattern.as_bytes(), text.as_bytes())
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
