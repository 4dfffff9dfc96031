//! Change tracking: feeds and their versions, the refresh that turns upstream enumerations into
//! versions, the signed tokens that name a version, and answering tracked requests from the store —
//! after the upstream has authorized them and within the gateway's limits on feeds and refreshes —
//! and keeping feeds fresh in the background, calling clients back when they change, and notifying webhook subscriptions.

pub(crate) mod admission;
pub(crate) mod authorize;
pub(crate) mod callback;
pub mod feed;
pub(crate) mod fetch;
pub(crate) mod freshness;
pub mod hash;
pub(crate) mod history;
pub mod index;
pub mod refresh;
pub mod respond;
pub mod retention;
pub(crate) mod schedule;
pub(crate) mod subscriptions;
pub mod token;
