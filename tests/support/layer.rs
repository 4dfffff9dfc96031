//! The one layer the tests put in front of the sample service (the service holds one): first the
//! revoked credentials' refusal, then the page hook (`hooks.rs`), then the faults (`faults.rs`).
//! It is put there by the first test call that needs it, so a test that uses none of them talks
//! to the plain service.

use super::faults::FaultState;
use super::hooks::HookSlot;
use odata_sample_service::{Layer, LayerFuture, Next, RecordedRequest, Service};
use std::sync::Arc;

/// The hook and the faults of one upstream.
#[derive(Default)]
pub struct TestLayer {
    /// The page hook.
    pub hook: HookSlot,
    /// The fault queue and settings.
    pub faults: FaultState,
}

/// The layer of `service`, put in front of it if it has none yet.
pub fn of(service: &Service) -> Arc<TestLayer> {
    service.layer_or_set(TestLayer::default)
}

impl Layer for TestLayer {
    fn answer<'a>(&'a self, request: &'a RecordedRequest, next: Next<'a>) -> LayerFuture<'a> {
        Box::pin(async move {
            if let Some(refusal) = self.faults.refusal(request) {
                return refusal;
            }
            self.hook.run(next.service(), request);
            self.faults.answer(request, next).await
        })
    }
}
