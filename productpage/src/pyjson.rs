//! JSON as productpage's API writes it: simplejson's `dumps` defaults, i.e. `", "` and
//! `": "` separators, non-ASCII escaped as `\uXXXX`, and numbers as Python holds them after
//! `loads`: integers of any size digit for digit, floats in `repr` form (`3.0`, `1e+20`,
//! `1e-05`, `Infinity`). Scripts written against upstream compare these bytes.
//!
//! serde_json's `arbitrary_precision` keeps each number's text, so an integer beyond 64 bits
//! (details echoes any id) is not rounded to a float on its way through.

use std::io;

use serde::Serialize;
use serde_json::ser::{Formatter, Serializer};

/// Serialises `value` the way upstream's API does.
pub fn to_string(value: &impl Serialize) -> String {
    let mut out = Vec::new();
    let mut ser = Serializer::with_formatter(&mut out, PythonFormatter);
    value
        .serialize(&mut ser)
        .expect("serialising into memory cannot fail");
    String::from_utf8(out).expect("the formatter writes ASCII only")
}

struct PythonFormatter;

impl Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn write_number_str<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        value: &str,
    ) -> io::Result<()> {
        w.write_all(python_number(value).as_bytes())
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        for c in fragment.chars() {
            if c.is_ascii() {
                w.write_all(&[c as u8])?;
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(w, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

/// A JSON number as simplejson writes it back after reading it: an integer literal stays an
/// integer (`-0` is `0`), anything with a fraction or exponent becomes a float in `repr` form.
pub fn python_number(text: &str) -> String {
    if !text.contains(['.', 'e', 'E']) {
        let digits = text.trim_start_matches('-');
        return if digits.bytes().all(|b| b == b'0') {
            "0".to_owned()
        } else {
            text.to_owned()
        };
    }
    match text.parse::<f64>() {
        Ok(value) => python_float_repr(value),
        // serde_json only hands over numbers it has validated.
        Err(_) => text.to_owned(),
    }
}

/// Python's `repr(float)`: the shortest digits that read back the same, positional when the
/// decimal exponent is in -4..16 (with `.0` when integral), else `d.ddde±XX`.
fn python_float_repr(value: f64) -> String {
    if value.is_nan() {
        return "NaN".to_owned();
    }
    if value.is_infinite() {
        return if value > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    // `{:e}` gives the shortest round-trip digits: `-1.5e-7`, `1e20`.
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific
        .split_once('e')
        .expect("`{:e}` always writes an exponent");
    let exponent: i32 = exponent.parse().expect("`{:e}` writes a decimal exponent");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|&c| c != '.').collect();
    if !(-4..16).contains(&exponent) {
        let (first, rest) = digits.split_at(1);
        let fraction = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        return format!("{sign}{first}{fraction}e{exp_sign}{:02}", exponent.abs());
    }
    let point = exponent + 1;
    let body = if point <= 0 {
        format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
    } else if point as usize >= digits.len() {
        format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
    } else {
        let (whole, fraction) = digits.split_at(point as usize);
        format!("{whole}.{fraction}")
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    /// What CPython 3.11's `json.dumps(json.loads(text))` printed for each.
    #[test]
    fn numbers_come_back_as_python_writes_them() {
        for (text, python) in [
            ("0", "0"),
            ("-0", "0"),
            ("42", "42"),
            ("-7", "-7"),
            (
                "123456789012345678901234567890",
                "123456789012345678901234567890",
            ),
            ("3.0", "3.0"),
            ("1e20", "1e+20"),
            ("1E5", "100000.0"),
            ("1.50", "1.5"),
            ("-0.0", "-0.0"),
            ("1e16", "1e+16"),
            ("1e15", "1000000000000000.0"),
            ("0.0001", "0.0001"),
            ("0.00001", "1e-05"),
            ("1e999", "Infinity"),
            ("-1e999", "-Infinity"),
            ("2.5e-7", "2.5e-07"),
            ("1.7976931348623157e308", "1.7976931348623157e+308"),
            ("5e-324", "5e-324"),
            ("100.0e0", "100.0"),
            ("123.456", "123.456"),
            ("0.1", "0.1"),
            ("1234567.125", "1234567.125"),
        ] {
            assert_eq!(super::python_number(text), python, "{text}");
        }
    }

    #[test]
    fn integers_beyond_64_bits_pass_through() {
        let text = r#"{"id":99999999999999999999,"pages":200,"r":3.0}"#;
        let value: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            super::to_string(&value),
            r#"{"id": 99999999999999999999, "pages": 200, "r": 3.0}"#
        );
    }

    #[test]
    fn python_separators_and_ascii_escapes() {
        let v = json!({"id": 0, "ratings": {"Reviewer1": 5, "b": [1, 2]}, "s": "é😀\"x"});
        assert_eq!(
            super::to_string(&v),
            r#"{"id": 0, "ratings": {"Reviewer1": 5, "b": [1, 2]}, "s": "\u00e9\ud83d\ude00\"x"}"#
        );
    }
}
