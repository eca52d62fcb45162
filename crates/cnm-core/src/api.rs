//! The card's interfaces: [`ControllerApi`], [`NetworkApi`], [`EndpointApi`] and
//! [`SandboxApi`], object-safe and async, as libnetwork's `NetworkController`, `Network`,
//! `Endpoint` and `Sandbox` are interfaces. The controller's handles implement them, so a
//! program can be written against `&dyn NetworkApi` and tested with a fake behind it.
//!
//! Why `…Api` rather than traits named `Network` and handles renamed: the handles are what
//! nearly every caller uses (`controller.new_network(…)` returns a `Network` with inherent
//! methods, no trait to import, no `Arc<dyn …>` to carry), and the seed example keeps reading
//! as libnetwork's. The traits are for the caller who wants the abstraction; their methods have
//! the handles' names and meanings, so code moves between the two by changing types only.
//!
//! ```
//! use cnm_core::{CoreError, EndpointOptions, JoinOption, NetworkApi, SandboxApi};
//!
//! /// Downstream code: attach a container to a network, whatever implements it.
//! async fn attach(net: &dyn NetworkApi, container: &str) -> Result<std::path::PathBuf, CoreError> {
//!     let ep = net.create_endpoint(container, EndpointOptions::default()).await?;
//!     let sandbox = ep.join(container, vec![JoinOption::hostname(container)]).await?;
//!     Ok(sandbox.key().to_owned())
//! }
//! ```

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use cnm_types::MacAddress;
use ipnet::{Ipv4Net, Ipv6Net};

use crate::CoreError;
use crate::controller::Controller;
use crate::endpoint::Endpoint;
use crate::network::Network;
use crate::options::{EndpointOptions, JoinOption, NetworkOptions};
use crate::sandbox::Sandbox;
use crate::spi::Scope;

/// libnetwork's `NetworkController`: creates and finds networks and sandboxes.
#[async_trait]
pub trait ControllerApi: Send + Sync {
    /// Creates a network of `driver` called `name`.
    async fn new_network(
        &self,
        driver: &str,
        name: &str,
        options: NetworkOptions,
    ) -> Result<Arc<dyn NetworkApi>, CoreError>;

    /// The network with this full id, name, or unique id prefix.
    fn network(&self, key: &str) -> Result<Arc<dyn NetworkApi>, CoreError>;

    /// Every network, sorted by name.
    fn networks(&self) -> Vec<Arc<dyn NetworkApi>>;

    /// Creates the sandbox of a container.
    async fn new_sandbox(
        &self,
        container_id: &str,
        options: Vec<JoinOption>,
    ) -> Result<Arc<dyn SandboxApi>, CoreError>;

    /// The sandbox of a container.
    fn sandbox_by_container_id(&self, container_id: &str)
    -> Result<Arc<dyn SandboxApi>, CoreError>;
}

/// libnetwork's `Network`.
#[async_trait]
pub trait NetworkApi: Send + Sync {
    /// The id.
    fn id(&self) -> &str;
    /// The name.
    fn name(&self) -> &str;
    /// The driver's name.
    fn driver(&self) -> &str;
    /// The scope.
    fn scope(&self) -> Scope;
    /// Every endpoint, sorted by name.
    fn endpoints(&self) -> Vec<Arc<dyn EndpointApi>>;
    /// The endpoint with this full id, name, or unique id prefix.
    fn endpoint(&self, key: &str) -> Result<Arc<dyn EndpointApi>, CoreError>;
    /// Creates an endpoint.
    async fn create_endpoint(
        &self,
        name: &str,
        options: EndpointOptions,
    ) -> Result<Arc<dyn EndpointApi>, CoreError>;
    /// Deletes the network; refused while it has endpoints.
    async fn delete(&self) -> Result<(), CoreError>;
}

/// libnetwork's `Endpoint`.
#[async_trait]
pub trait EndpointApi: Send + Sync {
    /// The id.
    fn id(&self) -> &str;
    /// The name.
    fn name(&self) -> &str;
    /// The network it belongs to.
    fn network(&self) -> Arc<dyn NetworkApi>;
    /// The IPv4 address.
    fn ipv4(&self) -> Option<Ipv4Net>;
    /// The IPv6 address.
    fn ipv6(&self) -> Option<Ipv6Net>;
    /// The MAC.
    fn mac(&self) -> Option<MacAddress>;
    /// The id of the sandbox it is joined to.
    fn sandbox_id(&self) -> Option<String>;
    /// Joins the sandbox of `container_id` (created when the container has none); returns it.
    async fn join(
        &self,
        container_id: &str,
        options: Vec<JoinOption>,
    ) -> Result<Arc<dyn SandboxApi>, CoreError>;
    /// Leaves the sandbox of `container_id`.
    async fn leave(&self, container_id: &str) -> Result<(), CoreError>;
    /// Deletes the endpoint; refused while it is joined.
    async fn delete(&self) -> Result<(), CoreError>;
}

/// libnetwork's `Sandbox`.
#[async_trait]
pub trait SandboxApi: Send + Sync {
    /// The id.
    fn id(&self) -> &str;
    /// The container's id.
    fn container_id(&self) -> &str;
    /// The sandbox key: the path of its network namespace.
    fn key(&self) -> &Path;
    /// The joined endpoints, in join order.
    fn endpoints(&self) -> Vec<Arc<dyn EndpointApi>>;
    /// Leaves every endpoint and removes the sandbox.
    async fn delete(&self) -> Result<(), CoreError>;
}

/// Trait methods that return what the handle's inherent method of the same name returns.
macro_rules! forward_to_inherent {
    ($handle:ident: $(fn $name:ident(&self) -> $ret:ty;)*) => {
        $(
            fn $name(&self) -> $ret {
                $handle::$name(self)
            }
        )*
    };
}

#[async_trait]
impl ControllerApi for Controller {
    async fn new_network(
        &self,
        driver: &str,
        name: &str,
        options: NetworkOptions,
    ) -> Result<Arc<dyn NetworkApi>, CoreError> {
        Ok(Arc::new(
            Controller::new_network(self, driver, name, options).await?,
        ))
    }

    fn network(&self, key: &str) -> Result<Arc<dyn NetworkApi>, CoreError> {
        Ok(Arc::new(Controller::network(self, key)?))
    }

    fn networks(&self) -> Vec<Arc<dyn NetworkApi>> {
        Controller::networks(self)
            .into_iter()
            .map(|n| Arc::new(n) as Arc<dyn NetworkApi>)
            .collect()
    }

    async fn new_sandbox(
        &self,
        container_id: &str,
        options: Vec<JoinOption>,
    ) -> Result<Arc<dyn SandboxApi>, CoreError> {
        Ok(Arc::new(
            Controller::new_sandbox(self, container_id, options).await?,
        ))
    }

    fn sandbox_by_container_id(
        &self,
        container_id: &str,
    ) -> Result<Arc<dyn SandboxApi>, CoreError> {
        Ok(Arc::new(Controller::sandbox_by_container_id(
            self,
            container_id,
        )?))
    }
}

#[async_trait]
impl NetworkApi for Network {
    forward_to_inherent! { Network:
        fn id(&self) -> &str;
        fn name(&self) -> &str;
        fn driver(&self) -> &str;
        fn scope(&self) -> Scope;
    }

    fn endpoints(&self) -> Vec<Arc<dyn EndpointApi>> {
        Network::endpoints(self)
            .into_iter()
            .map(|e| Arc::new(e) as Arc<dyn EndpointApi>)
            .collect()
    }

    fn endpoint(&self, key: &str) -> Result<Arc<dyn EndpointApi>, CoreError> {
        Ok(Arc::new(Network::endpoint(self, key)?))
    }

    async fn create_endpoint(
        &self,
        name: &str,
        options: EndpointOptions,
    ) -> Result<Arc<dyn EndpointApi>, CoreError> {
        Ok(Arc::new(
            Network::create_endpoint(self, name, options).await?,
        ))
    }

    async fn delete(&self) -> Result<(), CoreError> {
        Network::delete(self).await
    }
}

#[async_trait]
impl EndpointApi for Endpoint {
    forward_to_inherent! { Endpoint:
        fn id(&self) -> &str;
        fn name(&self) -> &str;
        fn ipv4(&self) -> Option<Ipv4Net>;
        fn ipv6(&self) -> Option<Ipv6Net>;
        fn mac(&self) -> Option<MacAddress>;
        fn sandbox_id(&self) -> Option<String>;
    }

    fn network(&self) -> Arc<dyn NetworkApi> {
        Arc::new(Endpoint::network(self))
    }

    async fn join(
        &self,
        container_id: &str,
        options: Vec<JoinOption>,
    ) -> Result<Arc<dyn SandboxApi>, CoreError> {
        Ok(Arc::new(Endpoint::join(self, container_id, options).await?))
    }

    async fn leave(&self, container_id: &str) -> Result<(), CoreError> {
        Endpoint::leave(self, container_id).await
    }

    async fn delete(&self) -> Result<(), CoreError> {
        Endpoint::delete(self).await
    }
}

#[async_trait]
impl SandboxApi for Sandbox {
    forward_to_inherent! { Sandbox:
        fn id(&self) -> &str;
        fn container_id(&self) -> &str;
        fn key(&self) -> &Path;
    }

    fn endpoints(&self) -> Vec<Arc<dyn EndpointApi>> {
        Sandbox::endpoints(self)
            .into_iter()
            .map(|(e, _)| Arc::new(e) as Arc<dyn EndpointApi>)
            .collect()
    }

    async fn delete(&self) -> Result<(), CoreError> {
        Sandbox::delete(self).await
    }
}
