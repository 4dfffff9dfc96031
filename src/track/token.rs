//! Delta tokens and page cursors: a feed, a version and a position, base64url-encoded and tagged with
//! a blake3 keyed hash (C9, C10). A token is bound to the request context it was issued for — route,
//! entity set and identity scope — by including that context in the tag, so a token replayed under
//! other credentials or on another set fails exactly like a forged one. No state is kept per token.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::feed::{FeedId, Version};

/// Prefix of our page cursors in `$skiptoken`, so they are told apart from an upstream's skiptokens
/// (which pass through untouched).
pub const SKIPTOKEN_PREFIX: &str = "odg.";

const FORMAT: u8 = 1;
const TAG_LEN: usize = 32;
/// Longest token we will try to decode; anything longer is garbage.
const MAX_TOKEN_LEN: usize = 256;

/// The key that tags tokens, derived from the gateway's secret.
#[derive(Clone)]
pub struct TokenKey([u8; 32]);

impl TokenKey {
    /// Derive the tagging key from the stored secret; the context string keeps it distinct from any
    /// other key derived from the same secret.
    pub fn derive(secret: &[u8]) -> Self {
        TokenKey(blake3::derive_key(
            "odata-delta-gateway 2026-11 delta token tag",
            secret,
        ))
    }
}

/// Where a page of a tracked response starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cursor {
    /// A page of the initial response: the live entities at version `at`, after row `after`.
    Initial {
        /// Version fixed by the first page; the delta link on the last page names it.
        at: Version,
        /// Row number of the last entity served.
        after: u64,
        /// What is left of a client's `$top`; `u64::MAX` when there is none.
        remaining: u64,
    },
    /// A page of a feed's first read served while its first load still runs (see
    /// `respond::streamed`): the rows written so far at version `pending`, which is published only
    /// when the load ends.
    Streaming {
        /// The version the load writes at; the delta link on the last page names it.
        pending: Version,
        /// Row number of the last entity served.
        after: u64,
        /// What is left of a client's `$top`; `u64::MAX` when there is none.
        remaining: u64,
    },
    /// A page of a delta: changes in (`since`, `upto`], after (`version`, `key`).
    Delta {
        /// The baseline of the delta.
        since: Version,
        /// The version fixed by the first page.
        upto: Version,
        /// Position of the last entry served: its version and row number.
        after: (Version, u64),
    },
}

/// What a token stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// A delta link: every change after `since`.
    Delta {
        /// The version the client holds.
        since: Version,
    },
    /// A next link inside a tracked response.
    Page {
        /// Where the next page starts.
        cursor: Cursor,
        /// Page size in force for the whole response.
        page_size: u32,
        /// Whether `@odata.count` was asked for (C24).
        count: bool,
    },
}

/// A decoded, verified token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    /// The feed it belongs to.
    pub feed: FeedId,
    /// When its baseline was fixed (unix seconds); the retention window counts from here (C25).
    pub issued_at: u64,
    /// What it stands for.
    pub kind: TokenKind,
}

/// Why a token was refused; all of these answer 400 (C10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not base64url, wrong length, or unknown format.
    #[error("the token is malformed")]
    Malformed,
    /// The tag does not match: edited, forged, or issued for another set or identity.
    #[error("the token is not valid for this resource")]
    BadTag,
}

impl Token {
    /// Encode and tag. `binding` is the request context the token may be presented in.
    pub fn encode(&self, key: &TokenKey, binding: &[u8]) -> String {
        let mut payload = Vec::with_capacity(96);
        payload.push(FORMAT);
        match self.kind {
            TokenKind::Delta { .. } => payload.push(1),
            TokenKind::Page {
                cursor: Cursor::Initial { .. },
                ..
            } => payload.push(2),
            TokenKind::Page {
                cursor: Cursor::Delta { .. },
                ..
            } => payload.push(3),
            TokenKind::Page {
                cursor: Cursor::Streaming { .. },
                ..
            } => payload.push(4),
        }
        payload.extend_from_slice(&self.feed.0);
        payload.extend_from_slice(&self.issued_at.to_be_bytes());
        match self.kind {
            TokenKind::Delta { since } => payload.extend_from_slice(&since.0.to_be_bytes()),
            TokenKind::Page {
                cursor,
                page_size,
                count,
            } => {
                payload.extend_from_slice(&page_size.to_be_bytes());
                payload.push(u8::from(count));
                match cursor {
                    Cursor::Initial {
                        at,
                        after,
                        remaining,
                    }
                    | Cursor::Streaming {
                        pending: at,
                        after,
                        remaining,
                    } => {
                        payload.extend_from_slice(&at.0.to_be_bytes());
                        payload.extend_from_slice(&after.to_be_bytes());
                        payload.extend_from_slice(&remaining.to_be_bytes());
                    }
                    Cursor::Delta { since, upto, after } => {
                        payload.extend_from_slice(&since.0.to_be_bytes());
                        payload.extend_from_slice(&upto.0.to_be_bytes());
                        payload.extend_from_slice(&after.0.0.to_be_bytes());
                        payload.extend_from_slice(&after.1.to_be_bytes());
                    }
                }
            }
        }
        let tag = tag(key, &payload, binding);
        payload.extend_from_slice(tag.as_bytes());
        URL_SAFE_NO_PAD.encode(payload)
    }

    /// Decode and verify a token presented in the context `binding`.
    pub fn decode(text: &str, key: &TokenKey, binding: &[u8]) -> Result<Self, TokenError> {
        if text.is_empty() || text.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| TokenError::Malformed)?;
        if bytes.len() < 2 + 16 + 8 + TAG_LEN || bytes[0] != FORMAT {
            return Err(TokenError::Malformed);
        }
        let (payload, tag_bytes) = bytes.split_at(bytes.len() - TAG_LEN);
        let expected_len = match payload[1] {
            1 => 26 + 8,
            2 | 4 => 26 + 5 + 8 + 8 + 8,
            3 => 26 + 5 + 8 + 8 + 8 + 8,
            _ => return Err(TokenError::Malformed),
        };
        if payload.len() != expected_len {
            return Err(TokenError::Malformed);
        }
        let presented = blake3::Hash::from_slice(tag_bytes).map_err(|_| TokenError::Malformed)?;
        // blake3::Hash equality is constant-time.
        if presented != tag(key, payload, binding) {
            return Err(TokenError::BadTag);
        }
        let mut r = Reader(&payload[2..]);
        let feed = FeedId(r.array());
        let issued_at = r.u64();
        let kind = match payload[1] {
            1 => TokenKind::Delta {
                since: Version(r.u64()),
            },
            kind => {
                let page_size = u32::from_be_bytes(r.array());
                let count = r.array::<1>()[0] != 0;
                let cursor = if kind == 2 {
                    Cursor::Initial {
                        at: Version(r.u64()),
                        after: r.u64(),
                        remaining: r.u64(),
                    }
                } else if kind == 4 {
                    Cursor::Streaming {
                        pending: Version(r.u64()),
                        after: r.u64(),
                        remaining: r.u64(),
                    }
                } else {
                    Cursor::Delta {
                        since: Version(r.u64()),
                        upto: Version(r.u64()),
                        after: (Version(r.u64()), r.u64()),
                    }
                };
                TokenKind::Page {
                    cursor,
                    page_size,
                    count,
                }
            }
        };
        Ok(Token {
            feed,
            issued_at,
            kind,
        })
    }
}

fn tag(key: &TokenKey, payload: &[u8], binding: &[u8]) -> blake3::Hash {
    let mut h = blake3::Hasher::new_keyed(&key.0);
    h.update(payload);
    // Length-prefix the binding so payload/binding boundaries cannot be shifted.
    h.update(&(binding.len() as u64).to_be_bytes());
    h.update(binding);
    h.finalize()
}

/// Reads fixed-size fields from a payload whose length was checked beforehand.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }

    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.array())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> TokenKey {
        TokenKey::derive(b"secret")
    }

    fn samples() -> Vec<Token> {
        let feed = FeedId([7; 16]);
        vec![
            Token {
                feed,
                issued_at: 1_700_000_000,
                kind: TokenKind::Delta { since: Version(42) },
            },
            Token {
                feed,
                issued_at: 5,
                kind: TokenKind::Page {
                    cursor: Cursor::Initial {
                        at: Version(3),
                        after: 9,
                        remaining: 7,
                    },
                    page_size: 100,
                    count: true,
                },
            },
            Token {
                feed,
                issued_at: 5,
                kind: TokenKind::Page {
                    cursor: Cursor::Streaming {
                        pending: Version(3),
                        after: 9,
                        remaining: 7,
                    },
                    page_size: 100,
                    count: false,
                },
            },
            Token {
                feed,
                issued_at: 5,
                kind: TokenKind::Page {
                    cursor: Cursor::Delta {
                        since: Version(1),
                        upto: Version(9),
                        after: (Version(4), 1),
                    },
                    page_size: 7,
                    count: false,
                },
            },
        ]
    }

    #[test]
    fn tokens_round_trip_and_are_url_safe_c9() {
        for t in samples() {
            let s = t.encode(&key(), b"ctx");
            assert!(
                s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{s}"
            );
            assert_eq!(Token::decode(&s, &key(), b"ctx"), Ok(t));
        }
    }

    #[test]
    fn foreign_context_or_key_is_refused_like_a_forgery_c10() {
        let s = samples()[0].encode(&key(), b"ctx");
        assert_eq!(Token::decode(&s, &key(), b"other"), Err(TokenError::BadTag));
        assert_eq!(
            Token::decode(&s, &TokenKey::derive(b"other"), b"ctx"),
            Err(TokenError::BadTag)
        );
    }

    #[test]
    fn truncated_and_garbage_tokens_are_malformed_c10() {
        let s = samples()[1].encode(&key(), b"ctx");
        assert!(Token::decode(&s[..s.len() - 1], &key(), b"ctx").is_err());
        for bad in ["", "latest", "!!!!", "AAAA", &"A".repeat(1000)] {
            assert!(Token::decode(bad, &key(), b"ctx").is_err(), "{bad}");
        }
    }

    proptest! {
        /// Any single-character edit of a token is refused.
        #[test]
        fn every_edit_is_refused(i in 0usize..200, c in "[A-Za-z0-9_-]") {
            let s = samples()[2].encode(&key(), b"ctx");
            let i = i % s.len();
            let mut edited = s.clone();
            edited.replace_range(i..i + 1, &c);
            prop_assume!(edited != s);
            prop_assert!(Token::decode(&edited, &key(), b"ctx").is_err());
        }

        /// Arbitrary input never panics.
        #[test]
        fn arbitrary_input_never_panics(s in ".{0,300}") {
            let _ = Token::decode(&s, &key(), b"ctx");
        }
    }
}
