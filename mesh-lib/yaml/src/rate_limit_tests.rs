//! The spec of `LocalRateLimit`: parsing, defaults, errors with their place, precedence, JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;

const SAMPLE: &str = include_str!("../../../mesh-config/routing/local-rate-limit-productpage.yaml");

const HEAD: &str =
    "apiVersion: mesh.bookinfo.io/v1alpha1\nkind: LocalRateLimit\nmetadata:\n  name: x\nspec:\n";

fn parse(yaml: &str) -> Loaded {
    match parse_file("test.yaml", yaml) {
        Ok(loaded) => loaded,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn parse_err(yaml: &str) -> ConfigError {
    match parse_file("test.yaml", yaml) {
        Ok(loaded) => panic!("expected an error, got {loaded:?}"),
        Err(e) => e,
    }
}

/// The one limit of a document whose spec (indented by two) is `spec`.
fn limit(spec: &str) -> LocalRateLimit {
    let mut config = parse(&format!("{HEAD}{spec}")).config;
    assert_eq!(config.local_rate_limits.len(), 1, "{config:?}");
    config.local_rate_limits.remove(0)
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn parses_the_sample() {
    let loaded = parse(SAMPLE);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let config = loaded.config;
    assert_eq!(config.local_rate_limits.len(), 1);
    let limit = &config.local_rate_limits[0];
    assert_eq!(limit.metadata.key(), "default/productpage");
    assert_eq!(limit.selector, map(&[("app", "productpage")]));
    assert_eq!(limit.max_tokens, 4);
    assert_eq!(limit.tokens_per_fill, 4);
    assert_eq!(limit.fill_interval, Duration::from_secs(60));
    assert_eq!(
        limit.response_headers,
        map(&[("x-local-rate-limit", "true")])
    );
    assert_eq!(limit.status_code, 429);
    assert_eq!(limit.validate(), Ok(()));

    let mut expected = LocalRateLimit::new(
        Metadata {
            name: "productpage".to_owned(),
            namespace: "default".to_owned(),
            ..Metadata::default()
        },
        4,
        Duration::from_secs(60),
    );
    expected.selector = map(&[("app", "productpage")]);
    assert_eq!(*limit, expected);
    assert!(config.peer_authentications.is_empty());
    assert!(config.virtual_services.is_empty());
}

#[test]
fn defaults() {
    let l = limit("  maxTokens: 10\n  fillInterval: 500ms\n");
    assert_eq!(l.metadata.namespace, "default");
    assert!(l.selector.is_empty());
    assert_eq!(l.max_tokens, 10);
    assert_eq!(l.tokens_per_fill, 10);
    assert_eq!(l.fill_interval, Duration::from_millis(500));
    assert_eq!(
        l.response_headers,
        map(&[DEFAULT_RATE_LIMIT_HEADER]),
        "default header"
    );
    assert_eq!(l.status_code, DEFAULT_RATE_LIMIT_STATUS);
    assert_eq!(l.status_code, 429);

    let l = limit(
        "  selector: {}\n  maxTokens: 100\n  tokensPerFill: 1\n  fillInterval: 1m30s\n  responseHeaders: {}\n  statusCode: 503\n",
    );
    assert!(l.selector.is_empty());
    assert_eq!((l.max_tokens, l.tokens_per_fill), (100, 1));
    assert_eq!(l.fill_interval, Duration::from_secs(90));
    assert!(
        l.response_headers.is_empty(),
        "explicit empty map adds none"
    );
    assert_eq!(l.status_code, 503);

    let l = limit(
        "  maxTokens: 1\n  fillInterval: 1s\n  responseHeaders:\n    X-RateLimited: yes\n    Retry-After: \"60\"\n",
    );
    assert_eq!(
        l.response_headers,
        map(&[("retry-after", "60"), ("x-ratelimited", "yes")])
    );
    for status in [400, 599] {
        let l = limit(&format!(
            "  maxTokens: 1\n  fillInterval: 1s\n  statusCode: {status}\n"
        ));
        assert_eq!(l.status_code, status);
    }
    let l = limit(&format!("  maxTokens: {}\n  fillInterval: 1h\n", u32::MAX));
    assert_eq!(l.max_tokens, u32::MAX);
}

/// An invalid spec: the error is on `line` (1-based, the spec starting on line 6) and names
/// `field`.
#[track_caller]
fn invalid(spec: &str, line: usize, field: &str) {
    let e = parse_err(&format!("{HEAD}{spec}"));
    assert_eq!(e.line, Some(line), "{spec}: {e}");
    assert!(e.column.is_some(), "{spec}: {e}");
    assert!(e.reason.contains(field), "{spec}: {e}");
    assert!(e.reason.starts_with("LocalRateLimit: "), "{spec}: {e}");
    assert!(
        e.to_string().starts_with(&format!("test.yaml:{line}:")),
        "{e}"
    );
}

#[test]
fn invalid_values_name_the_field_and_its_place() {
    invalid("  maxTokens: 0\n  fillInterval: 1s\n", 6, "maxTokens");
    invalid("  maxTokens: -1\n  fillInterval: 1s\n", 6, "maxTokens");
    invalid(
        "  maxTokens: 4294967296\n  fillInterval: 1s\n",
        6,
        "maxTokens",
    );
    invalid(
        "  maxTokens: 4\n  tokensPerFill: 0\n  fillInterval: 1s\n",
        7,
        "tokensPerFill",
    );
    invalid("  maxTokens: 4\n  fillInterval: 0s\n", 7, "fillInterval");
    invalid("  maxTokens: 4\n  fillInterval: soon\n", 7, "fillInterval");
    invalid("  maxTokens: 4\n  fillInterval: 60\n", 7, "fillInterval");
    invalid("  maxTokens: 4\n  fillInterval: \"\"\n", 7, "fillInterval");
    invalid(
        "  maxTokens: 4\n  fillInterval: 1s\n  responseHeaders:\n    x-ok: a\n    bad header: b\n",
        10,
        "invalid header name \"bad header\"",
    );
    invalid(
        "  maxTokens: 4\n  fillInterval: 1s\n  responseHeaders:\n    x-bad: \"a\\u0001b\"\n",
        9,
        "invalid header value",
    );
    for status in ["200", "399", "600", "70000", "-429"] {
        invalid(
            &format!("  maxTokens: 4\n  fillInterval: 1s\n  statusCode: {status}\n"),
            8,
            "statusCode",
        );
    }
    // Required fields: reported at the spec.
    invalid("  fillInterval: 1s\n", 6, "missing field `maxTokens`");
    invalid("  maxTokens: 4\n", 6, "missing field `fillInterval`");

    let e = parse_err(
        "apiVersion: mesh.bookinfo.io/v1alpha1\nkind: LocalRateLimit\nmetadata:\n  name: x\n",
    );
    assert_eq!(e.reason, "LocalRateLimit: missing `spec`");
    assert_eq!(e.line, Some(1), "{e}");
}

#[test]
fn unknown_fields_are_errors_with_their_line() {
    let e = parse_err(&format!(
        "{HEAD}  maxTokens: 4\n  fillInterval: 1s\n  burst: 8\n"
    ));
    assert_eq!((e.line, e.column), (Some(8), Some(3)), "{e}");
    assert!(e.reason.contains("burst"), "{e}");
    assert!(e.to_string().starts_with("test.yaml:8:3: "), "{e}");

    let e = parse_err(&format!(
        "{HEAD}  selector:\n    matchLabel:\n      app: x\n  maxTokens: 4\n  fillInterval: 1s\n"
    ));
    assert_eq!(e.line, Some(7), "{e}");
    assert!(e.reason.contains("matchLabel"), "{e}");

    // A typo of a known field is unknown too, not a default.
    let e = parse_err(&format!("{HEAD}  maxToken: 4\n  fillInterval: 1s\n"));
    assert_eq!((e.line, e.column), (Some(6), Some(3)), "{e}");
    assert!(e.reason.contains("maxToken"), "{e}");
}

#[test]
fn api_version_must_be_the_mesh_group() {
    for api in ["mesh.bookinfo.io/v1", "networking.istio.io/v1"] {
        let e = parse_err(&format!(
            "apiVersion: {api}\nkind: LocalRateLimit\nmetadata: {{name: x}}\nspec: {{maxTokens: 1, fillInterval: 1s}}\n"
        ));
        assert_eq!(e.line, Some(1), "{e}");
        assert!(e.reason.contains("mesh.bookinfo.io/v1alpha1"), "{e}");
    }
    // Another kind of the group is not one the mesh knows.
    let e = parse_err(
        "apiVersion: mesh.bookinfo.io/v1alpha1\nkind: GlobalRateLimit\nmetadata: {name: x}\n",
    );
    assert_eq!(e.line, Some(2), "{e}");
    assert!(e.reason.contains("GlobalRateLimit"), "{e}");
}

fn lrl(name: &str, namespace: &str, app: Option<&str>, tokens: u32) -> String {
    let selector = app
        .map(|a| format!("  selector:\n    matchLabels:\n      app: {a}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: mesh.bookinfo.io/v1alpha1\nkind: LocalRateLimit\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n{selector}  maxTokens: {tokens}\n  fillInterval: 1s\n"
    )
}

fn config(docs: &[&str]) -> MeshConfig {
    parse(&docs.join("---\n")).config
}

/// The `maxTokens` of the limit on `app` in `namespace`, if any.
fn tokens(config: &MeshConfig, namespace: &str, app: &str) -> Option<u32> {
    let labels = map(&[("app", app), ("version", "v1")]);
    config
        .local_rate_limit(&Workload::new(namespace, &labels))
        .map(|l| l.max_tokens)
}

#[test]
fn precedence_workload_then_namespace_then_mesh() {
    assert_eq!(
        tokens(&MeshConfig::default(), "default", "productpage"),
        None
    );

    let mesh = lrl("mesh", ROOT_NAMESPACE, None, 1);
    let ns = lrl("ns", "default", None, 2);
    let pp = lrl("pp", "default", Some("productpage"), 3);

    let c = config(&[&mesh]);
    assert_eq!(tokens(&c, "default", "productpage"), Some(1));
    assert_eq!(tokens(&c, "other", "details"), Some(1));

    let c = config(&[&pp, &mesh, &ns]);
    assert_eq!(tokens(&c, "default", "productpage"), Some(3));
    assert_eq!(tokens(&c, "default", "details"), Some(2));
    assert_eq!(tokens(&c, "other", "productpage"), Some(1));

    // Without a namespace-wide one, an unselected workload falls back to the mesh.
    let c = config(&[&pp, &mesh]);
    assert_eq!(tokens(&c, "default", "details"), Some(1));
    // Without a mesh-wide one, other namespaces are not limited.
    let c = config(&[&pp, &ns]);
    assert_eq!(tokens(&c, "other", "productpage"), None);
    assert_eq!(tokens(&c, "default", "details"), Some(2));
    // A workload-selecting limit elsewhere does not apply.
    let c = config(&[&lrl("pp", "other", Some("productpage"), 9)]);
    assert_eq!(tokens(&c, "default", "productpage"), None);
}

#[test]
fn precedence_root_selector_and_ties_by_name() {
    let c = config(&[
        &lrl("w", ROOT_NAMESPACE, Some("details"), 7),
        &lrl("b", "foo", Some("details"), 2),
        &lrl("a", "foo", Some("details"), 1),
        &lrl("z", "foo", None, 4),
        &lrl("c", "foo", None, 3),
    ]);
    // A selector in istio-system selects only workloads of istio-system.
    assert_eq!(tokens(&c, ROOT_NAMESPACE, "details"), Some(7));
    assert_eq!(tokens(&c, "bar", "details"), None);
    // Ties: the first by name, whatever the file order.
    assert_eq!(tokens(&c, "foo", "details"), Some(1));
    assert_eq!(tokens(&c, "foo", "reviews"), Some(3));

    let c = config(&[
        &lrl("b", ROOT_NAMESPACE, None, 2),
        &lrl("a", ROOT_NAMESPACE, None, 1),
    ]);
    assert_eq!(tokens(&c, "foo", "details"), Some(1));
}

#[test]
fn duplicates_later_wins_with_warning_and_merge_replaces() {
    let loaded = parse(&[lrl("x", "default", None, 1), lrl("x", "default", None, 2)].join("---\n"));
    assert_eq!(loaded.config.local_rate_limits.len(), 1);
    assert_eq!(loaded.config.local_rate_limits[0].max_tokens, 2);
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert!(
        loaded.warnings[0].contains("LocalRateLimit default/x is defined more than once"),
        "{:?}",
        loaded.warnings
    );

    let mut c = config(&[&lrl("x", "default", None, 1), &lrl("y", "default", None, 5)]);
    c.merge(config(&[
        &lrl("x", "default", None, 3),
        &lrl("z", "foo", None, 6),
    ]));
    let got: Vec<(String, u32)> = c
        .local_rate_limits
        .iter()
        .map(|l| (l.metadata.key(), l.max_tokens))
        .collect();
    assert_eq!(
        got,
        [
            ("default/x".to_owned(), 3),
            ("default/y".to_owned(), 5),
            ("foo/z".to_owned(), 6)
        ]
    );
}

fn to_json(config: &MeshConfig) -> String {
    match serde_json::to_string(config) {
        Ok(j) => j,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn json_round_trip() {
    let mut c = parse(SAMPLE).config;
    c.merge(parse(&format!(
        "{HEAD}  maxTokens: 3\n  tokensPerFill: 1\n  fillInterval: 1.5s\n  responseHeaders: {{}}\n  statusCode: 503\n"
    )).config);
    c.merge(config(&[&lrl("m", ROOT_NAMESPACE, None, 8)]));
    let json = to_json(&c);
    assert!(json.contains("\"localRateLimits\""), "{json}");
    assert!(json.contains("\"fillInterval\":\"60s\""), "{json}");
    assert!(json.contains("\"fillInterval\":\"1.5s\""), "{json}");
    assert!(json.contains("\"maxTokens\":4"), "{json}");
    assert!(json.contains("\"tokensPerFill\":4"), "{json}");
    assert!(json.contains("\"statusCode\":503"), "{json}");
    assert!(
        json.contains("\"responseHeaders\":{\"x-local-rate-limit\":\"true\"}"),
        "{json}"
    );
    let back: MeshConfig = match serde_json::from_str(&json) {
        Ok(c) => c,
        Err(e) => panic!("{e}: {json}"),
    };
    assert_eq!(back, c);

    // No limits: the field is left out, and configs without it still load.
    let json = to_json(&MeshConfig::default());
    assert!(!json.contains("localRateLimits"), "{json}");
    assert_eq!(
        serde_json::from_str::<MeshConfig>("{}").ok(),
        Some(MeshConfig::default())
    );
}

#[test]
fn json_is_checked_like_yaml() {
    let good = r#"{"metadata":{"name":"x","namespace":"d"},"maxTokens":4,"tokensPerFill":4,"fillInterval":"60s","statusCode":429}"#;
    let ok = serde_json::from_str::<LocalRateLimit>(good);
    assert!(ok.is_ok(), "{ok:?}");
    for (from, to) in [
        ("\"maxTokens\":4", "\"maxTokens\":0"),
        ("\"tokensPerFill\":4", "\"tokensPerFill\":0"),
        ("\"60s\"", "\"0s\""),
        ("\"60s\"", "\"sixty\""),
        ("\"statusCode\":429", "\"statusCode\":200"),
        ("\"statusCode\":429", "\"statusCode\":429,\"extra\":1"),
        (
            "\"statusCode\":429",
            "\"statusCode\":429,\"responseHeaders\":{\"X-Upper\":\"a\"}",
        ),
        (
            "\"statusCode\":429",
            "\"statusCode\":429,\"responseHeaders\":{\"x-bad\":\"a\\u0001\"}",
        ),
        (",\"tokensPerFill\":4", ""),
    ] {
        let bad = good.replace(from, to);
        assert_ne!(bad, good);
        let e = serde_json::from_str::<LocalRateLimit>(&bad);
        assert!(e.is_err(), "{bad} loaded: {e:?}");
    }
    let e =
        serde_json::from_str::<LocalRateLimit>(&good.replace("\"maxTokens\":4", "\"maxTokens\":0"));
    assert!(e.is_err_and(|e| e.to_string().contains("LocalRateLimit d/x: maxTokens")),);
}
