//! Behaviour settings of the service: link style, count mode, injected faults
//! and the knob values themselves.

/// How `@odata.nextLink` and `@odata.context` are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LinkStyle {
    /// Relative to the service root, like SAP CAP: `Customers?$skiptoken=50`,
    /// `$metadata#Customers`.
    #[default]
    Relative,
    /// Full URL: `http://127.0.0.1:P/odata/v4/shop/Customers?...`.
    Absolute,
    /// Path from the host: `/odata/v4/shop/Customers?...`.
    RootRelative,
}

/// When `@odata.count` is emitted for a `$count=true` request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CountMode {
    /// On every page, like CAP.
    #[default]
    EveryPage,
    /// Only on the first page (no `$skiptoken` in the request).
    FirstPageOnly,
    /// Never, as if `$count` were ignored.
    Never,
}

/// An injected misbehaviour, consumed by one GET collection request.
///
/// Counting: each fault remembers how many GET collection requests (on any
/// entity set; by-key, `$count`, `$metadata` and writes do not count) the
/// service had received when it was pushed. `page: n` fires on the n-th such
/// request after the push, 0-based, and is then removed. Several faults may
/// fire on the same request: delays are applied first, then the first of
/// Status / Malformed wins, otherwise the page is rendered with the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer `status` with an OData error body (and `Retry-After` if given).
    Status {
        /// Which request, see the type docs.
        page: usize,
        /// HTTP status to answer.
        status: u16,
        /// Seconds for a `Retry-After` header.
        retry_after: Option<u64>,
    },
    /// Send headers and about half of the body, then drop the connection.
    ResetMidBody {
        /// Which request.
        page: usize,
    },
    /// Answer 200 with a truncated, invalid JSON body.
    Malformed {
        /// Which request.
        page: usize,
    },
    /// Sleep before answering normally.
    Delay {
        /// Which request.
        page: usize,
        /// Milliseconds to wait.
        ms: u64,
    },
    /// Answer normally but with `@odata.nextLink` set to `url` verbatim
    /// (even on a last page), e.g. pointing at another origin.
    NextLinkTo {
        /// Which request.
        page: usize,
        /// The nextLink to emit.
        url: String,
    },
    /// Omit the key properties from the entities of that page.
    DropKey {
        /// Which request.
        page: usize,
    },
    /// Start that page one row early, so its first entity repeats the last
    /// entity of the previous page (no-op on a request without `$skiptoken`).
    DuplicateAcrossPages {
        /// Which request.
        page: usize,
    },
    /// Answer a request that accepts gzip with a small gzip body that
    /// inflates to `decoded_bytes` of blanks (a decompression bomb); a request
    /// that does not accept gzip gets its page as usual.
    GzipBomb {
        /// Which request.
        page: usize,
        /// Size of the decoded body.
        decoded_bytes: usize,
    },
}

impl Fault {
    /// The request index the fault fires on.
    pub fn page(&self) -> usize {
        match self {
            Fault::Status { page, .. }
            | Fault::ResetMidBody { page }
            | Fault::Malformed { page }
            | Fault::Delay { page, .. }
            | Fault::NextLinkTo { page, .. }
            | Fault::DropKey { page }
            | Fault::DuplicateAcrossPages { page }
            | Fault::GzipBomb { page, .. } => *page,
        }
    }
}

/// Settings that affect subsequent responses.
#[derive(Clone, Debug)]
/// Each field is documented on its `Service::set_*` method.
pub(crate) struct Knobs {
    /// Server-driven page size.
    pub page_size: Option<usize>,
    /// nextLink / context URL style.
    pub link_style: LinkStyle,
    /// Rotate property order per response.
    pub reorder: bool,
    /// Indent JSON.
    pub pretty: bool,
    /// When `@odata.count` appears.
    pub count_mode: CountMode,
    /// Stop collections after this many entities.
    pub truncate_after: Option<usize>,
    /// `OData-Version` header value.
    pub odata_version: Option<String>,
    /// Emit ETags and enforce `If-Match`.
    pub etags: bool,
    /// Refuse `in` in filters.
    pub reject_in: bool,
    /// Refuse `or` in filters.
    pub reject_or: bool,
    /// Spell key values another way in collection answers.
    pub respell_keys: bool,
    /// Namespace of the generated schema.
    pub namespace: String,
    /// `Authorization` values answered 401, as if revoked.
    pub revoked_credentials: Vec<String>,
    /// `(at, back)`: a nextLink onward to offset `at` or beyond points back at offset `back`.
    pub next_link_cycle: Option<(usize, usize)>,
    /// Status answered to a `$filter` that uses `in`.
    pub in_filter_status: Option<u16>,
    /// Ignore `$skip`, as if every request started at the first row.
    pub ignore_skip: bool,
    /// Raw JSON written as `@odata.count` instead of the real count.
    pub count_text: Option<String>,
    /// gzip successful answers to requests that accept it.
    pub gzip: bool,
    /// Answer `track-changes` with a delta link of our own, as odatapy's server does.
    pub own_change_tracking: bool,
    /// With `own_change_tracking`: a delta link on every last page, asked for or not.
    pub unasked_delta_links: bool,
    /// Answer in HTTP/1.0.
    pub http10: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            page_size: Some(50),
            link_style: LinkStyle::Relative,
            reorder: false,
            pretty: false,
            count_mode: CountMode::EveryPage,
            truncate_after: None,
            odata_version: Some("4.0".to_string()),
            etags: false,
            reject_in: false,
            reject_or: false,
            respell_keys: false,
            namespace: "ShopService".to_string(),
            revoked_credentials: Vec::new(),
            next_link_cycle: None,
            in_filter_status: None,
            ignore_skip: false,
            count_text: None,
            gzip: false,
            own_change_tracking: false,
            unasked_delta_links: false,
            http10: false,
        }
    }
}
