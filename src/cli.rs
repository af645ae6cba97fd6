//! Command-line interface (clap derive).

use std::path::PathBuf;

use clap::Parser;

/// Default kernel command line: serial console on COM1, reboot through the i8042 keyboard
/// controller (which the VMM turns into a clean exit), and reboot at once on a panic.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

/// Default guest memory in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 128;

/// A small, fast KVM virtual machine monitor.
///
/// Boots a Linux kernel (bzImage or ELF vmlinux, PVH when the ELF has the note) with an
/// optional initramfs, and connects the guest's serial console (COM1) to this terminal.
/// The guest's reboot, a triple fault, SIGINT and SIGTERM all end the VMM with exit code 0.
#[derive(Debug, Clone, Parser)]
#[command(name = "vmm", version, about, long_about = None)]
pub struct Cli {
    /// Guest kernel: a bzImage, or an ELF vmlinux (booted through PVH when it has the
    /// XEN_ELFNOTE_PHYS32_ENTRY note, else through its 64-bit entry point).
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,

    /// Initial ramdisk (initramfs) loaded into guest memory per the Linux boot protocol.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// Kernel command line. The VMM appends what it must itself (the devices it creates).
    #[arg(long, value_name = "STR", default_value = DEFAULT_CMDLINE)]
    pub cmdline: String,

    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_MEMORY_MIB,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub memory: u64,

    /// Number of vCPUs (the guest sees them in its MP table).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub cpus: u16,

    /// Print a boot timeline on stderr: milliseconds since the VMM started, for each phase,
    /// and each byte the guest writes to the debug port 0x80.
    #[arg(long)]
    pub timings: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("vmm").chain(args.iter().copied()))
    }

    #[test]
    fn defaults() {
        let cli = parse(&["--kernel", "k"]).unwrap();
        assert_eq!(cli.kernel, PathBuf::from("k"));
        assert_eq!(cli.memory, 128);
        assert_eq!(cli.cpus, 1);
        assert_eq!(cli.cmdline, DEFAULT_CMDLINE);
        assert!(cli.initrd.is_none());
        assert!(!cli.timings);
    }

    #[test]
    fn all_options() {
        let cli = parse(&[
            "--kernel",
            "bz",
            "--initrd",
            "rd",
            "--cmdline",
            "console=ttyS0 quiet",
            "--memory",
            "512",
            "--cpus",
            "4",
            "--timings",
        ])
        .unwrap();
        assert_eq!(cli.initrd, Some(PathBuf::from("rd")));
        assert_eq!(cli.cmdline, "console=ttyS0 quiet");
        assert_eq!(cli.memory, 512);
        assert_eq!(cli.cpus, 4);
        assert!(cli.timings);
    }

    #[test]
    fn kernel_is_required() {
        let err = parse(&[]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn zero_and_bad_values_are_usage_errors() {
        for args in [
            &["--kernel", "k", "--memory", "0"][..],
            &["--kernel", "k", "--cpus", "0"],
            &["--kernel", "k", "--cpus", "65536"],
            &["--kernel", "k", "--memory", "lots"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }
}
