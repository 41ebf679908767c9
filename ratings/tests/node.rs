//! Our JavaScript numbers against Node.js's own, when `node` is on PATH (otherwise the test
//! says it skipped): `Number::toString` of table values and of thousands of random doubles,
//! `parseInt` of URL segments, and `JSON.stringify(JSON.parse(body))` of posted bodies.

use std::io::Write;
use std::process::{Command, Stdio};

use ratings::js;

/// Runs `script` in node with `input` on stdin; its stdout lines.
fn node(script: &str, input: &[String]) -> Option<Vec<String>> {
    let mut child = match Command::new("node")
        .args(["-e", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(_) => {
            eprintln!("skipping: no node on PATH (apt-get install nodejs)");
            return None;
        }
    };
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.join("\n").as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "node failed");
    let lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), input.len());
    Some(lines)
}

/// Reads stdin's lines as JSON strings and prints `f(line)` per line, as JSON.
const PER_LINE: &str = "const lines = require('fs').readFileSync(0, 'utf8').split('\\n');\
                        for (const l of lines) console.log(JSON.stringify(f(JSON.parse(l))));";

#[test]
fn number_to_string_matches_node() {
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let mut values: Vec<f64> = vec![
        0.0,
        -0.0,
        3.0,
        123.456,
        1e21,
        1e20,
        0.000001,
        1e-7,
        5e-324,
        f64::MAX,
        0.1,
        1.0 / 3.0,
        9007199254740993.0,
        1e-6,
        9.999999999999999e20,
        123e-20,
        f64::NAN,
        f64::INFINITY,
    ];
    // Doubles of every magnitude, from their bits, and integers near 2^53 and 1e21.
    values.extend((0..3000).map(|_| f64::from_bits(rng.u64(..))));
    values.extend((0..500).map(|_| rng.u64(..) as f64 * 10f64.powi(rng.i32(-30..30))));
    values.extend((0..200).map(|_| (2f64.powi(53) + rng.f64() * 1e6).floor()));
    // Quarters between 2^50 and 2^51 have 17 digits and may sit halfway between two.
    values.extend(
        (0..500).map(|_| rng.u64(1 << 50..1 << 51) as f64 + 0.25 * f64::from(rng.u8(0..4))),
    );
    let input: Vec<String> = values
        .iter()
        .map(|v| format!("\"{:016x}\"", v.to_bits()))
        .collect();
    let script = format!(
        "const f = (h) => {{ const b = Buffer.from(h, 'hex'); return String(b.readDoubleBE(0)); }};\
         {PER_LINE}"
    );
    let Some(node) = node(&script, &input) else {
        return;
    };
    for (v, want) in values.iter().zip(node) {
        let want: String = serde_json::from_str(&want).unwrap();
        assert_eq!(js::number_to_string(*v), want, "{:016x}", v.to_bits());
    }
}

#[test]
fn parse_int_matches_node() {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut texts: Vec<String> = [
        "0",
        "-0",
        "1abc",
        "0?x=1",
        "0x1A",
        "0X",
        "abc",
        "",
        "  42",
        "+7",
        "-0x10",
        "99999999999999999999",
        "9007199254740993",
        "123456789012345678901234567890",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    texts.push(format!("1{}", "0".repeat(309)));
    texts.push(format!("{}1", "0".repeat(400)));
    texts.push(format!("0x{}", "f".repeat(300)));
    texts.push(format!("0x1{}8{}1", "0".repeat(13), "0".repeat(38)));
    for _ in 0..500 {
        let digits: String = (0..rng.usize(1..40))
            .map(|_| char::from(b'0' + rng.u8(0..10)))
            .collect();
        texts.push(digits);
        let hex: String = (0..rng.usize(1..40))
            .map(|_| char::from_digit(rng.u32(0..16), 16).unwrap())
            .collect();
        texts.push(format!("0x{hex}"));
    }
    let input: Vec<String> = texts
        .iter()
        .map(|t| serde_json::to_string(t).unwrap())
        .collect();
    let script = format!(
        "const f = (t) => {{ const n = parseInt(t); return Number.isNaN(n) ? 'NaN' : JSON.stringify(n); }};\
         {PER_LINE}"
    );
    let Some(node) = node(&script, &input) else {
        return;
    };
    for (text, want) in texts.iter().zip(node) {
        let want: String = serde_json::from_str(&want).unwrap();
        let got = js::parse_int(text).map_or("NaN".to_owned(), js::json_number);
        assert_eq!(got, want, "{text:?}");
    }
}

#[test]
fn reserialize_matches_json_stringify_of_json_parse() {
    let bodies = [
        r#"{"Reviewer1":3.0,"Reviewer2":4.50}"#,
        r#"{"a":1,"b":2,"a":3}"#,
        r#"{"b":1,"2":2,"1":3,"a":4,"4294967295":6,"4294967294":7,"01":8,"-1":9,"":0}"#,
        "[1e21,1e20,1E2,-0,0.5e-6,1e-7,1e400,-1e400,123456789012345678901234567890]",
        r#"{"s":"\u0000\u001f\u007f\u2028/\\\"é😀","t":true,"f":false,"n":null}"#,
        r#"  {"nested":{"x":[{"y":[]},{}],"z":1.000000000000000000001}}  "#,
        "0.1e1",
        r#""just a string""#,
    ];
    let input: Vec<String> = bodies
        .iter()
        .map(|b| serde_json::to_string(b).unwrap())
        .collect();
    let script = format!("const f = (b) => JSON.stringify(JSON.parse(b)); {PER_LINE}");
    let Some(node) = node(&script, &input) else {
        return;
    };
    for (body, want) in bodies.iter().zip(node) {
        let want: String = serde_json::from_str(&want).unwrap();
        assert_eq!(js::reserialize(body.as_bytes()).unwrap(), want, "{body}");
    }
}
