//! Shared test support: a daemon bound to a throwaway host, and a small HTTP client over its
//! unix socket.

#![allow(dead_code)]

pub mod spawned;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cnm_daemon::{Config, Daemon};
use cnm_testkit::TestHost;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// A daemon whose host is the test's namespace, with its dirs and socket in the test's dirs.
pub async fn start(host: &TestHost, metrics: bool) -> Result<Daemon> {
    Ok(Daemon::start(config(host, metrics)?).await?)
}

pub fn config(host: &TestHost, metrics: bool) -> Result<Config> {
    let mut cfg = Config::in_dirs(host.run_dir(), host.state_dir());
    cfg.host_netns = Some(host.netns().clone());
    if metrics {
        cfg.metrics_addr = Some("127.0.0.1:0".parse()?);
    }
    Ok(cfg)
}

/// One HTTP/1 connection's worth of client, over a unix socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_owned(),
        }
    }

    /// Sends a request and returns the response with its body still streaming.
    pub async fn stream(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Response<Incoming>> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .with_context(|| format!("connect to {}", self.socket.display()))?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        Ok(tx.send_request(req).await?)
    }

    /// Sends a request; returns the status and the whole body.
    pub async fn raw(&self, method: &str, path: &str, body: Vec<u8>) -> Result<(u16, Vec<u8>)> {
        let resp = self.stream(method, path, body).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, bytes.to_vec()))
    }

    /// Sends JSON (or nothing) and parses the JSON answer (`Null` for an empty body).
    pub async fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let body = match body {
            Some(v) => serde_json::to_vec(&v)?,
            None => Vec::new(),
        };
        let (status, bytes) = self.raw(method, path, body).await?;
        if bytes.is_empty() {
            return Ok((status, Value::Null));
        }
        let v = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{method} {path} answered {status} with non-JSON {:?}",
                String::from_utf8_lossy(&bytes)
            )
        })?;
        Ok((status, v))
    }

    /// Like [`Client::json`] but fails unless the status is `want`.
    pub async fn expect(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        want: u16,
    ) -> Result<Value> {
        let (status, v) = self.json(method, path, body).await?;
        if status != want {
            bail!("{method} {path}: expected {want}, got {status}: {v}");
        }
        Ok(v)
    }
}

/// Reads one line of an event stream, waiting at most 10 s.
pub async fn next_line(body: &mut Incoming, buf: &mut Vec<u8>) -> Result<Option<Value>> {
    loop {
        if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            return Ok(Some(serde_json::from_slice(&line)?));
        }
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .context("no event within 10 s")?;
        match frame {
            None => return Ok(None),
            Some(f) => {
                if let Ok(data) = f?.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
}
