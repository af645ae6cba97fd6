//! The server on a real event loop and real Unix sockets, with no VM behind it (no KVM).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};

use super::stand_in::StandIn;
use super::*;

/// A server on its own event loop thread, stopped on drop.
struct Harness {
    path: PathBuf,
    vm: Arc<StandIn>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    _file: SocketFile,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

fn serve(name: &str) -> Harness {
    let path = std::env::temp_dir().join(format!("vmm-api-unit-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let (listener, file) = socket::bind("--api-socket", &path).unwrap();
    let vm = Arc::new(StandIn::new(vec![]));
    let server = ApiServer::new(listener, vm.clone()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut manager = EventManager::<ApiServer>::new().unwrap();
        manager.add_subscriber(server);
        while !stop2.load(Ordering::SeqCst) {
            manager.run_with_timeout(20).unwrap();
        }
    });
    Harness {
        path,
        vm,
        stop,
        thread: Some(thread),
        _file: file,
    }
}

fn connect(h: &Harness) -> UnixStream {
    let s = UnixStream::connect(&h.path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads one response: (status, head, body).
fn read_response(s: &mut UnixStream) -> (u16, String, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("read a response head");
        assert_eq!(
            n,
            1,
            "EOF inside a response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let status = head[9..12].parse().unwrap();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (status, head, String::from_utf8(body).unwrap())
}

fn assert_eof(s: &mut UnixStream) {
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("EOF, not a reset");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
}

#[test]
fn keep_alive_and_pipelined_requests() {
    let h = serve("pipeline");
    let mut s = connect(&h);
    for _ in 0..3 {
        s.write_all(b"GET /vm HTTP/1.1\r\n\r\n").unwrap();
        let (status, _, body) = read_response(&mut s);
        assert_eq!(status, 200);
        assert!(body.contains(r#""state":"running""#), "{body}");
    }
    // Three at once, split at awkward places.
    let all = b"GET /vm/exits HTTP/1.1\r\n\r\nPUT /vm/resume HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}GET /nope HTTP/1.1\r\n\r\n";
    s.write_all(&all[..30]).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    s.write_all(&all[30..]).unwrap();
    assert_eq!(read_response(&mut s).0, 200);
    assert_eq!(read_response(&mut s).0, 400, "resume while running");
    assert_eq!(read_response(&mut s).0, 404);
}

#[test]
fn connection_close_and_http_1_0_end_the_connection() {
    let h = serve("close");
    for req in [
        &b"GET /vm HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
        b"GET /vm HTTP/1.0\r\n\r\n",
    ] {
        let mut s = connect(&h);
        s.write_all(req).unwrap();
        let (status, head, _) = read_response(&mut s);
        assert_eq!(status, 200);
        assert!(head.contains("Connection: close"), "{head}");
        assert_eof(&mut s);
    }
}

#[test]
fn a_body_over_64_kib_is_refused_and_the_client_reads_the_answer() {
    let h = serve("big");
    let mut s = connect(&h);
    let body = vec![b' '; 100 * 1024];
    s.write_all(
        format!(
            "PUT /vm/pause HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    s.write_all(&body).unwrap();
    let (status, head, body) = read_response(&mut s);
    assert_eq!(status, 400);
    assert!(head.contains("Connection: close"));
    assert!(body.contains("64 KiB"), "{body}");
    assert_eof(&mut s);
    assert!(!h.vm.stop.stopping());
}

#[test]
fn expect_100_continue_gets_continue_first() {
    let h = serve("continue");
    let mut s = connect(&h);
    s.write_all(b"PUT /vm/pause HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    let mut cont = [0u8; 25];
    s.read_exact(&mut cont).unwrap();
    assert_eq!(&cont, http::CONTINUE);
    s.write_all(b"{}").unwrap();
    assert_eq!(read_response(&mut s).0, 204);
}

#[test]
fn a_silent_client_is_dropped_after_the_timeout_and_others_are_served_meanwhile() {
    let h = serve("silent");
    let start = Instant::now();
    let mut silent = connect(&h);
    let mut half = connect(&h);
    half.write_all(b"GET /vm HTTP/1.1\r\nHost: loc").unwrap();
    // Meanwhile, other clients are answered at once.
    for _ in 0..5 {
        let mut s = connect(&h);
        s.write_all(b"GET /vm HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut s).0, 200);
    }
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eof(&mut silent);
    assert_eof(&mut half);
    let waited = start.elapsed();
    assert!(
        waited >= CLIENT_TIMEOUT - Duration::from_millis(100) && waited < CLIENT_TIMEOUT * 2,
        "{waited:?}"
    );
}

#[test]
fn a_client_that_leaves_midway_does_not_disturb_the_next() {
    let h = serve("leave");
    for cut in [5, 20, 35] {
        let mut s = connect(&h);
        s.write_all(&b"PUT /vm/pause HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"[..cut])
            .unwrap();
        drop(s);
    }
    let mut s = connect(&h);
    s.write_all(b"GET /vm HTTP/1.1\r\n\r\n").unwrap();
    let (status, _, body) = read_response(&mut s);
    assert_eq!(status, 200);
    assert!(
        body.contains("running"),
        "the cut PUTs paused nothing: {body}"
    );
}

#[test]
fn clients_beyond_the_limit_get_503() {
    let h = serve("full");
    let mut held: Vec<UnixStream> = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        let mut s = connect(&h);
        s.write_all(b"GET /vm HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut s).0, 200);
        held.push(s);
    }
    let mut extra = connect(&h);
    let (status, _, body) = read_response(&mut extra);
    assert_eq!(status, 503);
    assert!(body.contains("try again"), "{body}");
    drop(held.pop());
    // The freed slot is taken by the next client (once the server saw the close).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = connect(&h);
        s.write_all(b"GET /vm HTTP/1.1\r\n\r\n").unwrap();
        let (status, _, _) = read_response(&mut s);
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the slot was never freed");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_refused_request_closes_the_connection() {
    let h = serve("refused");
    for (req, want) in [
        (
            &b"PUT /vm/pause HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"[..],
            411,
        ),
        (b"GE(T / HTTP/1.1\r\n\r\n", 400),
        (b"GET /vm HTTP/1.1\r\nExpect: tea\r\n\r\n", 417),
    ] {
        let mut s = connect(&h);
        s.write_all(req).unwrap();
        let (status, _, body) = read_response(&mut s);
        assert_eq!(status, want, "{body}");
        assert!(body.starts_with(r#"{"error":"#), "{body}");
        assert_eof(&mut s);
    }
}

#[test]
fn stop_answers_then_requests_the_exit() {
    let h = serve("stop");
    let mut s = connect(&h);
    s.write_all(b"PUT /vm/stop HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s).0, 204);
    assert_eof(&mut s);
    assert_eq!(h.vm.stop.reason(), Some(crate::stop::StopReason::ApiStop));
}
