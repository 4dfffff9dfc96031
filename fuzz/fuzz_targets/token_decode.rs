//! Text presented as a token never panics `Token::decode`; any token the gateway could issue, in any
//! binding, decodes to itself and nowhere else.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use odata_delta_gateway::track::feed::{FeedId, Version};
use odata_delta_gateway::track::token::{Cursor, Token, TokenKind};
use odata_delta_gateway_fuzz::{token_decode, token_round_trip};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    /// A token the gateway could issue.
    issued: Issued,
    /// The request context it is bound to.
    binding: &'a [u8],
    /// Text presented as a token; last, so that it takes the rest of the input.
    text: &'a str,
}

/// The fields of a token, in a form `arbitrary` can build.
#[derive(Arbitrary, Debug)]
struct Issued {
    feed: [u8; 16],
    issued_at: u64,
    kind: Kind,
}

#[derive(Arbitrary, Debug)]
enum Kind {
    Delta {
        since: u64,
    },
    InitialPage {
        at: u64,
        after: u64,
        remaining: u64,
        page_size: u32,
        count: bool,
    },
    DeltaPage {
        since: u64,
        upto: u64,
        after_version: u64,
        after_key: u64,
        page_size: u32,
        count: bool,
    },
}

impl Issued {
    fn token(&self) -> Token {
        let kind = match self.kind {
            Kind::Delta { since } => TokenKind::Delta {
                since: Version(since),
            },
            Kind::InitialPage {
                at,
                after,
                remaining,
                page_size,
                count,
            } => TokenKind::Page {
                cursor: Cursor::Initial {
                    at: Version(at),
                    after,
                    remaining,
                },
                page_size,
                count,
            },
            Kind::DeltaPage {
                since,
                upto,
                after_version,
                after_key,
                page_size,
                count,
            } => TokenKind::Page {
                cursor: Cursor::Delta {
                    since: Version(since),
                    upto: Version(upto),
                    after: (Version(after_version), after_key),
                },
                page_size,
                count,
            },
        };
        Token {
            feed: FeedId(self.feed),
            issued_at: self.issued_at,
            kind,
        }
    }
}

fuzz_target!(|input: Input| {
    token_decode(input.text);
    token_round_trip(input.issued.token(), input.binding);
});
