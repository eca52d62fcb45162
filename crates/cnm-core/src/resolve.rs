//! Drivers found by name while running: the hook a controller calls when a network names a
//! driver it does not have (libnetwork's plugin lookup on `NewNetwork`), and when a recorded
//! network's driver is missing at reload.
//!
//! Core knows nothing of plugins: the embedding program gives the builder a
//! [`DriverResolver`] ([`ControllerBuilder::driver_resolver`](crate::ControllerBuilder::driver_resolver));
//! `cnm-driver-remote` has one that finds Docker plugins in their directories. Without one, an
//! unknown name is [`CoreError::DriverNotFound`](crate::CoreError::DriverNotFound).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::spi::{Driver, DriverContext, DriverError};

/// Finds a driver the controller does not have, by name, and builds it.
///
/// Called at most once per name and controller at a time is not promised: two creations naming
/// one unknown driver at once may both resolve it; the first to register wins and the other's
/// driver is dropped.
#[async_trait]
pub trait DriverResolver: Send + Sync + fmt::Debug {
    /// Finds driver `name` and builds it with the controller's context.
    ///
    /// A name it cannot find must fail at once (no waiting for a driver that may appear) with
    /// an error of kind [`NotFound`](cnm_types::ErrorKind::NotFound) that says where it looked;
    /// the controller passes the error on, naming the driver.
    async fn resolve(
        &self,
        name: &str,
        ctx: &DriverContext,
    ) -> Result<Arc<dyn Driver>, DriverError>;
}
