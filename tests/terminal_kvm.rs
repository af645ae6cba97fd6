//! With a terminal on stdin, the VMM puts it in raw mode while the guest runs and restores it
//! on the way out, here on SIGTERM.

mod common;

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{guest, vmm_bin};

fn termios(fd: i32) -> libc::termios {
    // SAFETY: termios is plain old data; tcgetattr fills it in from a valid descriptor.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and pointer.
    assert_eq!(unsafe { libc::tcgetattr(fd, &mut t) }, 0);
    t
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs a usable /dev/kvm")]
fn raw_mode_while_running_and_restored_on_sigterm() {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two descriptors into the given integers; the other arguments may
    // be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created by openpty and are owned here.
    let (_master, slave_fd) =
        unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let before = termios(slave);
    assert_ne!(
        before.c_lflag & libc::ICANON,
        0,
        "a new pty starts in canonical mode"
    );

    let kernel = guest("pvh.elf").display().to_string();
    let mut child = Command::new(vmm_bin())
        .args([
            "--kernel",
            &kernel,
            "--memory",
            "32",
            "--cmdline",
            "test=halt",
        ])
        .stdin(Stdio::from(slave_fd.try_clone().unwrap()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = common::read_until(&mut child, "halt: ready\n", Duration::from_secs(30));
    assert!(seen.contains("halt: ready"), "{seen}");
    let during = termios(slave);
    assert_eq!(
        during.c_lflag & (libc::ICANON | libc::ECHO | libc::ISIG),
        0,
        "raw while running"
    );

    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let run = common::finish(child, b"", Duration::from_secs(10));
    assert!(!run.timed_out);
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    let after = termios(slave);
    assert_eq!(after.c_lflag, before.c_lflag, "local modes restored");
    assert_eq!(after.c_iflag, before.c_iflag, "input modes restored");
    assert_eq!(after.c_cc[libc::VMIN], before.c_cc[libc::VMIN]);
}
