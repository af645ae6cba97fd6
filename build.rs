include!("devices/build_probe.rs");

fn main() {
    probe_test_host(true);
}
