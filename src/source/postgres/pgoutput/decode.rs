//! Decoding one `pgoutput` message (the payload of an XLogData frame) into a [`Message`],
//! with a bounds-checked reader: a malformed payload is an error, never a panic.

use super::*;

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                what,
                needed: n - self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }
    fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(self.i32(what)? as u32)
    }
    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }
    fn lsn(&mut self, what: &'static str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(self.i64(what)? as u64))
    }
    fn cstr(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::Unterminated(what))?;
        let s =
            std::str::from_utf8(&self.buf[..end]).map_err(|_| DecodeError::InvalidUtf8(what))?;
        let s = s.to_string();
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }
    fn len(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let n = self.i32(what)?;
        usize::try_from(n).map_err(|_| DecodeError::NegativeLength(n))
    }
    fn tuple(&mut self) -> Result<RawTuple, DecodeError> {
        let n = self.i16("tuple column count")?;
        let n = usize::try_from(n).map_err(|_| DecodeError::NegativeLength(i32::from(n)))?;
        // Each column needs at least one byte: never pre-allocate beyond what the buffer holds.
        let mut cols = Vec::with_capacity(n.min(self.buf.len()));
        for _ in 0..n {
            let datum = match self.u8("column kind")? {
                b'n' => Datum::Null,
                b'u' => Datum::UnchangedToast,
                b't' | b'b' => {
                    let len = self.len("column length")?;
                    let bytes = self.take(len, "column value")?;
                    let s = std::str::from_utf8(bytes)
                        .map_err(|_| DecodeError::InvalidUtf8("column value"))?;
                    Datum::Text(s.to_string())
                }
                other => return Err(DecodeError::UnknownColumnKind(other)),
            };
            cols.push(datum);
        }
        Ok(RawTuple(cols))
    }
    fn old_tuple(&mut self, marker: u8) -> Result<(OldKind, RawTuple), DecodeError> {
        let kind = match marker {
            b'K' => OldKind::Key,
            b'O' => OldKind::Full,
            other => return Err(DecodeError::UnknownTupleMarker(other)),
        };
        Ok((kind, self.tuple()?))
    }
    fn finish(self, msg: Message) -> Result<Message, DecodeError> {
        if self.buf.is_empty() {
            Ok(msg)
        } else {
            Err(DecodeError::Trailing(self.buf.len()))
        }
    }
}

/// Decodes one `pgoutput` message (the payload of an XLogData frame).
pub fn decode(payload: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader { buf: payload };
    let msg = match r.u8("message type")? {
        b'B' => Message::Begin {
            final_lsn: r.lsn("begin lsn")?,
            commit_time: r.i64("begin timestamp")?,
            xid: r.u32("xid")?,
        },
        b'C' => Message::Commit {
            flags: r.u8("commit flags")?,
            commit_lsn: r.lsn("commit lsn")?,
            end_lsn: r.lsn("end lsn")?,
            commit_time: r.i64("commit timestamp")?,
        },
        b'O' => Message::Origin {
            lsn: r.lsn("origin lsn")?,
            name: r.cstr("origin name")?,
        },
        b'R' => {
            let oid = r.u32("relation oid")?;
            let schema = r.cstr("relation namespace")?;
            let name = r.cstr("relation name")?;
            let replica_identity = r.u8("replica identity")?;
            let n = r.i16("relation column count")?;
            let n = usize::try_from(n).map_err(|_| DecodeError::NegativeLength(i32::from(n)))?;
            let mut columns = Vec::with_capacity(n.min(r.buf.len()));
            for _ in 0..n {
                let flags = r.u8("column flags")?;
                let name = r.cstr("column name")?;
                let type_oid = r.u32("column type")?;
                let _typmod = r.i32("column typmod")?;
                columns.push(Column {
                    name,
                    type_oid,
                    is_key: flags & 1 == 1,
                });
            }
            Message::Relation(Relation {
                oid,
                schema,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type {
            oid: r.u32("type oid")?,
            schema: r.cstr("type namespace")?,
            name: r.cstr("type name")?,
        },
        b'I' => {
            let rel = r.u32("relation id")?;
            match r.u8("new tuple marker")? {
                b'N' => Message::Insert {
                    rel,
                    new: r.tuple()?,
                },
                other => return Err(DecodeError::UnknownTupleMarker(other)),
            }
        }
        b'U' => {
            let rel = r.u32("relation id")?;
            let mut marker = r.u8("tuple marker")?;
            let mut old = None;
            if marker != b'N' {
                old = Some(r.old_tuple(marker)?);
                marker = r.u8("new tuple marker")?;
            }
            if marker != b'N' {
                return Err(DecodeError::UnknownTupleMarker(marker));
            }
            Message::Update {
                rel,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let rel = r.u32("relation id")?;
            let marker = r.u8("old tuple marker")?;
            Message::Delete {
                rel,
                old: r.old_tuple(marker)?,
            }
        }
        b'T' => {
            let n = r.len("truncate relation count")?;
            let options = r.u8("truncate options")?;
            let mut rels = Vec::with_capacity(n.min(r.buf.len() / 4));
            for _ in 0..n {
                rels.push(r.u32("truncated relation id")?);
            }
            Message::Truncate { options, rels }
        }
        b'M' => {
            let flags = r.u8("message flags")?;
            let lsn = r.lsn("message lsn")?;
            let prefix = r.cstr("message prefix")?;
            let len = r.len("message length")?;
            let content = r.take(len, "message content")?.to_vec();
            Message::LogicalMessage {
                transactional: flags & 1 == 1,
                lsn,
                prefix,
                content,
            }
        }
        other => return Err(DecodeError::UnknownMessage(other)),
    };
    r.finish(msg)
}
