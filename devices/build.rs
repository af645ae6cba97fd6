include!("build_probe.rs");

fn main() {
    probe_test_host(false);
}
