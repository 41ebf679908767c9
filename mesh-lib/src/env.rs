//! Reading configuration from environment variables without touching the process environment
//! in tests: configuration code reads through [`Vars`], which the real environment and a plain
//! map both implement.

use std::collections::HashMap;
use std::fmt::Display;
use std::str::FromStr;

/// A source of environment variables.
pub trait Vars {
    /// The value of `name`, or `None` when it is unset.
    fn get(&self, name: &str) -> Option<String>;

    /// The value of `name`, or `default` when it is unset.
    fn get_or(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or_else(|| default.to_owned())
    }

    /// The value of `name` parsed as `T`, or `default` when it is unset.
    fn parse_or<T>(&self, name: &str, default: T) -> Result<T, VarError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(value) => value.trim().parse().map_err(|e: T::Err| VarError {
                name: name.to_owned(),
                value,
                reason: e.to_string(),
            }),
        }
    }
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Vars for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Vars for HashMap<&str, &str> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).map(|v| (*v).to_owned())
    }
}

impl<const N: usize> Vars for [(&str, &str); N] {
    fn get(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

/// An environment variable that is set but cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {name}={value:?}: {reason}")]
pub struct VarError {
    pub name: String,
    pub value: String,
    pub reason: String,
}

impl VarError {
    pub fn new(name: &str, value: &str, reason: impl Into<String>) -> Self {
        Self {
            name: name.to_owned(),
            value: value.to_owned(),
            reason: reason.into(),
        }
    }
}

/// `.<domain>` when `SERVICES_DOMAIN` is set and non-empty, as upstream appends it to every
/// backend host name.
pub fn services_domain_suffix(vars: &impl Vars) -> String {
    match vars.get("SERVICES_DOMAIN") {
        Some(d) if !d.is_empty() => format!(".{d}"),
        _ => String::new(),
    }
}

/// The base URL of a backend as upstream builds it:
/// `http://<NAME_HOSTNAME><.SERVICES_DOMAIN>:<NAME_SERVICE_PORT>`.
///
/// The port comes from `<NAME>_SERVICE_PORT`, never `<NAME>_PORT`: Kubernetes injects the
/// latter as `tcp://ip:port`.
pub fn backend_url(vars: &impl Vars, name: &str) -> Result<String, VarError> {
    let upper = name.to_ascii_uppercase();
    let host = vars.get_or(&format!("{upper}_HOSTNAME"), name);
    if host.is_empty() || host.contains(['/', ' ', '@']) {
        return Err(VarError::new(
            &format!("{upper}_HOSTNAME"),
            &host,
            "expected a host name",
        ));
    }
    let port: u16 = vars.parse_or(&format!("{upper}_SERVICE_PORT"), 9080)?;
    Ok(format!(
        "http://{host}{}:{port}",
        services_domain_suffix(vars)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_url_defaults_to_service_name_and_9080() {
        let env: [(&str, &str); 0] = [];
        assert_eq!(backend_url(&env, "ratings").unwrap(), "http://ratings:9080");
    }

    #[test]
    fn backend_url_uses_hostname_domain_and_service_port_but_never_port() {
        let env = [
            ("RATINGS_HOSTNAME", "ratings-x"),
            ("SERVICES_DOMAIN", "bookinfo.svc.cluster.local"),
            ("RATINGS_SERVICE_PORT", "9090"),
            ("RATINGS_PORT", "tcp://10.0.0.1:9080"),
        ];
        assert_eq!(
            backend_url(&env, "ratings").unwrap(),
            "http://ratings-x.bookinfo.svc.cluster.local:9090"
        );
    }

    #[test]
    fn bad_port_is_a_clear_error() {
        let env = [("DETAILS_SERVICE_PORT", "tcp://1.2.3.4:9080")];
        let err = backend_url(&env, "details").unwrap_err();
        assert_eq!(err.name, "DETAILS_SERVICE_PORT");
        assert!(err.to_string().starts_with("invalid DETAILS_SERVICE_PORT="));
    }
}
