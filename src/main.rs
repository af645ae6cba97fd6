//! The `vmm` binary: parse the command line, build and run the VM, report how it ended.

use std::error::Error as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vmm::builder::{self, DiskConfig, VmConfig};
use vmm::cli::Cli;
use vmm::timeline;

/// The KVM device node; `VMM_KVM_PATH` overrides it (for tests and unusual hosts).
const DEFAULT_KVM_PATH: &str = "/dev/kvm";

fn main() -> ExitCode {
    timeline::start();
    init_logging();
    let cli = Cli::parse();
    timeline::enable(cli.timings);
    timeline::mark("arguments parsed");

    // The root disk comes first: it is /dev/vda.
    let root = cli.rootfs.iter().map(|path| DiskConfig {
        path: path.clone(),
        read_only: cli.rootfs_ro,
        id: None,
    });
    let disks = root.chain(cli.drives).collect();
    let config = VmConfig {
        nets: cli.nets,
        root_disk: cli.rootfs.is_some(),
        disks,
        kernel: cli.kernel,
        initrd: cli.initrd,
        cmdline: cli.cmdline,
        memory_mib: cli.memory,
        cpus: cli.cpus,
        kvm_path: std::env::var_os("VMM_KVM_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_KVM_PATH)),
    };
    match builder::run_vm(&config) {
        Ok(reason) => {
            let code = reason.exit_code();
            if code == 0 {
                log::info!("VM stopped: {reason}");
            } else {
                eprintln!("error: {reason}");
            }
            ExitCode::from(code)
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

/// Minimal stderr logger: `RUST_LOG=debug|info|warn|error` (default warn).
fn init_logging() {
    struct StderrLogger;
    impl log::Log for StderrLogger {
        fn enabled(&self, metadata: &log::Metadata) -> bool {
            metadata.level() <= log::max_level()
        }
        fn log(&self, record: &log::Record) {
            if self.enabled(record.metadata()) {
                eprintln!("[vmm {:>5}] {}", record.level(), record.args());
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: StderrLogger = StderrLogger;
    let level = match std::env::var("RUST_LOG").as_deref() {
        Ok("trace") => log::LevelFilter::Trace,
        Ok("debug") => log::LevelFilter::Debug,
        Ok("info") => log::LevelFilter::Info,
        Ok("error") => log::LevelFilter::Error,
        Ok("off") => log::LevelFilter::Off,
        _ => log::LevelFilter::Warn,
    };
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
