//! Delta tokens: encoding and tagging one, and decoding and verifying one, for a delta link and for
//! a next link inside a delta (the longest kind). Every tracked response writes one token and every
//! followed link reads one. Times are the bench thread's CPU time (see `support/thread_cpu.rs`).
//! Run with `cargo bench --bench token`.

#[path = "support/thread_cpu.rs"]
mod thread_cpu;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use odata_delta_gateway::track::feed::{FeedDef, FeedId, Scope, Version};
use odata_delta_gateway::track::token::{Cursor, Token, TokenKey, TokenKind};
use thread_cpu::ThreadCpu;

fn tokens(c: &mut Criterion<ThreadCpu>) {
    let key = TokenKey::derive(b"a 32-byte secret, as the store holds");
    let binding = FeedDef::binding(
        "/odata/v4/catalog",
        "Products",
        &Scope("4f1c0e8a9b2d7c3e5f6a1b0c9d8e7f6a".into()),
    );
    let feed = FeedId([0x5a; 16]);
    let samples = [
        (
            "delta_link",
            Token {
                feed,
                issued_at: 1_790_000_000,
                kind: TokenKind::Delta {
                    since: Version(1234),
                },
            },
        ),
        (
            "delta_page",
            Token {
                feed,
                issued_at: 1_790_000_000,
                kind: TokenKind::Page {
                    cursor: Cursor::Delta {
                        since: Version(1234),
                        upto: Version(1240),
                        after: (Version(1237), 1_000_987),
                    },
                    page_size: 1000,
                    count: false,
                },
            },
        ),
    ];
    let mut group = c.benchmark_group("token");
    for (name, token) in samples {
        let text = token.encode(&key, &binding);
        group.bench_function(format!("encode/{name}"), |b| {
            b.iter(|| black_box(&token).encode(&key, black_box(&binding)))
        });
        group.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| {
                Token::decode(black_box(&text), &key, black_box(&binding))
                    .expect("a token we issued")
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .with_measurement(ThreadCpu)
        .without_plots()
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = tokens
}
criterion_main!(benches);
