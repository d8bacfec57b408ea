//! Encoders for building `pgoutput` payloads in tests, benchmarks and fuzz seeds: the
//! inverse of [`super::decode`].

use super::*;

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

pub fn begin(final_lsn: u64, time: i64, xid: u32) -> Vec<u8> {
    let mut o = vec![b'B'];
    o.extend_from_slice(&final_lsn.to_be_bytes());
    o.extend_from_slice(&time.to_be_bytes());
    o.extend_from_slice(&xid.to_be_bytes());
    o
}

pub fn commit(commit_lsn: u64, end_lsn: u64, time: i64) -> Vec<u8> {
    let mut o = vec![b'C', 0];
    o.extend_from_slice(&commit_lsn.to_be_bytes());
    o.extend_from_slice(&end_lsn.to_be_bytes());
    o.extend_from_slice(&time.to_be_bytes());
    o
}

pub fn relation(rel: &Relation) -> Vec<u8> {
    let mut o = vec![b'R'];
    o.extend_from_slice(&rel.oid.to_be_bytes());
    cstr(&mut o, &rel.schema);
    cstr(&mut o, &rel.name);
    o.push(rel.replica_identity);
    o.extend_from_slice(&(rel.columns.len() as i16).to_be_bytes());
    for c in &rel.columns {
        o.push(u8::from(c.is_key));
        cstr(&mut o, &c.name);
        o.extend_from_slice(&c.type_oid.to_be_bytes());
        o.extend_from_slice(&(-1i32).to_be_bytes());
    }
    o
}

pub fn tuple(out: &mut Vec<u8>, t: &[Datum]) {
    out.extend_from_slice(&(t.len() as i16).to_be_bytes());
    for d in t {
        match d {
            Datum::Null | Datum::Unknown => out.push(b'n'),
            Datum::UnchangedToast => out.push(b'u'),
            Datum::Text(s) => {
                out.push(b't');
                out.extend_from_slice(&(s.len() as i32).to_be_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        }
    }
}

pub fn insert(rel: u32, new: &[Datum]) -> Vec<u8> {
    let mut o = vec![b'I'];
    o.extend_from_slice(&rel.to_be_bytes());
    o.push(b'N');
    tuple(&mut o, new);
    o
}

pub fn update(rel: u32, old: Option<(OldKind, &[Datum])>, new: &[Datum]) -> Vec<u8> {
    let mut o = vec![b'U'];
    o.extend_from_slice(&rel.to_be_bytes());
    if let Some((kind, t)) = old {
        o.push(if kind == OldKind::Key { b'K' } else { b'O' });
        tuple(&mut o, t);
    }
    o.push(b'N');
    tuple(&mut o, new);
    o
}

pub fn delete(rel: u32, kind: OldKind, old: &[Datum]) -> Vec<u8> {
    let mut o = vec![b'D'];
    o.extend_from_slice(&rel.to_be_bytes());
    o.push(if kind == OldKind::Key { b'K' } else { b'O' });
    tuple(&mut o, old);
    o
}

pub fn truncate(rels: &[u32]) -> Vec<u8> {
    let mut o = vec![b'T'];
    o.extend_from_slice(&(rels.len() as i32).to_be_bytes());
    o.push(0);
    for r in rels {
        o.extend_from_slice(&r.to_be_bytes());
    }
    o
}
