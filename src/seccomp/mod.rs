//! seccomp: once set up, every thread of the VMM runs under an allow-list of the system calls
//! it needs (rust-vmm's `seccompiler` builds the BPF programs), so a guest that takes over a
//! device model, or a bug, cannot make the VMM do anything else. Two lists: the main thread
//! (event loop: devices' queues and backends, stdin, signals, the API, snapshots) and the vCPU
//! threads (`KVM_RUN`, port and MMIO handling, the console). Calls whose arguments decide what
//! they do are allowed only in the forms the thread needs ([`rules`]: `ioctl` request numbers,
//! no `PROT_EXEC`, the signals vmm sends, no file opened for writing unless new). `--no-seccomp`
//! turns them off.
//!
//! A call outside the list is not run: the kernel sends `SIGSYS`, whose handler writes
//! `vmm: seccomp: thread <name> made system call <nr> (<name>), which is not allowed` on
//! stderr and ends the process with [`DENIED_EXIT_CODE`] (Firecracker does the same).

use std::cell::Cell;

use libc::{c_int, c_void, siginfo_t};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};
use vmm_sys_util::signal::register_signal_handler;

mod names;
mod rules;

/// The exit code after a denied system call.
pub const DENIED_EXIT_CODE: i32 = 159;

/// With the `seccomp-trigger` feature (tests only): a byte the guest writes to the debug port
/// (on its vCPU thread) or that comes on stdin (on the main thread) and [`trigger`] turns into
/// a call the thread's filter denies.
#[cfg(feature = "seccomp-trigger")]
pub mod trigger_values {
    /// `getppid`, which neither list has.
    pub const GETPPID: u8 = 0xfd;
    /// `mprotect` of a page with `PROT_EXEC`.
    pub const MPROTECT_EXEC: u8 = 0xfe;
    /// `ioctl(TUNSETIFF)`, on neither thread's list of requests.
    pub const TUNSETIFF: u8 = 0xff;
    /// `openat` with `O_CREAT` (not `O_EXCL`): a write to an existing file.
    pub const OPENAT_CREAT: u8 = 0xfa;
}

/// Makes the denied call `value` stands for ([`trigger_values`]); other values do nothing.
#[cfg(feature = "seccomp-trigger")]
pub fn trigger(value: u8) {
    let page = [0u8; 1];
    let path = c"/dev/null";
    // SAFETY: each call is denied before it runs (the process ends); were it not, each is
    // harmless: a page of this stack made executable, TUNSETIFF on no descriptor (-1), and
    // /dev/null opened for writing (its descriptor leaked).
    unsafe {
        match value {
            trigger_values::GETPPID => {
                libc::syscall(libc::SYS_getppid);
            }
            trigger_values::MPROTECT_EXEC => {
                let addr = (page.as_ptr() as usize) & !4095;
                libc::mprotect(
                    addr as *mut libc::c_void,
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                );
            }
            trigger_values::TUNSETIFF => {
                libc::ioctl(-1, libc::TUNSETIFF, 0);
            }
            trigger_values::OPENAT_CREAT => {
                libc::openat(
                    libc::AT_FDCWD,
                    path.as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT,
                    0o600,
                );
            }
            _ => {}
        }
    }
}

/// Errors while building or installing the filters.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot build the seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    #[error("cannot install the seccomp filter on thread {thread}: {source}")]
    Install {
        thread: String,
        #[source]
        source: seccompiler::Error,
    },
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(std::io::Error),
}

/// Which list a thread gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    Main,
    Vcpu,
}

/// Both compiled filters, built once before any thread needs one.
#[derive(Debug, Clone)]
pub struct Filters {
    main: BpfProgram,
    vcpu: BpfProgram,
}

fn program(kind: ThreadKind, syscalls: &[i64], kick_signal: i32) -> Result<BpfProgram, Error> {
    let rules = rules::for_thread(kind, syscalls, kick_signal)?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        seccompiler::TargetArch::x86_64,
    )?;
    Ok(filter.try_into()?)
}

impl Filters {
    /// Compiles both lists; `kick_signal` is the one signal (besides `SIGABRT`) the main
    /// thread may send its vCPU threads.
    pub fn new(kick_signal: i32) -> Result<Self, Error> {
        Ok(Filters {
            main: program(ThreadKind::Main, MAIN_SYSCALLS, kick_signal)?,
            vcpu: program(ThreadKind::Vcpu, VCPU_SYSCALLS, kick_signal)?,
        })
    }

    /// Installs `kind`'s filter on the calling thread, named `name` in the SIGSYS message.
    pub fn install(&self, kind: ThreadKind, name: &str) -> Result<(), Error> {
        set_thread_name(name);
        let program = match kind {
            ThreadKind::Main => &self.main,
            ThreadKind::Vcpu => &self.vcpu,
        };
        seccompiler::apply_filter(program).map_err(|source| Error::Install {
            thread: name.to_string(),
            source,
        })
    }
}

/// Installs the SIGSYS handler (once, before any filter).
pub fn register_handler() -> Result<(), Error> {
    register_signal_handler(libc::SIGSYS, on_sigsys).map_err(|e| Error::Handler(e.into()))
}

thread_local! {
    /// This thread's name for the SIGSYS message: constant-initialised, no destructor, so the
    /// handler reads it without allocating.
    static THREAD_NAME: Cell<([u8; 16], usize)> = const { Cell::new(([0; 16], 0)) };
}

fn set_thread_name(name: &str) {
    let mut buf = [0u8; 16];
    let len = name.len().min(buf.len());
    buf[..len].copy_from_slice(&name.as_bytes()[..len]);
    THREAD_NAME.with(|n| n.set((buf, len)));
}

/// The name of system call `nr`, if it is a known one.
pub fn syscall_name(nr: i64) -> Option<&'static str> {
    names::SYSCALL_NAMES
        .binary_search_by_key(&nr, |&(n, _)| n)
        .ok()
        .map(|i| names::SYSCALL_NAMES[i].1)
}

/// Appends `bytes` to `buf` at `*len` (truncating), for the handler's message.
fn push(buf: &mut [u8], len: &mut usize, bytes: &[u8]) {
    for &b in bytes {
        if *len < buf.len() {
            buf[*len] = b;
            *len += 1;
        }
    }
}

fn push_decimal(buf: &mut [u8], len: &mut usize, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (value % 10) as u8;
        n += 1;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    digits[..n].reverse();
    push(buf, len, &digits[..n]);
}

/// The message for a denied call `nr` on thread `thread`.
fn message(buf: &mut [u8], thread: &[u8], nr: i64) -> usize {
    let mut len = 0;
    push(buf, &mut len, b"vmm: seccomp: thread ");
    push(buf, &mut len, thread);
    push(buf, &mut len, b" made system call ");
    push_decimal(buf, &mut len, nr as u64);
    if let Some(name) = syscall_name(nr) {
        push(buf, &mut len, b" (");
        push(buf, &mut len, name.as_bytes());
        push(buf, &mut len, b")");
    }
    push(
        buf,
        &mut len,
        b", which is not allowed; the VMM stops (run with --no-seccomp to find out more)\n",
    );
    len
}

extern "C" fn on_sigsys(_: c_int, info: *mut siginfo_t, _: *mut c_void) {
    // struct siginfo for SIGSYS (include/uapi/asm-generic/siginfo.h): si_signo, si_errno,
    // si_code, padding to 16 bytes, then `void *_call_addr; int _syscall; unsigned int _arch`.
    const SYSCALL_OFFSET: usize = 16 + 8;
    // SAFETY: the kernel hands a SIGSYS handler a valid siginfo_t, whose size (128 bytes)
    // covers the _sigsys member read here.
    let nr = unsafe {
        std::ptr::read_unaligned((info as *const u8).add(SYSCALL_OFFSET) as *const c_int)
    };
    let (name, name_len) = THREAD_NAME.with(Cell::get);
    let mut buf = [0u8; 256];
    let len = message(&mut buf, &name[..name_len], i64::from(nr));
    // SAFETY: write(2) and _exit(2) are async-signal-safe and allowed by both filters; `buf`
    // holds `len` initialised bytes.
    unsafe {
        libc::write(libc::STDERR_FILENO, buf.as_ptr().cast(), len);
        libc::_exit(DENIED_EXIT_CODE);
    }
}

/// The main thread's list: the event loop (epoll, eventfds, timerfds), stdin and stdout, the
/// devices' I/O on disk images, TAPs and vsock's Unix sockets, signals, the API's sockets, snapshots (files and
/// directories, KVM's VM-wide state), and what Rust's runtime and allocator use.
const MAIN_SYSCALLS: &[i64] = &[
    // The event loop, its eventfds and timerfds (the API's deadlines), signals.
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    // Kicking and joining the vCPU threads.
    libc::SYS_tgkill,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_futex,
    // stdin, stdout, stderr, eventfds, TAPs, the API's sockets.
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_accept4,
    // vhost-user back ends (virtio-fs): messages with file descriptors; stopping a helper.
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_kill,
    libc::SYS_wait4,
    // virtio-vsock: connecting to host programs' sockets for the guest (`PATH_P`).
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_shutdown,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_ioctl,
    // Disk images.
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_lseek,
    // Snapshots: the directory, its files, their sizes; removing the API socket file.
    libc::SYS_mkdir,
    libc::SYS_openat,
    libc::SYS_getdents64,
    libc::SYS_ftruncate,
    libc::SYS_statx,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_unlink,
    // Memory (the allocator, thread stacks) and the runtime.
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_getrandom,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_sched_yield,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// The vCPU threads' list: `KVM_RUN` and the other vCPU ioctls (a snapshot reads the vCPU's
/// state on its thread), the devices they reach (the console's writes, eventfds, a TAP's
/// offloads set on activation), the kick signal, parking, and the allocator.
const VCPU_SYSCALLS: &[i64] = &[
    // KVM_RUN and the vCPU's other ioctls; a TAP's offloads on activation.
    libc::SYS_ioctl,
    // The console's and the log's writes, eventfds (a trapped QueueNotify, interrupts).
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_read,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_statx,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    // The kick signal, parking, and the runtime.
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_futex,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_getrandom,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_sched_yield,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sorted_and_found() {
        assert!(names::SYSCALL_NAMES.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(syscall_name(libc::SYS_read), Some("read"));
        assert_eq!(syscall_name(libc::SYS_execve), Some("execve"));
        assert_eq!(syscall_name(100_000), None);
    }

    #[test]
    fn the_message_names_thread_and_call() {
        let mut buf = [0u8; 256];
        let len = message(&mut buf, b"vcpu0", libc::SYS_execve);
        let text = std::str::from_utf8(&buf[..len]).unwrap();
        assert!(
            text.starts_with(
                "vmm: seccomp: thread vcpu0 made system call 59 (execve), which is not allowed"
            ),
            "{text}"
        );
        let len = message(&mut buf, b"vmm", 100_000);
        let text = std::str::from_utf8(&buf[..len]).unwrap();
        assert!(text.contains("system call 100000, which"), "{text}");
    }

    #[test]
    fn both_filters_compile() {
        Filters::new(libc::SIGRTMIN()).unwrap();
    }
}
