//! A minimal HTTP/1 client for cnmd's API over its unix socket, one connection per request.
//! Bodies go out and answers come back as `cnm-api`'s types, the daemon's own.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cnm_api::docker::ErrorResponse;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::args::Format;
use crate::hint::{self, Target};
use crate::output::{Outcome, Printer};

/// How long one request may take before the CLI gives up on the daemon.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Where the daemon listens, and whether the user chose it (then it is never auto-started).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Path of the unix socket.
    pub socket: PathBuf,
    /// True when it came from `--host` or `CNM_HOST`.
    pub explicit: bool,
}

impl Endpoint {
    /// Parses a `--host` value; `None` means the default socket.
    pub fn parse(host: Option<&str>, default: &Path) -> Result<Endpoint, UsageError> {
        match host {
            None => Ok(Endpoint {
                socket: default.to_path_buf(),
                explicit: false,
            }),
            Some(h) => match h.strip_prefix("unix://") {
                Some(path) if path.starts_with('/') => Ok(Endpoint {
                    socket: PathBuf::from(path),
                    explicit: true,
                }),
                _ => Err(UsageError(format!(
                    "invalid --host {h:?}: expected unix:///absolute/path/to/cnm.sock"
                ))),
            },
        }
    }
}

/// Bad input on the command line detected by cnm itself (exit code 2, like clap's).
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The daemon answered with an error status; `message` is its `{"message"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// The daemon's message.
    pub message: String,
    /// What to do next.
    pub hint: Option<String>,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

/// The daemon could not be reached at all.
#[derive(Debug)]
pub struct UnreachableError {
    /// The socket we tried.
    pub socket: PathBuf,
    /// Why.
    pub source: io::Error,
}

impl UnreachableError {
    /// True when nothing listens there (as opposed to, say, permission denied).
    pub fn nobody_listens(&self) -> bool {
        matches!(
            self.source.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
        )
    }
}

impl fmt::Display for UnreachableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot reach cnmd at unix://{} ({}): is it running? start it with `cnmd --socket {}`",
            self.socket.display(),
            self.source,
            self.socket.display()
        )
    }
}

impl std::error::Error for UnreachableError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Talks to one daemon; before the first request it makes sure one runs (starting it when the
/// endpoint allows), so commands that fail on their own input never start a daemon.
#[derive(Debug)]
pub struct Client {
    endpoint: Endpoint,
    socket: PathBuf,
    ready: tokio::sync::OnceCell<()>,
}

impl Client {
    /// A client for the daemon at this endpoint.
    pub fn new(endpoint: &Endpoint) -> Client {
        Client {
            endpoint: endpoint.clone(),
            socket: endpoint.socket.clone(),
            ready: tokio::sync::OnceCell::new(),
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /_ping`: Ok when the daemon answers "OK".
    pub async fn ping(&self) -> anyhow::Result<()> {
        let (status, body) = self.send(Method::GET, "/_ping", None).await?;
        if status.is_success() {
            Ok(())
        } else {
            anyhow::bail!(
                "cnmd at unix://{} answered /_ping with {status}: {}",
                self.socket.display(),
                String::from_utf8_lossy(&body)
            )
        }
    }

    /// GET a JSON answer.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        target: Target<'_>,
    ) -> anyhow::Result<T> {
        self.call(Method::GET, path, None, target).await
    }

    /// POST a JSON body, decoding the answer as `T` (`serde::de::IgnoredAny` when it does not
    /// matter or is empty).
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
        target: Target<'_>,
    ) -> anyhow::Result<T> {
        let body = serde_json::to_string(body)?;
        self.call(Method::POST, path, Some(body), target).await
    }

    /// POST without a body (`/networks/prune`), decoding the answer as `T`.
    pub async fn post_empty<T: DeserializeOwned>(
        &self,
        path: &str,
        target: Target<'_>,
    ) -> anyhow::Result<T> {
        self.call(Method::POST, path, None, target).await
    }

    /// Fetches each of `names` (`at` gives its path and what an error names), prints the ones
    /// found as one JSON array and reports each failure, as `docker … inspect` does.
    pub async fn inspect_each<T: DeserializeOwned + Serialize>(
        &self,
        names: &[String],
        out: &Printer,
        at: impl for<'n> Fn(&'n str) -> (String, Target<'n>),
    ) -> Outcome {
        let mut found: Vec<T> = Vec::new();
        let mut outcome = Outcome::Ok;
        for name in names {
            let (path, target) = at(name);
            match self.get(&path, target).await {
                Ok(item) => found.push(item),
                Err(e) => outcome = out.failed(&e),
            }
        }
        out.json(&found);
        outcome
    }

    /// Deletes each of `names` (`at` gives its path and what an error names), prints the ones
    /// removed (one a line, or as one JSON array) and reports each failure, as `docker … rm`
    /// does.
    pub async fn delete_each(
        &self,
        names: &[String],
        out: &Printer,
        at: impl for<'n> Fn(&'n str) -> (String, Target<'n>),
    ) -> Outcome {
        let mut removed = Vec::new();
        let mut outcome = Outcome::Ok;
        for name in names {
            let (path, target) = at(name);
            match self.delete(&path, target).await {
                Ok(()) => {
                    if out.format == Format::Table {
                        out.line(name);
                    }
                    removed.push(name.as_str());
                }
                Err(e) => outcome = out.failed(&e),
            }
        }
        if out.format == Format::Json {
            out.json(&removed);
        }
        outcome
    }

    /// DELETE a resource.
    pub async fn delete(&self, path: &str, target: Target<'_>) -> anyhow::Result<()> {
        self.call::<serde::de::IgnoredAny>(Method::DELETE, path, None, target)
            .await
            .map(drop)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
        target: Target<'_>,
    ) -> anyhow::Result<T> {
        if !self.endpoint.explicit {
            self.ready
                .get_or_try_init(|| crate::autostart::ensure(self))
                .await?;
        }
        let (status, bytes) = self.send(method.clone(), path, body).await?;
        if !status.is_success() {
            return Err(api_error(status, &bytes, target).into());
        }
        // An answer without a body (204, or 200 to a Docker connect) is JSON's null: what
        // `IgnoredAny`, `()` and `Option` take.
        let json: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"null"
        } else {
            &bytes
        };
        serde_json::from_slice(json).map_err(|e| {
            anyhow::anyhow!(
                "cnmd answered {method} {path} with unexpected JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| UnreachableError {
                socket: self.socket.clone(),
                source,
            })?;
        let exchange = async {
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            // The connection task ends when the response is read and `sender` is dropped.
            let driver = tokio::spawn(conn);
            let mut req = Request::builder()
                .method(method.clone())
                .uri(path)
                .header(hyper::header::HOST, "cnmd");
            if body.is_some() {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
            }
            let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await?.to_bytes();
            drop(sender);
            driver.abort();
            anyhow::Ok((status, bytes))
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(r) => r.map_err(|e| {
                e.context(format!(
                    "request {method} {path} to cnmd at unix://{} failed",
                    self.socket.display()
                ))
            }),
            Err(_) => anyhow::bail!(
                "cnmd at unix://{} did not answer {method} {path} within {}s; see its log",
                self.socket.display(),
                REQUEST_TIMEOUT.as_secs()
            ),
        }
    }
}

/// Builds the error for a non-2xx answer: the daemon's `{"message"}` (or its raw body) plus a hint.
pub fn api_error(status: StatusCode, body: &[u8], target: Target<'_>) -> ApiError {
    let message = serde_json::from_slice::<ErrorResponse>(body)
        .map(|e| e.message)
        .unwrap_or_else(|_| {
            let raw = String::from_utf8_lossy(body).trim().to_owned();
            if raw.is_empty() {
                format!("cnmd answered {status}")
            } else {
                raw
            }
        });
    let hint = hint::for_api(status.as_u16(), &message, target);
    ApiError {
        status: status.as_u16(),
        message,
        hint,
    }
}

/// Percent-encodes one path segment or query value (RFC 3986 unreserved characters stay).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnm_api::docker::{NetworkCreateRequest, NetworkCreateResponse};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn host_flag_parses_unix_urls_only() {
        let d = Path::new("/run/cnm/cnm.sock");
        assert_eq!(
            Endpoint::parse(None, d).unwrap(),
            Endpoint {
                socket: d.into(),
                explicit: false
            }
        );
        assert_eq!(
            Endpoint::parse(Some("unix:///tmp/x.sock"), d).unwrap(),
            Endpoint {
                socket: "/tmp/x.sock".into(),
                explicit: true
            }
        );
        assert!(Endpoint::parse(Some("tcp://1.2.3.4:2375"), d).is_err());
        assert!(Endpoint::parse(Some("unix://relative.sock"), d).is_err());
    }

    #[test]
    fn encode_keeps_unreserved_and_escapes_the_rest() {
        assert_eq!(encode("net-1_a.b~"), "net-1_a.b~");
        assert_eq!(
            encode(r#"{"name":{"x":true}}"#),
            "%7B%22name%22%3A%7B%22x%22%3Atrue%7D%7D"
        );
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn api_error_uses_message_or_raw_body() {
        let e = api_error(
            StatusCode::NOT_FOUND,
            br#"{"message":"network x not found"}"#,
            Target::Network("x"),
        );
        assert_eq!((e.status, e.message.as_str()), (404, "network x not found"));
        assert!(e.hint.unwrap().contains("cnm network ls"));
        let e = api_error(StatusCode::BAD_GATEWAY, b"upstream broke\n", Target::None);
        assert_eq!(e.message, "upstream broke");
        let e = api_error(StatusCode::INTERNAL_SERVER_ERROR, b"", Target::None);
        assert_eq!(e.message, "cnmd answered 500 Internal Server Error");
    }

    /// Serves one canned HTTP answer on a unix socket and returns the request it read.
    async fn fake_daemon(socket: PathBuf, answer: &'static str) -> tokio::task::JoinHandle<String> {
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            // Read until the end of headers plus the announced body.
            loop {
                let n = s.read(&mut buf).await.unwrap();
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if req.len() >= end + 4 + len {
                        break;
                    }
                }
                assert!(n > 0, "client hung up early");
            }
            s.write_all(answer.as_bytes()).await.unwrap();
            s.shutdown().await.unwrap();
            String::from_utf8(req).unwrap()
        })
    }

    #[tokio::test]
    async fn post_sends_json_and_decodes_the_answer() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("d.sock");
        let server = fake_daemon(
            sock.clone(),
            "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 26\r\n\r\n{\"Id\":\"abc\",\"Warning\":\"\"}\n",
        )
        .await;
        let v: NetworkCreateResponse = Client::new(&Endpoint {
            socket: sock.clone(),
            explicit: true,
        })
        .post(
            "/networks/create",
            &NetworkCreateRequest {
                name: "n".into(),
                ..Default::default()
            },
            Target::Network("n"),
        )
        .await
        .unwrap();
        assert_eq!(v.id, "abc");
        let req = server.await.unwrap();
        assert!(
            req.starts_with("POST /networks/create HTTP/1.1\r\n"),
            "{req}"
        );
        assert!(
            req.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{req}"
        );
        assert!(req.ends_with(r#"{"Name":"n"}"#), "{req}");
    }

    #[tokio::test]
    async fn error_status_becomes_api_error_with_hint() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("d.sock");
        let _server = fake_daemon(
            sock.clone(),
            "HTTP/1.1 409 Conflict\r\nContent-Length: 41\r\n\r\n{\"message\":\"network demo already exists\"}",
        )
        .await;
        let err = Client::new(&Endpoint {
            socket: sock.clone(),
            explicit: true,
        })
        .post::<NetworkCreateResponse>(
            "/networks/create",
            &NetworkCreateRequest::default(),
            Target::Network("demo"),
        )
        .await
        .expect_err("409");
        let api = err.downcast_ref::<ApiError>().expect("an ApiError");
        assert_eq!(api.status, 409);
        assert_eq!(api.message, "network demo already exists");
        assert!(api.hint.as_deref().unwrap().contains("cnm network rm demo"));
    }

    #[tokio::test]
    async fn missing_socket_is_unreachable_with_a_start_hint() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("none.sock");
        let err = Client::new(&Endpoint {
            socket: sock.clone(),
            explicit: true,
        })
        .ping()
        .await
        .expect_err("nothing listens");
        let u = err.downcast_ref::<UnreachableError>().expect("unreachable");
        assert!(u.nobody_listens());
        let text = u.to_string();
        assert!(
            text.contains("is it running? start it with `cnmd --socket"),
            "{text}"
        );
    }
}
