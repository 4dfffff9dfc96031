//! A small scanner over raw JSON bytes that serde_json has already validated: it finds the members
//! of an object and the extent of values without building a `serde_json::Value`, and writes the
//! canonical form that content hashes are taken over. Input it cannot read is an error, never a panic.

/// Raw JSON that does not have the shape the scanner expects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed JSON at byte {at}: {what}")]
pub struct JsonError {
    /// Byte offset of the problem.
    pub at: usize,
    /// What was expected.
    pub what: &'static str,
}

/// One member of a JSON object, as byte ranges into the scanned text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// The name's contents, without quotes, still escaped.
    pub name: (usize, usize),
    /// The whole value, e.g. `"x"`, `42`, `{...}`.
    pub value: (usize, usize),
}

impl Member {
    /// The raw (still escaped) name.
    pub fn name<'a>(&self, text: &'a [u8]) -> &'a [u8] {
        &text[self.name.0..self.name.1]
    }

    /// The raw value.
    pub fn value<'a>(&self, text: &'a [u8]) -> &'a [u8] {
        &text[self.value.0..self.value.1]
    }
}

/// Nesting deeper than this is refused rather than followed (no stack exhaustion on hostile input).
const MAX_DEPTH: usize = 128;

struct Scanner<'a> {
    text: &'a [u8],
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn err(&self, what: &'static str) -> JsonError {
        JsonError { at: self.pos, what }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.text.get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn expect(&mut self, byte: u8, what: &'static str) -> Result<(), JsonError> {
        self.skip_ws();
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err(what))
        }
    }

    /// A string starting at the current position; returns the range of its contents.
    fn string(&mut self) -> Result<(usize, usize), JsonError> {
        if self.peek() != Some(b'"') {
            return Err(self.err("a string"));
        }
        self.pos += 1;
        let start = self.pos;
        loop {
            // Jump to the next quote or backslash instead of stepping byte by byte.
            let rest = self.text.get(self.pos..).unwrap_or_default();
            let Some(i) = memchr::memchr2(b'"', b'\\', rest) else {
                self.pos = self.text.len();
                return Err(self.err("the end of a string"));
            };
            self.pos += i;
            if self.text[self.pos] == b'"' {
                self.pos += 1;
                return Ok((start, self.pos - 1));
            }
            self.pos += 2;
        }
    }

    /// Skip one value; returns its range.
    fn value(&mut self, depth: usize) -> Result<(usize, usize), JsonError> {
        self.skip_ws();
        let start = self.pos;
        match self.peek() {
            Some(b'"') => {
                self.string()?;
            }
            Some(b'{') => {
                self.members(depth + 1, |_| ())?;
            }
            Some(b'[') => {
                self.elements(depth + 1, |_| ())?;
            }
            Some(_) => {
                while let Some(b) = self.peek() {
                    if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.pos += 1;
                }
                if self.pos == start {
                    return Err(self.err("a value"));
                }
            }
            None => return Err(self.err("a value")),
        }
        Ok((start, self.pos))
    }

    /// An object at the current position; calls `each` for every member.
    fn members(&mut self, depth: usize, mut each: impl FnMut(Member)) -> Result<(), JsonError> {
        if depth > MAX_DEPTH {
            return Err(self.err("less deeply nested JSON"));
        }
        self.expect(b'{', "an object")?;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.skip_ws();
            let name = self.string()?;
            self.expect(b':', "':'")?;
            let value = self.value(depth)?;
            each(Member { name, value });
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.err("',' or '}'")),
            }
        }
    }

    /// An array at the current position; calls `each` with every element's range.
    fn elements(
        &mut self,
        depth: usize,
        mut each: impl FnMut((usize, usize)),
    ) -> Result<(), JsonError> {
        if depth > MAX_DEPTH {
            return Err(self.err("less deeply nested JSON"));
        }
        self.expect(b'[', "an array")?;
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            let v = self.value(depth)?;
            each(v);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.err("',' or ']'")),
            }
        }
    }
}

/// The members of the object `text`, in document order, appended to `out` (a reused buffer).
pub fn object_members(text: &[u8], out: &mut Vec<Member>) -> Result<(), JsonError> {
    out.clear();
    let mut s = Scanner { text, pos: 0 };
    s.members(0, |m| out.push(m))?;
    s.skip_ws();
    if s.pos != text.len() {
        return Err(s.err("the end of the object"));
    }
    Ok(())
}

/// The elements of the array `text`, as byte ranges, appended to `out`.
pub fn array_elements(text: &[u8], out: &mut Vec<(usize, usize)>) -> Result<(), JsonError> {
    out.clear();
    let mut s = Scanner { text, pos: 0 };
    s.elements(0, |e| out.push(e))?;
    s.skip_ws();
    if s.pos != text.len() {
        return Err(s.err("the end of the array"));
    }
    Ok(())
}

/// Whether a member name is OData control information (`@odata.etag`, `@etag`, `Prop@odata.type`, …):
/// metadata about the payload, not content. 4.01 services may omit the `odata.` prefix (J §4.5).
pub fn is_control_information(name: &[u8]) -> bool {
    let Some(at) = name.iter().position(|b| *b == b'@') else {
        return false;
    };
    let term = &name[at + 1..];
    let term = term.strip_prefix(b"odata.").unwrap_or(term);
    const CONTROL: &[&[u8]] = &[
        b"context",
        b"metadataEtag",
        b"type",
        b"count",
        b"nextLink",
        b"deltaLink",
        b"id",
        b"editLink",
        b"readLink",
        b"etag",
        b"navigationLink",
        b"associationLink",
        b"mediaEditLink",
        b"mediaReadLink",
        b"mediaContentType",
        b"mediaEtag",
        b"removed",
    ];
    name[at + 1..].starts_with(b"odata.") || CONTROL.contains(&term)
}

/// Write the canonical form of the JSON value `text` to `out`: object members sorted by name,
/// control information and insignificant whitespace dropped, strings with escapes re-escaped one way.
/// Member order and whitespace never change the result. `skip` drops top-level members by name.
pub fn write_canonical(
    text: &[u8],
    skip: &dyn Fn(&[u8]) -> bool,
    out: &mut Vec<u8>,
) -> Result<(), JsonError> {
    let mut s = Scanner { text, pos: 0 };
    s.skip_ws();
    let range = s.value(0)?;
    s.skip_ws();
    if s.pos != text.len() {
        return Err(s.err("the end of the value"));
    }
    canonical_value(text, range, 0, skip, out)
}

fn canonical_value(
    text: &[u8],
    (start, end): (usize, usize),
    depth: usize,
    skip: &dyn Fn(&[u8]) -> bool,
    out: &mut Vec<u8>,
) -> Result<(), JsonError> {
    let raw = &text[start..end];
    let mut s = Scanner { text, pos: start };
    match raw.first() {
        Some(b'{') => {
            let mut members = Vec::new();
            s.members(depth + 1, |m| members.push(m))?;
            canonical_object(text, &members, depth, skip, out)?;
        }
        Some(b'[') => {
            let mut elements = Vec::new();
            s.elements(depth + 1, |e| elements.push(e))?;
            out.push(b'[');
            for (i, e) in elements.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_value(text, e, depth + 1, &|_| false, out)?;
            }
            out.push(b']');
        }
        Some(b'"') => canonical_string(raw, out),
        _ => out.extend_from_slice(raw),
    }
    Ok(())
}

/// The canonical form of an object whose members were already found.
fn canonical_object(
    text: &[u8],
    members: &[Member],
    depth: usize,
    skip: &dyn Fn(&[u8]) -> bool,
    out: &mut Vec<u8>,
) -> Result<(), JsonError> {
    // Names are compared as strings, not as their (possibly escaped) spelling.
    let mut named: Vec<(std::borrow::Cow<[u8]>, Member)> = members
        .iter()
        .map(|m| (decoded_name(text, m), *m))
        .filter(|(name, _)| !(is_control_information(name) || (depth == 0 && skip(name))))
        .collect();
    named.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    if named.windows(2).any(|w| w[0].0 == w[1].0) {
        return canonical_object_with_duplicates(text, named, depth, out);
    }
    out.push(b'{');
    for (i, (_, m)) in named.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        canonical_string(&text[m.name.0 - 1..m.name.1 + 1], out);
        out.push(b':');
        canonical_value(text, m.value, depth + 1, &|_| false, out)?;
    }
    out.push(b'}');
    Ok(())
}

/// A name given twice in one object (invalid, but seen): the members are ordered by name and then
/// by canonical value, so that member order still cannot matter.
fn canonical_object_with_duplicates(
    text: &[u8],
    named: Vec<(std::borrow::Cow<[u8]>, Member)>,
    depth: usize,
    out: &mut Vec<u8>,
) -> Result<(), JsonError> {
    let mut valued = Vec::with_capacity(named.len());
    for (name, m) in named {
        let mut v = Vec::new();
        canonical_value(text, m.value, depth + 1, &|_| false, &mut v)?;
        valued.push((name, m, v));
    }
    valued.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.2.cmp(&b.2)));
    out.push(b'{');
    for (i, (_, m, v)) in valued.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        canonical_string(&text[m.name.0 - 1..m.name.1 + 1], out);
        out.push(b':');
        out.extend_from_slice(v);
    }
    out.push(b'}');
    Ok(())
}

/// [`write_canonical`] for an object whose top-level members were already found with
/// [`object_members`] (saves scanning it twice).
pub fn write_canonical_members(
    text: &[u8],
    members: &[Member],
    skip: &dyn Fn(&[u8]) -> bool,
    out: &mut Vec<u8>,
) -> Result<(), JsonError> {
    canonical_object(text, members, 0, skip, out)
}

/// A member name as the string it denotes (escapes decoded).
fn decoded_name<'t>(text: &'t [u8], m: &Member) -> std::borrow::Cow<'t, [u8]> {
    let raw = m.name(text);
    if memchr::memchr(b'\\', raw).is_none() {
        return std::borrow::Cow::Borrowed(raw);
    }
    match serde_json::from_slice::<String>(&text[m.name.0 - 1..m.name.1 + 1]) {
        Ok(name) => std::borrow::Cow::Owned(name.into_bytes()),
        Err(_) => std::borrow::Cow::Borrowed(raw),
    }
}

/// A quoted string, written as is unless it has escapes, which are normalized by decoding and
/// re-encoding (`"\u00e9"` and `"é"` are the same string).
fn canonical_string(quoted: &[u8], out: &mut Vec<u8>) {
    if memchr::memchr(b'\\', quoted).is_none() {
        out.extend_from_slice(quoted);
        return;
    }
    match serde_json::from_slice::<String>(quoted) {
        Ok(decoded) => {
            // Writing a String to a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, &decoded);
        }
        Err(_) => out.extend_from_slice(quoted),
    }
}

/// Write `text` without insignificant whitespace (member order kept).
pub fn write_compact(text: &[u8], out: &mut Vec<u8>) {
    let mut in_string = false;
    let mut escaped = false;
    for &b in text {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            if b == b'"' {
                in_string = true;
            }
            out.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(s: &str) -> String {
        let mut out = Vec::new();
        write_canonical(s.as_bytes(), &|_| false, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn canonical_form_sorts_members_and_drops_whitespace_and_control_information() {
        let a = canonical(r#"{"b": 1, "a": {"y": [1, 2], "x": "s"}, "@odata.etag": "W/\"1\""}"#);
        let b = canonical(r#"{ "a" : { "x" : "s" , "y" : [ 1 , 2 ] } , "b" : 1 }"#);
        assert_eq!(a, b);
        assert_eq!(a, r#"{"a":{"x":"s","y":[1,2]},"b":1}"#);
    }

    #[test]
    fn escapes_are_normalized_but_content_is_not() {
        assert_eq!(canonical(r#"{"a":"\u00e9"}"#), canonical(r#"{"a":"é"}"#));
        assert_ne!(canonical(r#"{"a":"x"}"#), canonical(r#"{"a":"y"}"#));
        assert_ne!(canonical(r#"{"a":[1,2]}"#), canonical(r#"{"a":[2,1]}"#));
    }

    #[test]
    fn skipped_members_do_not_count_at_top_level_only() {
        let mut out = Vec::new();
        let skip = |n: &[u8]| n == b"modifiedAt";
        write_canonical(
            br#"{"a":1,"modifiedAt":"x","n":{"modifiedAt":2}}"#,
            &skip,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, br#"{"a":1,"n":{"modifiedAt":2}}"#);
    }

    #[test]
    fn control_information_is_recognised_in_both_versions() {
        for n in [
            "@odata.etag",
            "@etag",
            "name@odata.type",
            "@odata.whatever",
            "Orders@odata.navigationLink",
        ] {
            assert!(is_control_information(n.as_bytes()), "{n}");
        }
        for n in ["name", "@Common.label", "email"] {
            assert!(!is_control_information(n.as_bytes()), "{n}");
        }
    }

    #[test]
    fn members_are_found_with_their_ranges() {
        let text = br#" { "ID" : 42, "s":"a\"b", "o":{"x":[1]} } "#;
        let mut m = Vec::new();
        object_members(text.trim_ascii(), &mut m).unwrap();
        let t = text.trim_ascii();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].name(t), b"ID");
        assert_eq!(m[0].value(t), b"42");
        assert_eq!(m[1].value(t), br#""a\"b""#);
        assert_eq!(m[2].value(t), br#"{"x":[1]}"#);
    }

    #[test]
    fn hostile_input_is_an_error_not_a_panic() {
        let mut m = Vec::new();
        for bad in [
            "",
            "{",
            "{\"a\"",
            "{\"a\":",
            "{\"a\":1,",
            "[",
            "{\"a\" 1}",
            "\"\\",
            "{}x",
        ] {
            assert!(object_members(bad.as_bytes(), &mut m).is_err(), "{bad}");
        }
        let deep = "[".repeat(10_000);
        assert!(write_canonical(deep.as_bytes(), &|_| false, &mut Vec::new()).is_err());
    }

    #[test]
    fn compact_keeps_whitespace_inside_strings() {
        let mut out = Vec::new();
        write_compact(br#"{ "a" : "x  y", "b" : [ 1 , "\" " ] }"#, &mut out);
        assert_eq!(out, br#"{"a":"x  y","b":[1,"\" "]}"#);
    }
}
