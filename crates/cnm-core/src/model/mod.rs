//! The controller's objects as data: what a network, an endpoint and a sandbox hold, and the
//! records they are written as. No operation lives here (see [`crate::ops`]), so nothing here
//! reaches into the controller.
//!
//! Ownership runs one way: the controller ([`crate::state::Core`]) owns every object; an endpoint
//! holds its network and a sandbox the endpoints joined to it (child to parent, strongly); a
//! network finds its endpoints through weak references. So there is no cycle to break.

pub(crate) mod endpoint;
pub(crate) mod network;
pub(crate) mod sandbox;

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks a std mutex. Every critical section of the model is a few field or map updates that
/// leave the data consistent, so a poisoned lock still guards valid data.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
