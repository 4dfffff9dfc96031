//! The OData vocabulary the gateway speaks: pure functions over headers, query strings, `$metadata`,
//! key literals, upstream pages and the delta payloads we write. Nothing here does I/O.

pub(crate) mod annotate;
pub mod datetime;
pub mod delta;
pub mod entity_id;
pub mod format;
pub mod json;
pub mod metadata;
pub mod orderby;
pub mod page;
pub mod prefer;
pub mod query;

/// Response and header names used across the gateway, kept in one place.
pub mod names {
    /// `OData-Version` response header.
    pub const ODATA_VERSION: &str = "odata-version";
    /// `OData-MaxVersion` request header.
    pub const ODATA_MAX_VERSION: &str = "odata-maxversion";
    /// `Preference-Applied` response header.
    pub const PREFERENCE_APPLIED: &str = "preference-applied";
    /// The request id: kept from the client or generated, answered, and sent upstream on every
    /// request the client's request causes (end-to-end, so [`crate::track::fetch::forwarded_headers`]
    /// keeps it).
    pub const REQUEST_ID: &str = "x-request-id";
    /// How many milliseconds ago the refresh behind a tracked response finished.
    pub const REFRESH_AGE: &str = "x-delta-refresh-age-ms";
    /// Content type of every JSON payload the gateway writes itself.
    pub const JSON_CONTENT_TYPE: &str = "application/json;odata.metadata=minimal";
    /// Content type of a tracked payload whose feed was read with `IEEE754Compatible=true` (C32).
    pub const JSON_IEEE754_CONTENT_TYPE: &str =
        "application/json;odata.metadata=minimal;IEEE754Compatible=true";
}

/// The protocol version a response is written in (C14).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ODataVersion {
    /// OData 4.0: `@odata.`-prefixed control information, `$deletedEntity` tombstones.
    V40,
    /// OData 4.01: unprefixed control information, `@removed` tombstones.
    V401,
}

impl ODataVersion {
    /// min(`OData-MaxVersion`, 4.01); 4.0 when the header is absent or unreadable.
    pub fn negotiate(max_version: Option<&str>) -> Self {
        let Some(raw) = max_version else {
            return ODataVersion::V40;
        };
        let mut parts = raw.trim().splitn(2, '.');
        let major: u32 = parts
            .next()
            .and_then(|m| m.trim().parse().ok())
            .unwrap_or(0);
        let minor: u32 = parts
            .next()
            .and_then(|m| m.trim().parse().ok())
            .unwrap_or(0);
        if major > 4 || (major == 4 && minor >= 1) {
            ODataVersion::V401
        } else {
            ODataVersion::V40
        }
    }

    /// The value of the `OData-Version` header.
    pub fn header_value(self) -> &'static str {
        match self {
            ODataVersion::V40 => "4.0",
            ODataVersion::V401 => "4.01",
        }
    }

    /// The name of a control-information annotation in this version: `odata.context` → `@odata.context`
    /// in 4.0 and `@context` in 4.01 (J §4.5).
    pub fn control(self, name: &str) -> String {
        match self {
            ODataVersion::V40 => format!("@odata.{name}"),
            ODataVersion::V401 => format!("@{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_negotiation_caps_at_4_01_and_defaults_to_4_0() {
        assert_eq!(ODataVersion::negotiate(None), ODataVersion::V40);
        assert_eq!(ODataVersion::negotiate(Some("4.0")), ODataVersion::V40);
        assert_eq!(ODataVersion::negotiate(Some("4.01")), ODataVersion::V401);
        assert_eq!(ODataVersion::negotiate(Some(" 4.01 ")), ODataVersion::V401);
        assert_eq!(ODataVersion::negotiate(Some("5.0")), ODataVersion::V401);
        assert_eq!(ODataVersion::negotiate(Some("garbage")), ODataVersion::V40);
    }
}
