//! ratings v2's MySQL backend: upstream's `SELECT Rating FROM ratings` in database `test`,
//! over a pool of connections.
//!
//! Upstream opens a connection per request and has no query timeout. Here connections are
//! pooled (at most [`MAX_DB_CONNECTIONS`]), opened lazily, so the service starts and answers
//! while the database is away, and every lookup is bounded by [`DB_TIMEOUT`]. The pool checks
//! an idle connection before it hands it out and opens a new one in place of a closed one, so
//! a database restart costs no failed request and the service recovers by itself, as
//! upstream's connection per request does.

use std::fmt;
use std::net::Ipv6Addr;
use std::time::Duration;

use mysql_async::consts::{ColumnFlags, ColumnType};
use mysql_async::prelude::Queryable;
use mysql_async::{OptsBuilder, Pool, PoolConstraints, PoolOpts, Row, Value};
use tokio::time::{Instant, timeout_at};

use mesh::env::{VarError, Vars};

use crate::js;

/// How long one lookup may take, connecting included: past it the answer is upstream's 500
/// (`could not connect to ratings database` while connecting, `could not perform select`
/// after), where upstream waits for a hung database forever. Below reviews v3's 2.5 s timeout
/// for ratings, so a caller sees the database's error rather than its own timeout.
pub const DB_TIMEOUT: Duration = Duration::from_secs(2);
/// The most connections open to the database at once; a lookup waits (within
/// [`DB_TIMEOUT`]) for one to be free.
pub const MAX_DB_CONNECTIONS: usize = 16;
/// `MYSQL_DB_PORT` when unset, as upstream's `mysql` client defaults it.
pub const DEFAULT_PORT: u16 = 3306;
/// The database upstream reads.
pub const DATABASE: &str = "test";
/// Upstream's query, to the letter: no `ORDER BY`, the first two rows the server returns are
/// Reviewer1 and Reviewer2.
pub const SELECT: &str = "SELECT Rating FROM ratings";

/// Where the ratings database is: `MYSQL_DB_HOST`, `MYSQL_DB_PORT`, `MYSQL_DB_USER`,
/// `MYSQL_DB_PASSWORD`.
#[derive(Clone, PartialEq, Eq)]
pub struct MysqlConfig {
    /// `MYSQL_DB_HOST` (required): a host name or address (an IPv6 one without brackets).
    pub host: String,
    /// `MYSQL_DB_PORT` (default [`DEFAULT_PORT`]).
    pub port: u16,
    /// `MYSQL_DB_USER` (required).
    pub user: String,
    /// `MYSQL_DB_PASSWORD` (unset: no password).
    pub password: String,
}

impl fmt::Debug for MysqlConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl MysqlConfig {
    pub fn from_env(vars: &impl Vars) -> Result<Self, VarError> {
        let required = |name: &str| match vars.get(name) {
            Some(v) if !v.trim().is_empty() => Ok(v.trim().to_owned()),
            other => Err(VarError::new(
                name,
                &other.unwrap_or_default(),
                "required with SERVICE_VERSION=v2 and DB_TYPE=mysql",
            )),
        };
        let host = required("MYSQL_DB_HOST")?;
        // An IPv6 address may come in brackets; a colon anywhere else is a `host:port` typo.
        let bracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
        let bare = bracketed.unwrap_or(&host);
        let valid = if bracketed.is_some() || bare.contains(':') {
            bare.parse::<Ipv6Addr>().is_ok()
        } else {
            !bare.is_empty()
                && !bare.contains(['/', '@', '[', ']'])
                && !bare.contains(char::is_whitespace)
        };
        if !valid {
            return Err(VarError::new(
                "MYSQL_DB_HOST",
                &host,
                "expected a host name or address (the port goes in MYSQL_DB_PORT)",
            ));
        }
        Ok(Self {
            host: bare.to_owned(),
            port: vars.parse_or("MYSQL_DB_PORT", DEFAULT_PORT)?,
            user: required("MYSQL_DB_USER")?,
            password: vars.get_or("MYSQL_DB_PASSWORD", ""),
        })
    }
}

/// Why a lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// No connection: upstream's `could not connect to ratings database`.
    #[error("cannot connect to the ratings database: {0}")]
    Connect(Cause),
    /// Connected, but the select failed: upstream's `could not perform select`.
    #[error("cannot select the ratings: {0}")]
    Select(Cause),
}

/// What went wrong underneath a [`DbError`].
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    #[error(transparent)]
    Mysql(#[from] mysql_async::Error),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

/// The ratings database: a lazily connecting pool.
#[derive(Debug, Clone)]
pub struct Db {
    pool: Pool,
}

impl Db {
    /// A pool for `config`. Opens no connection: the first lookup does.
    pub fn new(config: &MysqlConfig) -> Self {
        let opts = OptsBuilder::default()
            .ip_or_hostname(config.host.as_str())
            .tcp_port(config.port)
            .user(Some(&config.user))
            .pass(Some(&config.password))
            .db_name(Some(DATABASE))
            // TCP to the configured host, as upstream: never switch to a local socket.
            .prefer_socket(false)
            .pool_opts(PoolOpts::default().with_constraints(
                PoolConstraints::new(0, MAX_DB_CONNECTIONS).expect("0 <= MAX_DB_CONNECTIONS"),
            ));
        Self {
            pool: Pool::new(opts),
        }
    }

    /// The `Rating` of the first two rows as JSON text, what upstream's `JSON.stringify` writes
    /// for them: a missing row is `0`, a NULL is `null`, a number is written as JavaScript
    /// writes it (see [`rating_json`]).
    pub async fn ratings(&self) -> Result<[String; 2], DbError> {
        let deadline = Instant::now() + DB_TIMEOUT;
        let mut conn = timeout_at(deadline, self.pool.get_conn())
            .await
            .map_err(|_| DbError::Connect(Cause::TimedOut(DB_TIMEOUT)))?
            .map_err(|e| DbError::Connect(e.into()))?;
        let select = async {
            let mut result = conn.query_iter(SELECT).await?;
            let mut first = Vec::with_capacity(2);
            // Read every row, as upstream does, but keep only the two it uses.
            while let Some(row) = result.next().await? {
                if first.len() < 2 {
                    first.push(rating_json(&row));
                }
            }
            Ok::<_, mysql_async::Error>(first)
        };
        let mut first = timeout_at(deadline, select)
            .await
            .map_err(|_| DbError::Select(Cause::TimedOut(DB_TIMEOUT)))?
            .map_err(|e| DbError::Select(e.into()))?
            .into_iter();
        let mut next = || first.next().unwrap_or_else(|| "0".to_owned());
        Ok([next(), next()])
    }
}

/// A row's first column as upstream's `mysql` client types it and `JSON.stringify` writes
/// it: NULL is `null`; numeric columns (integers, YEAR, FLOAT, DOUBLE, DECIMAL, BIGINT) are
/// JavaScript numbers (`Number(text)`), except that a ZEROFILL column whose text starts with
/// `0` stays a string, as that client leaves it; anything else is its text as a string.
pub fn rating_json(row: &Row) -> String {
    let column = &row.columns_ref()[0];
    match row.as_ref(0) {
        None | Some(Value::NULL) => "null".to_owned(),
        Some(Value::Bytes(bytes)) => {
            let text = String::from_utf8_lossy(bytes);
            let zero_filled =
                column.flags().contains(ColumnFlags::ZEROFILL_FLAG) && text.starts_with('0');
            if is_numeric(column.column_type()) && !zero_filled {
                js::json_number(text.trim().parse().unwrap_or(f64::NAN))
            } else {
                serde_json::to_string(&text).expect("a string always serialises")
            }
        }
        // The text protocol sends every value as text; typed values only come from
        // prepared statements, which are never used here.
        Some(Value::Int(i)) => js::json_number(*i as f64),
        Some(Value::UInt(u)) => js::json_number(*u as f64),
        Some(Value::Float(f)) => js::json_number(f64::from(*f)),
        Some(Value::Double(d)) => js::json_number(*d),
        Some(other @ (Value::Date(..) | Value::Time(..))) => {
            serde_json::to_string(other.as_sql(true).trim_matches('\''))
                .expect("a string always serialises")
        }
    }
}

/// The column types upstream's `mysql` client turns into JavaScript numbers.
fn is_numeric(column_type: ColumnType) -> bool {
    use ColumnType::*;
    matches!(
        column_type,
        MYSQL_TYPE_TINY
            | MYSQL_TYPE_SHORT
            | MYSQL_TYPE_LONG
            | MYSQL_TYPE_INT24
            | MYSQL_TYPE_YEAR
            | MYSQL_TYPE_FLOAT
            | MYSQL_TYPE_DOUBLE
            | MYSQL_TYPE_NEWDECIMAL
            | MYSQL_TYPE_LONGLONG
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<MysqlConfig, VarError> {
        let map: std::collections::HashMap<&str, &str> = vars.iter().copied().collect();
        MysqlConfig::from_env(&map)
    }

    #[test]
    fn the_variables_are_read_with_upstreams_port_default_and_the_password_is_not_shown() {
        let c = config(&[
            ("MYSQL_DB_HOST", "mysqldb"),
            ("MYSQL_DB_USER", "root"),
            ("MYSQL_DB_PASSWORD", "password"),
        ])
        .unwrap();
        assert_eq!(
            (
                c.host.as_str(),
                c.port,
                c.user.as_str(),
                c.password.as_str()
            ),
            ("mysqldb", 3306, "root", "password")
        );
        assert!(!format!("{c:?}").contains("password\""), "{c:?}");
        let c = config(&[
            ("MYSQL_DB_HOST", "10.0.0.7"),
            ("MYSQL_DB_PORT", "3307"),
            ("MYSQL_DB_USER", "ratings"),
        ])
        .unwrap();
        assert_eq!((c.port, c.password.as_str()), (3307, ""));
        for host in ["[::1]", "::1"] {
            let c = config(&[("MYSQL_DB_HOST", host), ("MYSQL_DB_USER", "u")]).unwrap();
            assert_eq!(c.host, "::1", "{host}");
        }
    }

    #[test]
    fn a_missing_host_or_user_or_a_bad_port_is_a_clear_error() {
        let err = config(&[("MYSQL_DB_USER", "root")]).unwrap_err();
        assert_eq!(err.name, "MYSQL_DB_HOST");
        assert!(
            err.reason.contains("required with SERVICE_VERSION=v2"),
            "{err}"
        );
        let err = config(&[("MYSQL_DB_HOST", " "), ("MYSQL_DB_USER", "root")]).unwrap_err();
        assert_eq!(err.name, "MYSQL_DB_HOST");
        let err = config(&[("MYSQL_DB_HOST", "db")]).unwrap_err();
        assert_eq!(err.name, "MYSQL_DB_USER");
        let err = config(&[
            ("MYSQL_DB_HOST", "db"),
            ("MYSQL_DB_USER", "root"),
            ("MYSQL_DB_PORT", "three"),
        ])
        .unwrap_err();
        assert_eq!(err.name, "MYSQL_DB_PORT");
        assert!(
            err.to_string().contains("invalid MYSQL_DB_PORT=\"three\""),
            "{err}"
        );
        for host in ["db:3306", "root@db", "[db]", "a b"] {
            let err = config(&[("MYSQL_DB_HOST", host), ("MYSQL_DB_USER", "root")]).unwrap_err();
            assert!(err.reason.contains("expected a host name"), "{host}: {err}");
        }
    }
}
