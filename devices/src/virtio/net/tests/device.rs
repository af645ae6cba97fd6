//! The device as a whole: features, activation, offloads, configuration space.

use virtio_bindings::virtio_net::VIRTIO_NET_F_STATUS;

use super::*;

#[test]
fn offered_features_and_queues() {
    let net = Net::new(Mock::new(), [2, 0, 0, 0, 0, 1]);
    assert_eq!(net.device_type(), 1);
    assert_eq!(net.queue_max_sizes(), [256, 256]);
    let features = net.avail_features();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_UFO,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_HOST_UFO,
    ] {
        assert_ne!(features & feature_bit(bit), 0, "feature {bit}");
    }
    assert_eq!(features.count_ones(), 12, "{features:#x}");
    assert_eq!(features & feature_bit(VIRTIO_NET_F_STATUS), 0);
    assert_eq!(net.backend_fds(), [net.backend().raw_fd()]);
    assert!(!net.backend_wanted(0), "not active");
}

#[test]
fn offload_flags_follow_the_accepted_features() {
    use libc::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, TUN_F_UFO};
    let f = |bits: &[u32]| bits.iter().map(|&b| feature_bit(b)).sum::<u64>();
    let cases: [(&[u32], u32); 10] = [
        (&[], 0),
        (&[VIRTIO_NET_F_GUEST_CSUM], TUN_F_CSUM),
        (
            &[VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4],
            TUN_F_CSUM | TUN_F_TSO4,
        ),
        (
            &[VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO6],
            TUN_F_CSUM | TUN_F_TSO6,
        ),
        (
            &[VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_UFO],
            TUN_F_CSUM | TUN_F_UFO,
        ),
        (
            &[
                VIRTIO_NET_F_GUEST_CSUM,
                VIRTIO_NET_F_GUEST_TSO4,
                VIRTIO_NET_F_GUEST_ECN,
            ],
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO_ECN,
        ),
        // ECN without TSO, and segmentation without checksums: nothing (the kernel would
        // refuse them).
        (
            &[VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN],
            TUN_F_CSUM,
        ),
        (
            &[
                VIRTIO_NET_F_GUEST_TSO4,
                VIRTIO_NET_F_GUEST_TSO6,
                VIRTIO_NET_F_GUEST_UFO,
            ],
            0,
        ),
        // Host-side (transmit) offloads are not the TAP's business.
        (
            &[
                VIRTIO_NET_F_CSUM,
                VIRTIO_NET_F_HOST_TSO4,
                VIRTIO_NET_F_HOST_TSO6,
                VIRTIO_NET_F_HOST_UFO,
                VIRTIO_NET_F_MRG_RXBUF,
            ],
            0,
        ),
        (
            &[
                VIRTIO_NET_F_GUEST_CSUM,
                VIRTIO_NET_F_GUEST_TSO4,
                VIRTIO_NET_F_GUEST_TSO6,
                VIRTIO_NET_F_GUEST_UFO,
                VIRTIO_NET_F_HOST_TSO4,
            ],
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_UFO,
        ),
    ];
    for (bits, flags) in cases {
        assert_eq!(tap_offload_flags(f(bits)), flags, "{bits:?}");
    }
    assert_eq!(
        tap_offload_flags(AVAIL_FEATURES),
        TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_UFO
    );
}

#[test]
fn activation_sets_offloads_and_reset_clears_them() {
    let mem = memory();
    let (mut h, mock) = Harness::new(&mem);
    assert_eq!(
        mock.state().offloads,
        [libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_UFO]
    );
    h.net.reset();
    assert!(!h.net.is_activated());
    assert_eq!(mock.state().offloads.last(), Some(&0));
    h.activate(feature_bit(VIRTIO_F_VERSION_1));
    assert_eq!(mock.state().offloads.last(), Some(&0));
}

#[test]
fn activate_checks_queues_and_the_backend() {
    let mem = memory();
    let q = GuestQueue::new(&mem, GuestAddress(RXQ), QUEUE_SIZE);
    let mock = Mock::new();
    let mut net = Net::new(mock.clone(), [2, 0, 0, 0, 0, 1]);
    let irq: Arc<CountingInterrupt> = Arc::default();
    let err = net
        .activate(mem.clone(), vec![q.queue()], 0, irq.clone())
        .unwrap_err();
    assert!(matches!(
        err,
        ActivateError::QueueCount {
            expected: 2,
            actual: 1
        }
    ));
    let mut not_ready = q.queue();
    not_ready.set_ready(false);
    let err = net
        .activate(mem.clone(), vec![q.queue(), not_ready], 0, irq.clone())
        .unwrap_err();
    assert!(matches!(err, ActivateError::QueueNotReady { index: 1 }));
    mock.state().offload_error = true;
    let err = net
        .activate(mem.clone(), vec![q.queue(), q.queue()], 0, irq.clone())
        .unwrap_err();
    assert!(matches!(err, ActivateError::Backend(_)));
    assert!(!net.is_activated());
    assert!(!net.process_queue(RX_QUEUE).notified);
    net.process_backend(0);
    assert!(!net.backend_wanted(0));

    mock.state().offload_error = false;
    net.activate(mem.clone(), vec![q.queue(), q.queue()], 0, irq.clone())
        .unwrap();
    assert!(net.is_activated() && net.backend_wanted(0));
    assert!(!net.backend_wanted(1), "there is one backend descriptor");
    let err = net
        .activate(mem.clone(), vec![q.queue(), q.queue()], 0, irq)
        .unwrap_err();
    assert!(matches!(err, ActivateError::AlreadyActive));
    net.reset();
    assert!(!net.backend_wanted(0));
}

#[test]
fn config_space_holds_the_mac() {
    let mut net = Net::new(Mock::new(), [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);
    let read = |net: &Net<Mock>, offset: u64, len: usize| {
        let mut data = vec![0xffu8; len];
        net.read_config(offset, &mut data);
        data
    };
    assert_eq!(read(&net, 0, 6), [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);
    assert_eq!(read(&net, 0, 4), [0x52, 0x54, 0x00, 0xab]);
    assert_eq!(read(&net, 4, 4), [0xcd, 0xef, 0, 0]);
    assert_eq!(read(&net, 3, 1), [0xab]);
    // `status` and beyond: 0 (no VIRTIO_NET_F_STATUS).
    assert_eq!(read(&net, 6, 2), [0, 0]);
    assert_eq!(read(&net, 0x100, 8), [0; 8]);
    assert_eq!(read(&net, u64::MAX, 8), [0; 8]);
    net.write_config(0, &[1, 2, 3, 4]);
    assert_eq!(read(&net, 0, 6), [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);
    assert_eq!(net.mac(), [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);
}
