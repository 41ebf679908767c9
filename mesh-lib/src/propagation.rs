//! Which incoming request headers a service copies onto its outbound calls.
//!
//! Applications, not the mesh, carry trace context from an inbound request to the calls it
//! causes: the mesh cannot know which outbound call belongs to which inbound request. These
//! are upstream Bookinfo's allow-lists, so traces, `x-request-id` and the session cookie
//! flow exactly as they do there.

use http::{HeaderMap, HeaderName, HeaderValue};

/// Headers productpage copies verbatim. It does not copy an incoming `end-user` (it sets its
/// own from the session) nor raw B3 headers (it re-emits them, see [`b3_reinject`]).
pub static PRODUCTPAGE_FORWARDED: [HeaderName; 14] = [
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("x-ot-span-context"),
    HeaderName::from_static("x-datadog-trace-id"),
    HeaderName::from_static("x-datadog-parent-id"),
    HeaderName::from_static("x-datadog-sampling-priority"),
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
    HeaderName::from_static("x-cloud-trace-context"),
    HeaderName::from_static("grpc-trace-bin"),
    HeaderName::from_static("sw8"),
    HeaderName::from_static("user-agent"),
    HeaderName::from_static("cookie"),
    HeaderName::from_static("authorization"),
    HeaderName::from_static("jwt"),
];

/// What reviews (to ratings) and details (to its external book service) copy in addition to
/// [`PRODUCTPAGE_FORWARDED`]: the raw B3 headers and `end-user`.
pub static BACKEND_ALSO_FORWARDED: [HeaderName; 6] = [
    HeaderName::from_static("x-b3-traceid"),
    HeaderName::from_static("x-b3-spanid"),
    HeaderName::from_static("x-b3-parentspanid"),
    HeaderName::from_static("x-b3-sampled"),
    HeaderName::from_static("x-b3-flags"),
    HeaderName::from_static("end-user"),
];

/// The headers reviews and details forward: productpage's list plus B3 and `end-user`.
pub fn backend_forwarded(incoming: &HeaderMap) -> HeaderMap {
    let mut out = forwarded(incoming, &PRODUCTPAGE_FORWARDED);
    copy_allowed(incoming, &BACKEND_ALSO_FORWARDED, &mut out);
    out
}

/// The headers of `incoming` named in `allowed`, every value kept, in list order.
pub fn forwarded(incoming: &HeaderMap, allowed: &[HeaderName]) -> HeaderMap {
    let mut out = HeaderMap::new();
    copy_allowed(incoming, allowed, &mut out);
    out
}

/// The names are constants, not strings made into names on every call: that validation,
/// per name and per backend call, was most of what forwarding cost.
fn copy_allowed(incoming: &HeaderMap, allowed: &[HeaderName], out: &mut HeaderMap) {
    for name in allowed {
        for value in incoming.get_all(name) {
            out.append(name.clone(), value.clone());
        }
    }
}

/// Re-emits incoming B3 context the way an OpenTelemetry B3 multi-header propagator does
/// (extract, then inject the same ids): `x-b3-traceid` as 32 hex digits, `x-b3-spanid`, and
/// `x-b3-sampled` as `1` or `0`. `x-b3-parentspanid` and `x-b3-flags` are not re-emitted;
/// absent or invalid context adds nothing. A single `b3` header is read too.
pub fn b3_reinject(incoming: &HeaderMap, out: &mut HeaderMap) {
    let Some(ctx) = B3Context::extract(incoming) else {
        return;
    };
    let trace_id = format!("{:0>32}", ctx.trace_id);
    out.insert(
        "x-b3-traceid",
        HeaderValue::from_str(&trace_id).expect("hex digits are a valid header value"),
    );
    out.insert(
        "x-b3-spanid",
        HeaderValue::from_str(&ctx.span_id).expect("hex digits are a valid header value"),
    );
    out.insert(
        "x-b3-sampled",
        HeaderValue::from_static(if ctx.sampled { "1" } else { "0" }),
    );
}

#[derive(Debug, PartialEq, Eq)]
struct B3Context {
    trace_id: String,
    span_id: String,
    sampled: bool,
}

impl B3Context {
    fn extract(headers: &HeaderMap) -> Option<Self> {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let (trace_id, span_id, sampled, flags) = match get("b3") {
            Some(single) => {
                let mut parts = single.split('-');
                let trace_id = parts.next()?;
                let span_id = parts.next()?;
                let sampling = parts.next();
                let (sampled, flags) = match sampling {
                    Some("d") => (None, Some("1")),
                    other => (other, None),
                };
                (trace_id, span_id, sampled, flags)
            }
            None => (
                get("x-b3-traceid")?,
                get("x-b3-spanid")?,
                get("x-b3-sampled"),
                get("x-b3-flags"),
            ),
        };
        let is_hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
        let is_zero = |s: &str| s.bytes().all(|b| b == b'0');
        if !(trace_id.len() == 16 || trace_id.len() == 32) || !is_hex(trace_id) || is_zero(trace_id)
        {
            return None;
        }
        if span_id.len() != 16 || !is_hex(span_id) || is_zero(span_id) {
            return None;
        }
        let sampled = flags == Some("1") || matches!(sampled, Some("1" | "true" | "True" | "d"));
        Some(Self {
            trace_id: trace_id.to_ascii_lowercase(),
            span_id: span_id.to_ascii_lowercase(),
            sampled,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn reinjected(pairs: &[(&'static str, &'static str)]) -> Vec<(String, String)> {
        let mut out = HeaderMap::new();
        b3_reinject(&headers(pairs), &mut out);
        let mut v: Vec<_> = out
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn forwards_only_allow_listed_headers() {
        let incoming = headers(&[
            ("x-request-id", "abc"),
            ("end-user", "mallory"),
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("sw8", "1-xyz"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
            ("x-secret", "no"),
        ]);
        let out = forwarded(&incoming, &PRODUCTPAGE_FORWARDED);
        assert_eq!(out["x-request-id"], "abc");
        assert_eq!(out["sw8"], "1-xyz");
        assert_eq!(out.get_all("cookie").iter().count(), 2);
        assert!(out.get("end-user").is_none());
        assert!(out.get("x-b3-traceid").is_none());
        assert!(out.get("x-secret").is_none());

        let out = backend_forwarded(&incoming);
        assert_eq!(out["end-user"], "mallory");
        assert_eq!(out.get_all("cookie").iter().count(), 2);
        assert_eq!(out["sw8"], "1-xyz");
        assert_eq!(out["x-b3-traceid"], "463ac35c9f6413ad48485a3953bb6124");
    }

    #[test]
    fn b3_is_reemitted_with_padded_trace_id_and_without_parent_or_flags() {
        let got = reinjected(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-parentspanid", "00f067aa0ba902b6"),
            ("x-b3-flags", "1"),
        ]);
        assert_eq!(
            got,
            [
                ("x-b3-sampled".into(), "1".into()),
                ("x-b3-spanid".into(), "00f067aa0ba902b7".into()),
                (
                    "x-b3-traceid".into(),
                    "0000000000000000a3ce929d0e0e4736".into()
                ),
            ]
        );
    }

    #[test]
    fn b3_missing_sampled_becomes_zero() {
        let got = reinjected(&[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
        ]);
        assert!(got.contains(&("x-b3-sampled".into(), "0".into())));
    }

    #[test]
    fn invalid_or_absent_b3_emits_nothing() {
        assert!(reinjected(&[]).is_empty());
        assert!(
            reinjected(&[("x-b3-traceid", "xyz"), ("x-b3-spanid", "a2fb4a1d1a96d312")]).is_empty()
        );
        assert!(reinjected(&[("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124")]).is_empty());
        assert!(
            reinjected(&[
                ("x-b3-traceid", "00000000000000000000000000000000"),
                ("x-b3-spanid", "a2fb4a1d1a96d312")
            ])
            .is_empty()
        );
    }

    #[test]
    fn single_b3_header_is_understood() {
        let got = reinjected(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")]);
        assert!(got.contains(&(
            "x-b3-traceid".into(),
            "80f198ee56343ba864fe8b2a57d3eff7".into()
        )));
        assert!(got.contains(&("x-b3-sampled".into(), "1".into())));
    }
}
