//! The signed `session` cookie, login and logout.
//!
//! The cookie holds `{"user": <name or null>}` and an HMAC-SHA256 signature, so a user name
//! cannot be forged from the browser. Any user name is accepted and the password is ignored,
//! as upstream: it is a demo of identity-based routing, not of authentication.
//!
//! The signing key comes from `SESSION_SECRET` or `SESSION_SECRET_FILE`, or is generated at
//! start: a key in the source would let anyone forge any user's cookie.

use std::fmt;

use axum::extract::{FromRef, FromRequestParts, RawQuery, State as AxumState};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use mesh::env::{VarError, Vars};

use crate::State;

const COOKIE: &str = "session";
/// Where login and logout send a browser that sent no `Referer` (upstream: `None`).
const DEFAULT_REDIRECT: &str = "/productpage";

/// The variable holding the session secret itself.
pub const SESSION_SECRET_VAR: &str = "SESSION_SECRET";
/// The variable naming a file that holds the session secret, as Docker and Kubernetes mount
/// secrets; surrounding whitespace is trimmed.
pub const SESSION_SECRET_FILE_VAR: &str = "SESSION_SECRET_FILE";
/// The shortest configured secret accepted: a shorter HMAC key can be brute-forced offline
/// from a single cookie.
pub const MIN_SESSION_SECRET_BYTES: usize = 16;
/// Random bytes in a generated secret: SHA-256's output size, the most HMAC-SHA256 benefits
/// from.
pub const GENERATED_SESSION_SECRET_BYTES: usize = 32;

/// The key that signs the session cookie. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionSecret {
    key: Vec<u8>,
    generated: bool,
}

/// A session secret that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("a session secret needs at least {MIN_SESSION_SECRET_BYTES} bytes, got {0}")]
    TooShort(usize),
    #[error("no random secret could be generated: {0}")]
    Random(getrandom::Error),
}

impl SessionSecret {
    /// A configured secret; refused when shorter than [`MIN_SESSION_SECRET_BYTES`].
    pub fn new(key: impl Into<Vec<u8>>) -> Result<Self, SecretError> {
        let key = key.into();
        if key.len() < MIN_SESSION_SECRET_BYTES {
            return Err(SecretError::TooShort(key.len()));
        }
        Ok(Self {
            key,
            generated: false,
        })
    }

    /// [`GENERATED_SESSION_SECRET_BYTES`] from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, SecretError> {
        let mut key = vec![0; GENERATED_SESSION_SECRET_BYTES];
        getrandom::fill(&mut key).map_err(SecretError::Random)?;
        Ok(Self {
            key,
            generated: true,
        })
    }

    /// `SESSION_SECRET`, else the trimmed contents of `SESSION_SECRET_FILE`, else a generated
    /// secret. Setting both is an error, so it is never a guess which one signs.
    pub fn from_env(vars: &impl Vars) -> Result<Self, VarError> {
        // Compose hands `${SESSION_SECRET:-}` over as an empty string: that means "unset".
        let value = vars.get(SESSION_SECRET_VAR).filter(|v| !v.is_empty());
        let file = vars.get(SESSION_SECRET_FILE_VAR).filter(|v| !v.is_empty());
        match (value, file) {
            (Some(_), Some(path)) => Err(VarError::new(
                SESSION_SECRET_FILE_VAR,
                &path,
                format!("{SESSION_SECRET_VAR} is set too; set only one of them"),
            )),
            (Some(value), None) => {
                let len = value.len();
                Self::new(value).map_err(|e| {
                    // The value is the secret: an error message must not carry it into logs.
                    VarError::new(
                        SESSION_SECRET_VAR,
                        &format!("<{len} bytes, hidden>"),
                        e.to_string(),
                    )
                })
            }
            (None, Some(path)) => {
                let bytes = std::fs::read(&path).map_err(|e| {
                    VarError::new(
                        SESSION_SECRET_FILE_VAR,
                        &path,
                        format!("cannot read the file: {e}"),
                    )
                })?;
                let secret = bytes.trim_ascii();
                if secret.is_empty() {
                    return Err(VarError::new(
                        SESSION_SECRET_FILE_VAR,
                        &path,
                        "the file is empty",
                    ));
                }
                Self::new(secret)
                    .map_err(|e| VarError::new(SESSION_SECRET_FILE_VAR, &path, e.to_string()))
            }
            (None, None) => Self::generate()
                .map_err(|e| VarError::new(SESSION_SECRET_VAR, "", format!("unset, and {e}"))),
        }
    }

    /// Whether this secret was generated at start rather than configured.
    pub fn is_generated(&self) -> bool {
        self.generated
    }

    fn key(&self) -> &[u8] {
        &self.key
    }
}

impl fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionSecret")
            .field("generated", &self.generated)
            .finish_non_exhaustive()
    }
}

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

    fn encode(&self, secret: &SessionSecret) -> String {
        let payload =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).expect("a session serialises"));
        let signature = URL_SAFE_NO_PAD.encode(sign(secret, payload.as_bytes()));
        format!("{payload}.{signature}")
    }

    fn decode(cookie: &str, secret: &SessionSecret) -> Option<Self> {
        let (payload, signature) = cookie.split_once('.')?;
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        let mut mac = mac(secret);
        mac.update(payload.as_bytes());
        mac.verify_slice(&signature).ok()?;
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
    }

    /// The session of a validly signed `session` cookie in `headers`, if there is one.
    fn presented(headers: &HeaderMap, secret: &SessionSecret) -> Option<Self> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == COOKIE)
            .and_then(|(_, value)| Self::decode(value, secret))
    }
}

fn mac(secret: &SessionSecret) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(secret.key()).expect("HMAC takes keys of any length")
}

fn sign(secret: &SessionSecret, data: &[u8]) -> Vec<u8> {
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
        Ok(Self::presented(&parts.headers, &state.config.session_secret).unwrap_or_default())
    }
}

/// `POST /login`: stores `username` from the query string, else the form (Flask's
/// `request.values`: the first value, query before form); the password is ignored. Answers
/// 302 to the `Referer`, or to `/productpage` without one.
pub(crate) async fn login(
    AxumState(state): AxumState<State>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let first_username = |pairs: Vec<(String, String)>| {
        pairs
            .into_iter()
            .find_map(|(name, value)| (name == "username").then_some(value))
    };
    let query = serde_urlencoded::from_str(query.as_deref().unwrap_or("")).unwrap_or_default();
    let user = first_username(query)
        .or_else(|| first_username(serde_urlencoded::from_bytes(&body).unwrap_or_default()));
    let session = Session { user };
    let cookie = format!(
        "{COOKIE}={}; HttpOnly; Path=/; SameSite=Lax",
        session.encode(&state.config.session_secret)
    );
    redirect_back(&headers, Some(cookie))
}

/// `GET /logout`: forgets the user and answers 302 like login. As Flask, the cookie is
/// cleared only when the request had a session: without one there is nothing to forget, and
/// Flask sends no `Set-Cookie`.
pub(crate) async fn logout(AxumState(state): AxumState<State>, headers: HeaderMap) -> Response {
    let had_session = Session::presented(&headers, &state.config.session_secret).is_some();
    let cookie = had_session.then(|| {
        format!("{COOKIE}=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; HttpOnly; Path=/")
    });
    redirect_back(&headers, cookie)
}

/// Werkzeug's 302 page to the `Referer` (or [`DEFAULT_REDIRECT`]), setting `cookie` if any.
fn redirect_back(headers: &HeaderMap, cookie: Option<String>) -> Response {
    let location = headers
        .get(header::REFERER)
        .cloned()
        .unwrap_or(HeaderValue::from_static(DEFAULT_REDIRECT));
    let mut response = crate::werkzeug::redirect(StatusCode::FOUND, location);
    if let Some(cookie) = cookie {
        let cookie = HeaderValue::from_str(&cookie).expect("base64 and ASCII make a valid cookie");
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(key: &str) -> SessionSecret {
        SessionSecret::new(key).unwrap()
    }

    #[test]
    fn cookies_round_trip_and_reject_tampering() {
        let k = secret("k-0123456789abcdef");
        let s = Session {
            user: Some("jason".into()),
        };
        let cookie = s.encode(&k);
        assert_eq!(Session::decode(&cookie, &k), Some(s));
        assert_eq!(
            Session::decode(&cookie, &secret("other-key-0123456789")),
            None
        );
        let forged = Session {
            user: Some("admin".into()),
        }
        .encode(&secret("attacker-0123456789"));
        assert_eq!(Session::decode(&forged, &k), None);
        let (_, sig) = cookie.split_once('.').unwrap();
        let swapped = format!("{}.{sig}", URL_SAFE_NO_PAD.encode(br#"{"user":"admin"}"#));
        assert_eq!(Session::decode(&swapped, &k), None);
    }

    #[test]
    fn generated_secrets_are_random_and_the_right_size() {
        let a = SessionSecret::generate().unwrap();
        let b = SessionSecret::generate().unwrap();
        assert!(a.is_generated() && b.is_generated());
        assert_eq!(a.key().len(), GENERATED_SESSION_SECRET_BYTES);
        assert_ne!(a.key(), b.key());
        let cookie = Session {
            user: Some("jason".into()),
        }
        .encode(&a);
        assert_eq!(Session::decode(&cookie, &b), None);
    }

    #[test]
    fn debug_never_shows_the_key() {
        let shown = format!("{:?}", secret("do-not-print-this-key"));
        assert!(!shown.contains("do-not-print"), "{shown}");
        assert!(shown.contains("generated: false"), "{shown}");
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
