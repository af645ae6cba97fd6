//! HTTP/1.1 for the API: request parsing (the head with `httparse`, the body by
//! `Content-Length`) and response writing. Only what a small JSON API on a local socket needs:
//! a head of at most [`MAX_HEAD`] bytes, a body of at most [`MAX_BODY`] bytes sent with
//! `Content-Length` (a chunked body is answered 411), keep-alive by default in HTTP/1.1,
//! `Connection: close`, `Expect: 100-continue` (what curl sends before a large body).
//!
//! Nothing here panics on what a client sends: every malformed request is an [`HttpError`]
//! with the status to answer it with, after which the server closes the connection.

use std::fmt::Display;

/// The longest request head (request line and header fields) the server reads.
pub const MAX_HEAD: usize = 8 * 1024;
/// The longest request body the server reads.
pub const MAX_BODY: usize = 64 * 1024;
/// The most header fields in a request.
const MAX_HEADERS: usize = 32;

/// What the server writes before reading the body of a request that asked for it.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// One complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// As sent (methods are case-sensitive).
    pub method: String,
    /// The path of the request target, without its query.
    pub path: String,
    pub body: Vec<u8>,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
}

/// The result of looking at the bytes a client has sent so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed. `expects_continue`: the head is complete, the body is not, and
    /// the client waits for `100 Continue` before it sends the body.
    Incomplete { expects_continue: bool },
    /// A whole request, which took the first `len` bytes.
    Complete { request: Request, len: usize },
}

/// A request the server does not take: answered with `status`, then the connection closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {message}")]
pub struct HttpError {
    pub status: u16,
    pub message: String,
}

fn error(status: u16, message: impl Into<String>) -> HttpError {
    HttpError {
        status,
        message: message.into(),
    }
}

/// Looks for one request at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(error(431, "the request head is longer than 8 KiB"))
        }
        Ok(httparse::Status::Partial) => {
            return Ok(Parsed::Incomplete {
                expects_continue: false,
            })
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(error(
                431,
                format!("the request has more than {MAX_HEADERS} header fields"),
            ))
        }
        Err(e) => return Err(error(400, format!("malformed HTTP request: {e}"))),
    };
    if head_len > MAX_HEAD {
        return Err(error(431, "the request head is longer than 8 KiB"));
    }
    // A complete head has all three.
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(error(400, "malformed HTTP request line"));
    };
    if !target.starts_with('/') {
        return Err(error(
            400,
            format!("the request target {target:?} is not a path such as /vm"),
        ));
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);

    let mut content_length: Option<usize> = None;
    let mut close = false;
    let mut keep_alive_asked = false;
    let mut expects_continue = false;
    for header in req.headers.iter() {
        let value = std::str::from_utf8(header.value).unwrap_or("").trim();
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(error(400, "Content-Length is not a number"));
            }
            // All digits: too many of them for a usize is simply too long a body.
            let len = value.parse::<usize>().unwrap_or(usize::MAX);
            if content_length.is_some_and(|other| other != len) {
                return Err(error(400, "conflicting Content-Length header fields"));
            }
            content_length = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(error(
                411,
                "Transfer-Encoding (a chunked body) is not supported: send the body with \
                 Content-Length",
            ));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                close |= token.eq_ignore_ascii_case("close");
                keep_alive_asked |= token.eq_ignore_ascii_case("keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") {
            if !value.eq_ignore_ascii_case("100-continue") {
                return Err(error(417, format!("unsupported expectation {value:?}")));
            }
            expects_continue = true;
        }
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > MAX_BODY {
        return Err(error(
            400,
            if body_len == usize::MAX {
                "the request body is larger than the 64 KiB limit".to_string()
            } else {
                format!("the request body is {body_len} bytes, over the 64 KiB limit")
            },
        ));
    }
    let Some(body) = buf.get(head_len..head_len + body_len) else {
        return Ok(Parsed::Incomplete { expects_continue });
    };
    Ok(Parsed::Complete {
        request: Request {
            method: method.to_string(),
            path: path.to_string(),
            body: body.to_vec(),
            // HTTP/1.1 keeps the connection by default, HTTP/1.0 closes it.
            keep_alive: !close && (version == 1 || keep_alive_asked),
        },
        len: head_len + body_len,
    })
}

/// A response: a status, maybe a JSON body, maybe an `Allow` field (405).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Option<String>,
    pub allow: Option<&'static str>,
    /// The server closes the connection after this response.
    pub close: bool,
}

impl Response {
    /// 200 with a JSON body.
    pub fn json(body: String) -> Self {
        Response {
            status: 200,
            body: Some(body),
            allow: None,
            close: false,
        }
    }

    /// 204: done, nothing to say.
    pub fn no_content() -> Self {
        Response {
            status: 204,
            body: None,
            allow: None,
            close: false,
        }
    }

    /// `status` with `{"error": message}`.
    pub fn error(status: u16, message: impl Display) -> Self {
        Response {
            status,
            body: Some(serde_json::json!({ "error": message.to_string() }).to_string()),
            allow: None,
            close: false,
        }
    }

    /// Appends the response, head and body, to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        if let Some(allow) = self.allow {
            head.push_str(&format!("Allow: {allow}\r\n"));
        }
        // A 204 has no body and no Content-Length (RFC 9110 §8.6).
        if let Some(body) = &self.body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        if self.close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        out.extend_from_slice(head.as_bytes());
        if let Some(body) = &self.body {
            out.extend_from_slice(body.as_bytes());
        }
    }
}

/// The reason phrase of each status the server sends.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests;
