//! Real descriptors as backends: a socket pair, and a TAP in a private network namespace.

use super::*;
use crate::virtio::test_utils::net::seqpacket_pair;

#[test]
fn frames_through_a_socket_keep_their_boundaries() {
    let mem = memory();
    let (backend, peer) = seqpacket_pair();
    let mut h = Harness::on(&mem, backend, NO_EVENT_IDX);
    assert_eq!(h.net.backend_fds(), [h.net.backend().raw_fd()]);

    // Transmit: two frames, gathered from several descriptors, arrive one by one.
    let (f, g) = (frame(3000, 23), frame(MAX_FRAME_LEN, 24));
    h.fill(A, &f[..12]);
    h.fill(B, &f[12..]);
    h.fill(BIG, &g);
    h.txq.add_chain(&[r(A, 12), r(B, 3000)]);
    h.txq
        .add_chain(&[r(BIG, 100), r(BIG + 100, g.len() as u32 - 100)]);
    h.net.process_queue(TX_QUEUE);
    let mut buf = vec![0u8; 70_000];
    let n = peer.recv(&mut buf).unwrap();
    assert_eq!(buf[..n], f[..]);
    let n = peer.recv(&mut buf).unwrap();
    assert!(buf[..n] == g[..]);
    assert_eq!(h.stats().tx_frames, 2);

    // Receive: three frames into mergeable buffers, then the socket is empty.
    let frames = [frame(100, 25), frame(1400, 26), frame(MAX_FRAME_LEN, 27)];
    for f in &frames {
        peer.send(f).unwrap();
    }
    let heads: Vec<u32> = (0..40)
        .map(|i| h.post(&[w(A + i * 0x1000, 2048)]))
        .collect();
    h.net.process_backend(0);
    let used = h.rxq.take_used();
    // 1 buffer, 1 buffer, ceil(65562 / 2048) = 33 buffers.
    assert_eq!(used.len(), 35, "{used:?}");
    assert_eq!(used.iter().map(|u| u.0).collect::<Vec<_>>(), heads[..35]);
    let mut got = Vec::new();
    for (i, &(_, len)) in used.iter().enumerate() {
        got.extend(h.guest(A + i as u64 * 0x1000, len as usize));
    }
    let mut want = as_received(&frames[0], 1, true);
    want.extend(as_received(&frames[1], 1, true));
    want.extend(as_received(&frames[2], 33, true));
    assert!(got == want);
    assert!(h.net.backend_wanted(0), "buffers left, socket empty");
    assert_eq!(h.stats().rx_frames, 3);

    // The peer goes away: end of file, and the descriptor is no longer wanted.
    drop(peer);
    h.net.process_backend(0);
    assert!(!h.net.backend_wanted(0));
}

#[test]
#[cfg_attr(
    no_netns,
    ignore = "needs root and /dev/net/tun for a network namespace"
)]
fn real_tap_end_to_end() {
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use tap::netns::{arp_frame, configure, parse_arp, run, wait_readable};

    run(|| {
        let mem = memory();
        let tap = Tap::open("vmmnet%d").unwrap();
        let name = tap.name().to_owned();
        // Activation sets every offload the guest accepted: the kernel must take them.
        let mut h = Harness::on(&mem, tap, NO_EVENT_IDX);
        let (host_ip, guest_ip) = (Ipv4Addr::new(10, 0, 2, 2), Ipv4Addr::new(10, 0, 2, 15));
        configure(&name, host_ip);
        let guest_mac = h.net.mac();

        // The guest asks who has the host's address...
        let mut request = vec![0u8; VNET_HDR_LEN];
        request.extend(arp_frame(
            1, [0xff; 6], guest_mac, guest_ip, [0; 6], host_ip,
        ));
        h.fill(A, &request);
        h.send(&[r(A, 12), r(A + 12, request.len() as u32 - 12)]);
        assert_eq!((h.stats().tx_frames, h.stats().tx_errors), (1, 0));

        // ...and the kernel's answer lands in the guest's buffers.
        let heads: Vec<u32> = (0..32)
            .map(|i| h.post(&[w(B + i * 0x1000, 1526)]))
            .collect();
        let fd = h.net.backend_fds()[0];
        for _ in 0..50 {
            assert!(wait_readable(fd, Duration::from_secs(5)), "no answer");
            h.net.process_backend(0);
            for (head, len) in h.rxq.take_used() {
                let i = heads.iter().position(|&x| x == head).unwrap() as u64;
                let got = h.guest(B + i * 0x1000, len as usize);
                assert_eq!(got[10..12], [1, 0], "num_buffers");
                let eth = &got[VNET_HDR_LEN..];
                if let Some((2, sender_mac, sender_ip, target_ip)) = parse_arp(eth) {
                    assert_eq!((sender_ip, target_ip), (host_ip, guest_ip));
                    assert_eq!(eth[..6], guest_mac);
                    assert_eq!(eth[6..12], sender_mac);
                    return;
                }
            }
        }
        panic!("no ARP reply came");
    });
}
