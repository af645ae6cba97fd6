//! TAP names and errors without a TAP, and a real TAP in a private network namespace.

use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

use super::netns::{arp_frame, configure, parse_arp, run, wait_readable};
use super::*;
use crate::virtio::net::{tap_offload_flags, AVAIL_FEATURES};

fn invalid(name: &str) -> bool {
    matches!(check_name(name), Err(TapError::InvalidName { .. }))
}

#[test]
fn names_are_checked_before_any_system_call() {
    for good in ["tap0", "t", "vmm-tap_1.2", "tap%d", "123456789012345"] {
        assert!(check_name(good).is_ok(), "{good:?}");
    }
    for bad in [
        "",
        "1234567890123456",
        "a/b",
        "/",
        "tap 0",
        "tap\t0",
        "tap\n",
        "tap:0",
        "tap\0",
        ".",
        "..",
    ] {
        assert!(invalid(bad), "{bad:?}");
        // Tap::open refuses it the same way (without touching /dev/net/tun).
        assert!(
            matches!(Tap::open(bad), Err(TapError::InvalidName { .. })),
            "{bad:?}"
        );
    }
    // 15 bytes in UTF-8, though fewer characters, is the limit.
    assert!(invalid("ééééééééé"));
    let msg = check_name("a b").unwrap_err().to_string();
    assert!(
        msg.contains("\"a b\"") && msg.contains("whitespace"),
        "{msg}"
    );
}

#[test]
fn kernel_errors_become_clear_errors() {
    let err = |errno| set_iff_error("tap7", io::Error::from_raw_os_error(errno));
    let e = err(libc::EPERM);
    assert!(matches!(e, TapError::PermissionDenied { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("CAP_NET_ADMIN") && msg.contains("ip tuntap add dev tap7"),
        "{msg}"
    );
    let e = err(libc::EBUSY);
    assert!(matches!(e, TapError::Busy { .. }));
    assert!(e.to_string().contains("in use by another process"));
    assert!(matches!(err(libc::EINVAL), TapError::NotATap { .. }));
    assert!(matches!(err(libc::ENOMEM), TapError::SetInterface { .. }));

    let open = |errno| open_error(io::Error::from_raw_os_error(errno));
    assert!(matches!(open(libc::ENOENT), TapError::NoTunDevice(_)));
    assert!(matches!(open(libc::ENODEV), TapError::NoTunDevice(_)));
    assert!(open(libc::ENOENT).to_string().contains("modprobe tun"));
    assert!(matches!(open(libc::EACCES), TapError::TunPermission(_)));
    assert!(matches!(open(libc::EMFILE), TapError::OpenTun(_)));
}

/// Reads frames from `tap` until `want` accepts one (skipping IPv6 chatter and the like).
fn read_until(tap: &mut Tap, want: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut buf = vec![0u8; 70_000];
    for _ in 0..50 {
        assert!(
            wait_readable(tap.raw_fd(), Duration::from_secs(5)),
            "no frame came"
        );
        let n = match tap.read_frame(&[VolatileSlice::from(&mut buf[..])]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("read: {e}"),
        };
        assert!(n >= TAP_VNET_HDR_LEN + 14, "{n}-byte frame");
        if want(&buf[TAP_VNET_HDR_LEN..n]) {
            buf.truncate(n);
            return buf;
        }
    }
    panic!("the expected frame never came");
}

#[test]
#[cfg_attr(
    no_netns,
    ignore = "needs root and /dev/net/tun for a network namespace"
)]
fn real_tap_in_a_private_network_namespace() {
    run(|| {
        let mut tap = Tap::open("vmmtest%d").unwrap();
        assert_eq!(tap.name(), "vmmtest0");
        // A second process (here: descriptor) cannot take the same single-queue TAP.
        let busy = Tap::open(tap.name()).unwrap_err();
        assert!(matches!(busy, TapError::Busy { .. }), "{busy:?}");

        // Every offload mask the device can ask for is one the kernel takes...
        tap.set_offload(tap_offload_flags(AVAIL_FEATURES)).unwrap();
        tap.set_offload(tap_offload_flags(feature_bit_all_guest()))
            .unwrap();
        // ...unlike segmentation without checksum offload, which the mapping never asks.
        let e = tap.set_offload(libc::TUN_F_TSO4).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        tap.set_offload(0).unwrap();

        let (host_ip, guest_ip) = (Ipv4Addr::new(10, 11, 12, 1), Ipv4Addr::new(10, 11, 12, 2));
        configure(tap.name(), host_ip);
        let sock = UdpSocket::bind((host_ip, 0)).unwrap();
        sock.send_to(b"hello guest", (guest_ip, 9)).unwrap();

        // The kernel asks who has the guest's address: a frame read from the TAP, with a
        // 12-byte header (no offloads on: no checksum or segmentation work in it).
        let frame = read_until(&mut tap, |f| {
            parse_arp(f).is_some_and(|(op, _, _, target)| op == 1 && target == guest_ip)
        });
        let header = &frame[..TAP_VNET_HDR_LEN];
        assert_eq!(header[1], 0, "gso_type NONE");
        let (_, host_mac, sender, _) = parse_arp(&frame[TAP_VNET_HDR_LEN..]).unwrap();
        assert_eq!(sender, host_ip);

        // The guest answers through the TAP, header first: the kernel then sends the UDP
        // datagram it held back.
        let guest_mac = [0x02, 0, 0, 0, 0, 0x22];
        let mut reply = vec![0u8; TAP_VNET_HDR_LEN];
        reply.extend(arp_frame(
            2, host_mac, guest_mac, guest_ip, host_mac, host_ip,
        ));
        let (a, b) = reply.split_at_mut(5);
        let n = tap
            .write_frame(&[VolatileSlice::from(a), VolatileSlice::from(b)])
            .unwrap();
        assert_eq!(n, TAP_VNET_HDR_LEN + 42);
        let frame = read_until(&mut tap, |f| f[12..14] == [0x08, 0x00] && f[23] == 17);
        let eth = &frame[TAP_VNET_HDR_LEN..];
        assert_eq!(eth[..6], guest_mac, "sent to the MAC the guest announced");
        assert!(eth.ends_with(b"hello guest"));
    });
}

/// Every `GUEST_*` offload feature.
fn feature_bit_all_guest() -> u64 {
    use virtio_bindings::virtio_net::*;
    [
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_ECN,
        VIRTIO_NET_F_GUEST_UFO,
    ]
    .iter()
    .map(|&b| 1u64 << b)
    .sum()
}
