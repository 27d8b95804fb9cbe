//! The transport, injectable: [`Http`] is one call, request in, response
//! out, so tests can count, delay or fail requests. [`ReqwestHttp`] is the
//! real one (rustls, connect and total timeouts, no redirects).

use std::time::Duration;

use async_trait::async_trait;
use latchkey_protocol::{ExposeSecret, SecretString};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Delete,
}

/// One HTTP request. `Debug` never shows the bearer token or the body.
#[derive(Clone)]
pub struct HttpRequest {
    pub method: Method,
    pub url: String,
    pub bearer: Option<SecretString>,
    pub content_type: Option<&'static str>,
    pub body: Vec<u8>,
    /// The total time allowed, connect included.
    pub timeout: Duration,
}

impl std::fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRequest")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("bearer", &self.bearer)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl HttpRequest {
    pub fn get(url: String, timeout: Duration) -> Self {
        Self {
            method: Method::Get,
            url,
            bearer: None,
            content_type: None,
            body: Vec::new(),
            timeout,
        }
    }

    pub fn delete(url: String, timeout: Duration) -> Self {
        Self {
            method: Method::Delete,
            ..Self::get(url, timeout)
        }
    }

    pub fn post(url: String, content_type: &'static str, body: Vec<u8>, timeout: Duration) -> Self {
        Self {
            method: Method::Post,
            url,
            bearer: None,
            content_type: Some(content_type),
            body,
            timeout,
        }
    }

    pub fn bearer(mut self, token: SecretString) -> Self {
        self.bearer = Some(token);
        self
    }
}

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
    /// The server's `Date` header, Unix seconds.
    pub date: Option<i64>,
    /// `Retry-After` in seconds.
    pub retry_after: Option<u64>,
}

/// The body of a response that stays open (Server-Sent Events), read as
/// it comes.
#[async_trait]
pub trait Chunks: Send {
    /// The next bytes, or `None` once the server ended the response. A
    /// broken connection is `Error::Network`.
    async fn next(&mut self) -> Result<Option<Vec<u8>>>;
}

/// A response whose body is read as it comes.
pub struct HttpStream {
    pub status: u16,
    /// The server's `Date` header, Unix seconds.
    pub date: Option<i64>,
    pub body: Box<dyn Chunks>,
}

#[async_trait]
pub trait Http: Send + Sync + 'static {
    /// Sends one request. Any failure to get a response is `Error::Network`.
    async fn send(&self, req: HttpRequest) -> Result<HttpResponse>;

    /// Whether [`Http::stream`] works. A transport without streams (this
    /// default) leaves the engine to its periodic pulls.
    fn has_streams(&self) -> bool {
        false
    }

    /// Sends a request whose response stays open (the live-updates stream):
    /// `req.timeout` bounds the wait for the response's head only, the body
    /// then comes with no deadline.
    async fn stream(&self, req: HttpRequest) -> Result<HttpStream> {
        let _ = req;
        Err(Error::InvalidInput("this transport has no streams".into()))
    }
}

/// The real transport.
#[derive(Debug, Clone)]
pub struct ReqwestHttp {
    client: reqwest::Client,
}

/// Responses larger than this are refused (a pull page is ~4 MiB).
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

impl ReqwestHttp {
    pub fn new(connect_timeout: Duration) -> Result<Self> {
        install_tls_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("latchkey/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Network {
                detail: e.to_string(),
            })?;
        Ok(Self { client })
    }
}

/// Makes ring the process's rustls crypto provider, once (a second call
/// does nothing). The workspace builds rustls with ring only, so reqwest has
/// no provider of its own and every `reqwest::Client` needs this first.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn network_error(e: &reqwest::Error) -> Error {
    let detail = if e.is_timeout() {
        "the request timed out"
    } else if e.is_connect() {
        "the connection failed"
    } else {
        "the connection broke"
    };
    Error::Network {
        detail: detail.into(),
    }
}

impl ReqwestHttp {
    /// The request, without a deadline (the caller sets one).
    fn builder(&self, req: HttpRequest) -> reqwest::RequestBuilder {
        let mut builder = match req.method {
            Method::Get => self.client.get(&req.url),
            Method::Post => self.client.post(&req.url),
            Method::Delete => self.client.delete(&req.url),
        };
        if let Some(token) = &req.bearer {
            builder = builder.bearer_auth(token.expose_secret());
        }
        if let Some(ct) = req.content_type {
            builder = builder.header(reqwest::header::CONTENT_TYPE, ct);
        }
        if req.method == Method::Post {
            builder = builder.body(req.body);
        }
        builder
    }
}

fn header(res: &reqwest::Response, name: reqwest::header::HeaderName) -> Option<String> {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn date_of(res: &reqwest::Response) -> Option<i64> {
    header(res, reqwest::header::DATE)
        .and_then(|d| httpdate::parse_http_date(&d).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
}

struct ReqwestChunks(reqwest::Response);

#[async_trait]
impl Chunks for ReqwestChunks {
    async fn next(&mut self) -> Result<Option<Vec<u8>>> {
        let chunk = self.0.chunk().await.map_err(|e| network_error(&e))?;
        Ok(chunk.map(|c| c.to_vec()))
    }
}

#[async_trait]
impl Http for ReqwestHttp {
    async fn send(&self, req: HttpRequest) -> Result<HttpResponse> {
        let timeout = req.timeout;
        let mut res = self
            .builder(req)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| network_error(&e))?;
        let status = res.status().as_u16();
        let date = date_of(&res);
        let retry_after =
            header(&res, reqwest::header::RETRY_AFTER).and_then(|v| v.trim().parse().ok());
        let mut body = Vec::new();
        while let Some(chunk) = res.chunk().await.map_err(|e| network_error(&e))? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(Error::Server("the response is too large".into()));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(HttpResponse {
            status,
            body,
            date,
            retry_after,
        })
    }

    fn has_streams(&self) -> bool {
        true
    }

    async fn stream(&self, req: HttpRequest) -> Result<HttpStream> {
        let timeout = req.timeout;
        let res = tokio::time::timeout(timeout, self.builder(req).send())
            .await
            .map_err(|_| Error::Network {
                detail: "the request timed out".into(),
            })?
            .map_err(|e| network_error(&e))?;
        Ok(HttpStream {
            status: res.status().as_u16(),
            date: date_of(&res),
            body: Box::new(ReqwestChunks(res)),
        })
    }
}

/// Checks and normalizes a server URL typed by a user: `https://` anywhere,
/// plain `http://` only to this machine (a password or token must never
/// cross a network in clear). No path, query or credentials.
pub fn normalize_server_url(input: &str) -> Result<String> {
    let trimmed = input.trim();
    let url = reqwest::Url::parse(trimmed).map_err(|e| Error::InvalidUrl(e.to_string()))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::InvalidUrl(
            "it must not contain a user name or password".into(),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(Error::InvalidUrl(
            "it must not contain a query or fragment".into(),
        ));
    }
    let host = url
        .host_str()
        .ok_or_else(|| Error::InvalidUrl("it has no host".into()))?
        .to_owned();
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&host) => {}
        "http" => return Err(Error::InsecureUrl { host }),
        other => {
            return Err(Error::InvalidUrl(format!(
                "the scheme {other} is not http or https"
            )));
        }
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        assert_eq!(
            normalize_server_url("http://127.0.0.1:8787/").unwrap(),
            "http://127.0.0.1:8787"
        );
        assert_eq!(
            normalize_server_url(" https://notes.example.com ").unwrap(),
            "https://notes.example.com"
        );
        assert!(normalize_server_url("http://localhost:1").is_ok());
        assert!(normalize_server_url("http://[::1]:1").is_ok());
        assert_eq!(
            normalize_server_url("http://notes.example.com")
                .unwrap_err()
                .code(),
            "insecure_url"
        );
        assert_eq!(
            normalize_server_url("http://10.0.0.1").unwrap_err().code(),
            "insecure_url"
        );
        assert_eq!(
            normalize_server_url("ftp://x").unwrap_err().code(),
            "invalid_url"
        );
        assert_eq!(
            normalize_server_url("not a url").unwrap_err().code(),
            "invalid_url"
        );
        assert_eq!(
            normalize_server_url("https://u:p@x").unwrap_err().code(),
            "invalid_url"
        );
    }
}
