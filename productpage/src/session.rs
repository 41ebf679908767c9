//! The signed `session` cookie, login and logout.
//!
//! The cookie holds `{"user": <name or null>}` and an HMAC-SHA256 signature, so a user name
//! cannot be forged from the browser. Any user name is accepted and the password is ignored,
//! as upstream: it is a demo of identity-based routing, not of authentication.

use std::collections::HashMap;

use axum::extract::{FromRef, FromRequestParts, RawQuery, State as AxumState};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::State;

const COOKIE: &str = "session";
/// Where login and logout send a browser that sent no `Referer` (upstream: `None`).
const DEFAULT_REDIRECT: &str = "/productpage";

/// The session of the current request; empty when there is no valid cookie.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// `None` after a login without a user name, as upstream stores `null`.
    #[serde(default)]
    pub user: Option<String>,
}

impl Session {
    /// The name to greet: logged in only with a non-empty name.
    pub fn display_name(&self) -> Option<String> {
        self.user.clone().filter(|u| !u.is_empty())
    }

    /// `end-user` for backend calls: absent for no user, empty for an empty name.
    pub fn end_user(&self) -> Option<HeaderValue> {
        self.user
            .as_deref()
            .and_then(|u| HeaderValue::from_str(u).ok())
    }

    fn encode(&self, secret: &str) -> String {
        let payload =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).expect("a session serialises"));
        let signature = URL_SAFE_NO_PAD.encode(sign(secret, payload.as_bytes()));
        format!("{payload}.{signature}")
    }

    fn decode(cookie: &str, secret: &str) -> Option<Self> {
        let (payload, signature) = cookie.split_once('.')?;
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        let mut mac = mac(secret);
        mac.update(payload.as_bytes());
        mac.verify_slice(&signature).ok()?;
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
    }

    fn from_headers(headers: &HeaderMap, secret: &str) -> Self {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == COOKIE)
            .and_then(|(_, value)| Self::decode(value, secret))
            .unwrap_or_default()
    }
}

fn mac(secret: &str) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length")
}

fn sign(secret: &str, data: &[u8]) -> Vec<u8> {
    let mut mac = mac(secret);
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

impl<S> FromRequestParts<S> for Session
where
    State: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = State::from_ref(state);
        Ok(Self::from_headers(
            &parts.headers,
            &state.config.session_secret,
        ))
    }
}

/// `POST /login`: stores `username` from the form or the query string; the password is
/// ignored. Answers 302 to the `Referer`, or to `/productpage` without one.
pub(crate) async fn login(
    AxumState(state): AxumState<State>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form: HashMap<String, String> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let query: HashMap<String, String> =
        serde_urlencoded::from_str(query.as_deref().unwrap_or("")).unwrap_or_default();
    let user = form
        .get("username")
        .or_else(|| query.get("username"))
        .cloned();
    let session = Session { user };
    let cookie = format!(
        "{COOKIE}={}; HttpOnly; Path=/; SameSite=Lax",
        session.encode(&state.config.session_secret)
    );
    redirect_back(&headers, cookie)
}

/// `GET /logout`: forgets the user and answers 302 like login.
pub(crate) async fn logout(headers: HeaderMap) -> Response {
    let cookie =
        format!("{COOKIE}=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; HttpOnly; Path=/");
    redirect_back(&headers, cookie)
}

fn redirect_back(headers: &HeaderMap, cookie: String) -> Response {
    let location = headers
        .get(header::REFERER)
        .cloned()
        .unwrap_or(HeaderValue::from_static(DEFAULT_REDIRECT));
    let cookie = HeaderValue::from_str(&cookie).expect("base64 and ASCII make a valid cookie");
    (
        StatusCode::FOUND,
        [(header::LOCATION, location), (header::SET_COOKIE, cookie)],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_round_trip_and_reject_tampering() {
        let s = Session {
            user: Some("jason".into()),
        };
        let cookie = s.encode("k");
        assert_eq!(Session::decode(&cookie, "k"), Some(s));
        assert_eq!(Session::decode(&cookie, "other-key"), None);
        let forged = Session {
            user: Some("admin".into()),
        }
        .encode("attacker");
        assert_eq!(Session::decode(&forged, "k"), None);
        let (_, sig) = cookie.split_once('.').unwrap();
        let swapped = format!("{}.{sig}", URL_SAFE_NO_PAD.encode(br#"{"user":"admin"}"#));
        assert_eq!(Session::decode(&swapped, "k"), None);
    }

    #[test]
    fn null_and_empty_users_are_logged_out_but_differ_on_the_wire() {
        let none = Session { user: None };
        let empty = Session {
            user: Some(String::new()),
        };
        assert_eq!(none.display_name(), None);
        assert_eq!(empty.display_name(), None);
        assert_eq!(none.end_user(), None);
        assert_eq!(empty.end_user(), Some(HeaderValue::from_static("")));
    }
}
