//! Who may call what. State-changing calls (every method but `GET`/`HEAD`) need
//! `Authorization: Bearer <token>` matching `[api] token` (compared in constant time); without
//! a configured token they are refused with 403 and how to enable them. Read calls need the
//! token too when `[status] listen` is not a loopback address. Pure decisions, no I/O.

use axum::http::{HeaderMap, Method, StatusCode};
use subtle::ConstantTimeEq;

use super::error::ApiError;

/// The API's access policy.
#[derive(Clone)]
pub struct Policy {
    token: Option<String>,
    /// Whether read calls need the token (a listen address others can reach).
    reads_need_token: bool,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("reads_need_token", &self.reads_need_token)
            .finish()
    }
}

/// Whether every address `listen` names is a loopback address.
pub fn is_loopback(listen: &str) -> bool {
    match std::net::ToSocketAddrs::to_socket_addrs(listen) {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => false,
    }
}

impl Policy {
    /// `token` from `[api] token` (empty means none); `listen` from `[status] listen`.
    pub fn new(token: Option<&str>, listen: &str) -> Self {
        Policy {
            token: token.filter(|t| !t.is_empty()).map(str::to_string),
            reads_need_token: !is_loopback(listen),
        }
    }

    /// Whether state-changing calls are possible at all.
    pub fn writes_enabled(&self) -> bool {
        self.token.is_some()
    }

    /// Allows or refuses a call.
    pub fn check(&self, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
        let write = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        if !write && !self.reads_need_token {
            return Ok(());
        }
        let Some(token) = &self.token else {
            return Err(ApiError {
                status: StatusCode::FORBIDDEN,
                detail: if write {
                    "state-changing calls are disabled: set [api] token in cachewarden.toml (or \
                     CACHEWARDEN_API_TOKEN) and send it as Authorization: Bearer <token>"
                } else {
                    "[status] listen is not a loopback address, so read calls need a token: set \
                     [api] token (or CACHEWARDEN_API_TOKEN)"
                }
                .into(),
            });
        };
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        match given {
            Some(g) if bool::from(g.as_bytes().ct_eq(token.as_bytes())) => Ok(()),
            Some(_) => Err(ApiError {
                status: StatusCode::UNAUTHORIZED,
                detail: "the bearer token does not match [api] token".into(),
            }),
            None => Err(ApiError {
                status: StatusCode::UNAUTHORIZED,
                detail: "this call needs Authorization: Bearer <token> ([api] token)".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(axum::http::header::AUTHORIZATION, a.parse().unwrap());
        }
        h
    }

    #[test]
    fn writes_need_the_token_and_reads_only_off_loopback() {
        let p = Policy::new(Some("s3cret"), "127.0.0.1:9187");
        assert!(p.check(&Method::GET, &headers(None)).is_ok());
        let e = p.check(&Method::POST, &headers(None)).unwrap_err();
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        let e = p
            .check(&Method::PATCH, &headers(Some("Bearer wrong")))
            .unwrap_err();
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        assert!(p
            .check(&Method::DELETE, &headers(Some("Bearer s3cret")))
            .is_ok());

        let open = Policy::new(Some("s3cret"), "0.0.0.0:9187");
        assert_eq!(
            open.check(&Method::GET, &headers(None)).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
        assert!(open
            .check(&Method::GET, &headers(Some("Bearer s3cret")))
            .is_ok());
    }

    #[test]
    fn without_a_token_writes_are_forbidden_with_the_way_to_enable_them() {
        for token in [None, Some("")] {
            let p = Policy::new(token, "localhost:9187");
            assert!(!p.writes_enabled());
            let e = p
                .check(&Method::PUT, &headers(Some("Bearer anything")))
                .unwrap_err();
            assert_eq!(e.status, StatusCode::FORBIDDEN);
            assert!(e.detail.contains("CACHEWARDEN_API_TOKEN"), "{}", e.detail);
            assert!(p.check(&Method::GET, &headers(None)).is_ok());
        }
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let p = Policy::new(Some("s3cret"), "127.0.0.1:1");
        assert!(!format!("{p:?}").contains("s3cret"));
    }
}
