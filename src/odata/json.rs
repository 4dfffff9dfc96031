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

/// The first `"` or `\\` in `text`. Most names and many values are short, and looking at them eight
/// bytes at a time costs less than setting memchr up; longer strings go to memchr.
fn quote_or_backslash(text: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const SHORT: usize = 64;
    let mut at = 0;
    while at + 8 <= text.len().min(SHORT) {
        let mut word = [0u8; 8];
        word.copy_from_slice(&text[at..at + 8]);
        let word = u64::from_le_bytes(word);
        let quote = word ^ (ONES * u64::from(b'"'));
        let backslash = word ^ (ONES * u64::from(b'\\'));
        // The lowest byte flagged is the first zero byte of either: exact (borrows only reach
        // higher bytes).
        let zero =
            (quote.wrapping_sub(ONES) & !quote) | (backslash.wrapping_sub(ONES) & !backslash);
        let found = zero & HIGH;
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    if at < SHORT {
        return text[at..]
            .iter()
            .position(|&b| b == b'"' || b == b'\\')
            .map(|i| at + i);
    }
    memchr::memchr2(b'"', b'\\', &text[at..]).map(|i| at + i)
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
        self.string_flagged().map(|(range, _)| range)
    }

    /// [`Self::string`], and whether the string holds escapes.
    fn string_flagged(&mut self) -> Result<((usize, usize), bool), JsonError> {
        if self.peek() != Some(b'"') {
            return Err(self.err("a string"));
        }
        self.pos += 1;
        let start = self.pos;
        let mut escaped = false;
        loop {
            let rest = self.text.get(self.pos..).unwrap_or_default();
            let Some(i) = quote_or_backslash(rest) else {
                self.pos = self.text.len();
                return Err(self.err("the end of a string"));
            };
            self.pos += i;
            if self.text[self.pos] == b'"' {
                self.pos += 1;
                return Ok(((start, self.pos - 1), escaped));
            }
            escaped = true;
            self.pos += 2;
        }
    }

    /// A number, `true`, `false` or `null` (not checked further: serde_json validated it).
    fn scalar(&mut self) -> Result<(), JsonError> {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                break;
            }
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.err("a value"));
        }
        Ok(())
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
            Some(_) => self.scalar()?,
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

/// Write the object `text` with the members of every object in it renamed or dropped, in one pass:
/// `name` writes a member's new name (the raw name is given) and returns `false` to drop the member
/// with its value. Values nested deeper than `copy_below` are copied as they are. Whitespace between
/// tokens is dropped; member order is kept.
pub fn write_renamed(
    text: &[u8],
    name: &dyn Fn(&[u8], &mut Vec<u8>) -> bool,
    copy_below: usize,
    out: &mut Vec<u8>,
) -> Result<(), JsonError> {
    let mut s = Scanner { text, pos: 0 };
    s.skip_ws();
    let mut r = Renamer {
        name,
        copy_below,
        out,
    };
    r.object(&mut s, 0)?;
    s.skip_ws();
    if s.pos != text.len() {
        return Err(s.err("the end of the object"));
    }
    Ok(())
}

/// The state of [`write_renamed`].
struct Renamer<'a, 'o> {
    name: &'a dyn Fn(&[u8], &mut Vec<u8>) -> bool,
    copy_below: usize,
    out: &'o mut Vec<u8>,
}

impl Renamer<'_, '_> {
    /// A value at `depth` (its containers are at that depth for the scanner's limit too).
    fn value(&mut self, s: &mut Scanner, depth: usize) -> Result<(), JsonError> {
        s.skip_ws();
        let start = s.pos;
        if depth > self.copy_below {
            s.value(depth.saturating_sub(1))?;
        } else {
            match s.peek() {
                Some(b'{') => return self.object(s, depth),
                Some(b'[') => return self.array(s, depth),
                Some(b'"') => {
                    s.string()?;
                }
                Some(_) => s.scalar()?,
                None => return Err(s.err("a value")),
            }
        }
        self.out.extend_from_slice(&s.text[start..s.pos]);
        Ok(())
    }

    fn object(&mut self, s: &mut Scanner, depth: usize) -> Result<(), JsonError> {
        if depth > MAX_DEPTH {
            return Err(s.err("less deeply nested JSON"));
        }
        s.expect(b'{', "an object")?;
        self.out.push(b'{');
        s.skip_ws();
        if s.peek() == Some(b'}') {
            s.pos += 1;
            self.out.push(b'}');
            return Ok(());
        }
        let mut first = true;
        loop {
            s.skip_ws();
            let (a, b) = s.string()?;
            s.expect(b':', "':'")?;
            let before = self.out.len();
            if !first {
                self.out.push(b',');
            }
            self.out.push(b'"');
            if (self.name)(&s.text[a..b], self.out) {
                self.out.extend_from_slice(b"\":");
                self.value(s, depth + 1)?;
                first = false;
            } else {
                self.out.truncate(before);
                s.value(depth)?;
            }
            s.skip_ws();
            match s.peek() {
                Some(b',') => s.pos += 1,
                Some(b'}') => {
                    s.pos += 1;
                    self.out.push(b'}');
                    return Ok(());
                }
                _ => return Err(s.err("',' or '}'")),
            }
        }
    }

    fn array(&mut self, s: &mut Scanner, depth: usize) -> Result<(), JsonError> {
        if depth > MAX_DEPTH {
            return Err(s.err("less deeply nested JSON"));
        }
        s.expect(b'[', "an array")?;
        self.out.push(b'[');
        s.skip_ws();
        if s.peek() == Some(b']') {
            s.pos += 1;
            self.out.push(b']');
            return Ok(());
        }
        loop {
            self.value(s, depth + 1)?;
            s.skip_ws();
            match s.peek() {
                Some(b',') => {
                    s.pos += 1;
                    self.out.push(b',');
                }
                Some(b']') => {
                    s.pos += 1;
                    self.out.push(b']');
                    return Ok(());
                }
                _ => return Err(s.err("',' or ']'")),
            }
        }
    }
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
/// The bytes are what stored content hashes were taken over: they must not change.
pub fn write_canonical(
    text: &[u8],
    skip: &dyn Fn(&[u8]) -> bool,
    out: &mut Vec<u8>,
) -> Result<(), JsonError> {
    Canonicalizer::default().write_value(text, skip, out)
}

/// Reusable scratch for writing canonical forms in one pass over the text: every object's members
/// are collected with their values already written canonically, then emitted sorted. One member
/// list and value buffer per nesting depth is kept across objects and entities, so hashing an
/// entity allocates nothing once the buffers have grown to the shape of the data.
#[derive(Default)]
pub struct Canonicalizer {
    levels: Vec<Level>,
}

/// Which top-level members to leave out, by name.
type Skip<'a> = &'a dyn Fn(&[u8]) -> bool;

/// The objects being written at one nesting depth (one at a time).
#[derive(Default)]
struct Level {
    entries: Vec<Entry>,
    /// The canonical values of `entries`, back to back.
    values: Vec<u8>,
    /// Decoded names of members whose names hold escapes (rare).
    names: Vec<u8>,
}

/// One kept member of an object being written.
#[derive(Clone, Copy)]
struct Entry {
    /// The first 8 bytes of the name (zero-padded, big-endian): most comparisons end here.
    prefix: u64,
    /// The name as the string it denotes: a range of the text, or of `Level::names` when escaped.
    key: (usize, usize),
    /// Whether `key` lies in `Level::names`.
    escaped: bool,
    /// Where the member, `"name":value` written canonically, starts in `Level::values`.
    start: usize,
    /// Where its value starts.
    value: usize,
    /// Where it ends.
    end: usize,
}

/// The sort prefix of a name.
fn prefix(name: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    let n = name.len().min(8);
    word[..n].copy_from_slice(&name[..n]);
    u64::from_be_bytes(word)
}

impl Level {
    fn clear(&mut self) {
        self.entries.clear();
        self.values.clear();
        self.names.clear();
    }

    fn key<'a>(&'a self, text: &'a [u8], e: &Entry) -> &'a [u8] {
        if e.escaped {
            &self.names[e.key.0..e.key.1]
        } else {
            &text[e.key.0..e.key.1]
        }
    }

    /// Write the collected object sorted by name. A name given twice (invalid, but seen) is
    /// ordered by its canonical values, so that member order still cannot matter.
    fn emit(&mut self, text: &[u8], out: &mut Vec<u8>) {
        let mut entries = std::mem::take(&mut self.entries);
        entries.sort_unstable_by(|a, b| {
            a.prefix
                .cmp(&b.prefix)
                .then_with(|| self.key(text, a).cmp(self.key(text, b)))
                .then_with(|| self.values[a.value..a.end].cmp(&self.values[b.value..b.end]))
        });
        out.push(b'{');
        for (i, e) in entries.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&self.values[e.start..e.end]);
        }
        out.push(b'}');
        self.entries = entries;
    }
}

impl Canonicalizer {
    /// Write the canonical form of the object `text` to `out` (see [`write_canonical`]) and append
    /// its top-level members, in document order, to `members`: the one scan gives both.
    pub fn write_object(
        &mut self,
        text: &[u8],
        skip: &dyn Fn(&[u8]) -> bool,
        members: &mut Vec<Member>,
        out: &mut Vec<u8>,
    ) -> Result<(), JsonError> {
        let mut s = Scanner { text, pos: 0 };
        self.object(&mut s, 0, Some(skip), Some(members), out)?;
        s.skip_ws();
        if s.pos != text.len() {
            return Err(s.err("the end of the object"));
        }
        Ok(())
    }

    /// Write the canonical form of any JSON value; `skip` applies to a top-level object's members.
    fn write_value(
        &mut self,
        text: &[u8],
        skip: &dyn Fn(&[u8]) -> bool,
        out: &mut Vec<u8>,
    ) -> Result<(), JsonError> {
        let mut s = Scanner { text, pos: 0 };
        s.skip_ws();
        if s.peek() == Some(b'{') {
            self.object(&mut s, 0, Some(skip), None, out)?;
        } else {
            self.value(&mut s, 0, out)?;
        }
        s.skip_ws();
        if s.pos != text.len() {
            return Err(s.err("the end of the value"));
        }
        Ok(())
    }

    /// The value at the scanner's position, written canonically. Nesting is counted as the
    /// scanner counts it, so the limits are the same.
    fn value(&mut self, s: &mut Scanner, depth: usize, out: &mut Vec<u8>) -> Result<(), JsonError> {
        s.skip_ws();
        let start = s.pos;
        match s.peek() {
            Some(b'"') => {
                let (_, escaped) = s.string_flagged()?;
                let quoted = &s.text[start..s.pos];
                if escaped {
                    canonical_string(quoted, out);
                } else {
                    out.extend_from_slice(quoted);
                }
            }
            Some(b'{') => self.object(s, depth + 1, None, None, out)?,
            Some(b'[') => self.array(s, depth + 1, out)?,
            Some(_) => {
                s.scalar()?;
                out.extend_from_slice(&s.text[start..s.pos]);
            }
            None => return Err(s.err("a value")),
        }
        Ok(())
    }

    fn array(&mut self, s: &mut Scanner, depth: usize, out: &mut Vec<u8>) -> Result<(), JsonError> {
        if depth > MAX_DEPTH {
            return Err(s.err("less deeply nested JSON"));
        }
        s.expect(b'[', "an array")?;
        s.skip_ws();
        out.push(b'[');
        if s.peek() == Some(b']') {
            s.pos += 1;
            out.push(b']');
            return Ok(());
        }
        loop {
            self.value(s, depth, out)?;
            s.skip_ws();
            match s.peek() {
                Some(b',') => {
                    s.pos += 1;
                    out.push(b',');
                }
                Some(b']') => {
                    s.pos += 1;
                    out.push(b']');
                    return Ok(());
                }
                _ => return Err(s.err("',' or ']'")),
            }
        }
    }

    /// An object: its kept members are collected at this depth's level with their values written
    /// canonically (deeper objects use deeper levels), then emitted sorted into `out`.
    fn object(
        &mut self,
        s: &mut Scanner,
        depth: usize,
        skip: Option<Skip>,
        top: Option<&mut Vec<Member>>,
        out: &mut Vec<u8>,
    ) -> Result<(), JsonError> {
        if depth > MAX_DEPTH {
            return Err(s.err("less deeply nested JSON"));
        }
        if self.levels.len() <= depth {
            self.levels.resize_with(depth + 1, Level::default);
        }
        // Taken out while deeper levels are written; put back (with its capacity) in any case.
        let mut level = std::mem::take(&mut self.levels[depth]);
        level.clear();
        let collected = self.members(s, depth, skip, top, &mut level);
        if collected.is_ok() {
            level.emit(s.text, out);
        }
        self.levels[depth] = level;
        collected
    }

    fn members(
        &mut self,
        s: &mut Scanner,
        depth: usize,
        skip: Option<Skip>,
        mut top: Option<&mut Vec<Member>>,
        level: &mut Level,
    ) -> Result<(), JsonError> {
        s.expect(b'{', "an object")?;
        s.skip_ws();
        if s.peek() == Some(b'}') {
            s.pos += 1;
            return Ok(());
        }
        loop {
            s.skip_ws();
            let quoted_start = s.pos;
            let (name, escaped) = s.string_flagged()?;
            let quoted = (quoted_start, s.pos);
            s.expect(b':', "':'")?;
            // Names are compared as strings, not as their (possibly escaped) spelling.
            let (key, escaped) = if escaped {
                let at = level.names.len();
                match serde_json::from_slice::<String>(&s.text[quoted.0..quoted.1]) {
                    Ok(decoded) => {
                        level.names.extend_from_slice(decoded.as_bytes());
                        ((at, level.names.len()), true)
                    }
                    Err(_) => (name, false),
                }
            } else {
                (name, false)
            };
            let decoded = if escaped {
                &level.names[key.0..key.1]
            } else {
                &s.text[key.0..key.1]
            };
            let dropped = is_control_information(decoded) || skip.is_some_and(|f| f(decoded));
            let prefix = prefix(decoded);
            s.skip_ws();
            let value_start = s.pos;
            if dropped {
                s.value(depth)?;
            } else {
                let start = level.values.len();
                let quoted = &s.text[quoted.0..quoted.1];
                if escaped {
                    canonical_string(quoted, &mut level.values);
                } else {
                    level.values.extend_from_slice(quoted);
                }
                level.values.push(b':');
                let value = level.values.len();
                self.value(s, depth, &mut level.values)?;
                level.entries.push(Entry {
                    prefix,
                    key,
                    escaped,
                    start,
                    value,
                    end: level.values.len(),
                });
            }
            if let Some(top) = top.as_deref_mut() {
                top.push(Member {
                    name,
                    value: (value_start, s.pos),
                });
            }
            s.skip_ws();
            match s.peek() {
                Some(b',') => s.pos += 1,
                Some(b'}') => {
                    s.pos += 1;
                    return Ok(());
                }
                _ => return Err(s.err("',' or '}'")),
            }
        }
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

/// Write `text` without insignificant whitespace (member order kept). Strings, which hold most of
/// an entity's bytes, are copied whole up to their closing quote; only the bytes between them are
/// looked at one by one.
pub fn write_compact(text: &[u8], out: &mut Vec<u8>) {
    out.reserve(text.len());
    let mut at = 0;
    while let Some(&b) = text.get(at) {
        if b == b'"' {
            let end = string_end(text, at + 1);
            out.extend_from_slice(&text[at..end]);
            at = end;
        } else {
            if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                out.push(b);
            }
            at += 1;
        }
    }
}

/// Where the string whose contents start at `from` ends: just past its closing quote, or at the
/// end of `text` for a string that is not closed.
fn string_end(text: &[u8], mut from: usize) -> usize {
    loop {
        let Some(i) = text.get(from..).and_then(quote_or_backslash) else {
            return text.len();
        };
        from += i;
        if text[from] == b'"' {
            return from + 1;
        }
        // A backslash escapes the byte after it, whatever it is.
        from += 2;
    }
}

/// The canonical writer as it was before the one-pass rewrite (scan, then write each object from
/// its scanned members), kept to show the canonical bytes — and so every stored content hash —
/// did not change.
#[cfg(test)]
mod reference {
    use super::*;

    /// Write the canonical form of the JSON value `text` to `out`: object members sorted by name,
    /// control information and insignificant whitespace dropped, strings with escapes re-escaped one way.
    /// Member order and whitespace never change the result. `skip` drops top-level members by name.
    pub(super) fn write_canonical(
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
    fn duplicate_and_escaped_names_are_written_as_before() {
        for text in [
            r#"{"a":2,"a":1,"b":{"x":[{"z":1,"y":2}],"x":0}}"#,
            r#"{"\u0062":1,"a":"\u00e9\n","b\"q":[],"@odata.type":"x","n@odata.type":"y"}"#,
            r#"{"\x":1,"a":"\q"}"#,
            r#"[{"b":1,"a":2},"s",3,{}]"#,
            r#"  {"modifiedAt":1,"k":{"modifiedAt":2}}  "#,
        ] {
            let skip = |n: &[u8]| n == b"modifiedAt";
            let (mut new, mut old) = (Vec::new(), Vec::new());
            let written = write_canonical(text.as_bytes(), &skip, &mut new);
            let before = reference::write_canonical(text.as_bytes(), &skip, &mut old);
            assert_eq!(written.is_ok(), before.is_ok(), "{text}");
            assert_eq!(
                String::from_utf8_lossy(&new),
                String::from_utf8_lossy(&old),
                "{text}"
            );
        }
    }

    #[test]
    fn an_object_and_its_members_come_from_one_scan() {
        let text = br#" {"b":{"y":1,"x":[2,{"q":0,"p":1}]}, "@odata.etag":"e", "a":"s"} "#;
        let (mut members, mut out) = (Vec::new(), Vec::new());
        let mut c = Canonicalizer::default();
        // Twice, so that reused buffers are shown not to leak from one object into the next.
        for _ in 0..2 {
            members.clear();
            out.clear();
            c.write_object(text, &|_| false, &mut members, &mut out)
                .unwrap();
            assert_eq!(out, br#"{"a":"s","b":{"x":[2,{"p":1,"q":0}],"y":1}}"#);
            let mut scanned = Vec::new();
            object_members(text, &mut scanned).unwrap();
            assert_eq!(members, scanned);
        }
        assert!(
            c.write_object(b"[1]", &|_| false, &mut members, &mut out)
                .is_err()
        );
        assert!(
            c.write_object(b"{} x", &|_| false, &mut members, &mut out)
                .is_err()
        );
    }

    /// JSON text with nested objects and arrays, duplicate and escaped names, control information
    /// and whitespace: the shapes the canonical writer treats specially.
    fn json_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let name = prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just("\\u0061".to_owned()),
            Just("@odata.etag".to_owned()),
            Just("x@odata.type".to_owned()),
            Just("skipped".to_owned()),
            "[a-z]{1,4}",
        ];
        let leaf = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            any::<i32>().prop_map(|i| i.to_string()),
            Just(r#""\u00e9\"x""#.to_owned()),
            "[a-z é]{0,6}".prop_map(|s| format!("\"{s}\"")),
        ];
        leaf.prop_recursive(4, 32, 5, move |inner| {
            let ws = prop_oneof![Just(""), Just(" "), Just("\n\t")];
            prop_oneof![
                prop::collection::vec((inner.clone(), ws.clone()), 0..5).prop_map(|v| {
                    let items: Vec<String> =
                        v.into_iter().map(|(i, w)| format!("{w}{i}")).collect();
                    format!("[{}]", items.join(","))
                }),
                prop::collection::vec((name.clone(), inner, ws), 0..6).prop_map(|v| {
                    let items: Vec<String> = v
                        .into_iter()
                        .map(|(n, i, w)| format!("{w}\"{n}\"{w}:{i}"))
                        .collect();
                    format!("{{{}}}", items.join(","))
                }),
            ]
        })
    }

    proptest::proptest! {
        /// The canonical bytes, which stored content hashes were taken over, are those of the
        /// writer before the one-pass rewrite, for any input.
        #[test]
        fn canonical_bytes_are_unchanged_from_the_previous_writer(text in json_text()) {
            let skip = |n: &[u8]| n == b"skipped";
            let (mut new, mut old) = (Vec::new(), Vec::new());
            let written = write_canonical(text.as_bytes(), &skip, &mut new);
            let before = reference::write_canonical(text.as_bytes(), &skip, &mut old);
            proptest::prop_assert_eq!(written.is_ok(), before.is_ok());
            proptest::prop_assert_eq!(String::from_utf8_lossy(&new), String::from_utf8_lossy(&old));
            if text.starts_with('{') {
                let (mut members, mut out) = (Vec::new(), Vec::new());
                Canonicalizer::default().write_object(text.as_bytes(), &skip, &mut members, &mut out).unwrap();
                proptest::prop_assert_eq!(out, new);
            }
        }
    }

    #[test]
    fn the_end_of_a_string_is_found_at_any_length_and_position() {
        for len in 0..150usize {
            for (at, byte) in [(0, b'"'), (len / 2, b'\\'), (len.saturating_sub(1), b'"')] {
                let mut text = vec![b'a'; len];
                let expected = (len > 0).then(|| {
                    text[at] = byte;
                    at
                });
                assert_eq!(quote_or_backslash(&text), expected, "{len} {at}");
            }
        }
        assert_eq!(quote_or_backslash("é\"".as_bytes()), Some(2));
    }

    /// The byte-by-byte writer the run-copying `write_compact` replaced.
    fn compact_byte_by_byte(text: &[u8]) -> Vec<u8> {
        let (mut out, mut in_string, mut escaped) = (Vec::new(), false, false);
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
                in_string = b == b'"';
                out.push(b);
            }
        }
        out
    }

    proptest! {
        /// Any bytes at all, well-formed JSON or not (an unclosed string, a trailing backslash):
        /// the same output as the byte-by-byte writer, and never a panic.
        #[test]
        fn compact_copies_strings_whole_with_the_same_result(
            text in proptest::collection::vec(
                prop_oneof![Just(b'"'), Just(b'\\'), Just(b' '), Just(b'\n'), Just(b'a'), Just(b'{'), Just(b':'), any::<u8>()],
                0..200,
            )
        ) {
            let mut out = Vec::new();
            write_compact(&text, &mut out);
            prop_assert_eq!(out, compact_byte_by_byte(&text));
        }
    }

    #[test]
    fn compact_keeps_whitespace_inside_strings() {
        let mut out = Vec::new();
        write_compact(br#"{ "a" : "x  y", "b" : [ 1 , "\" " ] }"#, &mut out);
        assert_eq!(out, br#"{"a":"x  y","b":[1,"\" "]}"#);
    }
}
