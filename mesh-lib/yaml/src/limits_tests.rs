//! The spec of the size limits on what a config file may hold.

use super::*;

fn parse_err(yaml: &str) -> ConfigError {
    match parse_file("limits.yaml", yaml) {
        Ok(loaded) => panic!(
            "expected an error, got {} resources",
            loaded.config.virtual_services.len()
        ),
        Err(e) => e,
    }
}

fn virtual_service(host: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: r}}\nspec:\n  hosts: [\"{host}\"]\n  http:\n  - route:\n    - destination: {{host: reviews}}\n"
    )
}

#[test]
fn a_ten_megabyte_host_is_refused_by_the_file_limit_without_echoing_it() {
    let yaml = virtual_service(&"a".repeat(10 << 20));
    let e = parse_err(&yaml);
    assert_eq!(
        e.to_string(),
        format!(
            "limits.yaml: file is {} bytes, above the limit of {MAX_FILE_BYTES} bytes",
            yaml.len()
        )
    );
}

#[test]
fn a_host_longer_than_dns_allows_is_refused() {
    let e = parse_err(&virtual_service(&format!("{}.example", "a".repeat(300))));
    assert_eq!(e.line, Some(5), "{e}");
    assert_eq!(
        e.reason,
        "VirtualService: a host of 308 bytes is longer than a DNS name may be (253 bytes)"
    );
    // 253 bytes in labels of at most 63 is a valid host.
    let longest = [
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(61),
    ]
    .join(".");
    assert_eq!(longest.len(), MAX_HOST_BYTES);
    assert!(parse_file("limits.yaml", &virtual_service(&longest)).is_ok());

    let destination = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: HOST}\n".replace("HOST", &"d".repeat(254));
    let e = parse_err(&destination);
    assert!(
        e.reason.starts_with("destination: a host of 254 bytes"),
        "{e}"
    );
    let rule = format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: d}}\nspec: {{host: {}}}\n",
        "r".repeat(254)
    );
    assert!(
        parse_err(&rule)
            .reason
            .starts_with("DestinationRule: a host of 254 bytes")
    );
    let gateway = format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: g}}\nspec:\n  servers:\n  - port: {{number: 8080, protocol: HTTP}}\n    hosts: [\"ns/{}\"]\n",
        "g".repeat(254)
    );
    assert!(
        parse_err(&gateway)
            .reason
            .starts_with("Gateway server: a host of 254 bytes")
    );
}

#[test]
fn a_string_over_the_limit_is_refused_with_its_place() {
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  annotations:\n    note: {}\nspec: {{}}\n",
        "n".repeat(MAX_STRING_BYTES + 1)
    );
    let e = parse_err(&yaml);
    assert_eq!((e.line, e.column), (Some(6), Some(11)), "{e:?}");
    assert_eq!(
        e.reason,
        format!(
            "a string of {} bytes is above the limit of 65536 bytes",
            MAX_STRING_BYTES + 1
        )
    );
    // Keys count as strings too.
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  labels:\n    {}: x\nspec: {{}}\n",
        "k".repeat(MAX_STRING_BYTES + 1)
    );
    assert_eq!(parse_err(&yaml).line, Some(6));
    // So do tagged ones.
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  annotations:\n    note: !!str {}\nspec: {{}}\n",
        "n".repeat(MAX_STRING_BYTES + 1)
    );
    assert!(
        parse_err(&yaml)
            .reason
            .starts_with("a string of 65537 bytes")
    );
    // At the limit is fine.
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  annotations:\n    note: {}\nspec: {{}}\n",
        "n".repeat(MAX_STRING_BYTES)
    );
    assert!(parse_file("limits.yaml", &yaml).is_ok());
}

#[test]
fn aliases_cannot_expand_a_file_past_the_limit() {
    let mut yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  annotations:\n    a0: &big {}\n",
        "z".repeat(60 << 10)
    );
    for i in 1..40 {
        yaml.push_str(&format!("    a{i}: *big\n"));
    }
    yaml.push_str("spec: {}\n");
    assert!(yaml.len() < 70 << 10);
    let e = parse_err(&yaml);
    assert!(e.reason.starts_with("the file's strings are "), "{e}");
    assert!(
        e.reason
            .ends_with(" bytes once YAML aliases are expanded, above the limit of 1048576 bytes"),
        "{e}"
    );
}
