//! The protocol client: the `Plugin.Activate` handshake and calls, each bounded in time, with
//! re-activation of a plugin that restarted.
//!
//! Every call opens its own connection (a plugin is called a few times per container, and a
//! fresh connection makes "the plugin is not running" unambiguous: the connect fails and the
//! request was never sent). A call is `POST /Method` with a JSON body and the headers Docker
//! sends (`Accept: application/vnd.docker.plugins.v1.2+json`); the answer is read whole, up to
//! [`ClientConfig::max_answer`] bytes, within [`ClientConfig::call_timeout`].
//!
//! A plugin that restarted shows in one of three ways: the connect is refused (it is down or
//! coming up), the connection breaks mid-call (it died), or it answers 404 because the new
//! process wants the handshake first. The client then activates it again (looking it up by name
//! again, so a plugin that moved its socket is found) and sends the call once more: always after
//! a refused connect or a 404 (the plugin did not act), only for idempotent calls after a broken
//! connection (it may have acted). A timeout is never retried: the plugin hangs, and waiting
//! twice helps no one.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::StatusCode;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::Instrument as _;

use super::addr::PluginAddr;
use super::discovery::{PluginDirs, PluginSpec};
use super::error::{Detail, PluginError, Waited};

/// The media type of every request and answer (Docker's `transport.VersionMimetype`).
pub const MEDIA_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";
/// The handshake method.
pub const ACTIVATE: &str = "Plugin.Activate";

/// Time limits of the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// How long one call may take, from connecting to the last byte of the answer.
    pub call_timeout: Duration,
    /// How long to wait for a plugin whose socket exists but refuses connections (it is
    /// starting or restarting). A name with no socket or spec file is not waited for.
    pub activate_wait: Duration,
    /// The largest answer accepted, in bytes.
    pub max_answer: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(10),
            activate_wait: Duration::from_secs(2),
            max_answer: 4 << 20,
        }
    }
}

/// The answer to `Plugin.Activate`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The subsystems the plugin implements (`NetworkDriver`, `IpamDriver`, `VolumeDriver`, …).
    #[serde(
        rename = "Implements",
        default,
        deserialize_with = "crate::wire::null_default"
    )]
    pub implements: Vec<String>,
}

/// An answer type: it carries the plugin's error text (`Err` or `Error`), empty on success.
pub trait Answer: DeserializeOwned {
    /// The plugin's error text; empty when the call succeeded.
    fn error(&self) -> &str;
}

/// One method of the protocol and how it may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    /// The method, `Subsystem.Method` (`NetworkDriver.Join`).
    pub method: &'static str,
    /// Whether sending it twice does no harm (deletes, leave, queries).
    pub idempotent: bool,
    /// Whether a plugin may lack it (HTTP 404 is then an empty success, as in Docker).
    pub optional: bool,
}

impl Call {
    /// A call that must be implemented and may not be repeated blindly.
    pub const fn new(method: &'static str) -> Self {
        Self {
            method,
            idempotent: false,
            optional: false,
        }
    }

    /// Marks the call idempotent.
    pub const fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }

    /// Marks the call optional.
    pub const fn optional(mut self) -> Self {
        self.optional = true;
        self
    }
}

/// A request body: empty (as Docker sends for calls without arguments) or JSON.
#[derive(Debug, Clone, Default)]
pub struct Body(Bytes);

impl Body {
    /// No body at all.
    pub fn empty() -> Self {
        Self(Bytes::new())
    }

    /// A JSON body.
    pub fn json(value: &impl Serialize) -> Result<Self, serde_json::Error> {
        serde_json::to_vec(value).map(|v| Self(Bytes::from(v)))
    }
}

/// What the current activation found.
#[derive(Debug, Clone)]
struct Active {
    spec: Arc<PluginSpec>,
    implements: Vec<String>,
    /// Bumped by every successful activation, so that concurrent calls that all saw the plugin
    /// restart activate it once.
    generation: u64,
}

/// A connection-less client of one plugin, activated for one subsystem.
///
/// Cheap to share: calls run concurrently, each on its own connection; only re-activation is
/// serialised.
#[derive(Debug)]
pub struct PluginClient {
    name: String,
    subsystem: &'static str,
    dirs: PluginDirs,
    config: ClientConfig,
    active: Mutex<Active>,
    reactivating: tokio::sync::Mutex<()>,
}

/// How one exchange failed, before any HTTP status was read.
#[derive(Debug)]
enum Transport {
    /// The connect failed: the request was not sent.
    Unreachable(std::io::Error),
    /// The connection broke after the connect: the plugin may have the request.
    Lost(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// No complete answer in time.
    Timeout,
    /// The answer exceeded the size limit.
    TooLarge,
}

impl PluginClient {
    /// Finds the plugin `name` in `dirs`, activates it and checks that it implements
    /// `subsystem` (`NetworkDriver` or `IpamDriver`).
    ///
    /// An unknown name fails at once; a socket that exists but refuses connections is retried
    /// for up to [`ClientConfig::activate_wait`].
    pub async fn connect(
        name: &str,
        subsystem: &'static str,
        dirs: PluginDirs,
        config: ClientConfig,
    ) -> Result<Self, PluginError> {
        // An unknown name fails here, at once; only a plugin that exists is waited for.
        let spec = find(&dirs, name).await?;
        let implements = activate(&spec, subsystem, &config, Instant::now()).await?;
        tracing::info!(plugin = name, addr = %spec.addr, ?implements, "plugin activated");
        Ok(Self {
            name: name.to_owned(),
            subsystem,
            dirs,
            config,
            active: Mutex::new(Active {
                spec: Arc::new(spec),
                implements,
                generation: 0,
            }),
            reactivating: tokio::sync::Mutex::new(()),
        })
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the plugin was found, as of the last activation.
    pub fn spec(&self) -> Arc<PluginSpec> {
        self.lock().spec.clone()
    }

    /// What the last handshake listed in `Implements`.
    pub fn implements(&self) -> Vec<String> {
        self.lock().implements.clone()
    }

    /// How many times the plugin was activated again after the first handshake.
    pub fn reactivations(&self) -> u64 {
        self.lock().generation
    }

    /// The client's limits.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// [`call`](Self::call) with `request` as its JSON body (one that does not encode is
    /// [`PluginError::Encode`]).
    pub async fn call_json<A: Answer>(
        &self,
        call: Call,
        request: &impl Serialize,
    ) -> Result<A, PluginError> {
        let body = Body::json(request).map_err(|e| self.encode_error(call, e))?;
        self.call(call, body).await
    }

    /// [`call_optional`](Self::call_optional) with `request` as its JSON body.
    pub async fn call_json_optional<A: Answer>(
        &self,
        call: Call,
        request: &impl Serialize,
    ) -> Result<Option<A>, PluginError> {
        let body = Body::json(request).map_err(|e| self.encode_error(call, e))?;
        self.call_optional(call, body).await
    }

    /// `call`'s request did not encode.
    pub(crate) fn encode_error(&self, call: Call, source: serde_json::Error) -> PluginError {
        PluginError::Encode {
            plugin: self.name.clone(),
            call: call.method.to_owned(),
            source,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Active> {
        // Replaced whole under the lock, never left half-written: a poisoned guard is sound.
        self.active.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Calls a method that every plugin of the subsystem implements.
    pub async fn call<A: Answer>(&self, call: Call, body: Body) -> Result<A, PluginError> {
        let call = Call {
            optional: false,
            ..call
        };
        self.call_optional(call, body)
            .await?
            .ok_or_else(|| PluginError::MethodNotFound {
                plugin: self.name.clone(),
                call: call.method.to_owned(),
                message: Detail(None),
            })
    }

    /// Calls a method; `Ok(None)` when it is optional and the plugin does not implement it.
    pub async fn call_optional<A: Answer>(
        &self,
        call: Call,
        body: Body,
    ) -> Result<Option<A>, PluginError> {
        let span = tracing::debug_span!("plugin call", plugin = %self.name, method = call.method);
        let Some(bytes) = self.send(call, &body.0).instrument(span).await? else {
            return Ok(None);
        };
        let answer: A = decode(&self.name, call.method, &bytes)?;
        let message = answer.error();
        if message.is_empty() {
            Ok(Some(answer))
        } else {
            Err(PluginError::Refused {
                plugin: self.name.clone(),
                call: call.method.to_owned(),
                message: message.to_owned(),
            })
        }
    }

    /// Sends a call, re-activating the plugin and sending it again once when the failure says
    /// the plugin restarted and sending again is safe. `None`: an optional call answered 404.
    async fn send(&self, call: Call, body: &Bytes) -> Result<Option<Bytes>, PluginError> {
        let (spec, seen) = {
            let a = self.lock();
            (a.spec.clone(), a.generation)
        };
        let first = exchange(&spec.addr, call.method, body, &self.config).await;
        let again = match &first {
            Ok((StatusCode::NOT_FOUND, _)) => !call.optional,
            Ok(_) | Err(Transport::Timeout | Transport::TooLarge) => false,
            Err(Transport::Unreachable(_)) => true,
            Err(Transport::Lost(_)) => call.idempotent,
        };
        let result = if again {
            tracing::info!(
                plugin = %self.name,
                method = call.method,
                "the plugin seems to have restarted; activating it again"
            );
            if let Err(e) = self.reactivate(seen).await {
                return Err(PluginError::Reactivation {
                    plugin: self.name.clone(),
                    call: call.method.to_owned(),
                    source: Box::new(e),
                });
            }
            let spec = self.spec();
            exchange(&spec.addr, call.method, body, &self.config).await
        } else {
            first
        };
        let spec = self.spec();
        self.judge(call, &spec.addr, result)
    }

    /// Turns an exchange's outcome into the answer's body or a typed error.
    fn judge(
        &self,
        call: Call,
        addr: &PluginAddr,
        result: Result<(StatusCode, Bytes), Transport>,
    ) -> Result<Option<Bytes>, PluginError> {
        let plugin = self.name.clone();
        let method = call.method.to_owned();
        match result {
            Ok((StatusCode::OK, bytes)) => Ok(Some(bytes)),
            Ok((StatusCode::NOT_FOUND, _)) if call.optional => Ok(None),
            Ok((StatusCode::NOT_FOUND, bytes)) => Err(PluginError::MethodNotFound {
                plugin,
                call: method,
                message: Detail(error_text(&bytes)),
            }),
            Ok((status, bytes)) => Err(PluginError::Status {
                plugin,
                call: method,
                status: status.as_u16(),
                message: error_text(&bytes).unwrap_or_else(|| "(empty answer)".to_owned()),
            }),
            Err(Transport::Unreachable(source)) => Err(PluginError::Unreachable {
                plugin,
                call: method,
                addr: addr.to_string(),
                waited: Waited(None),
                source,
            }),
            Err(Transport::Lost(source)) => Err(PluginError::ConnectionLost {
                plugin,
                call: method,
                source,
            }),
            Err(Transport::Timeout) => Err(PluginError::Timeout {
                plugin,
                call: method,
                timeout: self.config.call_timeout,
            }),
            Err(Transport::TooLarge) => Err(PluginError::TooLarge {
                plugin,
                call: method,
                limit: self.config.max_answer,
            }),
        }
    }

    /// Looks the plugin up again and activates it, unless another call did since `seen`.
    async fn reactivate(&self, seen: u64) -> Result<(), PluginError> {
        let _one_at_a_time = self.reactivating.lock().await;
        if self.lock().generation != seen {
            return Ok(());
        }
        // A plugin that restarts may remove its socket before it binds it again: look for it
        // for as long as the wait for an answer allows.
        let started = Instant::now();
        let mut pause = FIRST_PAUSE;
        let spec = loop {
            match find(&self.dirs, &self.name).await {
                Err(PluginError::NotFound { .. })
                    if started.elapsed() < self.config.activate_wait =>
                {
                    pause = wait_a_little(pause, started, self.config.activate_wait).await;
                }
                other => break other?,
            }
        };
        let implements = activate(&spec, self.subsystem, &self.config, started).await?;
        let mut a = self.lock();
        a.spec = Arc::new(spec);
        a.implements = implements;
        a.generation += 1;
        tracing::info!(plugin = %self.name, generation = a.generation, "plugin activated again");
        Ok(())
    }
}

/// [`PluginDirs::find`] off the async threads.
async fn find(dirs: &PluginDirs, name: &str) -> Result<PluginSpec, PluginError> {
    let (dirs, owned) = (dirs.clone(), name.to_owned());
    match tokio::task::spawn_blocking(move || dirs.find(&owned)).await {
        Ok(result) => result,
        Err(join) => Err(PluginError::ReadSpec {
            name: name.to_owned(),
            path: Default::default(),
            source: std::io::Error::other(join.to_string()),
        }),
    }
}

/// The first pause between probes of a plugin that is coming up; it doubles up to
/// [`LAST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(5);
const LAST_PAUSE: Duration = Duration::from_millis(100);

/// Sleeps `pause` (never past `started + wait`) and returns the next pause.
async fn wait_a_little(pause: Duration, started: Instant, wait: Duration) -> Duration {
    let left = wait.saturating_sub(started.elapsed());
    tokio::time::sleep(pause.min(left)).await;
    (pause * 2).min(LAST_PAUSE)
}

/// The handshake: `POST /Plugin.Activate` with no body, probing until `started` +
/// `activate_wait` a plugin whose socket refuses or resets connections or is missing for a
/// moment (it is starting, restarting or dying); checks that the plugin implements `subsystem`.
async fn activate(
    spec: &PluginSpec,
    subsystem: &'static str,
    config: &ClientConfig,
    started: Instant,
) -> Result<Vec<String>, PluginError> {
    let mut pause = FIRST_PAUSE;
    let result = loop {
        match exchange(&spec.addr, ACTIVATE, &Bytes::new(), config).await {
            Err(Transport::Unreachable(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                ) && started.elapsed() < config.activate_wait =>
            {
                pause = wait_a_little(pause, started, config.activate_wait).await;
            }
            // A connection queued on the socket of a plugin that is dying is reset when its
            // listener closes; the handshake is idempotent, so probe again.
            Err(Transport::Lost(_)) if started.elapsed() < config.activate_wait => {
                pause = wait_a_little(pause, started, config.activate_wait).await;
            }
            other => break other,
        }
    };
    let call = ACTIVATE.to_owned();
    let bytes = match result {
        Ok((StatusCode::OK, bytes)) => bytes,
        Ok((status, bytes)) => {
            return Err(PluginError::Status {
                plugin: spec.name.clone(),
                call,
                status: status.as_u16(),
                message: error_text(&bytes).unwrap_or_else(|| "(empty answer)".to_owned()),
            });
        }
        Err(Transport::Unreachable(source)) => {
            let waited = started.elapsed();
            return Err(PluginError::Unreachable {
                plugin: spec.name.clone(),
                call,
                addr: spec.addr.to_string(),
                waited: Waited((waited >= Duration::from_millis(1)).then_some(waited)),
                source,
            });
        }
        Err(Transport::Lost(source)) => {
            return Err(PluginError::ConnectionLost {
                plugin: spec.name.clone(),
                call,
                source,
            });
        }
        Err(Transport::Timeout) => {
            return Err(PluginError::Timeout {
                plugin: spec.name.clone(),
                call,
                timeout: config.call_timeout,
            });
        }
        Err(Transport::TooLarge) => {
            return Err(PluginError::TooLarge {
                plugin: spec.name.clone(),
                call,
                limit: config.max_answer,
            });
        }
    };
    let manifest: Manifest = decode(&spec.name, ACTIVATE, &bytes)?;
    if !manifest.implements.iter().any(|i| i == subsystem) {
        return Err(PluginError::NotImplemented {
            name: spec.name.clone(),
            wanted: subsystem,
            implements: manifest.implements,
        });
    }
    Ok(manifest.implements)
}

/// Decodes an answer. An empty body reads as `{}` (some plugins answer a bare 200).
fn decode<A: DeserializeOwned>(plugin: &str, call: &str, bytes: &[u8]) -> Result<A, PluginError> {
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(text).map_err(|source| PluginError::Garbage {
        plugin: plugin.to_owned(),
        call: call.to_owned(),
        excerpt: excerpt(bytes),
        source,
    })
}

/// The plugin's error text in an error answer: `Err` (network drivers, Docker's client) or
/// `Error` (IPAM drivers), else the start of the body.
fn error_text(bytes: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct ErrorAnswer {
        #[serde(rename = "Err", default)]
        err: Option<String>,
        #[serde(rename = "Error", default)]
        error: Option<String>,
    }
    if let Ok(a) = serde_json::from_slice::<ErrorAnswer>(bytes)
        && let Some(text) = a.err.or(a.error).filter(|t| !t.is_empty())
    {
        return Some(text);
    }
    let raw = String::from_utf8_lossy(bytes).trim().to_owned();
    (!raw.is_empty()).then(|| excerpt(raw.as_bytes()))
}

/// The first 120 characters of a body, quoted (control characters escaped).
fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out: String = text.chars().take(120).collect();
    if text.chars().count() > 120 {
        out.push('…');
    }
    format!("{out:?}")
}

/// One request on a fresh connection, bounded by the call timeout.
async fn exchange(
    addr: &PluginAddr,
    method: &str,
    body: &Bytes,
    config: &ClientConfig,
) -> Result<(StatusCode, Bytes), Transport> {
    let work = async {
        match addr {
            PluginAddr::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(Transport::Unreachable)?;
                over(stream, addr, method, body, config.max_answer).await
            }
            PluginAddr::Tcp(host_port) => {
                let stream = tokio::net::TcpStream::connect(host_port.as_str())
                    .await
                    .map_err(Transport::Unreachable)?;
                over(stream, addr, method, body, config.max_answer).await
            }
        }
    };
    tokio::time::timeout(config.call_timeout, work)
        .await
        .unwrap_or(Err(Transport::Timeout))
}

/// Aborts the connection task when the exchange ends, however it ends (a hung plugin must not
/// keep a task and a socket alive after the timeout).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn over<S>(
    stream: S,
    addr: &PluginAddr,
    method: &str,
    body: &Bytes,
    limit: usize,
) -> Result<(StatusCode, Bytes), Transport>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let lost = |e: hyper::Error| Transport::Lost(Box::new(e));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(lost)?;
    let _conn = AbortOnDrop(tokio::spawn(async move {
        // Its errors surface through `send_request` and the body.
        let _ = conn.await;
    }));
    let request = hyper::Request::post(format!("/{method}"))
        .header(hyper::header::HOST, addr.host_header())
        .header(hyper::header::ACCEPT, MEDIA_TYPE)
        .header(hyper::header::CONTENT_TYPE, MEDIA_TYPE)
        .body(Full::new(body.clone()))
        .map_err(|e| Transport::Lost(Box::new(e)))?;
    let response = sender.send_request(request).await.map_err(lost)?;
    let status = response.status();
    let bytes = Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<LengthLimitError>() {
                Transport::TooLarge
            } else {
                Transport::Lost(e)
            }
        })?
        .to_bytes();
    Ok((status, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_prefers_err_then_error_then_the_body() {
        assert_eq!(error_text(br#"{"Err":"boom"}"#).as_deref(), Some("boom"));
        assert_eq!(error_text(br#"{"Error":"bang"}"#).as_deref(), Some("bang"));
        assert_eq!(
            error_text(b"plain text\n").as_deref(),
            Some("\"plain text\"")
        );
        assert_eq!(error_text(b""), None);
    }

    #[test]
    fn an_empty_answer_is_an_empty_object_and_garbage_is_quoted() {
        let m: Manifest = decode("p", ACTIVATE, b"").unwrap();
        assert!(m.implements.is_empty());
        let e = decode::<Manifest>("p", ACTIVATE, b"<html>oops</html>").unwrap_err();
        assert_eq!(
            e.to_string(),
            "plugin \"p\": Plugin.Activate: the answer is not valid JSON for this call (\"<html>oops</html>\")"
        );
        assert!(e.may_have_acted());
    }

    #[test]
    fn the_handshake_answer_of_dockers_docs() {
        let m: Manifest = decode("p", ACTIVATE, br#"{"Implements": ["NetworkDriver"]}"#).unwrap();
        assert_eq!(m.implements, ["NetworkDriver"]);
        let m: Manifest = decode("p", ACTIVATE, br#"{"Implements": null}"#).unwrap();
        assert!(m.implements.is_empty());
    }
}
