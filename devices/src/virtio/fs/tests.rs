//! The front end against a stand-in vhost-user back end on a socket pair: what it asks at
//! start, its configuration space, and its refusals. (The real back end, virtiofsd, with the
//! real Linux driver: tests/linux.rs.)

use std::io::{Read, Write};
use std::thread::JoinHandle;

use super::*;

/// A trigger that counts its pulls.
fn trigger() -> (StopTrigger, Arc<std::sync::atomic::AtomicUsize>) {
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    let trigger = StopTrigger::new(move || {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    (trigger, count)
}

fn fs(tag: &str, socket: UnixStream) -> Result<Fs, FsError> {
    Fs::new(tag, socket, trigger().0)
}

/// vhost-user requests (the vhost-user protocol's "front-end message types").
const GET_FEATURES: u32 = 1;
const SET_OWNER: u32 = 3;
/// Header flags: protocol version 1, and "this is a reply".
const VERSION: u32 = 0x1;
const REPLY: u32 = 0x4;

/// A back end that answers SET_OWNER and GET_FEATURES (with `features`) and records the
/// requests it saw, then hangs up once the returned sender is dropped.
fn stand_in_backend(
    features: u64,
) -> (
    UnixStream,
    JoinHandle<Vec<u32>>,
    std::sync::mpsc::Sender<()>,
) {
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let (hang_up, when) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut header = [0u8; 12];
        while theirs.read_exact(&mut header).is_ok() {
            let request = u32::from_le_bytes(header[0..4].try_into().unwrap());
            let size = u32::from_le_bytes(header[8..12].try_into().unwrap());
            let mut payload = vec![0u8; size as usize];
            theirs.read_exact(&mut payload).unwrap();
            seen.push(request);
            match request {
                GET_FEATURES => {
                    let mut reply = Vec::new();
                    reply.extend_from_slice(&GET_FEATURES.to_le_bytes());
                    reply.extend_from_slice(&(VERSION | REPLY).to_le_bytes());
                    reply.extend_from_slice(&8u32.to_le_bytes());
                    reply.extend_from_slice(&features.to_le_bytes());
                    theirs.write_all(&reply).unwrap();
                    // What the test needs is done.
                    break;
                }
                SET_OWNER => {}
                other => panic!("unexpected request {other}"),
            }
        }
        let _ = when.recv();
        seen
    });
    (ours, thread, hang_up)
}

const VERSION_1: u64 = 1 << 32;
const EVENT_IDX: u64 = 1 << 29;
/// A feature this front end does not pass on (VIRTIO_F_ACCESS_PLATFORM).
const ACCESS_PLATFORM: u64 = 1 << 33;

#[test]
fn a_device_takes_the_back_end_and_shows_its_tag_and_queues() {
    let (socket, backend, hang_up) = stand_in_backend(VERSION_1 | EVENT_IDX | ACCESS_PLATFORM);
    let fs = fs("myfs", socket).unwrap();
    drop(hang_up);
    assert_eq!(backend.join().unwrap(), vec![SET_OWNER, GET_FEATURES]);
    assert_eq!(fs.device_type(), 26);
    assert_eq!(fs.tag(), "myfs");
    assert_eq!(
        fs.queue_max_sizes(),
        &[QUEUE_SIZE, QUEUE_SIZE],
        "hiprio + 1 request"
    );
    assert_eq!(
        fs.avail_features(),
        VERSION_1 | EVENT_IDX,
        "only what the front end handles"
    );
    // struct virtio_fs_config: tag[36], le32 num_request_queues.
    let mut config = [0xffu8; 40];
    fs.read_config(0, &mut config);
    assert_eq!(&config[..4], b"myfs");
    assert!(config[4..36].iter().all(|&b| b == 0), "NUL-padded");
    assert_eq!(u32::from_le_bytes(config[36..40].try_into().unwrap()), 1);
    let mut beyond = [0xffu8; 8];
    fs.read_config(40, &mut beyond);
    assert_eq!(beyond, [0; 8]);
    // Nothing is asked of the back end before a queue is started.
    assert!(!fs.is_activated());
    assert!(!fs.backend_wanted(0));
    assert_eq!(
        fs.backend_fds().len(),
        3,
        "a call eventfd per queue, and the socket"
    );
}

#[test]
fn a_back_end_that_goes_away_stops_the_vm_once() {
    let (socket, backend, hang_up) = stand_in_backend(VERSION_1);
    let (gone, pulls) = trigger();
    let mut fs = Fs::new("fs", socket, gone).unwrap();
    let socket_index = fs.backend_fds().len() - 1;
    assert!(
        fs.backend_wanted(socket_index),
        "the socket is watched from the start"
    );
    // Still there: nothing to read, nothing pulled.
    fs.process_backend(socket_index);
    assert_eq!(pulls.load(std::sync::atomic::Ordering::SeqCst), 0);
    drop(hang_up);
    backend.join().unwrap();
    fs.process_backend(socket_index);
    fs.process_backend(socket_index);
    assert_eq!(
        pulls.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "pulled once"
    );
    assert!(
        !fs.backend_wanted(socket_index),
        "no longer polled: no spin"
    );
}

#[test]
fn a_tag_that_does_not_fit_is_refused_before_the_back_end_is_asked() {
    let (socket, _) = UnixStream::pair().unwrap();
    let long = "x".repeat(TAG_LEN + 1);
    assert!(matches!(fs(&long, socket), Err(FsError::Tag(_))));
    let (socket, _) = UnixStream::pair().unwrap();
    assert!(matches!(fs("", socket), Err(FsError::Tag(_))));
    let (socket, _theirs) = UnixStream::pair().unwrap();
    let tag = "y".repeat(TAG_LEN);
    // 36 bytes fit; the back end that never answers is the next problem.
    drop(_theirs);
    assert!(matches!(fs(&tag, socket), Err(FsError::Backend { .. })));
}

#[test]
fn a_back_end_without_virtio_1_is_refused() {
    let (socket, backend, hang_up) = stand_in_backend(EVENT_IDX);
    assert!(matches!(fs("fs", socket), Err(FsError::NoVersion1)));
    drop(hang_up);
    backend.join().unwrap();
}

#[test]
fn a_back_end_that_hangs_up_is_an_error_not_a_hang() {
    let (socket, theirs) = UnixStream::pair().unwrap();
    drop(theirs);
    let err = fs("fs", socket).unwrap_err();
    assert!(matches!(err, FsError::Backend { .. }), "{err}");
}
