//! The advisor's judgement: figures gathered from the journal, `cache_metrics` and Redis
//! ([`super::Figures`]) become suggestions, each with the figures behind it and the exact
//! rule-file change. Pure.

use serde::Serialize;

use super::{Figures, RuleFigures};

/// Keys a rule must have invalidated before "never cached" is judged.
const MIN_INVALIDATED: u64 = 50;
/// A TTL this many times shorter than the median interval between invalidations is suggested
/// longer.
const TTL_FACTOR: f64 = 4.0;
/// Pattern passes per hour above which a rule's pattern is worth replacing.
const PASSES_PER_HOUR: f64 = 10.0;
/// Redis memory ratio from which the families holding it are listed.
const MEMORY_RATIO: f64 = 0.6;
/// Updates compared before "fires on every update" is judged.
const MIN_COMPARED: u64 = 100;

/// One suggestion.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Suggestion {
    /// `never-fires`, `uncached-template`, `never-read`, `every-update`, `short-ttl`,
    /// `pattern-cost`, `memory`.
    pub kind: String,
    /// The rule concerned (none for whole-instance advice).
    pub rule: Option<String>,
    /// Where the rule is defined (`file:line`).
    pub at: Option<String>,
    /// What was observed, in a sentence.
    pub finding: String,
    /// The figures behind it, by name.
    pub figures: std::collections::BTreeMap<String, f64>,
    /// The change to make, exactly (a rule-file edit, or what to do).
    pub change: String,
    /// What the change should measurably do.
    pub expected: String,
}

fn figures(pairs: &[(&str, f64)]) -> std::collections::BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// Every suggestion the figures support, most actionable first.
pub fn suggest(f: &Figures) -> Vec<Suggestion> {
    let mut out = Vec::new();
    let hours = (f.window_seconds as f64 / 3600.0).max(1.0 / 60.0);
    for r in &f.rules {
        never_fires(f, r, &mut out);
        uncached_templates(r, &mut out);
        never_read(r, &mut out);
        short_ttl(r, &mut out);
        pattern_cost(f, r, hours, &mut out);
        every_update(f, r, &mut out);
    }
    memory(f, &mut out);
    out
}

fn never_fires(f: &Figures, r: &RuleFigures, out: &mut Vec<Suggestion>) {
    if r.invalidations > 0 || !r.active || f.journal_rows == 0 {
        return;
    }
    out.push(Suggestion {
        kind: "never-fires".into(),
        rule: Some(r.name.clone()),
        at: Some(r.at.clone()),
        finding: format!(
            "rule {:?} on {} did not fire once in the last {} while the journal recorded {} \
             invalidations of other rules",
            r.name,
            r.table,
            window_text(f.window_seconds),
            f.journal_rows
        ),
        figures: figures(&[
            ("invalidations", 0.0),
            ("journal_rows", f.journal_rows as f64),
            ("window_seconds", f.window_seconds as f64),
        ]),
        change: format!(
            "check `table`, `ops` and `when` of [[rule]] name = {:?} in {} against what the \
             application writes, or remove the rule",
            r.name, r.at
        ),
        expected: "a rule that fires, or one rule less to check on every change".into(),
    });
}

fn uncached_templates(r: &RuleFigures, out: &mut Vec<Suggestion>) {
    if r.keys_invalidated < MIN_INVALIDATED || r.templates.len() < 2 {
        return;
    }
    let unused: Vec<&super::TemplateFigures> = r
        .templates
        .iter()
        .filter(|t| t.key_count == 0 && (t.exact || t.scanned >= 10_000))
        .collect();
    // A rule whose every template is empty may just be idle; one with some templates cached
    // and others never is the signal.
    if unused.is_empty() || unused.len() == r.templates.len() {
        return;
    }
    let keep: Vec<String> = r
        .key_templates
        .iter()
        .filter(|k| !unused.iter().any(|u| &u.template == *k))
        .cloned()
        .collect();
    for u in unused {
        let share = 1.0 / r.key_templates.len().max(1) as f64;
        out.push(Suggestion {
            kind: "uncached-template".into(),
            rule: Some(r.name.clone()),
            at: Some(r.at.clone()),
            finding: format!(
                "rule {:?} invalidated {} keys in the window, but no key of its template {:?} is \
                 in Redis ({} of {} keys scanned{}): the application does not cache these keys, \
                 and each invalidation still costs an UNLINK and its journal entry",
                r.name,
                r.keys_invalidated,
                u.template,
                u.scanned,
                u.total,
                if u.exact { ", every key" } else { "" }
            ),
            figures: figures(&[
                ("keys_invalidated", r.keys_invalidated as f64),
                ("template_keys_in_redis", 0.0),
                ("keys_scanned", u.scanned as f64),
            ]),
            change: format!("in {}: keys = {}", r.at, toml_list(&keep)),
            expected: format!(
                "about {:.0}% fewer keys unlinked and journaled for this rule",
                share * 100.0
            ),
        });
    }
}

/// A rule that fires on every update of a table whose updates mostly change columns the rule
/// does not read: `ignore_changed` with those columns, and how often it would then fire
/// (counted exactly from the sets of columns the updates changed).
fn every_update(f: &Figures, r: &RuleFigures, out: &mut Vec<Suggestion>) {
    if !r.fires_on_every_update {
        return;
    }
    let Some(t) = f.column_changes.get(&r.table) else {
        return;
    };
    if t.compared < MIN_COMPARED {
        return;
    }
    let mut busy: Vec<(String, u64)> = t
        .sets
        .iter()
        .flat_map(|s| s.columns.iter().cloned())
        .collect::<std::collections::BTreeSet<String>>()
        .into_iter()
        .filter(|c| !r.read_columns.contains(c))
        .map(|c| {
            let n = t.changed(&c);
            (c, n)
        })
        .filter(|(_, n)| *n * 2 >= t.compared)
        .collect();
    if busy.is_empty() {
        return;
    }
    busy.sort_by_key(|b| std::cmp::Reverse(b.1));
    let ignored: Vec<String> = busy.iter().map(|(c, _)| c.clone()).collect();
    let firing = t.firing_with_ignored(&ignored);
    if firing * 2 > t.compared {
        return;
    }
    let rates: Vec<String> = busy
        .iter()
        .map(|(c, n)| format!("{c} in {:.0}%", *n as f64 / t.compared as f64 * 100.0))
        .collect();
    out.push(Suggestion {
        kind: "every-update".into(),
        rule: Some(r.name.clone()),
        at: Some(r.at.clone()),
        finding: format!(
            "rule {:?} fires on every update of {}; of {} updates the worker compared, {}              changed: {}. Only {} changed anything else",
            r.name,
            r.table,
            t.compared,
            if busy.len() == 1 { "one column often" } else { "these columns often" },
            rates.join(", "),
            firing
        ),
        figures: figures(&[
            ("updates_compared", t.compared as f64),
            ("firing_now", t.compared as f64),
            ("firing_with_ignore_changed", firing as f64),
        ]),
        change: format!(
            "in {}: ignore_changed = {} — if the values cached under this rule's keys do not              depend on {} (its keys do not read them)",
            r.at,
            toml_list(&ignored),
            if ignored.len() == 1 { "that column" } else { "those columns" }
        ),
        expected: format!(
            "the rule fires on {:.0}% of updates instead of all of them ({} fewer invalidations              per {} updates)",
            firing as f64 / t.compared as f64 * 100.0,
            t.compared - firing,
            t.compared
        ),
    });
}

/// Keys the rule invalidated that nobody asked for again: with keyspace notifications on, the
/// family saw no miss in the window although many of its keys were removed.
fn never_read(r: &RuleFigures, out: &mut Vec<Suggestion>) {
    let Some(0) = r.misses else {
        return;
    };
    if r.keys_invalidated < MIN_INVALIDATED {
        return;
    }
    out.push(Suggestion {
        kind: "never-read".into(),
        rule: Some(r.name.clone()),
        at: Some(r.at.clone()),
        finding: format!(
            "rule {:?} invalidated {} keys in the window and none of them was asked for again: \
             its family saw 0 misses (keyspace notifications)",
            r.name, r.keys_invalidated
        ),
        figures: figures(&[
            ("keys_invalidated", r.keys_invalidated as f64),
            ("misses", 0.0),
        ]),
        change: format!(
            "stop caching these keys in the application, or give them a short TTL and remove \
             [[rule]] name = {:?} from {} (an expired key needs no invalidation)",
            r.name, r.at
        ),
        expected: format!(
            "{} fewer unlinks and journal entries in such a window, and the memory of keys \
             nobody reads",
            r.keys_invalidated
        ),
    });
}

fn short_ttl(r: &RuleFigures, out: &mut Vec<Suggestion>) {
    let (Some(ttl), Some(median)) = (r.ttl, r.median_interval_secs) else {
        return;
    };
    if ttl == 0 || r.intervals < 20 || median < TTL_FACTOR * ttl as f64 {
        return;
    }
    let suggested = median.min(86_400.0).round() as u64;
    // A key read steadily misses once per TTL while it lives; with the TTL at the interval,
    // once per invalidation.
    let before = median / ttl as f64;
    out.push(Suggestion {
        kind: "short-ttl".into(),
        rule: Some(r.name.clone()),
        at: Some(r.at.clone()),
        finding: format!(
            "keys of rule {:?} are invalidated every {:.0} s (median over {} intervals), but their \
             TTL is {} s: they expire {:.1} times between two changes, each expiry a miss the \
             worker's invalidation already makes unnecessary",
            r.name, median, r.intervals, ttl, before
        ),
        figures: figures(&[
            ("ttl_seconds", ttl as f64),
            ("median_interval_seconds", median),
            ("intervals", r.intervals as f64),
        ]),
        change: format!(
            "in {}: ttl = {suggested} (and the same timeout where the application caches these keys)",
            r.at
        ),
        expected: format!(
            "for a key read steadily, misses fall from about {:.1} to 1 per change ({:.0}% fewer)",
            before,
            (1.0 - 1.0 / before) * 100.0
        ),
    });
}

fn pattern_cost(f: &Figures, r: &RuleFigures, hours: f64, out: &mut Vec<Suggestion>) {
    if r.pattern_rows == 0 || r.patterns.is_empty() {
        return;
    }
    let per_hour = r.pattern_rows as f64 / hours;
    if per_hour < PASSES_PER_HOUR {
        return;
    }
    let scanned = per_hour * f.keyspace as f64;
    let tag = r.name.replace(['{', '}'], "");
    out.push(Suggestion {
        kind: "pattern-cost".into(),
        rule: Some(r.name.clone()),
        at: Some(r.at.clone()),
        finding: format!(
            "rule {:?} invalidated its patterns {} {:.0} times an hour; each is a pass over the \
             whole keyspace ({} keys): about {:.0} keys scanned an hour",
            r.name,
            toml_list(&r.patterns),
            per_hour,
            f.keyspace,
            scanned
        ),
        figures: figures(&[
            ("pattern_invalidations_per_hour", per_hour),
            ("keyspace_keys", f.keyspace as f64),
            ("keys_scanned_per_hour", scanned),
        ]),
        change: format!(
            "in {}: replace patterns = {} with tags = [{tag:?}], and add each such key to the tag \
             set when it is cached (cachewarden_django.get_or_fill(key, load, tags=[{tag:?}]), or \
             SADD <prefix>tag:{tag} <key>)",
            r.at,
            toml_list(&r.patterns)
        ),
        expected: format!(
            "each invalidation costs the tag set's members instead of a {}-key scan",
            f.keyspace
        ),
    });
}

fn memory(f: &Figures, out: &mut Vec<Suggestion>) {
    let (Some(used), Some(max)) = (f.used_memory, f.maxmemory.filter(|m| *m > 0)) else {
        return;
    };
    let ratio = used as f64 / max as f64;
    if ratio < MEMORY_RATIO {
        return;
    }
    let mut holders: Vec<(&str, u64)> = f
        .rules
        .iter()
        .filter_map(|r| r.memory_bytes.map(|m| (r.name.as_str(), m)))
        .collect();
    holders.sort_by_key(|h| std::cmp::Reverse(h.1));
    let list: Vec<String> = holders
        .iter()
        .take(5)
        .map(|(n, m)| format!("{n} {:.0}%", *m as f64 / used as f64 * 100.0))
        .collect();
    out.push(Suggestion {
        kind: "memory".into(),
        rule: holders.first().map(|(n, _)| n.to_string()),
        at: None,
        finding: format!(
            "Redis uses {:.0}% of maxmemory ({used} of {max} bytes); the families holding it: {}",
            ratio * 100.0,
            if list.is_empty() { "unknown (no cache_metrics sample yet)".into() } else { list.join(", ") }
        ),
        figures: figures(&[("used_memory", used as f64), ("maxmemory", max as f64), ("ratio", ratio)]),
        change: "shorten the TTL of the largest family, cache fewer of its keys, or raise maxmemory (the brief's ceiling is 70%)".into(),
        expected: "memory under 70% of maxmemory, and no evictions".into(),
    });
}

fn window_text(secs: u64) -> String {
    if secs.is_multiple_of(86_400) {
        format!("{} d", secs / 86_400)
    } else if secs.is_multiple_of(3600) {
        format!("{} h", secs / 3600)
    } else {
        format!("{} min", secs / 60)
    }
}

/// The suggestions as text, one block each.
pub fn render_text(f: &Figures, all: &[Suggestion]) -> String {
    let mut s = format!(
        "cachewarden advise: {} rules, {} journal rows in the last {}\n",
        f.rules.len(),
        f.journal_rows,
        window_text(f.window_seconds)
    );
    if all.is_empty() {
        s.push_str("no suggestion: nothing in the figures calls for a change\n");
    }
    for (i, a) in all.iter().enumerate() {
        s.push_str(&format!(
            "\n{}. [{}] {}\n   change: {}\n   expect: {}\n",
            i + 1,
            a.kind,
            a.finding,
            a.change,
            a.expected
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::advice::TemplateFigures;

    fn rule(name: &str) -> RuleFigures {
        RuleFigures {
            name: name.into(),
            table: "public.t".into(),
            at: "rules/r.toml:1".into(),
            active: true,
            ttl: None,
            key_templates: vec![],
            patterns: vec![],
            templates: vec![],
            invalidations: 10,
            keys_invalidated: 10,
            pattern_rows: 0,
            median_interval_secs: None,
            intervals: 0,
            memory_bytes: None,
            misses: None,
            fires_on_every_update: false,
            read_columns: vec![],
        }
    }

    fn figs(rules: Vec<RuleFigures>) -> Figures {
        Figures {
            window_seconds: 86_400,
            journal_rows: 500,
            keyspace: 100_000,
            used_memory: None,
            maxmemory: None,
            rules,
            column_changes: Default::default(),
        }
    }

    fn template(t: &str, n: u64) -> TemplateFigures {
        TemplateFigures {
            template: t.into(),
            key_count: n,
            exact: true,
            scanned: 1000,
            total: 1000,
        }
    }

    #[test]
    fn a_template_the_application_never_caches_is_named_with_the_rule_change() {
        let mut r = rule("lessons");
        r.key_templates = vec!["lesson:{id}".into(), "course-lessons:{course_id}".into()];
        r.templates = vec![
            template("lesson:{id}", 0),
            template("course-lessons:{course_id}", 40),
        ];
        r.keys_invalidated = 3000;
        let s = suggest(&figs(vec![r]));
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(s[0].kind, "uncached-template");
        assert_eq!(
            s[0].change,
            "in rules/r.toml:1: keys = [\"course-lessons:{course_id}\"]"
        );
        assert_eq!(s[0].figures["keys_invalidated"], 3000.0);
        assert!(s[0].expected.contains("50%"), "{}", s[0].expected);
    }

    #[test]
    fn rules_that_never_fire_short_ttls_hot_patterns_and_memory() {
        let mut idle = rule("idle");
        idle.invalidations = 0;
        idle.keys_invalidated = 0;
        let mut ttl = rule("course");
        ttl.ttl = Some(60);
        ttl.median_interval_secs = Some(1800.0);
        ttl.intervals = 200;
        let mut pat = rule("catalog");
        pat.patterns = vec!["catalog:page:*".into()];
        pat.pattern_rows = 480;
        pat.memory_bytes = Some(600);
        let mut f = figs(vec![idle, ttl, pat]);
        f.used_memory = Some(800);
        f.maxmemory = Some(1000);
        let s = suggest(&f);
        let kinds: Vec<&str> = s.iter().map(|x| x.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["never-fires", "short-ttl", "pattern-cost", "memory"]
        );
        assert_eq!(s[1].change, "in rules/r.toml:1: ttl = 1800 (and the same timeout where the application caches these keys)");
        assert!(s[1].expected.contains("30.0 to 1"), "{}", s[1].expected);
        assert_eq!(s[2].figures["pattern_invalidations_per_hour"], 20.0);
        assert!(
            s[2].change.contains("tags = [\"catalog\"]"),
            "{}",
            s[2].change
        );
        assert!(
            s[3].finding.contains("80%") && s[3].finding.contains("catalog 75%"),
            "{}",
            s[3].finding
        );
    }

    #[test]
    fn a_rule_firing_on_every_update_gets_the_columns_to_ignore_counted_exactly() {
        use crate::monitor::columns::{ColumnSet, TableColumns};
        let mut r = rule("course");
        r.fires_on_every_update = true;
        r.read_columns = vec!["id".into(), "slug".into()];
        let mut f = figs(vec![r]);
        let set = |c: &[&str], n| ColumnSet {
            columns: c.iter().map(|s| s.to_string()).collect(),
            updates: n,
        };
        f.column_changes.insert(
            "public.t".into(),
            TableColumns {
                compared: 1000,
                sets: vec![
                    set(&["view_count"], 900),
                    set(&["title", "view_count"], 60),
                    set(&["slug"], 40),
                ],
                other: 0,
            },
        );
        let s = suggest(&f);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(s[0].kind, "every-update");
        assert!(
            s[0].change
                .starts_with("in rules/r.toml:1: ignore_changed = [\"view_count\"]"),
            "{}",
            s[0].change
        );
        assert_eq!(s[0].figures["firing_with_ignore_changed"], 100.0);
        assert!(
            s[0].expected.contains("10% of updates"),
            "{}",
            s[0].expected
        );
        assert!(
            s[0].finding.contains("view_count in 96%"),
            "{}",
            s[0].finding
        );
        // A column the keys read is never suggested.
        f.rules[0].read_columns.push("view_count".into());
        assert!(suggest(&f).is_empty());
    }

    #[test]
    fn keys_invalidated_and_never_asked_for_again_are_named_only_when_misses_were_measured() {
        let mut r = rule("reports");
        r.keys_invalidated = 400;
        r.misses = Some(0);
        let s = suggest(&figs(vec![r.clone()]));
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(s[0].kind, "never-read");
        assert_eq!(s[0].figures["keys_invalidated"], 400.0);
        r.misses = None;
        assert!(
            suggest(&figs(vec![r.clone()])).is_empty(),
            "not measured: no judgement"
        );
        r.misses = Some(3);
        assert!(suggest(&figs(vec![r])).is_empty());
    }

    #[test]
    fn quiet_figures_give_no_suggestion() {
        let mut r = rule("course");
        r.ttl = Some(3600);
        r.median_interval_secs = Some(1800.0);
        r.intervals = 100;
        assert!(suggest(&figs(vec![r])).is_empty());
        let mut few = rule("lessons");
        few.key_templates = vec!["a:{id}".into(), "b:{id}".into()];
        few.templates = vec![template("a:{id}", 0), template("b:{id}", 3)];
        few.keys_invalidated = 5;
        assert!(
            suggest(&figs(vec![few])).is_empty(),
            "too few invalidations to judge"
        );
    }
}
