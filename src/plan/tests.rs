use super::*;
use crate::rules::parse_file;
use crate::source::{Lsn, Relation, Tuple};
use chrono::Utc;
use std::path::Path;
use std::sync::Arc;

fn rules() -> RuleSet {
    RuleSet::new(
        parse_file(
            Path::new("r.toml"),
            r#"
[[rule]]
name = "course-detail"
table = "public.courses"
changed = ["title", "slug"]
keys = ["course:{id}", "course-slug:{old.slug}", "course-slug:{new.slug}"]
patterns = ["catalog:page:*"]
"#,
        )
        .unwrap(),
    )
}

fn rel() -> Arc<Relation> {
    Relation::text_courses(&["id", "slug", "title", "views"])
}

fn row(v: &[&str]) -> Option<Tuple> {
    Some(Tuple(
        v.iter().map(|s| Datum::Text(s.to_string())).collect(),
    ))
}

fn cx(prefix: &str) -> Context {
    Context {
        key_prefix: prefix.into(),
        primary_keys: HashMap::from([("public.courses".to_string(), vec!["id".to_string()])]),
        disabled: Default::default(),
        tables_by_oid: HashMap::new(),
        whole_families: false,
        conservative: Default::default(),
    }
}

fn tx(changes: Vec<Change>) -> Transaction {
    Transaction {
        xid: 1,
        commit_lsn: Lsn(10),
        end_lsn: Lsn(20),
        commit_time: Utc::now(),
        changes,
    }
}

fn change(op: Op, old: Option<Tuple>, new: Option<Tuple>) -> Change {
    Change {
        relation: rel(),
        op,
        old,
        new,
        undecodable: None,
    }
}

#[test]
fn slug_change_invalidates_old_and_new_keys_once() {
    let up = change(
        Op::Update,
        row(&["1", "rust", "T", "0"]),
        row(&["1", "rust-2", "T", "0"]),
    );
    let plan = build(&rules(), &cx(":1:"), &[tx(vec![up.clone(), up])]);
    let keys: Vec<&str> = plan.keys().collect();
    assert_eq!(
        keys,
        [
            ":1:course:1",
            ":1:course-slug:rust",
            ":1:course-slug:rust-2"
        ]
    );
    assert_eq!(plan.patterns().collect::<Vec<_>>(), [":1:catalog:page:*"]);
    assert_eq!(plan.actions[0].causes, 2);
    assert_eq!(
        plan.actions[0].reason,
        "public.courses update id=1 lsn=0/A rule=course-detail"
    );
}

#[test]
fn changed_filter_ignores_unwatched_columns() {
    let up = change(
        Op::Update,
        row(&["1", "rust", "T", "0"]),
        row(&["1", "rust", "T", "99"]),
    );
    assert!(build(&rules(), &cx(""), &[tx(vec![up])]).actions.is_empty());
}

#[test]
fn insert_skips_old_keys() {
    let ins = change(Op::Insert, None, row(&["5", "go", "G", "0"]));
    let plan = build(&rules(), &cx(""), &[tx(vec![ins])]);
    assert_eq!(
        plan.keys().collect::<Vec<_>>(),
        ["course:5", "course-slug:go"]
    );
    assert_eq!(plan.skipped, 1);
}

#[test]
fn truncate_and_undecodable_invalidate_every_family() {
    let mut t = change(Op::Truncate, None, None);
    let plan = build(&rules(), &cx(""), &[tx(vec![t.clone()])]);
    assert_eq!(
        plan.patterns().collect::<Vec<_>>(),
        ["course:*", "course-slug:*", "catalog:page:*"]
    );
    t.undecodable = Some("bad".into());
    t.relation = Arc::new(Relation {
        schema: String::new(),
        ..(*rel()).clone()
    });
    let plan = build(&rules(), &cx(""), &[tx(vec![t])]);
    assert_eq!(plan.undecodable, 1);
    assert_eq!(plan.patterns().count(), 3);
}

fn warm_rules(strategy: &str) -> RuleSet {
    let warm = if strategy == "refresh" {
        "query = 'SELECT title FROM courses WHERE id = $1'\nargs = ['id']\n"
    } else {
        ""
    };
    RuleSet::new(
            parse_file(
                Path::new("w.toml"),
                &format!(
                    "[[rule]]\nname='w'\ntable='public.courses'\nstrategy='{strategy}'\nttl=60\n[rule.warm]\nkey='course:{{id}}'\n{warm}"
                ),
            )
            .unwrap(),
        )
}

#[test]
fn refresh_plans_marks_and_one_warm_job_per_key() {
    let up = change(
        Op::Update,
        row(&["1", "a", "T", "0"]),
        row(&["1", "a", "U", "0"]),
    );
    let mut later = tx(vec![up.clone()]);
    later.commit_lsn = Lsn(30);
    let plan = build(&warm_rules("refresh"), &cx(":1:"), &[tx(vec![up]), later]);
    assert_eq!(
        plan.keys().collect::<Vec<_>>(),
        [":1:course:1"],
        "the warm key is invalidated"
    );
    assert_eq!(
        plan.marks,
        [
            (":1:cw:v:course:1".to_string(), Version(30)),
            (":1:cw:v:max:w".to_string(), Version(30))
        ]
    );
    assert_eq!(plan.warms.len(), 1);
    assert_eq!(plan.warms[0].version, Version(30));
    assert_eq!(
        plan.warms[0].fill,
        Fill::Query {
            args: vec![Some("1".into())]
        }
    );
    // A delete leaves the key deleted: no warm job, but still a mark.
    let del = change(Op::Delete, row(&["1", "a", "U", "0"]), None);
    let plan = build(&warm_rules("refresh"), &cx(""), &[tx(vec![del])]);
    assert!(plan.warms.is_empty());
    assert_eq!(plan.marks.len(), 2);
}

#[test]
fn write_through_renders_the_new_row() {
    let ins = change(Op::Insert, None, row(&["1", "a", "T", "0"]));
    let plan = build(&warm_rules("write-through"), &cx(""), &[tx(vec![ins])]);
    let Fill::Value(v) = &plan.warms[0].fill else {
        panic!("a value")
    };
    let v: serde_json::Value = serde_json::from_str(v).unwrap();
    assert_eq!(v["slug"], "a");
    assert_eq!(plan.warms[0].ttl, Some(60));
}

#[test]
fn truncate_fences_the_rule_family() {
    let plan = build(
        &warm_rules("refresh"),
        &cx("p:"),
        &[tx(vec![change(Op::Truncate, None, None)])],
    );
    assert_eq!(plan.marks, [("p:cw:v:rule:w".to_string(), Version(10))]);
    assert!(plan.warms.is_empty());
}

#[test]
fn a_renamed_tables_changes_reach_its_rules_by_identity() {
    let ins = |name: &str| {
        let mut c = change(Op::Insert, None, row(&["5", "go", "G", "0"]));
        c.relation = Arc::new(Relation {
            name: name.into(),
            ..(*rel()).clone()
        });
        c
    };
    let mut cx = cx("");
    assert!(build(&rules(), &cx, &[tx(vec![ins("things")])])
        .actions
        .is_empty());
    cx.tables_by_oid = HashMap::from([(1, "public.courses".to_string())]);
    let plan = build(&rules(), &cx, &[tx(vec![ins("things")])]);
    assert_eq!(
        plan.keys().collect::<Vec<_>>(),
        ["course:5", "course-slug:go"]
    );
}

#[test]
fn other_tables_are_ignored() {
    let mut c = change(Op::Insert, None, row(&["5", "go", "G", "0"]));
    c.relation = Arc::new(Relation {
        name: "lessons".into(),
        ..(*rel()).clone()
    });
    assert!(build(&rules(), &cx(""), &[tx(vec![c])]).actions.is_empty());
}
