use super::*;

fn complete(buf: &[u8]) -> (Request, usize) {
    match parse(buf) {
        Ok(Parsed::Complete { request, len }) => (request, len),
        other => panic!(
            "{:?}: expected a complete request, got {other:?}",
            as_text(buf)
        ),
    }
}

fn status_of(buf: &[u8]) -> u16 {
    match parse(buf) {
        Err(e) => e.status,
        other => panic!("{:?}: expected an error, got {other:?}", as_text(buf)),
    }
}

fn as_text(buf: &[u8]) -> String {
    String::from_utf8_lossy(&buf[..buf.len().min(200)]).into_owned()
}

const GET_VM: &[u8] =
    b"GET /vm HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n";

#[test]
fn a_plain_get() {
    let (req, len) = complete(GET_VM);
    assert_eq!(len, GET_VM.len());
    assert_eq!(req.method, "GET");
    assert_eq!(req.path, "/vm");
    assert!(req.body.is_empty());
    assert!(req.keep_alive, "HTTP/1.1 keeps the connection by default");
}

#[test]
fn every_prefix_of_a_request_is_incomplete() {
    let put = b"PUT /vm/pause HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
    for end in 0..put.len() {
        assert_eq!(
            parse(&put[..end]),
            Ok(Parsed::Incomplete {
                expects_continue: false
            }),
            "{:?}",
            as_text(&put[..end])
        );
    }
    let (req, len) = complete(put);
    assert_eq!((req.body.as_slice(), len), (&b"{}"[..], put.len()));
}

#[test]
fn pipelined_requests_come_out_one_at_a_time() {
    let mut buf = GET_VM.to_vec();
    buf.extend_from_slice(b"PUT /vm/resume HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    buf.extend_from_slice(b"GET /vm/ex");
    let (first, len) = complete(&buf);
    assert_eq!(first.path, "/vm");
    let rest = &buf[len..];
    let (second, len2) = complete(rest);
    assert_eq!(
        (second.method.as_str(), second.path.as_str()),
        ("PUT", "/vm/resume")
    );
    assert_eq!(
        parse(&rest[len2..]),
        Ok(Parsed::Incomplete {
            expects_continue: false
        })
    );
}

#[test]
fn the_body_is_exactly_content_length_bytes() {
    let buf = b"PUT /vm/stop HTTP/1.1\r\nContent-Length: 3\r\n\r\n{ }GET /vm HTTP/1.1\r\n\r\n";
    let (req, len) = complete(buf);
    assert_eq!(req.body, b"{ }");
    assert_eq!(complete(&buf[len..]).0.path, "/vm");
}

#[test]
fn content_length_limits() {
    let at_limit = format!("PUT /vm/pause HTTP/1.1\r\nContent-Length: {MAX_BODY}\r\n\r\n");
    assert_eq!(
        parse(at_limit.as_bytes()),
        Ok(Parsed::Incomplete {
            expects_continue: false
        }),
        "64 KiB is allowed: wait for it"
    );
    // Refused from the head alone, before the body arrives.
    let over = format!(
        "PUT /vm/pause HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        MAX_BODY + 1
    );
    let err = parse(over.as_bytes()).unwrap_err();
    assert_eq!(err.status, 400);
    assert!(err.message.contains("64 KiB"), "{err}");
    assert_eq!(
        status_of(b"PUT /vm HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\n"),
        400
    );
    for bad in ["-1", "1e3", "", "12 34", "0x10"] {
        let req = format!("PUT /vm HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n");
        assert_eq!(status_of(req.as_bytes()), 400, "{bad:?}");
    }
    assert_eq!(
        status_of(b"PUT /vm HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"),
        400
    );
    // The same value twice is one length.
    let (req, _) =
        complete(b"PUT /vm HTTP/1.1\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\n{}");
    assert_eq!(req.body, b"{}");
}

#[test]
fn chunked_bodies_need_a_length() {
    let err =
        parse(b"PUT /vm/pause HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
            .unwrap_err();
    assert_eq!(err.status, 411);
    assert!(err.message.contains("Content-Length"), "{err}");
}

#[test]
fn malformed_request_lines_and_headers() {
    for bad in [
        &b"G(ET /vm HTTP/1.1\r\n\r\n"[..],
        b"GET /vm HTTP/2.0\r\n\r\n",
        b"GET /vm HTTP/1.1\r\nBad Header: x\r\n\r\n",
        b"GET /vm FTP/1.1\r\n\r\n",
        b"\x00\x01\x02\x03\r\n\r\n",
        b"GET http://localhost/vm HTTP/1.1\r\n\r\n",
        b"GET * HTTP/1.1\r\n\r\n",
    ] {
        assert_eq!(status_of(bad), 400, "{:?}", as_text(bad));
    }
    // A well-formed method the API does not know is the router's business (405/404).
    let (req, _) = complete(b"DELETE /vm HTTP/1.1\r\n\r\n");
    assert_eq!(req.method, "DELETE");
}

#[test]
fn the_head_is_limited_to_8_kib() {
    let mut long = b"GET /vm HTTP/1.1\r\nX-Padding: ".to_vec();
    long.resize(MAX_HEAD - 1, b'a');
    assert_eq!(
        parse(&long),
        Ok(Parsed::Incomplete {
            expects_continue: false
        })
    );
    long.push(b'a');
    assert_eq!(status_of(&long), 431, "8 KiB and still no end of head");
    long.extend_from_slice(b"\r\n\r\n");
    assert_eq!(status_of(&long), 431, "a complete head over 8 KiB");

    let mut many = b"GET /vm HTTP/1.1\r\n".to_vec();
    for i in 0..40 {
        many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(status_of(&many), 431);
}

#[test]
fn connection_header_and_http_1_0() {
    let (req, _) = complete(b"GET /vm HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(!req.keep_alive);
    let (req, _) = complete(b"GET /vm HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n");
    assert!(!req.keep_alive, "close wins");
    let (req, _) = complete(b"GET /vm HTTP/1.0\r\n\r\n");
    assert!(!req.keep_alive, "HTTP/1.0 closes by default");
    let (req, _) = complete(b"GET /vm HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
    assert!(req.keep_alive);
}

#[test]
fn expect_100_continue() {
    let head = b"PUT /vm/pause HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n";
    assert_eq!(
        parse(head),
        Ok(Parsed::Incomplete {
            expects_continue: true
        })
    );
    let mut whole = head.to_vec();
    whole.extend_from_slice(b"{}");
    assert_eq!(complete(&whole).0.body, b"{}");
    assert_eq!(
        status_of(b"PUT /vm HTTP/1.1\r\nExpect: something-else\r\n\r\n"),
        417
    );
}

#[test]
fn query_strings_are_not_part_of_the_path() {
    let (req, _) = complete(b"GET /vm/exits?pretty=1 HTTP/1.1\r\n\r\n");
    assert_eq!(req.path, "/vm/exits");
    let (req, _) = complete(b"GET /vm/ HTTP/1.1\r\n\r\n");
    assert_eq!(req.path, "/vm/", "no normalisation: the router says 404");
}

#[test]
fn leading_empty_lines_are_skipped() {
    let buf = b"\r\nGET /vm HTTP/1.1\r\n\r\n";
    let (req, len) = complete(buf);
    assert_eq!((req.path.as_str(), len), ("/vm", buf.len()));
}

fn written(r: &Response) -> String {
    let mut out = Vec::new();
    r.write_to(&mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn responses() {
    assert_eq!(
        written(&Response::json(r#"{"a":1}"#.into())),
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}"
    );
    assert_eq!(
        written(&Response::no_content()),
        "HTTP/1.1 204 No Content\r\n\r\n"
    );
    let mut not_allowed = Response::error(405, "use GET");
    not_allowed.allow = Some("GET");
    not_allowed.close = true;
    assert_eq!(
        written(&not_allowed),
        "HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\nContent-Type: application/json\r\n\
         Content-Length: 19\r\nConnection: close\r\n\r\n{\"error\":\"use GET\"}"
    );
    // Messages are escaped as JSON.
    let quoted = written(&Response::error(400, "a \"quote\"\n"));
    assert!(quoted.ends_with(r#"{"error":"a \"quote\"\n"}"#), "{quoted}");
}
