//! The PostgreSQL streaming replication sub-protocol, spoken directly over a socket.
//!
//! `tokio-postgres` has no CopyBoth support, so this module opens its own connection with
//! `replication=database`, authenticates (trust, cleartext, MD5 or SCRAM-SHA-256 through
//! `postgres-protocol`), runs `START_REPLICATION … LOGICAL` and then reads XLogData and
//! keepalive frames and writes standby status updates. It owns no policy: what position to
//! confirm is the caller's decision. [`ReplicationConnection::recv`] is cancellation-safe
//! (bytes are buffered before any frame is consumed), so it can sit in a `select!`.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::source::{pg_now_micros, Lsn};
use crate::sql::{quote_ident, quote_literal};

/// Errors of the replication connection.
#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    #[error("replication connection I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("server error {code}: {message}")]
    Server { code: String, message: String },
    #[error("replication protocol: {0}")]
    Protocol(String),
    #[error("authentication: {0}")]
    Auth(String),
    #[error("replication stream ended by the server")]
    Closed,
    #[error("TLS: {0}")]
    Tls(String),
}

impl ReplError {
    /// SQLSTATE of a server error, if this is one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ReplError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One frame of the replication stream.
#[derive(Debug)]
pub enum ReplMessage {
    /// WAL data: a `pgoutput` message starting at `start`.
    XLogData { start: Lsn, end: Lsn, data: Bytes },
    /// The server's heartbeat; `reply` asks for an immediate status update.
    Keepalive { wal_end: Lsn, reply: bool },
}

/// A connection in replication mode.
pub struct ReplicationConnection {
    io: Box<dyn Io>,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

struct Frame {
    tag: u8,
    body: Bytes,
}

/// The largest frame accepted: PostgreSQL never sends a message above 1 GiB (its allocation
/// limit) plus headers.
const MAX_FRAME: usize = (1 << 30) + (1 << 20);
/// How much buffer a partial frame may reserve ahead of its data.
const RESERVE_STEP: usize = 1 << 20;

fn parse_frame(buf: &mut BytesMut) -> Result<Option<Frame>, ReplError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len < 4 {
        return Err(ReplError::Protocol(format!("invalid frame length {len}")));
    }
    if len > MAX_FRAME {
        return Err(ReplError::Protocol(format!(
            "frame of {len} bytes exceeds the {MAX_FRAME}-byte limit"
        )));
    }
    if buf.len() < len + 1 {
        // Grow with the data that arrives, not by what a (possibly corrupt) header declares.
        buf.reserve((len + 1 - buf.len()).min(RESERVE_STEP));
        return Ok(None);
    }
    let mut frame = buf.split_to(len + 1).freeze();
    let tag = frame[0];
    frame.advance(5);
    Ok(Some(Frame { tag, body: frame }))
}

/// Reads the fields of an ErrorResponse/NoticeResponse body.
fn error_fields(body: &[u8]) -> (String, String) {
    let mut code = String::new();
    let mut message = String::new();
    let mut detail = String::new();
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        let value = String::from_utf8_lossy(&tail[..end]).into_owned();
        match kind {
            b'C' => code = value,
            b'M' => message = value,
            b'D' => detail = value,
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    if !detail.is_empty() {
        message = format!("{message} ({detail})");
    }
    (code, message)
}

fn server_error(body: &[u8]) -> ReplError {
    let (code, message) = error_fields(body);
    ReplError::Server { code, message }
}

fn be_u64(b: &[u8], at: usize) -> Result<u64, ReplError> {
    b.get(at..at + 8)
        .map(|s| {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            u64::from_be_bytes(a)
        })
        .ok_or_else(|| ReplError::Protocol("short replication frame".into()))
}

/// A socket before TLS is negotiated.
enum Connected {
    Tcp(tokio::net::TcpStream, String),
    Plain(Box<dyn Io>),
}

/// PostgreSQL's `SSLRequest` code.
const SSL_REQUEST: u32 = 80_877_103;

/// Asks the server for TLS as `tls` says (libpq's `sslmode`): encrypts when it agrees, goes on
/// in the clear only when TLS is not required.
async fn negotiate_tls(
    mut tcp: tokio::net::TcpStream,
    host: &str,
    tls: &crate::tls::PgTls,
) -> Result<Box<dyn Io>, ReplError> {
    let Some(config) = &tls.config else {
        if tls.mode.required() {
            return Err(ReplError::Tls(
                "TLS is required and its settings did not load".into(),
            ));
        }
        return Ok(Box::new(tcp));
    };
    let mut request = [0u8; 8];
    request[..4].copy_from_slice(&8u32.to_be_bytes());
    request[4..].copy_from_slice(&SSL_REQUEST.to_be_bytes());
    tcp.write_all(&request).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => {
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| ReplError::Tls(format!("host name {host:?}: {e}")))?;
            let stream = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| ReplError::Tls(e.to_string()))?;
            Ok(Box::new(stream))
        }
        b'N' if !tls.mode.required() => Ok(Box::new(tcp)),
        b'N' => Err(ReplError::Tls(
            "the server does not accept TLS connections, and the URL's sslmode requires TLS".into(),
        )),
        other => Err(ReplError::Protocol(format!(
            "unexpected answer {other:#x} to the TLS request"
        ))),
    }
}

impl ReplicationConnection {
    /// Connects and authenticates with `replication=database` using the parameters of a
    /// libpq-style URL already parsed by tokio-postgres.
    pub async fn connect(
        config: &crate::db::PgConfig,
        timeout: Duration,
    ) -> Result<Self, ReplError> {
        let user = config
            .get_user()
            .ok_or_else(|| ReplError::Protocol("the PostgreSQL URL names no user".into()))?
            .to_string();
        let dbname = config.get_dbname().unwrap_or(&user).to_string();
        let ports = config.get_ports();
        let mut last_err = None;
        for (i, host) in config.get_hosts().iter().enumerate() {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            let io: std::io::Result<Connected> = match host {
                tokio_postgres::config::Host::Tcp(h) => tokio::time::timeout(
                    timeout,
                    tokio::net::TcpStream::connect((h.as_str(), port)),
                )
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
                .map(|s| {
                    let _ = s.set_nodelay(true);
                    // While idle the server rarely writes (we report every few seconds), so a
                    // half-open connection is only noticed through TCP keepalives.
                    let keepalive = socket2::TcpKeepalive::new()
                        .with_time(Duration::from_secs(10))
                        .with_interval(Duration::from_secs(5))
                        .with_retries(3);
                    let _ = socket2::SockRef::from(&s).set_tcp_keepalive(&keepalive);
                    Connected::Tcp(s, h.clone())
                }),
                tokio_postgres::config::Host::Unix(dir) => {
                    // No TLS over a Unix socket (as libpq).
                    let path = dir.join(format!(".s.PGSQL.{port}"));
                    tokio::net::UnixStream::connect(path)
                        .await
                        .map(|s| Connected::Plain(Box::new(s)))
                }
            };
            let io = match io {
                Ok(Connected::Tcp(tcp, host)) => negotiate_tls(tcp, &host, &config.tls).await,
                Ok(Connected::Plain(io)) => Ok(io),
                Err(e) => Err(ReplError::Io(e)),
            };
            match io {
                Ok(io) => {
                    let mut conn = ReplicationConnection {
                        io,
                        rbuf: BytesMut::with_capacity(64 * 1024),
                        wbuf: BytesMut::with_capacity(1024),
                    };
                    conn.startup(&user, &dbname, config.get_password()).await?;
                    return Ok(conn);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err
            .unwrap_or_else(|| ReplError::Protocol("the PostgreSQL URL names no host".into())))
    }

    async fn flush(&mut self) -> Result<(), ReplError> {
        self.io.write_all(&self.wbuf).await?;
        self.io.flush().await?;
        self.wbuf.clear();
        Ok(())
    }

    async fn read_frame(&mut self) -> Result<Frame, ReplError> {
        loop {
            if let Some(frame) = parse_frame(&mut self.rbuf)? {
                return Ok(frame);
            }
            if self.io.read_buf(&mut self.rbuf).await? == 0 {
                return Err(ReplError::Closed);
            }
        }
    }

    async fn startup(
        &mut self,
        user: &str,
        dbname: &str,
        password: Option<&[u8]>,
    ) -> Result<(), ReplError> {
        let params = [
            ("user", user),
            ("database", dbname),
            ("replication", "database"),
            ("application_name", "cachewarden"),
            ("client_encoding", "UTF8"),
            // Stable text output for values that end up in keys (see `canonical_text`).
            (
                "options",
                "-c TimeZone=UTC -c DateStyle=ISO,YMD -c IntervalStyle=postgres",
            ),
        ];
        frontend::startup_message(params.iter().copied(), &mut self.wbuf)?;
        self.flush().await?;
        let need_password =
            || ReplError::Auth("the server asks for a password and the URL has none".into());
        let mut scram: Option<sasl::ScramSha256> = None;
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                b'R' => {
                    let body = &frame.body[..];
                    let kind = body
                        .get(..4)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                        .ok_or_else(|| {
                            ReplError::Protocol("short authentication message".into())
                        })?;
                    match kind {
                        0 => {}
                        3 => {
                            let pw = password.ok_or_else(need_password)?;
                            frontend::password_message(pw, &mut self.wbuf)?;
                            self.flush().await?;
                        }
                        5 => {
                            let pw = password.ok_or_else(need_password)?;
                            let salt: [u8; 4] = body
                                .get(4..8)
                                .and_then(|s| s.try_into().ok())
                                .ok_or_else(|| ReplError::Protocol("short MD5 salt".into()))?;
                            let hash = md5_hash(user.as_bytes(), pw, salt);
                            frontend::password_message(hash.as_bytes(), &mut self.wbuf)?;
                            self.flush().await?;
                        }
                        10 => {
                            let pw = password.ok_or_else(need_password)?;
                            let mechanisms: Vec<&[u8]> = body[4..]
                                .split(|&b| b == 0)
                                .filter(|m| !m.is_empty())
                                .collect();
                            if !mechanisms.contains(&sasl::SCRAM_SHA_256.as_bytes()) {
                                return Err(ReplError::Auth(
                                    "the server offers no SASL mechanism cachewarden supports"
                                        .into(),
                                ));
                            }
                            let s = sasl::ScramSha256::new(pw, sasl::ChannelBinding::unsupported());
                            frontend::sasl_initial_response(
                                sasl::SCRAM_SHA_256,
                                s.message(),
                                &mut self.wbuf,
                            )?;
                            self.flush().await?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                ReplError::Protocol("unexpected SASL continue".into())
                            })?;
                            s.update(&body[4..])
                                .map_err(|e| ReplError::Auth(e.to_string()))?;
                            frontend::sasl_response(s.message(), &mut self.wbuf)?;
                            self.flush().await?;
                        }
                        12 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                ReplError::Protocol("unexpected SASL final".into())
                            })?;
                            s.finish(&body[4..])
                                .map_err(|e| ReplError::Auth(e.to_string()))?;
                        }
                        other => {
                            return Err(ReplError::Auth(format!(
                                "unsupported authentication method {other}"
                            )))
                        }
                    }
                }
                b'E' => return Err(server_error(&frame.body)),
                b'Z' => return Ok(()),
                _ => {} // ParameterStatus, BackendKeyData, NoticeResponse
            }
        }
    }

    /// Runs a replication command with the simple query protocol and returns its rows as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, ReplError> {
        frontend::query(sql, &mut self.wbuf)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                b'D' => {
                    let b = &frame.body[..];
                    let n = b.get(..2).map_or(0, |s| u16::from_be_bytes([s[0], s[1]]));
                    let mut at = 2;
                    let mut row = Vec::with_capacity(n.into());
                    for _ in 0..n {
                        let len = b
                            .get(at..at + 4)
                            .map(|s| i32::from_be_bytes([s[0], s[1], s[2], s[3]]))
                            .ok_or_else(|| ReplError::Protocol("short data row".into()))?;
                        at += 4;
                        if len < 0 {
                            row.push(None);
                        } else {
                            let end = at + len as usize;
                            let v = b
                                .get(at..end)
                                .ok_or_else(|| ReplError::Protocol("short data row".into()))?;
                            row.push(Some(String::from_utf8_lossy(v).into_owned()));
                            at = end;
                        }
                    }
                    rows.push(row);
                }
                b'E' => error = Some(server_error(&frame.body)),
                b'Z' => return error.map_or(Ok(rows), Err),
                _ => {}
            }
        }
    }

    /// Starts logical replication from `slot` with `pgoutput`. The server resumes from the
    /// slot's confirmed position (the requested `start` only matters when it is later).
    pub async fn start_replication(
        &mut self,
        slot: &str,
        publication: &str,
        start: Lsn,
    ) -> Result<(), ReplError> {
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {} (proto_version '1', publication_names {})",
            quote_ident(slot),
            start,
            quote_literal(&quote_ident(publication)),
        );
        frontend::query(&sql, &mut self.wbuf)?;
        self.flush().await?;
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                b'W' => return Ok(()),
                b'E' => return Err(server_error(&frame.body)),
                _ => {}
            }
        }
    }

    /// Parses one replication frame already buffered, without doing I/O.
    pub fn try_recv_buffered(&mut self) -> Result<Option<ReplMessage>, ReplError> {
        while let Some(frame) = parse_frame(&mut self.rbuf)? {
            if let Some(msg) = Self::interpret(frame)? {
                return Ok(Some(msg));
            }
        }
        Ok(None)
    }

    /// Receives the next replication frame. Cancellation-safe.
    pub async fn recv(&mut self) -> Result<ReplMessage, ReplError> {
        loop {
            if let Some(msg) = self.try_recv_buffered()? {
                return Ok(msg);
            }
            if self.io.read_buf(&mut self.rbuf).await? == 0 {
                return Err(ReplError::Closed);
            }
        }
    }

    fn interpret(frame: Frame) -> Result<Option<ReplMessage>, ReplError> {
        match frame.tag {
            b'd' => {
                let b = frame.body;
                match b.first() {
                    Some(b'w') => {
                        let start = Lsn(be_u64(&b, 1)?);
                        let end = Lsn(be_u64(&b, 9)?);
                        let data = b.slice(25.min(b.len())..);
                        if b.len() < 25 {
                            return Err(ReplError::Protocol("short XLogData frame".into()));
                        }
                        Ok(Some(ReplMessage::XLogData { start, end, data }))
                    }
                    Some(b'k') => Ok(Some(ReplMessage::Keepalive {
                        wal_end: Lsn(be_u64(&b, 1)?),
                        reply: b.get(17).copied().unwrap_or(0) == 1,
                    })),
                    other => Err(ReplError::Protocol(format!(
                        "unknown CopyData kind {other:?}"
                    ))),
                }
            }
            b'E' => Err(server_error(&frame.body)),
            b'c' => Err(ReplError::Closed),
            b'N' => {
                let (code, message) = error_fields(&frame.body);
                tracing::info!(code, message, "server notice on replication connection");
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// Sends a standby status update: `written` is the last position received, `flushed` the
    /// position whose effects are durable (the slot's confirmed position follows it).
    pub async fn send_status(&mut self, written: Lsn, flushed: Lsn) -> Result<(), ReplError> {
        let mut payload = Vec::with_capacity(34);
        payload.push(b'r');
        payload.extend_from_slice(&written.0.to_be_bytes());
        payload.extend_from_slice(&flushed.0.to_be_bytes());
        payload.extend_from_slice(&flushed.0.to_be_bytes());
        payload.extend_from_slice(&pg_now_micros().to_be_bytes());
        payload.push(0);
        frontend::CopyData::new(&payload[..])?.write(&mut self.wbuf);
        self.flush().await
    }

    /// Ends the stream politely (CopyDone + Terminate); errors are irrelevant at this point.
    pub async fn close(mut self) {
        frontend::copy_done(&mut self.wbuf);
        frontend::terminate(&mut self.wbuf);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.flush()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_parsed_only_when_complete() {
        let mut buf = BytesMut::from(&[b'd', 0, 0, 0, 6, b'k'][..]);
        assert!(parse_frame(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&[1]);
        let f = parse_frame(&mut buf).unwrap().unwrap();
        assert_eq!((f.tag, &f.body[..]), (b'd', &[b'k', 1][..]));
        assert!(buf.is_empty());
    }

    #[test]
    fn a_huge_declared_length_is_refused_and_never_reserved() {
        let mut buf = BytesMut::from(&[b'd', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(parse_frame(&mut buf).is_err());
        let mut buf = BytesMut::from(&[b'd', 0x10, 0, 0, 0][..]);
        assert!(parse_frame(&mut buf).unwrap().is_none());
        assert!(buf.capacity() <= RESERVE_STEP + 64, "{}", buf.capacity());
    }

    #[test]
    fn error_fields_read_code_and_message() {
        let body = b"SERROR\0C42704\0Mslot missing\0\0";
        assert_eq!(
            error_fields(body),
            ("42704".to_string(), "slot missing".to_string())
        );
    }
}
