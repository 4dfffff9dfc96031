//! Page hooks: test code run on each collection page the sample service is asked for, before it
//! answers, to change its data in the middle of an enumeration. Built on the service's
//! [`Layer`], so the service itself knows nothing of them.

use odata_sample_service::{Layer, RecordedRequest, Service};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What a hook learns about the collection request that triggered it.
pub struct PageRequest<'a> {
    /// The service, to change data (insert/update/delete) mid-enumeration.
    pub upstream: &'a Service,
    /// The request.
    pub request: &'a RecordedRequest,
    /// The entity set requested.
    pub set: &'a str,
    /// 0-based index of this GET collection request since the hook was set.
    pub index: usize,
}

/// Signature of a hook run on each GET collection request before answering.
pub type Hook = dyn Fn(&PageRequest<'_>) + Send + Sync;

/// A hook and how many pages it has seen, which is what its indexes count.
struct HookLayer {
    hook: Box<Hook>,
    seen: AtomicUsize,
}

impl Layer for HookLayer {
    fn before_page(&self, service: &Service, request: &RecordedRequest, set: &str) {
        (self.hook)(&PageRequest {
            upstream: service,
            request,
            set,
            index: self.seen.fetch_add(1, Ordering::SeqCst),
        });
    }
}

/// Page hooks on the sample service, called like its own methods (`up.set_hook(..)`).
pub trait PageHooks {
    /// Runs `hook` on every GET collection request, before it is answered, replacing any hook
    /// set before. A panic inside it only kills that connection (the client sees a transport
    /// error), so record what you want to check and assert in the test body instead.
    fn set_hook<F>(&self, hook: F)
    where
        F: Fn(&PageRequest<'_>) + Send + Sync + 'static;

    /// Removes the hook.
    fn clear_hook(&self);
}

impl PageHooks for Service {
    fn set_hook<F>(&self, hook: F)
    where
        F: Fn(&PageRequest<'_>) + Send + Sync + 'static,
    {
        self.set_layer(Arc::new(HookLayer {
            hook: Box::new(hook),
            seen: AtomicUsize::new(0),
        }));
    }

    fn clear_hook(&self) {
        self.clear_layer();
    }
}
