//! The CLI's side of the admin API: HTTP/1.1 over the agent's unix socket.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, body::Bytes, client::conn::http1};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Client {
        Client {
            socket: socket.to_path_buf(),
        }
    }

    async fn get(&self, path: &str) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        self.send(hyper::Method::GET, path, Bytes::new()).await
    }

    async fn send(
        &self,
        method: hyper::Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|e| {
            anyhow!(
                "cannot reach the weft agent at {}: {e} (is `weft agent` running? --admin-socket names another socket)",
                self.socket.display()
            )
        })?;
        let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .context("talking to the agent")?;
        tokio::spawn(connection);
        let request = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(hyper::header::HOST, "weft")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let response = sender
            .send_request(request)
            .await
            .with_context(|| format!("{method} {path} from the agent"))?;
        if !response.status().is_success() {
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            bail!("the agent answered {status}: {message}");
        }
        Ok(response)
    }

    /// The raw JSON body (printed as is for `-o json`) and its decoded form.
    pub async fn json<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<(Bytes, T)> {
        let body = self
            .get(path)
            .await?
            .into_body()
            .collect()
            .await?
            .to_bytes();
        let value = serde_json::from_slice(&body).with_context(|| {
            format!("the agent's answer to {path} is not what this CLI expects")
        })?;
        Ok((body, value))
    }

    /// Sends `value` as JSON with PUT and decodes the answer.
    pub async fn put<T: serde::Serialize, A: DeserializeOwned>(
        &self,
        path: &str,
        value: &T,
    ) -> anyhow::Result<A> {
        let body = Bytes::from(serde_json::to_vec(value)?);
        let answer = self
            .send(hyper::Method::PUT, path, body)
            .await?
            .into_body()
            .collect()
            .await?
            .to_bytes();
        serde_json::from_slice(&answer)
            .with_context(|| format!("the agent's answer to {path} is not what this CLI expects"))
    }

    /// Calls `line` with each line of a streamed answer until the agent ends it.
    pub async fn lines(
        &self,
        path: &str,
        mut line: impl FnMut(&str) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut body = self.get(path).await?.into_body();
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let text = String::from_utf8_lossy(&pending[..end]).into_owned();
                pending.drain(..=end);
                line(&text)?;
            }
        }
        Ok(())
    }
}
