//! Page hooks: test code run on each collection page the sample service is asked for, before it
//! answers, to change its data in the middle of an enumeration. Held by the tests' layer
//! (`layer.rs`), so the service itself knows nothing of them.

use odata_sample_service::{RecordedRequest, Service};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

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

/// The hook, if set, and how many pages it has seen, which is what its indexes count.
#[derive(Default)]
pub struct HookSlot {
    hook: Mutex<Option<Arc<Hook>>>,
    seen: AtomicUsize,
}

impl HookSlot {
    /// Runs the hook on a GET collection request; any other request passes untouched. The hook
    /// runs with no lock held, so it may call anything on the service, faults included.
    pub fn run(&self, upstream: &Service, request: &RecordedRequest) {
        let Some(set) = request.collection_set.as_deref() else {
            return;
        };
        let hook = self
            .hook
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(hook) = hook {
            hook(&PageRequest {
                upstream,
                request,
                set,
                index: self.seen.fetch_add(1, Ordering::SeqCst),
            });
        }
    }

    /// Sets (or with `None` removes) the hook; its indexes start again at 0.
    fn set(&self, hook: Option<Arc<Hook>>) {
        let mut slot = self.hook.lock().unwrap_or_else(PoisonError::into_inner);
        *slot = hook;
        self.seen.store(0, Ordering::SeqCst);
    }
}

/// Page hooks on the sample service, called like its own methods (`up.set_hook(..)`).
pub trait PageHooks {
    /// Runs `hook` on every GET collection request, before it is answered (and before any fault
    /// fires on it), replacing any hook set before. A panic inside it only kills that connection
    /// (the client sees a transport error), so record what you want to check and assert in the
    /// test body instead.
    fn set_hook<F>(&self, hook: F)
    where
        F: Fn(&PageRequest<'_>) + Send + Sync + 'static;

    /// Removes the hook (faults stay).
    fn clear_hook(&self);
}

impl PageHooks for Service {
    fn set_hook<F>(&self, hook: F)
    where
        F: Fn(&PageRequest<'_>) + Send + Sync + 'static,
    {
        super::layer::of(self).hook.set(Some(Arc::new(hook)));
    }

    fn clear_hook(&self) {
        super::layer::of(self).hook.set(None);
    }
}
