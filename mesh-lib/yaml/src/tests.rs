//! The spec of this module: parsing errors, the Istio authorization tutorial, precedence.

use std::collections::BTreeMap;

use http::HeaderMap;

use super::*;

const SA: &str = "cluster.local/ns/default/sa/bookinfo-";

fn parse(yaml: &str) -> MeshConfig {
    match parse_file("test.yaml", yaml) {
        Ok(loaded) => loaded.config,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn parse_err(yaml: &str) -> ConfigError {
    match parse_file("test.yaml", yaml) {
        Ok(loaded) => panic!("expected an error, got {loaded:?}"),
        Err(e) => e,
    }
}

fn labels(app: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app".to_owned(), app.to_owned()),
        ("version".to_owned(), "v1".to_owned()),
    ])
}

fn principal(sa: &str) -> String {
    format!("{SA}{sa}")
}

/// Decision for a request to `app` (namespace default) from `from` (a Bookinfo service
/// account name, or None for plaintext).
fn check(config: &MeshConfig, app: &str, method: &str, path: &str, from: Option<&str>) -> Decision {
    check_with(
        config,
        "default",
        app,
        method,
        path,
        from,
        &HeaderMap::new(),
    )
}

fn check_with(
    config: &MeshConfig,
    namespace: &str,
    app: &str,
    method: &str,
    path: &str,
    from: Option<&str>,
    headers: &HeaderMap,
) -> Decision {
    let labels = labels(app);
    let principal = from.map(principal);
    config.authorize(
        &Workload::new(namespace, &labels),
        &RequestAttrs {
            method,
            path,
            headers,
            principal: principal.as_deref(),
        },
    )
}

fn allowed(d: &Decision) -> bool {
    d.is_allow()
}

fn denied_by(policy: &str) -> Decision {
    Decision::Deny {
        policy: policy.to_owned(),
    }
}

fn no_allow() -> Decision {
    denied_by("")
}

// ---------------------------------------------------------------- parse errors

#[test]
fn truncated_yaml_reports_line() {
    let e = parse_err(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: x\nspec:\n  rules: [{to: [\n",
    );
    assert_eq!(e.file, "test.yaml");
    assert!(e.line.is_some(), "{e:?}");
    assert!(e.line >= Some(6), "{e:?}");
    assert!(e.to_string().starts_with("test.yaml:"), "{e}");
}

#[test]
fn unknown_field_is_named_with_its_line() {
    let e = parse_err(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: x\nspec:\n  mtsl:\n    mode: STRICT\n",
    );
    assert_eq!(e.line, Some(6), "{e:?}");
    assert_eq!(e.column, Some(3), "{e:?}");
    assert!(e.reason.contains("mtsl"), "{e:?}");
    assert!(e.to_string().starts_with("test.yaml:6:3: "), "{e}");
}

#[test]
fn unknown_field_in_flow_spec_and_metadata() {
    let e = parse_err(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: x}\nspec: {mtsl: {mode: STRICT}}\n",
    );
    assert_eq!(e.line, Some(4));
    assert!(e.reason.contains("mtsl"), "{e:?}");

    let e = parse_err(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: x\n  uid: abc\n",
    );
    assert_eq!(e.line, Some(5));
    assert!(e.reason.contains("uid"), "{e:?}");

    let e = parse_err(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: x}\nstatus: {}\n",
    );
    assert_eq!(e.line, Some(4));
    assert!(e.reason.contains("status"), "{e:?}");
}

#[test]
fn unknown_field_deep_in_a_rule() {
    let e = parse_err(
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: x}
spec:
  rules:
  - to:
    - operation:
        methds: ["GET"]
"#,
    );
    assert_eq!(e.line, Some(8), "{e:?}");
    assert!(e.reason.contains("methds"), "{e:?}");
}

#[test]
fn wrong_kind_and_api_version() {
    let e = parse_err("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n");
    assert_eq!(e.line, Some(2), "{e:?}");
    assert!(e.reason.contains("ConfigMap"), "{e:?}");

    let e = parse_err(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: x}\n",
    );
    assert!(e.reason.contains("RequestAuthentication"), "{e:?}");

    let e = parse_err(
        "apiVersion: networking.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: x}\n",
    );
    assert_eq!(e.line, Some(1), "{e:?}");
    assert!(e.reason.contains("apiVersion"), "{e:?}");

    let e =
        parse_err("apiVersion: security.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\n");
    assert!(e.reason.contains("apiVersion"), "{e:?}");

    let e = parse_err("kind: PeerAuthentication\nmetadata: {name: x}\n");
    assert!(e.reason.contains("apiVersion"), "{e:?}");

    let e = parse_err("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n");
    assert!(e.reason.contains("metadata"), "{e:?}");

    let e = parse_err(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {namespace: x}\n",
    );
    assert!(e.reason.contains("name"), "{e:?}");

    let e = parse_err("- a\n- b\n");
    assert!(e.line.is_some(), "{e:?}");
}

#[test]
fn spec_before_kind_is_an_error() {
    let e = parse_err(
        "apiVersion: security.istio.io/v1\nspec: {}\nkind: AuthorizationPolicy\nmetadata: {name: x}\n",
    );
    assert_eq!(e.reason, "`apiVersion` and `kind` must come before `spec`");
    assert_eq!(e.line, Some(2), "{e:?}");
}

#[test]
fn bad_enum_values() {
    let e = parse_err(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: x}\nspec:\n  mtls:\n    mode: strict\n",
    );
    assert_eq!(e.line, Some(6), "{e:?}");
    assert!(e.reason.contains("strict"), "{e:?}");

    for action in ["AUDIT", "CUSTOM"] {
        let e = parse_err(&format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: x}}\nspec:\n  action: {action}\n"
        ));
        assert_eq!(e.reason, format!("action {action} is not supported"));
        assert_eq!(e.line, Some(5), "{e:?}");
    }
}

fn policy_with(section: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: x}}\nspec:\n{section}"
    )
}

#[test]
fn unsupported_fields_are_errors_naming_them() {
    let cases = [
        (
            "  rules:\n  - from:\n    - source:\n        ipBlocks: [\"1.2.3.4\"]\n",
            "ipBlocks",
            8,
        ),
        (
            "  rules:\n  - from:\n    - source:\n        notIpBlocks: [\"1.2.3.4\"]\n",
            "notIpBlocks",
            8,
        ),
        (
            "  rules:\n  - from:\n    - source:\n        remoteIpBlocks: [\"1.2.3.4\"]\n",
            "remoteIpBlocks",
            8,
        ),
        (
            "  rules:\n  - from:\n    - source:\n        requestPrincipals: [\"*\"]\n",
            "requestPrincipals",
            8,
        ),
        (
            "  rules:\n  - from:\n    - source:\n        notRequestPrincipals: [\"*\"]\n",
            "notRequestPrincipals",
            8,
        ),
        (
            "  rules:\n  - to:\n    - operation:\n        ports: [\"8080\"]\n",
            "ports",
            8,
        ),
        (
            "  rules:\n  - to:\n    - operation:\n        notPorts: [8080]\n",
            "notPorts",
            8,
        ),
        ("  provider:\n    name: ext-authz\n", "provider", 6),
        ("  targetRef: {kind: Gateway, name: gw}\n", "targetRef", 5),
        (
            "  targetRefs: [{kind: Gateway, name: gw}]\n",
            "targetRefs",
            5,
        ),
    ];
    for (section, field, line) in cases {
        let e = parse_err(&policy_with(section));
        assert_eq!(
            e.reason,
            format!("field {field} is not supported"),
            "{section}"
        );
        assert_eq!(e.line, Some(line), "{section}: {e:?}");
    }
}

#[test]
fn empty_unsupported_fields_are_accepted() {
    let config = parse(&policy_with(
        "  rules:\n  - from:\n    - source:\n        ipBlocks: []\n        principals: [\"a\"]\n",
    ));
    assert_eq!(
        config.authorization_policies[0].rules[0].from[0].principals,
        ["a"]
    );
}

#[test]
fn unsupported_condition_keys_are_errors() {
    for key in [
        "request.auth.claims[iss]",
        "source.ip",
        "destination.port",
        "request.headers[]",
    ] {
        let e = parse_err(&policy_with(&format!(
            "  rules:\n  - when:\n    - key: {key}\n      values: [\"x\"]\n"
        )));
        assert_eq!(e.reason, format!("condition key {key} is not supported"));
        assert_eq!(e.line, Some(7), "{e:?}");
    }
    let e = parse_err(&policy_with(
        "  rules:\n  - when:\n    - key: source.principal\n",
    ));
    assert!(e.reason.contains("values"), "{e:?}");
}

#[test]
fn empty_source_operation_and_path_templates_are_errors() {
    let e = parse_err(&policy_with("  rules:\n  - from:\n    - source: {}\n"));
    assert!(e.reason.contains("from.source"), "{e:?}");
    let e = parse_err(&policy_with("  rules:\n  - from:\n    - {}\n"));
    assert!(e.reason.contains("from.source"), "{e:?}");
    let e = parse_err(&policy_with("  rules:\n  - to:\n    - operation: {}\n"));
    assert!(e.reason.contains("to.operation"), "{e:?}");
    let e = parse_err(&policy_with(
        "  rules:\n  - to:\n    - operation: {paths: [\"/a/{*}\"]}\n",
    ));
    assert!(e.reason.contains("{*}"), "{e:?}");
}

#[test]
fn display_format() {
    let e = ConfigError {
        file: "a.yaml".into(),
        line: Some(3),
        column: Some(7),
        reason: "bad thing".into(),
    };
    assert_eq!(e.to_string(), "a.yaml:3:7: bad thing");
    let e = ConfigError::new("a.yaml", "bad thing");
    assert_eq!(e.to_string(), "a.yaml: bad thing");
    let e = parse_err("kind: [\n");
    assert_eq!(
        e.to_string(),
        format!(
            "test.yaml:{}:{}: {}",
            e.line.unwrap_or(0),
            e.column.unwrap_or(0),
            e.reason
        )
    );
    assert!(!e.reason.contains('\n'));
}

#[test]
fn unsupported_kinds_are_errors_naming_api_version_and_kind() {
    for (api, kind) in [
        ("networking.istio.io/v1", "ServiceEntry"),
        ("networking.istio.io/v1beta1", "Sidecar"),
        ("networking.istio.io/v1alpha3", "EnvoyFilter"),
        ("networking.istio.io/v1", "WorkloadEntry"),
        ("gateway.networking.k8s.io/v1", "HTTPRoute"),
        ("v1", "ConfigMap"),
    ] {
        let e = parse_err(&format!(
            "apiVersion: {api}\nkind: {kind}\nmetadata: {{name: x}}\nspec: {{hosts: [example.com]}}\n"
        ));
        assert_eq!(e.reason, format!("{api} {kind} is not supported (yet)"));
        assert_eq!(e.line, Some(2), "{e:?}");
    }
}

#[test]
fn api_version_is_checked_before_the_spec() {
    // A Gateway API Gateway shares the kind with Istio's: its spec must not be read as one.
    let e = parse_err(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  gatewayClassName: istio\n  listeners: [{name: http, port: 80, protocol: HTTP}]\n",
    );
    assert_eq!(
        e.reason,
        "gateway.networking.k8s.io/v1 Gateway is not supported (yet); the mesh reads Gateway \
         from apiVersion networking.istio.io/v1, networking.istio.io/v1beta1, \
         networking.istio.io/v1alpha3"
    );
    assert_eq!(e.line, Some(1), "{e:?}");

    let e = parse_err(
        "kind: AuthorizationPolicy\nspec: {}\napiVersion: security.istio.io/v1\nmetadata: {name: x}\n",
    );
    assert_eq!(e.reason, "`apiVersion` and `kind` must come before `spec`");
    assert_eq!(e.line, Some(2), "{e:?}");
}

#[test]
fn port_level_mtls_is_an_error() {
    let e = parse_err(
        r#"apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: pa, namespace: foo}
spec:
  selector: {matchLabels: {app: x}}
  mtls: {mode: PERMISSIVE}
  portLevelMtls:
    8080: {mode: STRICT}
"#,
    );
    assert_eq!(e.reason, "field portLevelMtls is not supported");
    assert_eq!(e.line, Some(8), "{e:?}");
}

#[test]
fn defaults_and_metadata() {
    let config = parse(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: x\n  labels: {a: b}\n  annotations: {c: d}\n",
    );
    let p = &config.authorization_policies[0];
    assert_eq!(p.metadata.namespace, "default");
    assert_eq!(p.metadata.labels.get("a").map(String::as_str), Some("b"));
    assert_eq!(
        p.metadata.annotations.get("c").map(String::as_str),
        Some("d")
    );
    assert_eq!(p.action, Action::Allow);
    assert!(p.rules.is_empty());
}

#[test]
fn empty_documents_and_empty_files() {
    assert_eq!(parse(""), MeshConfig::default());
    assert_eq!(parse("# nothing\n---\n---\n"), MeshConfig::default());
    let config = parse(
        "---\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\n---\n# c\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: b}\nspec: {}\n---\n",
    );
    assert_eq!(config.authorization_policies.len(), 2);
}

#[test]
fn errors_in_later_documents_have_file_lines() {
    let e = parse_err(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: b}\nspec: {actoin: DENY}\n",
    );
    assert_eq!(e.line, Some(8), "{e:?}");
    assert!(e.reason.contains("actoin"));
}

#[test]
fn duplicate_resource_later_wins_with_warning() {
    let loaded = match parse_file(
        "d.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec: {action: DENY}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\n",
    ) {
        Ok(l) => l,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(loaded.config.authorization_policies.len(), 1);
    assert_eq!(
        loaded.config.authorization_policies[0].action,
        Action::Allow
    );
    assert_eq!(loaded.warnings.len(), 1);
}

// ---------------------------------------------------------------- the tutorial

const ALLOW_NOTHING: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-nothing
  namespace: default
spec:
  {}
"#;

const PRODUCTPAGE_VIEWER: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: "productpage-viewer"
  namespace: default
spec:
  selector:
    matchLabels:
      app: productpage
  action: ALLOW
  rules:
  - to:
    - operation:
        methods: ["GET"]
"#;

fn viewer(app: &str, from: &str) -> String {
    format!(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: "{app}-viewer"
  namespace: default
spec:
  selector:
    matchLabels:
      app: {app}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/bookinfo-{from}"]
    to:
    - operation:
        methods: ["GET"]
"#
    )
}

fn docs(parts: &[&str]) -> MeshConfig {
    parse(&parts.join("\n---\n"))
}

const APPS: [&str; 4] = ["productpage", "details", "reviews", "ratings"];

#[test]
fn tutorial_step_1_allow_nothing() {
    let config = docs(&[ALLOW_NOTHING]);
    for app in APPS {
        assert_eq!(check(&config, app, "GET", "/productpage", None), no_allow());
        assert_eq!(
            check(&config, app, "GET", "/productpage", Some("productpage")),
            no_allow()
        );
    }
}

#[test]
fn tutorial_step_2_productpage_viewer() {
    let config = docs(&[ALLOW_NOTHING, PRODUCTPAGE_VIEWER]);
    assert!(allowed(&check(
        &config,
        "productpage",
        "GET",
        "/productpage",
        None
    )));
    assert_eq!(
        check(&config, "productpage", "POST", "/login", None),
        no_allow()
    );
    for app in ["details", "reviews"] {
        assert_eq!(
            check(&config, app, "GET", "/details/0", Some("productpage")),
            no_allow()
        );
    }
}

#[test]
fn tutorial_step_3_details_and_reviews_viewers() {
    let details = viewer("details", "productpage");
    let reviews = viewer("reviews", "productpage");
    let config = docs(&[ALLOW_NOTHING, PRODUCTPAGE_VIEWER, &details, &reviews]);
    for app in ["details", "reviews"] {
        assert!(allowed(&check(
            &config,
            app,
            "GET",
            "/x/0",
            Some("productpage")
        )));
        assert_eq!(
            check(&config, app, "GET", "/x/0", Some("reviews")),
            no_allow()
        );
        assert_eq!(check(&config, app, "GET", "/x/0", None), no_allow());
        assert_eq!(
            check(&config, app, "POST", "/x/0", Some("productpage")),
            no_allow()
        );
    }
    assert_eq!(
        check(&config, "ratings", "GET", "/ratings/0", Some("reviews")),
        no_allow()
    );
    assert!(allowed(&check(
        &config,
        "productpage",
        "GET",
        "/productpage",
        None
    )));
}

#[test]
fn tutorial_step_4_ratings_viewer() {
    let details = viewer("details", "productpage");
    let reviews = viewer("reviews", "productpage");
    let ratings = viewer("ratings", "reviews");
    let config = docs(&[
        ALLOW_NOTHING,
        PRODUCTPAGE_VIEWER,
        &details,
        &reviews,
        &ratings,
    ]);
    assert!(allowed(&check(
        &config,
        "ratings",
        "GET",
        "/ratings/0",
        Some("reviews")
    )));
    assert_eq!(
        check(&config, "ratings", "GET", "/ratings/0", Some("productpage")),
        no_allow()
    );
    assert!(allowed(&check(
        &config,
        "productpage",
        "GET",
        "/productpage",
        None
    )));
    assert!(allowed(&check(
        &config,
        "details",
        "GET",
        "/details/0",
        Some("productpage")
    )));
}

#[test]
fn tutorial_step_5_all_deleted() {
    let config = MeshConfig::default();
    for app in APPS {
        assert!(allowed(&check(&config, app, "GET", "/", None)));
        assert!(allowed(&check(
            &config,
            app,
            "DELETE",
            "/x",
            Some("ratings")
        )));
    }
}

// ---------------------------------------------------------------- semantics

#[test]
fn deny_beats_allow() {
    let config = docs(&[
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-all}\nspec:\n  rules: [{}]\n",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-post}\nspec:\n  action: DENY\n  rules: [{to: [{operation: {methods: [POST]}}]}]\n",
    ]);
    assert!(allowed(&check(&config, "details", "GET", "/", None)));
    assert_eq!(
        check(&config, "details", "POST", "/", Some("productpage")),
        denied_by("default/no-post")
    );
}

#[test]
fn deny_without_rules_denies_nothing_and_rule_without_sections_matches_all() {
    let config = docs(&[
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: d}\nspec: {action: DENY}\n",
    ]);
    assert!(allowed(&check(&config, "details", "GET", "/", None)));
    let config = docs(&[
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: d}\nspec: {action: DENY, rules: [{}]}\n",
    ]);
    assert_eq!(
        check(&config, "details", "GET", "/", None),
        denied_by("default/d")
    );
}

#[test]
fn mesh_wide_policies_apply_everywhere() {
    let config = docs(&[
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-admin, namespace: istio-system}\nspec:\n  action: DENY\n  rules: [{to: [{operation: {paths: [\"/admin*\"]}}]}]\n",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: only-ratings, namespace: istio-system}\nspec:\n  selector: {matchLabels: {app: ratings}}\n  rules: [{from: [{source: {namespaces: [default]}}]}]\n",
    ]);
    let h = HeaderMap::new();
    for ns in ["default", "other", ROOT_NAMESPACE] {
        assert_eq!(
            check_with(&config, ns, "details", "GET", "/admin/x", None, &h),
            denied_by("istio-system/deny-admin")
        );
        assert!(allowed(&check_with(
            &config, ns, "details", "GET", "/x", None, &h
        )));
        assert_eq!(
            check_with(&config, ns, "ratings", "GET", "/x", None, &h),
            no_allow()
        );
        assert!(allowed(&check_with(
            &config,
            ns,
            "ratings",
            "GET",
            "/x",
            Some("reviews"),
            &h
        )));
    }
    // Policies in another namespace do not apply.
    let config = docs(&[
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: other}\n",
    ]);
    assert!(allowed(&check(&config, "details", "GET", "/", None)));
}

#[test]
fn selector_mismatch_does_not_apply() {
    let config = docs(&[
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec:\n  selector: {matchLabels: {app: reviews, version: v2}}\n",
    ]);
    assert!(allowed(&check(&config, "reviews", "GET", "/", None)));
    assert!(allowed(&check(&config, "details", "GET", "/", None)));
    let config = docs(&[
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec:\n  selector: {matchLabels: {app: reviews, version: v1}}\n",
    ]);
    assert_eq!(check(&config, "reviews", "GET", "/", None), no_allow());
}

#[test]
fn not_paths_and_not_methods() {
    let config = docs(&[
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec:\n  rules:\n  - to:\n    - operation:\n        notPaths: [\"/private*\"]\n        notMethods: [DELETE]\n",
    ]);
    assert!(allowed(&check(&config, "details", "GET", "/public", None)));
    assert_eq!(
        check(&config, "details", "GET", "/private/1", None),
        no_allow()
    );
    assert_eq!(
        check(&config, "details", "DELETE", "/public", None),
        no_allow()
    );
    // Methods are case-sensitive.
    assert!(allowed(&check(
        &config, "details", "delete", "/public", None
    )));
}

#[test]
fn path_and_principal_wildcards() {
    let config = docs(&[
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec:\n  rules:\n  - to: [{operation: {paths: [\"/api/*\", \"*.css\", \"/exact\"]}}]\n  - from: [{source: {principals: [\"*\"]}}]\n    to: [{operation: {paths: [\"/mtls-only\"]}}]\n  - from: [{source: {principals: [\"*/sa/bookinfo-rev*\"]}}]\n",
    ]);
    for path in ["/api/v1", "/api/", "/static/site.css", "/exact"] {
        assert!(
            allowed(&check(&config, "details", "GET", path, None)),
            "{path}"
        );
    }
    for path in ["/api", "/exact/", "/static/site.js", "/"] {
        assert_eq!(
            check(&config, "details", "GET", path, None),
            no_allow(),
            "{path}"
        );
    }
    assert_eq!(
        check(&config, "details", "GET", "/mtls-only", None),
        no_allow()
    );
    assert!(allowed(&check(
        &config,
        "details",
        "GET",
        "/mtls-only",
        Some("x")
    )));
    // Suffix on principal: "*/sa/bookinfo-rev*" is a suffix pattern "/sa/bookinfo-rev*" literally.
    assert_eq!(
        check(&config, "details", "GET", "/", Some("reviews")),
        no_allow()
    );
}

#[test]
fn principals_and_namespaces() {
    let config = docs(&[
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec:\n  rules:\n  - from:\n    - source:\n        namespaces: [default, \"team-*\"]\n        notPrincipals: [\"cluster.local/ns/default/sa/bookinfo-ratings\"]\n",
    ]);
    assert!(allowed(&check(
        &config,
        "details",
        "GET",
        "/",
        Some("reviews")
    )));
    assert_eq!(
        check(&config, "details", "GET", "/", Some("ratings")),
        no_allow()
    );
    assert_eq!(check(&config, "details", "GET", "/", None), no_allow());
    let labels = labels("details");
    let h = HeaderMap::new();
    let decide = |p: &str| {
        config.authorize(
            &Workload::new("default", &labels),
            &RequestAttrs {
                method: "GET",
                path: "/",
                headers: &h,
                principal: Some(p),
            },
        )
    };
    assert!(decide("cluster.local/ns/team-a/sa/x").is_allow());
    assert!(decide("spiffe://cluster.local/ns/team-a/sa/x").is_allow());
    assert!(!decide("cluster.local/ns/other/sa/x").is_allow());
    assert!(!decide("garbage").is_allow());

    // notPrincipals alone: plaintext passes (nothing to exclude).
    let config = docs(&[
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec:\n  action: DENY\n  rules:\n  - from:\n    - source:\n        notNamespaces: [default]\n",
    ]);
    assert!(allowed(&check(
        &config,
        "details",
        "GET",
        "/",
        Some("reviews")
    )));
    assert_eq!(
        check(&config, "details", "GET", "/", None),
        denied_by("default/x")
    );
}

#[test]
fn hosts_match_without_port_case_insensitively() {
    let config = docs(&[
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec:\n  rules:\n  - to: [{operation: {hosts: [\"Details\", \"*.example.com\"], notHosts: [\"bad.example.com\"]}}]\n",
    ]);
    let host = |h: &str| {
        let mut headers = HeaderMap::new();
        if let Ok(v) = h.parse() {
            headers.insert(http::header::HOST, v);
        }
        check_with(&config, "default", "details", "GET", "/", None, &headers)
    };
    assert!(host("details").is_allow());
    assert!(host("details:9080").is_allow());
    assert!(host("DETAILS:9080").is_allow());
    assert!(host("www.example.com:443").is_allow());
    assert!(!host("bad.example.com").is_allow());
    assert!(!host("reviews").is_allow());
    assert!(!check(&config, "details", "GET", "/", None).is_allow());
}

#[test]
fn when_request_headers_and_source() {
    let config = docs(&[r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: jason}
spec:
  selector: {matchLabels: {app: reviews}}
  rules:
  - when:
    - key: request.headers[End-User]
      values: ["jason", "admin-*"]
    - key: source.namespace
      notValues: ["blocked"]
"#]);
    let with_user = |user: Option<&str>, from: Option<&str>| {
        let mut headers = HeaderMap::new();
        if let Some(user) = user
            && let Ok(v) = user.parse()
        {
            headers.insert("end-user", v);
        }
        check_with(
            &config,
            "default",
            "reviews",
            "GET",
            "/reviews/0",
            from,
            &headers,
        )
    };
    assert!(with_user(Some("jason"), None).is_allow());
    assert!(with_user(Some("admin-bob"), Some("productpage")).is_allow());
    assert!(!with_user(Some("Jason"), None).is_allow());
    assert!(!with_user(Some("bob"), None).is_allow());
    assert!(!with_user(None, None).is_allow());

    let config = docs(&[
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  action: DENY\n  rules:\n  - when:\n    - {key: source.principal, values: [\"*bookinfo-ratings\"]}\n",
    ]);
    assert_eq!(
        check(&config, "details", "GET", "/", Some("ratings")),
        denied_by("default/p")
    );
    assert!(allowed(&check(
        &config,
        "details",
        "GET",
        "/",
        Some("reviews")
    )));
    assert!(allowed(&check(&config, "details", "GET", "/", None)));
}

#[test]
fn deny_decision_names_first_policy_in_order() {
    let config = docs(&[
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: zz}\nspec: {action: DENY, rules: [{}]}\n",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: aa}\nspec: {action: DENY, rules: [{}]}\n",
    ]);
    assert_eq!(
        check(&config, "details", "GET", "/", None),
        denied_by("default/aa")
    );
    assert_eq!(
        denied_by("default/aa").to_string(),
        "deny (policy default/aa)"
    );
}

// ---------------------------------------------------------------- mTLS

fn pa(name: &str, namespace: &str, selector: Option<&str>, mode: Option<&str>) -> String {
    let mut s = format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n"
    );
    if let Some(app) = selector {
        s.push_str(&format!("  selector: {{matchLabels: {{app: {app}}}}}\n"));
    }
    match mode {
        Some(mode) => s.push_str(&format!("  mtls: {{mode: {mode}}}\n")),
        None => s.push_str("  mtls: {}\n"),
    }
    s
}

fn mode(config: &MeshConfig, namespace: &str, app: &str) -> MtlsMode {
    let labels = labels(app);
    config.mtls_mode(&Workload::new(namespace, &labels))
}

#[test]
fn mtls_default_is_permissive() {
    assert_eq!(
        mode(&MeshConfig::default(), "default", "details"),
        MtlsMode::Permissive
    );
    assert_eq!(MtlsMode::default(), MtlsMode::Permissive);
}

#[test]
fn mtls_mesh_wide_strict() {
    let config = docs(&[&pa("default", ROOT_NAMESPACE, None, Some("STRICT"))]);
    assert_eq!(mode(&config, "default", "details"), MtlsMode::Strict);
    assert_eq!(mode(&config, "foo", "details"), MtlsMode::Strict);
}

#[test]
fn mtls_namespace_overrides_mesh() {
    let config = docs(&[
        &pa("default", ROOT_NAMESPACE, None, Some("STRICT")),
        &pa("ns", "foo", None, Some("PERMISSIVE")),
    ]);
    assert_eq!(mode(&config, "foo", "details"), MtlsMode::Permissive);
    assert_eq!(mode(&config, "default", "details"), MtlsMode::Strict);
}

#[test]
fn mtls_workload_overrides_namespace() {
    let config = docs(&[
        &pa("ns", "foo", None, Some("STRICT")),
        &pa("w", "foo", Some("details"), Some("DISABLE")),
    ]);
    assert_eq!(mode(&config, "foo", "details"), MtlsMode::Disable);
    assert_eq!(mode(&config, "foo", "reviews"), MtlsMode::Strict);
    assert_eq!(mode(&config, "bar", "details"), MtlsMode::Permissive);
}

#[test]
fn mtls_unset_inherits() {
    let config = docs(&[
        &pa("default", ROOT_NAMESPACE, None, Some("STRICT")),
        &pa("ns", "foo", None, Some("UNSET")),
        &pa("w", "foo", Some("details"), None),
        &pa("w2", "foo", Some("reviews"), Some("DISABLE")),
    ]);
    assert_eq!(mode(&config, "foo", "details"), MtlsMode::Strict);
    assert_eq!(mode(&config, "foo", "reviews"), MtlsMode::Disable);
    let config = docs(&[
        &pa("ns", "foo", None, Some("DISABLE")),
        &pa("w", "foo", Some("details"), Some("UNSET")),
    ]);
    assert_eq!(mode(&config, "foo", "details"), MtlsMode::Disable);
    let config = docs(&[&pa("ns", "foo", None, None)]);
    assert_eq!(mode(&config, "foo", "details"), MtlsMode::Permissive);
}

#[test]
fn mtls_root_selector_applies_only_in_root_namespace_and_ties_by_name() {
    let config = docs(&[
        &pa("w", ROOT_NAMESPACE, Some("details"), Some("STRICT")),
        &pa("b", "foo", Some("details"), Some("DISABLE")),
        &pa("a", "foo", Some("details"), Some("STRICT")),
    ]);
    assert_eq!(mode(&config, ROOT_NAMESPACE, "details"), MtlsMode::Strict);
    assert_eq!(mode(&config, "bar", "details"), MtlsMode::Permissive);
    assert_eq!(mode(&config, "foo", "details"), MtlsMode::Strict);
}

// ---------------------------------------------------------------- load_dir, merge, JSON

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("meshconfig-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        if let Err(e) = std::fs::create_dir_all(&path) {
            panic!("cannot create {}: {e}", path.display());
        }
        TempDir(path)
    }

    fn write(&self, name: &str, text: &str) {
        if let Err(e) = std::fs::write(self.0.join(name), text) {
            panic!("cannot write {name}: {e}");
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn load_dir_reads_yaml_files_in_order() {
    let dir = TempDir::new("ok");
    dir.write(
        "b.yml",
        &format!(
            "{}\n---\n{}",
            viewer("details", "productpage"),
            viewer("reviews", "productpage")
        ),
    );
    dir.write(
        "a.yaml",
        &format!("{ALLOW_NOTHING}\n---\n{PRODUCTPAGE_VIEWER}"),
    );
    dir.write("c.yaml", "# empty\n");
    dir.write("notes.txt", "not: yaml: at: all: [");
    dir.write(".hidden.yaml", "garbage: [");
    dir.write("x.yaml.bak", "garbage: [");
    if let Err(e) = std::fs::create_dir(dir.0.join("sub.yaml")) {
        panic!("{e}");
    }
    dir.write("sub.yaml/bad.yaml", "garbage: [");
    let loaded = match load_dir(&dir.0) {
        Ok(l) => l,
        Err(e) => panic!("{e}"),
    };
    let names: Vec<&str> = loaded
        .config
        .authorization_policies
        .iter()
        .map(|p| p.metadata.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "allow-nothing",
            "productpage-viewer",
            "details-viewer",
            "reviews-viewer"
        ]
    );
    assert!(loaded.warnings.is_empty());
    let config = loaded.config;
    assert!(allowed(&check(
        &config,
        "details",
        "GET",
        "/",
        Some("productpage")
    )));
    assert_eq!(
        check(&config, "ratings", "GET", "/", Some("reviews")),
        no_allow()
    );
}

#[test]
fn load_dir_one_bad_file_fails_the_whole_load() {
    let dir = TempDir::new("bad");
    dir.write("a.yaml", ALLOW_NOTHING);
    dir.write(
        "b.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec: {rulez: []}\n",
    );
    let e = match load_dir(&dir.0) {
        Ok(l) => panic!("expected an error, got {l:?}"),
        Err(e) => e,
    };
    assert!(e.file.ends_with("b.yaml"), "{e:?}");
    assert_eq!(e.line, Some(4));
    assert!(e.to_string().contains("b.yaml:4:"), "{e}");
    assert!(e.reason.contains("rulez"));

    let missing = load_dir(&dir.0.join("nope"));
    assert!(matches!(missing, Err(ConfigError { line: None, .. })));
}

#[test]
fn merge_appends_and_replaces() {
    let mut config = docs(&[ALLOW_NOTHING]);
    config.merge(docs(&[
        PRODUCTPAGE_VIEWER,
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-nothing}\nspec: {rules: [{}]}\n",
        &pa("p", "default", None, Some("STRICT")),
    ]));
    assert_eq!(config.authorization_policies.len(), 2);
    assert_eq!(config.authorization_policies[0].rules.len(), 1);
    assert_eq!(config.peer_authentications.len(), 1);
    assert!(allowed(&check(&config, "details", "GET", "/", None)));
}

#[test]
fn json_round_trip() {
    let config = docs(&[
        ALLOW_NOTHING,
        PRODUCTPAGE_VIEWER,
        &viewer("details", "productpage"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: d, labels: {a: b}}\nspec:\n  action: DENY\n  rules:\n  - to: [{operation: {notPaths: [\"/x*\"], hosts: [h], notMethods: [PUT]}}]\n    when:\n    - {key: \"request.headers[end-user]\", values: [jason]}\n    - {key: source.principal, notValues: [a]}\n    - {key: source.namespace, values: [b]}\n",
        &pa("default", ROOT_NAMESPACE, None, Some("STRICT")),
        &pa("w", "foo", Some("details"), None),
    ]);
    let json = match serde_json::to_string(&config) {
        Ok(j) => j,
        Err(e) => panic!("{e}"),
    };
    assert!(json.contains("\"request.headers[end-user]\""), "{json}");
    assert!(json.contains("\"STRICT\""), "{json}");
    let back: MeshConfig = match serde_json::from_str(&json) {
        Ok(c) => c,
        Err(e) => panic!("{e}: {json}"),
    };
    assert_eq!(back, config);

    let bad = r#"{"authorizationPolicies":[{"metadata":{"name":"x","namespace":"d"},"rules":[{"when":[{"key":"source.ip","values":["1"]}]}]}]}"#;
    assert!(serde_json::from_str::<MeshConfig>(bad).is_err());
    let unknown = r#"{"peerAuthentications":[],"extra":1}"#;
    assert!(serde_json::from_str::<MeshConfig>(unknown).is_err());
}
