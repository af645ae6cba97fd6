//! virtio-net end to end, inside a network namespace that the test creates and removes: the
//! test guest's minimal driver (test=net) sends a raw Ethernet frame that the host side sees on
//! the TAP, and the host sends a frame that the guest reports on COM1 byte for byte. Only the
//! test's own namespace is used; nothing leaves it.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;

use std::time::Duration;

use common::{finish, guest, Netns, TAP};

/// IEEE 802 local experimental EtherType, used by the test guest.
const ETHERTYPE_TEST: u16 = 0x88b5;
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const HOST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];

/// An AF_PACKET socket on the TAP inside the namespace (opened from a thread that joins it).
fn packet_socket(ns: &str) -> (OwnedFd, i32) {
    common::in_netns(ns, || {
        let proto = ETHERTYPE_TEST.to_be() as i32;
        // SAFETY: plain socket(2) call.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd was just created and is owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new(TAP).unwrap();
        // SAFETY: valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        assert!(ifindex > 0);
        // SAFETY: sockaddr_ll is plain old data.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETHERTYPE_TEST.to_be();
        addr.sll_ifindex = ifindex;
        // SAFETY: addr is a valid sockaddr_ll of the given size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 30,
            tv_usec: 0,
        };
        // SAFETY: valid option value of the given size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        (fd, ifindex)
    })
}

fn recv_frame(fd: &OwnedFd) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    // SAFETY: reads into a live buffer of the given length.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            0,
        )
    };
    assert!(
        n > 0,
        "no frame from the guest: {}",
        std::io::Error::last_os_error()
    );
    buf.truncate(n as usize);
    buf
}

fn send_frame(fd: &OwnedFd, ifindex: i32, frame: &[u8]) {
    // SAFETY: sockaddr_ll is plain old data.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETHERTYPE_TEST.to_be();
    addr.sll_ifindex = ifindex;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&GUEST_MAC);
    // SAFETY: valid buffer and address of the given sizes.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr() as *const libc::c_void,
            frame.len(),
            0,
            &addr as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(
        n,
        frame.len() as isize,
        "sendto: {}",
        std::io::Error::last_os_error()
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
#[cfg_attr(
    any(no_kvm, no_netns),
    ignore = "needs a usable /dev/kvm, and root with iproute2 and /dev/net/tun for a network namespace"
)]
fn frames_cross_the_tap_both_ways() {
    frames_cross("net", &[], |_| {});
}

/// Issue 23: `--jail DIR` (run as root): while its guest exchanges frames over the TAP, vmm
/// runs as uid/gid 65534 with no capabilities (`CapEff`, `CapPrm`, `CapBnd` all 0),
/// `NoNewPrivs: 1`, in its own mount namespace, with DIR as its root; the frames still cross
/// both ways. (tests/blk_kvm.rs has a jailed guest using its disk.)
#[test]
#[cfg_attr(
    any(no_kvm, no_netns),
    ignore = "needs a usable /dev/kvm, and root with iproute2 and /dev/net/tun for a network namespace"
)]
fn a_jailed_vmm_is_unprivileged_in_its_directory_and_its_guest_uses_the_network() {
    use std::os::unix::fs::MetadataExt;
    let dir = common::jail_dir("jail-net");
    std::fs::write(dir.join("jail-marker"), b"inside").unwrap();
    let jail = dir.display().to_string();
    frames_cross("jailnet", &["--jail", &jail], |pid| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        };
        assert_eq!(field("Uid:"), "65534 65534 65534 65534", "{status}");
        assert_eq!(field("Gid:"), "65534 65534 65534 65534", "{status}");
        for caps in ["CapEff:", "CapPrm:", "CapBnd:", "CapAmb:"] {
            assert_eq!(field(caps), "0000000000000000", "{caps} {status}");
        }
        assert_eq!(field("NoNewPrivs:"), "1", "{status}");
        // Its root is DIR: the same directory, and the marker in it is at its top.
        let root = std::fs::metadata(format!("/proc/{pid}/root/")).unwrap();
        let jail_meta = std::fs::metadata(&dir).unwrap();
        assert_eq!(
            (root.dev(), root.ino()),
            (jail_meta.dev(), jail_meta.ino()),
            "/proc/{pid}/root is not {}",
            dir.display()
        );
        assert!(std::path::Path::new(&format!("/proc/{pid}/root/jail-marker")).exists());
        let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
        assert_ne!(
            ns(&pid.to_string()),
            ns("self"),
            "a mount namespace of its own"
        );
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `test=net` with `--net` on a TAP in a namespace of its own, plus `extra`; `during`
/// gets vmm's pid once the guest's frame has arrived (the guest waits for the reply).
fn frames_cross(tag: &str, extra: &[&str], during: impl FnOnce(u32)) {
    let ns = Netns::create(tag, None).expect(
        "a network namespace with a TAP (root, iproute2 and /dev/net/tun were there at build time)",
    );
    let (sock, ifindex) = packet_socket(&ns.name);
    let kernel = guest("pvh.elf").display().to_string();
    let mac = GUEST_MAC
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(common::vmm_bin())
        .args([
            "--kernel",
            &kernel,
            "--memory",
            "64",
            "--net",
            &format!("tap={TAP},mac={mac}"),
        ])
        .args(["--cmdline", "test=net"])
        .args(extra)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    // Guest → host: the guest's broadcast frame arrives on the TAP.
    let frame = recv_frame(&sock);
    assert_eq!(&frame[0..6], &[0xff; 6], "broadcast destination");
    assert_eq!(&frame[6..12], &GUEST_MAC, "the MAC given with --net");
    assert_eq!(&frame[12..14], &ETHERTYPE_TEST.to_be_bytes());
    assert!(
        frame[14..].starts_with(b"vmm-test-guest says hello"),
        "{frame:02x?}"
    );
    during(child.id());

    // Host → guest: a frame the guest prints byte for byte.
    let mut reply = Vec::new();
    reply.extend_from_slice(&GUEST_MAC);
    reply.extend_from_slice(&HOST_MAC);
    reply.extend_from_slice(&ETHERTYPE_TEST.to_be_bytes());
    reply.extend_from_slice(b"host says hello over the tap");
    reply.resize(60, 0);
    send_frame(&sock, ifindex, &reply);

    let run = finish(child, b"", Duration::from_secs(60));
    let out = run.stdout_str();
    assert!(!run.timed_out, "{out}\n{}", run.stderr);
    assert!(out.contains("net: mac 52:54:00:12:34:56"), "{out}");
    assert!(
        out.lines()
            .any(|l| l == format!("net: rx 60 {}", hex(&reply))),
        "{out}\n{}",
        run.stderr
    );
    assert!(out.lines().any(|l| l == "net: done"), "{out}");
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    drop(ns);
}
