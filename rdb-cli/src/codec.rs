//! How keys and values are written on the command line and printed.
//!
//! Arguments are taken as text by default, as hex with `--hex`, or with backslash escapes
//! with `--escape`. Output is hex with `--hex`, else the escape form: printable UTF-8 stands
//! for itself and everything else is escaped (`\\`, `\n`, `\r`, `\t`, `\xNN`), so every byte
//! string prints one way only, and printed keys can be given back with `--escape`.

use std::fmt::Write as _;

/// How arguments are decoded and results encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Arguments as given (UTF-8 text); output in the escape form.
    Text,
    /// Arguments with backslash escapes; output in the escape form.
    Escape,
    /// Arguments and output as hex digits, two per byte.
    Hex,
}

impl Codec {
    /// The bytes named by a command-line argument.
    pub fn decode(self, arg: &str) -> Result<Vec<u8>, String> {
        match self {
            Codec::Text => Ok(arg.as_bytes().to_vec()),
            Codec::Escape => unescape(arg),
            Codec::Hex => unhex(arg),
        }
    }

    /// The printed form of `bytes`.
    pub fn encode(self, bytes: &[u8]) -> String {
        match self {
            Codec::Hex => hex(bytes),
            Codec::Text | Codec::Escape => escape(bytes),
        }
    }

    /// The name of the printed form, for JSON output.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Hex => "hex",
            Codec::Text | Codec::Escape => "escape",
        }
    }
}

/// Lowercase hex, two digits per byte.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Hex digits (either case, an optional `0x` prefix) to bytes.
pub fn unhex(arg: &str) -> Result<Vec<u8>, String> {
    let digits = arg
        .strip_prefix("0x")
        .or_else(|| arg.strip_prefix("0X"))
        .unwrap_or(arg);
    if !digits.len().is_multiple_of(2) {
        return Err(format!(
            "'{}' is not hex: odd number of digits",
            escape(arg.as_bytes())
        ));
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| {
            digits
                .get(i..i + 2)
                .and_then(|d| u8::from_str_radix(d, 16).ok())
                .ok_or_else(|| {
                    format!(
                        "'{}' is not hex: bad digits at offset {i}",
                        escape(arg.as_bytes())
                    )
                })
        })
        .collect()
}

/// The escape form: printable UTF-8 as is, `\\`, `\n`, `\r`, `\t`, and `\xNN` for every other
/// byte (control characters and bytes that are not UTF-8); the client's own
/// ([`rdb_client::escape_bytes`]), so keys in its errors read the same.
pub fn escape(bytes: &[u8]) -> String {
    rdb_client::escape_bytes(bytes)
}

/// Reads the escape form back: `\\`, `\n`, `\r`, `\t`, `\0` and `\xNN`; other text as is.
pub fn unescape(arg: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(arg.len());
    let mut chars = arg.char_indices();
    while let Some((i, c)) = chars.next() {
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        let bad = || {
            format!(
                "'{}': bad escape at offset {i} (use \\\\, \\n, \\r, \\t, \\0 or \\xNN)",
                escape(arg.as_bytes())
            )
        };
        match chars.next().map(|(_, c)| c) {
            Some('\\') => out.push(b'\\'),
            Some('n') => out.push(b'\n'),
            Some('r') => out.push(b'\r'),
            Some('t') => out.push(b'\t'),
            Some('0') => out.push(0),
            Some('x') => {
                let hi = chars.next().map(|(_, c)| c);
                let lo = chars.next().map(|(_, c)| c);
                let byte = match (
                    hi.and_then(|c| c.to_digit(16)),
                    lo.and_then(|c| c.to_digit(16)),
                ) {
                    (Some(h), Some(l)) => (h * 16 + l) as u8,
                    _ => return Err(bad()),
                };
                out.push(byte);
            }
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_bad_digits() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(unhex(&hex(&all)).unwrap(), all);
        assert_eq!(unhex("0x00FF").unwrap(), [0, 255]);
        assert_eq!(unhex("").unwrap(), Vec::<u8>::new());
        assert!(unhex("abc").is_err());
        assert!(unhex("zz").is_err());
        assert!(unhex("é1").is_err());
    }

    #[test]
    fn escape_round_trips_every_byte_string() {
        let all: Vec<u8> = (0..=255).collect();
        let cases: Vec<Vec<u8>> = vec![
            all.clone(),
            b"plain text".to_vec(),
            b"back\\slash \\x00 literally".to_vec(),
            "héllo wörld ✓".as_bytes().to_vec(),
            vec![0xff, 0xfe, b'a', 0],
            "\u{85}next-line".as_bytes().to_vec(),
        ];
        for c in cases {
            let printed = escape(&c);
            assert!(
                printed.chars().all(|ch| !ch.is_control()),
                "{printed:?} is safe to print"
            );
            assert_eq!(unescape(&printed).unwrap(), c, "{printed}");
        }
    }

    #[test]
    fn escape_form_is_unambiguous() {
        // A literal backslash-x sequence and the byte it spells print differently.
        assert_eq!(escape(b"\\x00"), "\\\\x00");
        assert_eq!(escape(&[0]), "\\x00");
        assert_eq!(escape(b"a\nb\t"), "a\\nb\\t");
        assert_eq!(escape("ü".as_bytes()), "ü");
    }

    #[test]
    fn unescape_accepts_the_documented_escapes_only() {
        assert_eq!(unescape("a\\x00b\\n\\\\\\0").unwrap(), b"a\0b\n\\\0");
        assert!(unescape("\\q").is_err());
        assert!(unescape("trailing\\").is_err());
        assert!(unescape("\\x4").is_err());
        assert!(unescape("\\xg0").is_err());
    }
}
