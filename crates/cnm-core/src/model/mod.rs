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
