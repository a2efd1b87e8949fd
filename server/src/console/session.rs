//! Console sessions: signing in with an operator token creates a session kept in the server's
//! memory (a restart signs everyone out). The browser holds only a random session id in an
//! `HttpOnly`, `SameSite=Strict` cookie (`Secure` when the server speaks HTTPS); each session
//! has its own random CSRF token, which every changing form carries and the server compares in
//! constant time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::clock::monotonic_now;

use axum::http::HeaderMap;
use axum::http::header;

use crate::http::Operator;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "ota_session";

/// How long a session lasts after sign-in, whatever happens in between.
pub(crate) const LIFETIME: Duration = Duration::from_secs(8 * 3600);

/// A session stops after this long without a request.
pub(crate) const IDLE: Duration = Duration::from_secs(3600);

/// Most sessions kept at once; signing in beyond it drops the oldest.
const MAX_SESSIONS: usize = 1024;

/// One signed-in operator.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// The session's id (the cookie's value): live streams check with it that the session is
    /// still open.
    pub(crate) id: String,
    /// The operator's token: the console calls the REST API with it, so every request takes
    /// the API's own authentication and role checks. Never sent to the browser.
    pub(crate) token: String,
    /// Who signed in.
    pub(crate) operator: Operator,
    /// The CSRF token of this session's forms.
    pub(crate) csrf: String,
    created: Instant,
    last_used: Instant,
}

/// Every open session, by id.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    open: Mutex<HashMap<String, Session>>,
}

/// 32 random bytes as hex.
fn random_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

impl Sessions {
    /// Opens a session for `operator` (signed in with `token`); answers its id.
    pub(crate) fn open(&self, operator: Operator, token: &str) -> Result<String, getrandom::Error> {
        let id = random_id()?;
        let now = monotonic_now();
        let session = Session {
            id: id.clone(),
            token: token.to_owned(),
            operator,
            csrf: random_id()?,
            created: now,
            last_used: now,
        };
        let mut open = self.lock();
        open.retain(|_, s| s.alive(now));
        if open.len() >= MAX_SESSIONS
            && let Some(oldest) = open
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(id, _)| id.clone())
        {
            open.remove(&oldest);
        }
        open.insert(id.clone(), session);
        Ok(id)
    }

    /// The live session of this request's cookie (and marks it used); `None` when there is
    /// no cookie, or its session is unknown or expired (then it is dropped).
    pub(crate) fn find(&self, headers: &HeaderMap) -> Option<Session> {
        let id = session_id(headers)?;
        let now = monotonic_now();
        let mut open = self.lock();
        let session = open.get_mut(&id)?;
        if !session.alive(now) {
            open.remove(&id);
            return None;
        }
        session.last_used = now;
        Some(session.clone())
    }

    /// Whether session `id` is still open and alive (without marking it used: a page left open
    /// on a live view does not keep its session from expiring).
    pub(crate) fn is_open(&self, id: &str) -> bool {
        let now = monotonic_now();
        self.lock().get(id).is_some_and(|s| s.alive(now))
    }

    /// Closes this request's session (sign-out).
    pub(crate) fn close(&self, headers: &HeaderMap) {
        if let Some(id) = session_id(headers) {
            self.lock().remove(&id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding the lock leaves a map that is still consistent.
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Session {
    /// A session of `operator`, as pages see it (tests of the pages).
    #[cfg(test)]
    pub(crate) fn for_tests(operator: Operator) -> Self {
        let now = monotonic_now();
        Session {
            id: "session-of-the-test".into(),
            token: String::new(),
            operator,
            csrf: "csrf-of-the-test".into(),
            created: now,
            last_used: now,
        }
    }

    fn alive(&self, now: Instant) -> bool {
        now.duration_since(self.created) < LIFETIME && now.duration_since(self.last_used) < IDLE
    }

    /// Whether a form's CSRF token is this session's.
    pub(crate) fn csrf_ok(&self, presented: &str) -> bool {
        crate::http::constant_time_eq(self.csrf.as_bytes(), presented.as_bytes())
    }
}

/// The session id of the request's `Cookie` header.
fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// The `Set-Cookie` value that gives the browser session `id`.
pub(crate) fn set_cookie(id: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        LIFETIME.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub(crate) fn clear_cookie(secure: bool) -> String {
    format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;
    use axum::http::HeaderValue;

    fn alice() -> Operator {
        Operator {
            name: "alice".into(),
            role: Role::Operator,
        }
    }

    #[test]
    fn a_cookie_finds_its_session_and_sign_out_closes_it() {
        let sessions = Sessions::default();
        let id = sessions.open(alice(), "tok").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("other=1; {COOKIE}={id}")).unwrap(),
        );
        let found = sessions.find(&headers).unwrap();
        assert_eq!(found.operator, alice());
        assert!(found.csrf_ok(&found.csrf.clone()));
        assert!(!found.csrf_ok("forged"));
        sessions.close(&headers);
        assert!(sessions.find(&headers).is_none());
    }

    #[test]
    fn unknown_cookies_find_nothing() {
        let sessions = Sessions::default();
        let mut headers = HeaderMap::new();
        assert!(sessions.find(&headers).is_none());
        headers.insert(header::COOKIE, HeaderValue::from_static("ota_session=nope"));
        assert!(sessions.find(&headers).is_none());
    }

    #[test]
    fn cookies_are_http_only_strict_and_secure_under_tls() {
        let plain = set_cookie("abc", false);
        assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict"));
        assert!(!plain.contains("Secure"));
        assert!(set_cookie("abc", true).ends_with("; Secure"));
        assert!(clear_cookie(true).contains("Max-Age=0"));
    }
}
