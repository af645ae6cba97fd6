//! The `vmm` binary: parse the command line, build the VM (`Vmm::boot` or `Vmm::restore`),
//! run it, and end with the exit code its end calls for.

use std::error::Error as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vmm::cli::{Cli, Command};
use vmm::timeline;
use vmm::vmm::Vmm;

/// The KVM device node; `VMM_KVM_PATH` overrides it (for tests and unusual hosts).
const DEFAULT_KVM_PATH: &str = "/dev/kvm";

fn main() -> ExitCode {
    timeline::start();
    // Before anything else: a SIGTERM during set-up is handled once the VM runs (it stops it
    // cleanly), never the default action's kill.
    if let Err(e) = vmm::signals::hold() {
        eprintln!("error: cannot block SIGINT and SIGTERM during set-up: {e}");
        return ExitCode::FAILURE;
    }
    init_logging();
    let cli = Cli::parse();
    timeline::enable(cli.timings);
    timeline::mark("arguments parsed");

    let kvm_path = std::env::var_os("VMM_KVM_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_KVM_PATH));
    let vmm = match cli.command(kvm_path) {
        Command::Boot(config) => Vmm::boot(&config),
        Command::Restore(config) => Vmm::restore(&config),
    };
    match vmm.and_then(Vmm::run) {
        Ok(outcome) => {
            if outcome.reason.is_failure() {
                eprintln!("error: {}", outcome.reason);
            } else {
                log::info!("VM stopped: {}", outcome.reason);
            }
            ExitCode::from(outcome.exit_code())
        }
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = e.source();
            while let Some(cause) = source {
                eprintln!("caused by: {cause}");
                source = cause.source();
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// Log lines on stderr as `[vmm LEVEL] message`; `RUST_LOG` sets the level (default warn) and,
/// as env_logger reads it, per-module filters.
///
/// By default virtio-queue's own messages are off: it logs every malformed ring it meets at
/// error level (an available index too far ahead, a queue that cannot start), once per
/// notification, so a guest could fill the VMM's log at will. The devices report the same
/// conditions themselves, at debug level (`RUST_LOG=debug` shows both).
fn init_logging() {
    use std::io::Write;
    let env = env_logger::Env::default().default_filter_or("warn,virtio_queue=off");
    let _ = env_logger::Builder::from_env(env)
        .format(|buf, record| writeln!(buf, "[vmm {:>5}] {}", record.level(), record.args()))
        .try_init();
}
