//! One access-log line per request a workload serves, with Envoy's fields: JSON by default,
//! or a human line; all requests, a sample, or none (`MESH_ACCESS_LOG=on|off|<fraction>`,
//! `MESH_ACCESS_LOG_FORMAT=json|text`). Written to stdout, where container runtimes collect it.

use std::io::Write;

use serde_json::json;

/// How requests are logged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AccessLog {
    /// Share of requests logged (0: off, 1: all).
    pub sample: f64,
    pub json: bool,
}

impl Default for AccessLog {
    fn default() -> Self {
        Self::OFF
    }
}

/// One served request.
#[derive(Debug)]
pub struct Entry<'a> {
    pub workload: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub protocol: &'a str,
    pub response_code: u16,
    pub response_flags: &'a str,
    pub duration_ms: f64,
    pub bytes_received: Option<u64>,
    pub bytes_sent: Option<u64>,
    pub x_request_id: &'a str,
    pub user_agent: &'a str,
    pub authority: &'a str,
    pub peer: &'a str,
    pub peer_principal: &'a str,
    pub traceparent: &'a str,
}

impl AccessLog {
    pub const OFF: Self = Self {
        sample: 0.0,
        json: true,
    };
    pub const ALL: Self = Self {
        sample: 1.0,
        json: true,
    };

    /// Parses `on`, `off`, or a fraction such as `0.1`, and the format.
    pub fn parse(mode: &str, format: &str) -> Result<Self, String> {
        let sample = match mode.trim() {
            "on" | "true" | "1" => 1.0,
            "off" | "false" | "0" | "" => 0.0,
            other => other
                .parse::<f64>()
                .ok()
                .filter(|f| (0.0..=1.0).contains(f))
                .ok_or_else(|| format!("expected on, off or a fraction 0..1, not {other:?}"))?,
        };
        let json = match format.trim() {
            "" | "json" => true,
            "text" => false,
            other => return Err(format!("expected json or text, not {other:?}")),
        };
        Ok(Self { sample, json })
    }

    pub fn enabled(&self) -> bool {
        self.sample > 0.0
    }

    /// Writes the entry if it is sampled.
    pub fn write(&self, e: &Entry<'_>) {
        if self.sample <= 0.0 || (self.sample < 1.0 && fastrand::f64() >= self.sample) {
            return;
        }
        let line = if self.json {
            json!({
                "start_time": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
                "workload": e.workload,
                "method": e.method,
                "path": e.path,
                "protocol": e.protocol,
                "response_code": e.response_code,
                "response_flags": e.response_flags,
                "duration": e.duration_ms.round() as u64,
                "bytes_received": e.bytes_received,
                "bytes_sent": e.bytes_sent,
                "x_request_id": e.x_request_id,
                "user_agent": e.user_agent,
                "authority": e.authority,
                "downstream_peer_address": e.peer,
                "downstream_peer_principal": e.peer_principal,
                "traceparent": e.traceparent,
            })
            .to_string()
        } else {
            format!(
                "[{}] \"{} {} {}\" {} {} {} {} {:.0}ms \"{}\" \"{}\" \"{}\" {} {}",
                e.workload,
                e.method,
                e.path,
                e.protocol,
                e.response_code,
                e.response_flags,
                e.bytes_received.unwrap_or(0),
                e.bytes_sent.unwrap_or(0),
                e.duration_ms,
                e.x_request_id,
                e.user_agent,
                e.authority,
                e.peer,
                if e.peer_principal.is_empty() {
                    "-"
                } else {
                    e.peer_principal
                },
            )
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_formats() {
        assert_eq!(AccessLog::parse("on", "").unwrap(), AccessLog::ALL);
        assert_eq!(AccessLog::parse("off", "json").unwrap().sample, 0.0);
        assert_eq!(
            AccessLog::parse("0.25", "text").unwrap(),
            AccessLog {
                sample: 0.25,
                json: false
            }
        );
        assert!(AccessLog::parse("often", "").is_err());
        assert!(AccessLog::parse("on", "xml").is_err());
    }
}
