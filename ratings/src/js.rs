//! JavaScript's numbers, as upstream's Node.js ratings produces them: the product id is
//! `parseInt` of a URL segment (a double, not an integer), and every answer is
//! `JSON.stringify` output, so every number we write goes through [`number_to_string`], the
//! ECMAScript `Number::toString` algorithm, and posted ratings go through [`reserialize`],
//! `JSON.stringify(JSON.parse(body))`.

use serde_json::Value;

/// ECMAScript's `Number::toString(x)` (ECMA-262, Number::toString, radix 10): the shortest
/// digits that read back as `x`, written plainly when the decimal exponent `n` is in -6 < n ≤ 21
/// and as `d.ddde±n` otherwise; `-0` is `0`, and the non-finite values are `NaN`, `Infinity`
/// and `-Infinity`.
///
/// ```
/// use ratings::js::number_to_string;
/// assert_eq!(number_to_string(1e20), "100000000000000000000");
/// assert_eq!(number_to_string(1e21), "1e+21");
/// assert_eq!(number_to_string(3.0), "3");
/// assert_eq!(number_to_string(1e-7), "1e-7");
/// ```
pub fn number_to_string(x: f64) -> String {
    if x.is_nan() {
        return "NaN".to_owned();
    }
    if x == 0.0 {
        return "0".to_owned();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    let mut out = String::new();
    if x < 0.0 {
        out.push('-');
    }
    // Rust's `{:e}` writes the same shortest round-trip digits ECMAScript asks for, as
    // `d.ddd` `e` exponent: the digits are the `s` of the specification and `n` is one more
    // than the exponent.
    let (digits, n) = shortest_digits(x.abs());
    let k = i32::try_from(digits.len()).expect("at most 17 digits");
    let zeros = |count: i32| "0".repeat(usize::try_from(count).unwrap_or(0));
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.push_str(&zeros(n - k));
    } else if 0 < n && n <= 21 {
        let (int, frac) = digits.split_at(n as usize);
        out.push_str(int);
        out.push('.');
        out.push_str(frac);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.push_str(&zeros(-n));
        out.push_str(&digits);
    } else {
        let (first, rest) = digits.split_at(1);
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        out.push_str(if n > 0 { "e+" } else { "e-" });
        out.push_str(&(n - 1).abs().to_string());
    }
    out
}

/// The `s` and `n` of Number::toString for a positive finite `x`: the fewest decimal digits
/// that read back as `x`, and where the decimal point goes (`x` is about `0.s × 10^n`).
///
/// Rust's `{:e}` writes such shortest digits, and the closest to `x` when several have that
/// length. When two are equally close it may take either; ECMAScript (and V8) take the even
/// one, so that case is settled here.
fn shortest_digits(x: f64) -> (String, i32) {
    let scientific = format!("{x:e}");
    let (mantissa, exponent) = scientific
        .split_once('e')
        .expect("`{:e}` always writes an exponent");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let exponent: i32 = exponent.parse().expect("`{:e}` writes a decimal exponent");
    let n = exponent + 1;
    let s: u64 = digits.parse().expect("at most 17 digits");
    if s % 2 == 1 {
        // The unit of the last digit is 10^(n - k); a tie is x exactly halfway between s and
        // its neighbour, at t × 10^(n - k - 1) with t = 10 s ± 5.
        let k = i32::try_from(digits.len()).expect("at most 17 digits");
        for (neighbour, t) in [(s - 1, s * 10 - 5), (s + 1, s * 10 + 5)] {
            let same_length = neighbour.to_string().len() == digits.len();
            if same_length
                && is_exactly(x, t, n - k - 1)
                && format!("{neighbour}e{}", n - k).parse::<f64>() == Ok(x)
            {
                return (neighbour.to_string().trim_end_matches('0').to_owned(), n);
            }
        }
    }
    (digits, n)
}

/// Whether `x` is exactly `t × 10^j`, for `t` an odd integer (it ends in 5). For `j ≥ 0` it
/// never is when the digits above `t`'s last are shortest: x's last binary digit would be worth
/// more than 10^(j+1), yet `t × 10^j` has only j factors of two. For `j < 0`, `t × 10^j` is
/// (t / 5^-j) / 2^-j, a double only when 5^-j divides t.
fn is_exactly(x: f64, t: u64, j: i32) -> bool {
    if j >= 0 {
        return false;
    }
    let a = j.unsigned_abs();
    // t < 10^18 < 5^26.
    if a > 26 {
        return false;
    }
    let five = 5u64.pow(a);
    if !t.is_multiple_of(five) {
        return false;
    }
    // Scaling by a power of two is exact for a ≤ 26.
    let scaled = x * 2f64.powi(j.abs());
    scaled.fract() == 0.0 && scaled < 2f64.powi(64) && scaled as u64 == t / five
}

/// `JSON.stringify` of a number: [`number_to_string`] when finite, `null` otherwise.
pub fn json_number(x: f64) -> String {
    if x.is_finite() {
        number_to_string(x)
    } else {
        "null".to_owned()
    }
}

/// JavaScript's `parseInt(text)` with no radix: leading white space, an optional sign, `0x`
/// or `0X` for hexadecimal, then as many digits as there are, read as the nearest double
/// (`"99999999999999999999"` is 1e20, a number past the doubles' range is infinite).
/// `None` where JavaScript gives `NaN`.
pub fn parse_int(text: &str) -> Option<f64> {
    let s = text.trim_start_matches(is_js_white_space);
    let (negative, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, s) = match s.get(..2) {
        Some("0x" | "0X") => (16, &s[2..]),
        _ => (10, s),
    };
    let end = s.find(|c: char| !c.is_digit(radix)).unwrap_or(s.len());
    let digits = &s[..end];
    if digits.is_empty() {
        return None;
    }
    let magnitude = if radix == 10 {
        // Correctly rounded, as V8's parseInt reads decimal digits.
        digits
            .parse::<f64>()
            .expect("ASCII digits are a decimal float")
    } else {
        hex_to_f64(digits)
    };
    Some(if negative { -magnitude } else { magnitude })
}

/// Hexadecimal digits as the nearest double: the first 30 digits exactly, the rest folded into
/// a sticky bit far below the rounding position, then scaled by a power of two (exact).
fn hex_to_f64(digits: &str) -> f64 {
    const KEPT: usize = 30;
    let digits = digits.trim_start_matches('0');
    let (head, tail) = digits.split_at(digits.len().min(KEPT));
    if head.is_empty() {
        return 0.0;
    }
    let mut bits = u128::from_str_radix(head, 16).expect("at most 30 hexadecimal digits");
    if tail.bytes().any(|b| b != b'0') {
        bits |= 1;
    }
    let shift = i32::try_from(tail.len() * 4).unwrap_or(i32::MAX);
    // `as` rounds to nearest, ties to even, as ECMAScript does.
    (bits as f64) * 2f64.powi(shift)
}

/// ECMAScript's StrWhiteSpaceChar: white space and line terminators.
fn is_js_white_space(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n' | '\u{0B}' | '\u{0C}' | '\r' | ' ' | '\u{A0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200A}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202F}'
                | '\u{205F}'
                | '\u{3000}'
                | '\u{FEFF}'
    )
}

/// `JSON.stringify(JSON.parse(body))`: `Err` where `JSON.parse` throws. Numbers become
/// doubles and are written by [`json_number`] (`3.0` is `3`, `1e400` is `null`), a repeated
/// key keeps its first place and its last value, and object keys come out in JavaScript's
/// order: array indices (`"0"` … `"4294967294"`) ascending, then the others as first posted.
///
/// Known differences from Node.js: a string holding a lone surrogate (`"\ud800"`), which
/// JavaScript keeps, and nesting deeper than 128 levels are refused.
pub fn reserialize(body: &[u8]) -> Result<String, serde_json::Error> {
    let value: Value = serde_json::from_slice(body)?;
    let mut out = String::with_capacity(body.len());
    write_json(&value, &mut out);
    Ok(out)
}

fn write_json(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        // With or without serde_json's arbitrary_precision, a number's text reads back
        // correctly rounded.
        Value::Number(n) => out.push_str(&json_number(
            n.to_string()
                .parse()
                .expect("serde_json writes valid numbers"),
        )),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            // Stable: the non-index keys keep their order.
            entries.sort_by_key(|(key, _)| array_index(key).map_or((1, 0), |i| (0, i)));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_json(item, out);
            }
            out.push('}');
        }
    }
}

/// serde_json escapes strings as `JSON.stringify` does: `"`, `\`, `\b` `\f` `\n` `\r` `\t`,
/// other control characters as `\u00xx`, and nothing else.
fn write_string(s: &str, out: &mut String) {
    out.push_str(&serde_json::to_string(s).expect("a string always serialises"));
}

/// The key as an ECMAScript array index: the canonical decimal form of an integer in
/// 0 ..= 2^32 - 2.
fn array_index(key: &str) -> Option<u32> {
    if key.is_empty() || (key.len() > 1 && key.starts_with('0')) {
        return None;
    }
    if !key.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    key.parse::<u32>().ok().filter(|i| *i != u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outputs of ECMAScript's Number::toString, which Node.js prints for these values.
    #[test]
    fn numbers_are_written_as_javascript_writes_them() {
        for (x, want) in [
            (0.0, "0"),
            (-0.0, "0"),
            (3.0, "3"),
            (-3.0, "-3"),
            (123.456, "123.456"),
            (0.1, "0.1"),
            (0.1 + 0.2, "0.30000000000000004"),
            (0.000001, "0.000001"),
            (0.0000012, "0.0000012"),
            (1e-7, "1e-7"),
            (1.5e-7, "1.5e-7"),
            (-1e-7, "-1e-7"),
            (1e20, "100000000000000000000"),
            (1e21, "1e+21"),
            (1.5e21, "1.5e+21"),
            (123456789012345680000.0, "123456789012345680000"),
            (9007199254740992.0, "9007199254740992"),
            (9007199254740993.0, "9007199254740992"),
            (1e15, "1000000000000000"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            // Exactly halfway between …216.2 and …216.3: the even digit, as V8 writes it.
            (1635795412240216.0 + 0.25, "1635795412240216.2"),
            (1635795412240216.0 + 0.75, "1635795412240216.8"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
        ] {
            assert_eq!(number_to_string(x), want, "{x:e}");
        }
        assert_eq!(json_number(f64::INFINITY), "null");
        assert_eq!(json_number(f64::NAN), "null");
        assert_eq!(json_number(-0.0), "0");
    }

    #[test]
    fn parse_int_is_as_lenient_as_javascript() {
        for (text, want) in [
            ("0", "0"),
            ("1abc", "1"),
            ("-3", "-3"),
            ("-0", "0"),
            ("0?x=1", "0"),
            ("  42", "42"),
            ("\u{FEFF}\u{A0}7", "7"),
            ("0x1A", "26"),
            ("-0x10", "-16"),
            ("007", "7"),
            ("9007199254740993", "9007199254740992"),
            ("99999999999999999999", "100000000000000000000"),
            ("1000000000000000000000", "1e+21"),
            ("0xfffffffffffff800", "18446744073709550000"),
        ] {
            let got = parse_int(text).map(number_to_string);
            assert_eq!(got.as_deref(), Some(want), "{text:?}");
        }
        let long_zeros = format!("{}1", "0".repeat(400));
        assert_eq!(parse_int(&long_zeros), Some(1.0));
        assert_eq!(
            parse_int(&format!("1{}", "0".repeat(309))),
            Some(f64::INFINITY)
        );
        assert_eq!(
            parse_int(&format!("0x{}", "f".repeat(300))),
            Some(f64::INFINITY)
        );
        assert_eq!(parse_int(&format!("0x{}1", "0".repeat(400))), Some(1.0));
        // 2^212 + 2^159 is halfway between two doubles and rounds to even, 2^212; a 1 in the
        // last of 54 digits, past the 30 kept exactly, makes it round up.
        let tie = format!("0x1{}8{}", "0".repeat(13), "0".repeat(39));
        assert_eq!(parse_int(&tie), Some(2f64.powi(212)));
        let above = format!("0x1{}8{}1", "0".repeat(13), "0".repeat(38));
        assert_eq!(parse_int(&above), Some(2f64.powi(212) + 2f64.powi(160)));
        for text in ["", "abc", "-", "?x=1", "0x", " x1", "+-1"] {
            assert!(parse_int(text).is_none(), "{text:?}");
        }
    }

    #[test]
    fn posted_json_reads_and_writes_as_json_parse_then_stringify() {
        for (body, want) in [
            (r#"{"Reviewer1":3.0}"#, r#"{"Reviewer1":3}"#),
            (
                "[1e21, 1e20, 1E2, -0, 0.5e-6, 1e-7, 1e400]",
                "[1e+21,100000000000000000000,100,0,5e-7,1e-7,null]",
            ),
            (r#"{"a":1,"b":2,"a":3}"#, r#"{"a":3,"b":2}"#),
            (
                r#"{"b":1,"2":2,"1":3,"a":4,"4294967295":6,"4294967294":7,"01":8,"-1":9}"#,
                r#"{"1":3,"2":2,"4294967294":7,"b":1,"a":4,"4294967295":6,"01":8,"-1":9}"#,
            ),
            (" \"x\\u0007/\\u2028\" ", "\"x\\u0007/\u{2028}\""),
            ("true", "true"),
            (r#"{"n":null,"e":{},"l":[]}"#, r#"{"n":null,"e":{},"l":[]}"#),
        ] {
            assert_eq!(reserialize(body.as_bytes()).unwrap(), want, "{body}");
        }
        for body in ["", "{nope", "[1,]", "{\"a\":1} x", "\u{FEFF}{}"] {
            assert!(reserialize(body.as_bytes()).is_err(), "{body:?}");
        }
    }

    #[test]
    fn array_indices_are_canonical_and_below_two_to_the_thirty_two_minus_one() {
        assert_eq!(array_index("0"), Some(0));
        assert_eq!(array_index("4294967294"), Some(4_294_967_294));
        for key in [
            "",
            "00",
            "01",
            "-1",
            "1.0",
            "4294967295",
            "99999999999",
            "+1",
        ] {
            assert_eq!(array_index(key), None, "{key:?}");
        }
    }
}
