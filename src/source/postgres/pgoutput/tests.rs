use super::encode::*;
use super::*;
use proptest::prelude::*;

fn courses() -> Relation {
    Relation {
        oid: 16400,
        schema: "public".into(),
        name: "courses".into(),
        replica_identity: b'd',
        columns: vec![
            Column {
                name: "id".into(),
                type_oid: 23,
                is_key: true,
            },
            Column {
                name: "slug".into(),
                type_oid: 25,
                is_key: false,
            },
            Column {
                name: "body".into(),
                type_oid: 25,
                is_key: false,
            },
        ],
    }
}

fn t(s: &str) -> Datum {
    Datum::Text(s.into())
}

fn run(msgs: &[Vec<u8>]) -> Vec<Transaction> {
    let mut a = Assembler::new();
    let mut out = Vec::new();
    for m in msgs {
        if let Assembled::Committed(tx) = a.feed(m).unwrap() {
            out.push(tx);
        }
    }
    out
}

#[test]
fn decodes_relation_round_trip() {
    let rel = courses();
    assert_eq!(decode(&relation(&rel)).unwrap(), Message::Relation(rel));
}

#[test]
fn assembles_a_transaction() {
    let rel = courses();
    let txs = run(&[
        relation(&rel),
        begin(100, 0, 7),
        insert(16400, &[t("1"), t("a"), Datum::Null]),
        update(16400, None, &[t("1"), t("b"), Datum::UnchangedToast]),
        delete(16400, OldKind::Key, &[t("1"), Datum::Null, Datum::Null]),
        commit(100, 120, 5),
    ]);
    assert_eq!(txs.len(), 1);
    let tx = &txs[0];
    assert_eq!((tx.xid, tx.commit_lsn, tx.end_lsn), (7, Lsn(100), Lsn(120)));
    assert_eq!(tx.changes.len(), 3);
    // Update without old tuple: key known from the new row, other columns unknown.
    let up = &tx.changes[1];
    assert_eq!(
        up.old.as_ref().unwrap().0,
        vec![t("1"), Datum::Unknown, Datum::Unknown]
    );
    assert_eq!(up.new.as_ref().unwrap().0[2], Datum::UnchangedToast);
    // Key-only delete: non-key columns are unknown, never NULL.
    let del = &tx.changes[2];
    assert_eq!(
        del.old.as_ref().unwrap().0,
        vec![t("1"), Datum::Unknown, Datum::Unknown]
    );
}

#[test]
fn unchanged_toast_is_filled_from_full_old_tuple() {
    let mut rel = courses();
    rel.replica_identity = b'f';
    let txs = run(&[
        relation(&rel),
        begin(1, 0, 1),
        update(
            16400,
            Some((OldKind::Full, &[t("1"), t("a"), t("long")])),
            &[t("1"), t("b"), Datum::UnchangedToast],
        ),
        commit(1, 2, 0),
    ]);
    assert_eq!(
        txs[0].changes[0].new.as_ref().unwrap().0,
        vec![t("1"), t("b"), t("long")]
    );
}

#[test]
fn truncate_yields_one_change_per_table() {
    let rel = courses();
    let txs = run(&[
        relation(&rel),
        begin(1, 0, 1),
        truncate(&[16400]),
        commit(1, 2, 0),
    ]);
    assert_eq!(txs[0].changes[0].op, Op::Truncate);
    assert!(txs[0].changes[0].undecodable.is_none());
}

#[test]
fn garbage_inside_a_transaction_becomes_undecodable_change() {
    let rel = courses();
    let mut bad = insert(16400, &[t("1")]);
    bad.push(0xff); // trailing byte
    let txs = run(&[relation(&rel), begin(1, 0, 1), bad, commit(1, 2, 0)]);
    let c = &txs[0].changes[0];
    assert!(c.undecodable.is_some());
    assert_eq!(c.relation.name, "courses");
}

#[test]
fn unknown_relation_is_undecodable_not_a_panic() {
    let txs = run(&[begin(1, 0, 1), insert(999, &[t("1")]), commit(1, 2, 0)]);
    assert!(txs[0].changes[0].undecodable.is_some());
}

#[test]
fn ignores_origin_type_and_messages() {
    let mut origin = vec![b'O'];
    origin.extend_from_slice(&5u64.to_be_bytes());
    origin.extend_from_slice(b"node\0");
    let mut ty = vec![b'Y'];
    ty.extend_from_slice(&77u32.to_be_bytes());
    ty.extend_from_slice(b"public\0mood\0");
    let txs = run(&[begin(1, 0, 1), origin, ty, commit(1, 2, 0)]);
    assert!(txs[0].changes.is_empty());
}

fn datum() -> impl Strategy<Value = Datum> {
    prop_oneof![
        Just(Datum::Null),
        Just(Datum::UnchangedToast),
        ".{0,20}".prop_map(Datum::Text),
    ]
}

proptest! {
    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode(&bytes);
        let mut a = Assembler::new();
        let _ = a.feed(&bytes);
    }

    #[test]
    fn insert_round_trips(rel: u32, cols in proptest::collection::vec(datum(), 0..12)) {
        let msg = decode(&insert(rel, &cols)).unwrap();
        prop_assert_eq!(msg, Message::Insert { rel, new: RawTuple(cols) });
    }

    #[test]
    fn truncated_payloads_are_errors(cols in proptest::collection::vec(datum(), 1..8), cut in 1usize..50) {
        let full = update(1, Some((OldKind::Full, &cols)), &cols);
        let cut = cut.min(full.len() - 1);
        prop_assert!(decode(&full[..full.len() - cut]).is_err());
    }
}

/// Feeds messages leniently at positions 1, 2, 3, …; returns what each produced.
fn run_lenient(a: &mut Assembler, msgs: &[Vec<u8>]) -> Vec<Assembled> {
    msgs.iter()
        .enumerate()
        .map(|(i, m)| a.feed_lenient(m, Lsn(i as u64 + 1), chrono::Utc::now()))
        .collect()
}

#[test]
fn an_undecodable_message_outside_a_transaction_is_poisoned_not_an_error() {
    let mut a = Assembler::new();
    let out = run_lenient(&mut a, &[relation(&courses()), vec![b'B', 1, 2]]);
    let Assembled::Poisoned {
        error,
        conservative,
    } = &out[1]
    else {
        panic!("poisoned: {out:?}")
    };
    assert!(error.contains("outside a transaction"), "{error}");
    assert_eq!(conservative.commit_lsn, Lsn(2));
    assert_eq!(conservative.end_lsn, Lsn(3), "the position can pass it");
    let c = &conservative.changes[0];
    assert!(c.undecodable.is_some());
    assert!(
        c.relation.schema.is_empty(),
        "unknown relation: every rule's families"
    );
    assert!(!a.in_transaction());
}

#[test]
fn a_second_begin_closes_the_cut_transaction_conservatively_and_opens_the_new_one() {
    let rel = courses();
    let mut a = Assembler::new();
    let out = run_lenient(
        &mut a,
        &[
            relation(&rel),
            begin(100, 0, 7),
            insert(16400, &[t("1"), t("a"), Datum::Null]),
            begin(200, 0, 8),
            insert(16400, &[t("2"), t("b"), Datum::Null]),
            commit(200, 210, 0),
        ],
    );
    let Assembled::Poisoned { conservative, .. } = &out[3] else {
        panic!("poisoned: {out:?}")
    };
    assert_eq!(conservative.changes.len(), 2, "the cut change and a marker");
    assert_eq!(conservative.changes[0].op, Op::Insert);
    let Assembled::Committed(tx) = &out[5] else {
        panic!("the new transaction commits: {out:?}")
    };
    assert_eq!((tx.xid, tx.changes.len()), (8, 1));
}

#[test]
fn a_malformed_relation_message_is_forgotten_so_later_rows_are_not_misread() {
    let rel = courses();
    let mut a = Assembler::new();
    let mut bad = relation(&rel);
    bad.truncate(8);
    let out = run_lenient(
        &mut a,
        &[
            relation(&rel),
            bad,
            begin(100, 0, 7),
            insert(16400, &[t("1"), t("a"), Datum::Null]),
            commit(100, 110, 0),
        ],
    );
    let Assembled::Poisoned { conservative, .. } = &out[1] else {
        panic!("poisoned: {out:?}")
    };
    assert_eq!(conservative.changes[0].relation.name, "courses");
    let Assembled::Committed(tx) = &out[4] else {
        panic!("{out:?}")
    };
    assert!(
        tx.changes[0].undecodable.is_some(),
        "the relation is no longer trusted"
    );
}

#[test]
fn columns_no_rule_reads_are_dropped_as_soon_as_decoded() {
    let rel = courses();
    let mut a = Assembler::new();
    let filter = crate::source::ColumnFilter {
        tables: std::collections::HashMap::from([(
            "public.courses".to_string(),
            Some(std::collections::BTreeSet::from(["slug".to_string()])),
        )]),
    };
    a.set_filter(Arc::new(filter));
    let mut out = Vec::new();
    for m in [
        relation(&rel),
        begin(100, 0, 7),
        insert(16400, &[t("1"), t("a"), t("a very long body")]),
        commit(100, 110, 0),
    ] {
        if let Ok(Assembled::Committed(tx)) = a.feed(&m) {
            out.push(tx);
        }
    }
    let new = out[0].changes[0].new.as_ref().unwrap();
    assert_eq!(
        new.0,
        [t("1"), t("a"), Datum::Unknown],
        "the key stays, body goes"
    );
}
