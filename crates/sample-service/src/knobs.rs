//! Behaviour settings of the service: link style, count mode and the knob values themselves.
//! Each is a way a correct OData service may answer; misbehaviour is built outside, on a
//! [`Layer`](crate::Layer).

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

/// Settings that affect subsequent responses.
#[derive(Clone, Debug)]
/// Each field is documented on its `Service::set_*` method.
pub(crate) struct Knobs {
    /// Server-driven page size.
    pub page_size: Option<usize>,
    /// nextLink / context URL style.
    pub link_style: LinkStyle,
    /// Indent JSON.
    pub pretty: bool,
    /// When `@odata.count` appears.
    pub count_mode: CountMode,
    /// `OData-Version` header value.
    pub odata_version: Option<String>,
    /// Emit ETags and enforce `If-Match`.
    pub etags: bool,
    /// Refuse `in` in filters.
    pub reject_in: bool,
    /// Refuse `or` in filters.
    pub reject_or: bool,
    /// Namespace of the generated schema.
    pub namespace: String,
    /// gzip successful answers to requests that accept it.
    pub gzip: bool,
    /// Answer in HTTP/1.0.
    pub http10: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            page_size: Some(50),
            link_style: LinkStyle::Relative,
            pretty: false,
            count_mode: CountMode::EveryPage,
            odata_version: Some("4.0".to_string()),
            etags: false,
            reject_in: false,
            reject_or: false,
            namespace: "ShopService".to_string(),
            gzip: false,
            http10: false,
        }
    }
}
