use super::*;
use crate::source::{Change, Column, Datum, Op, Relation, Tuple};
use proptest::prelude::*;
use std::sync::Arc;

fn change(op: Op, old: Option<Vec<Datum>>, new: Option<Vec<Datum>>) -> Change {
    let col = |n: &str, t: u32| Column {
        name: n.into(),
        type_oid: t,
        is_key: n == "id",
    };
    Change {
        relation: Arc::new(Relation {
            oid: 1,
            schema: "public".into(),
            name: "courses".into(),
            replica_identity: b'f',
            columns: vec![
                col("id", oid::INT4),
                col("published", oid::BOOL),
                col("status", oid::TEXT),
                col("price", oid::NUMERIC),
            ],
        }),
        op,
        old: old.map(Tuple),
        new: new.map(Tuple),
        undecodable: None,
    }
}

fn t(s: &str) -> Datum {
    Datum::Text(s.into())
}

fn eval(cond: &str, c: &Change) -> Truth {
    Condition::parse(cond).unwrap().eval(&RowView::new(c))
}

fn types(name: &str) -> Option<u32> {
    match name {
        "id" => Some(oid::INT4),
        "published" => Some(oid::BOOL),
        "status" => Some(oid::TEXT),
        "price" => Some(oid::NUMERIC),
        _ => None,
    }
}

#[test]
fn the_documented_example() {
    let up = change(
        Op::Update,
        Some(vec![t("1"), t("false"), t("draft"), t("10.00")]),
        Some(vec![t("1"), t("true"), t("live"), t("10.00")]),
    );
    assert_eq!(eval("new.published or old.published", &up), Truth::True);
    let ins = change(
        Op::Insert,
        None,
        Some(vec![t("1"), t("false"), t("a"), t("1")]),
    );
    // No old row: old.published is null, which is false.
    assert_eq!(eval("new.published or old.published", &ins), Truth::False);
}

#[test]
fn comparisons_in_and_null_checks() {
    let c = change(
        Op::Update,
        Some(vec![t("1"), t("true"), t("draft"), t("10.00")]),
        Some(vec![t("1"), t("true"), Datum::Null, t("12.5")]),
    );
    assert_eq!(eval("new.price > old.price", &c), Truth::True);
    assert_eq!(
        eval("new.price >= 12.5 and old.price < 11", &c),
        Truth::True
    );
    assert_eq!(eval("old.status in ('draft', 'review')", &c), Truth::True);
    assert_eq!(eval("old.status not in ['draft']", &c), Truth::False);
    assert_eq!(eval("new.status is null", &c), Truth::True);
    assert_eq!(eval("new.status == 'x'", &c), Truth::False);
    assert_eq!(eval("not (new.status is not null)", &c), Truth::True);
    assert_eq!(eval("NEW.published = TRUE AND id <> 2", &c), Truth::True);
}

#[test]
fn unknown_values_make_the_condition_unknown_unless_decided() {
    let c = change(
        Op::Update,
        Some(vec![t("1"), Datum::Unknown, Datum::Unknown, Datum::Unknown]),
        Some(vec![t("1"), t("false"), t("a"), t("1")]),
    );
    assert_eq!(eval("old.published", &c), Truth::Unknown);
    assert_eq!(eval("new.published or old.published", &c), Truth::Unknown);
    assert_eq!(eval("new.published and old.published", &c), Truth::False);
    assert_eq!(eval("old.price > 3 or new.status == 'a'", &c), Truth::True);
}

#[test]
fn parse_errors_point_at_the_problem() {
    let e = Condition::parse("new.published or").unwrap_err();
    assert_eq!(e.offset, 16);
    let e = Condition::parse("row.x").unwrap_err();
    assert!(e.message.contains("unknown row"), "{e}");
    let e = Condition::parse("new.a new.b").unwrap_err();
    assert_eq!(e.offset, 6);
    assert!(Condition::parse("'abc").is_err());
    assert!(Condition::parse("a in (b)").is_err());
    assert!(Condition::parse("").is_err());
    assert!(Condition::parse(&"not ".repeat(200)).is_err());
    assert!(Condition::parse(&format!("{}x{}", "(".repeat(200), ")".repeat(200))).is_err());
}

#[test]
fn type_errors() {
    let check = |s: &str| Condition::parse(s).unwrap().check(&types);
    assert!(check("new.published or old.published").is_ok());
    assert!(check("new.price > 3 and status in ('a', 'b')").is_ok());
    assert!(check("new.title == 'x'")
        .unwrap_err()
        .message
        .contains("does not exist"));
    assert!(check("new.status > 3")
        .unwrap_err()
        .message
        .contains("cannot compare text with a number"));
    assert!(check("new.price")
        .unwrap_err()
        .message
        .contains("not true/false"));
    assert!(check("new.status and new.published").is_err());
    assert!(check("new.status == null")
        .unwrap_err()
        .message
        .contains("is null"));
    assert!(check("new.published < true").is_err());
}

fn arb_expr() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("new.published".to_string()),
        Just("old.published".to_string()),
        Just("new.price > 5".to_string()),
        Just("old.status in ('a', 'b')".to_string()),
        Just("new.status is null".to_string()),
        Just("true".to_string()),
    ];
    leaf.prop_recursive(4, 32, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) and ({b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) or ({b})")),
            inner.prop_map(|a| format!("not ({a})")),
        ]
    })
}

fn datum_bool() -> impl Strategy<Value = Datum> {
    prop_oneof![
        Just(t("true")),
        Just(t("false")),
        Just(Datum::Null),
        Just(Datum::Unknown)
    ]
}

proptest! {
    #[test]
    fn parse_never_panics(s in "\\PC{0,60}") {
        let _ = Condition::parse(&s);
    }

    #[test]
    fn well_typed_conditions_check_and_evaluate(
        e in arb_expr(), old_pub in datum_bool(), new_pub in datum_bool(),
    ) {
        let cond = Condition::parse(&e).unwrap();
        prop_assert!(cond.check(&types).is_ok());
        let c = change(
            Op::Update,
            Some(vec![t("1"), old_pub, t("a"), t("3")]),
            Some(vec![t("1"), new_pub, Datum::Null, t("7")]),
        );
        let _ = cond.eval(&RowView::new(&c));
    }

    #[test]
    fn not_inverts_known_results(e in arb_expr(), old_pub in datum_bool(), new_pub in datum_bool()) {
        let c = change(
            Op::Update,
            Some(vec![t("1"), old_pub, t("a"), t("3")]),
            Some(vec![t("1"), new_pub, Datum::Null, t("7")]),
        );
        let row = RowView::new(&c);
        let a = Condition::parse(&e).unwrap().eval(&row);
        let b = Condition::parse(&format!("not ({e})")).unwrap().eval(&row);
        prop_assert_eq!(a.not(), b);
    }
}
