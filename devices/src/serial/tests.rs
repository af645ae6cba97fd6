//! Tests of the serial console: output, input through the FIFO, interrupts, snapshots.

use super::*;
use crate::BusDevice;
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const BASE: u64 = 0x3f8;
// Register offsets and bits, from Linux include/uapi/linux/serial_reg.h.
const IER: u64 = 1;
const IIR: u64 = 2;
const LCR: u64 = 3;
const MCR: u64 = 4;
const LSR: u64 = 5;
const SCR: u64 = 7;
const DLL: u64 = 0;
const DLM: u64 = 1;
const LCR_DLAB: u8 = 0x80;
const LCR_8N1: u8 = 0x03;
const IER_RDI: u8 = 0x01;
const IER_THRI: u8 = 0x02;
const IIR_ID_MASK: u8 = 0x0f;
const IIR_THRI: u8 = 0x02;
const IIR_RDI: u8 = 0x04;
const MCR_LOOP: u8 = 0x10;
const MCR_DTR_RTS_OUT2: u8 = 0x0b;
const LSR_DR: u8 = 0x01;

/// A writer that shows what has been flushed separately from what is only buffered.
#[derive(Clone, Default)]
struct TestWriter(Arc<Mutex<(Vec<u8>, Vec<u8>)>>);

impl TestWriter {
    fn flushed(&self) -> Vec<u8> {
        self.0.lock().unwrap().1.clone()
    }
}

impl Write for TestWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        let mut state = self.0.lock().unwrap();
        let buffered = std::mem::take(&mut state.0);
        state.1.extend(buffered);
        Ok(())
    }
}

/// A writer whose reader has gone away.
struct ClosedPipe;

impl Write for ClosedPipe {
    fn write(&mut self, _buf: &[u8]) -> io::Result<usize> {
        Err(io::ErrorKind::BrokenPipe.into())
    }
    fn flush(&mut self) -> io::Result<()> {
        Err(io::ErrorKind::BrokenPipe.into())
    }
}

fn serial_with(out: Box<dyn Write + Send>) -> (SerialDevice, EventFd) {
    let evt = EventFd::new(EFD_NONBLOCK).unwrap();
    let dev = SerialDevice::new(EventFdTrigger::new(evt.try_clone().unwrap()), out);
    (dev, evt)
}

fn read_reg(dev: &mut SerialDevice, offset: u64) -> u8 {
    let mut data = [0u8];
    dev.read(BASE, offset, &mut data);
    data[0]
}

fn write_reg(dev: &mut SerialDevice, offset: u64, value: u8) {
    dev.write(BASE, offset, &[value]);
}

/// What a guest driver's receive loop does: read RBR while LSR says data is ready.
fn guest_drain(dev: &mut SerialDevice, max: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < max && read_reg(dev, LSR) & LSR_DR != 0 {
        got.push(read_reg(dev, 0));
    }
    got
}

/// The number of times the eventfd was signalled since the last call (0 if none).
fn interrupts(evt: &EventFd) -> u64 {
    match evt.read() {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => panic!("eventfd read: {e}"),
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn guest_output_reaches_the_writer_in_order_and_flushed() {
    let writer = TestWriter::default();
    let (mut dev, _evt) = serial_with(Box::new(writer.clone()));
    assert_eq!(dev.bytes_written(), 0);

    let mut expected = b"Linux version 6.1\r\nlogin: ".to_vec();
    expected.extend(0..=255u8);
    for (i, &byte) in expected.iter().enumerate() {
        write_reg(&mut dev, 0, byte);
        // Flushed byte by byte, not only at a newline.
        assert_eq!(writer.flushed(), expected[..=i]);
        assert_eq!(dev.bytes_written(), i as u64 + 1);
    }
    assert_eq!(dev.bytes_written(), expected.len() as u64);
    assert_eq!(dev.lost_output_bytes(), 0);
}

#[test]
fn thr_empty_interrupt_fires_once_enabled() {
    let (mut dev, evt) = serial_with(Box::new(io::sink()));

    write_reg(&mut dev, 0, b'a');
    assert_eq!(
        interrupts(&evt),
        0,
        "THR-empty interrupt is disabled by default"
    );

    // Enabling the THR-empty interrupt raises it at once: the THR is always empty here.
    write_reg(&mut dev, IER, IER_THRI);
    assert_eq!(interrupts(&evt), 1);
    assert_eq!(read_reg(&mut dev, IIR) & IIR_ID_MASK, IIR_THRI);

    // Reading IIR acknowledged it; the next transmitted byte raises it again.
    write_reg(&mut dev, 0, b'b');
    assert_eq!(interrupts(&evt), 1);
}

#[test]
fn input_larger_than_the_fifo_arrives_complete_and_in_order() {
    let (mut dev, evt) = serial_with(Box::new(io::sink()));
    write_reg(&mut dev, IER, IER_RDI);
    assert_eq!(interrupts(&evt), 0);

    let input = pattern(1000);
    dev.enqueue_input(&input).unwrap();
    assert_eq!(interrupts(&evt), 1, "receive interrupt on new data");
    assert_eq!(dev.pending_input(), 1000 - dev.fifo_size);

    let got = guest_drain(&mut dev, usize::MAX);
    assert_eq!(got, input);
    assert_eq!(dev.pending_input(), 0);
    assert_eq!(read_reg(&mut dev, LSR) & LSR_DR, 0);
    // One receive interrupt per refill of the empty FIFO, not one per byte.
    let refills = (1000 - 1) / dev.fifo_size as u64;
    assert_eq!(interrupts(&evt), refills);
    assert_eq!(dev.dropped_input(), 0);
}

#[test]
fn input_order_holds_across_interleaved_enqueues_and_reads() {
    let (mut dev, _evt) = serial_with(Box::new(io::sink()));
    let input = pattern(3000);
    let mut got = Vec::new();
    for (i, chunk) in input.chunks(97).enumerate() {
        dev.enqueue_input(chunk).unwrap();
        // The guest reads a varying amount, sometimes nothing, between host writes.
        got.extend(guest_drain(&mut dev, (i * 37) % 150));
    }
    got.extend(guest_drain(&mut dev, usize::MAX));
    assert_eq!(got, input);
}

#[test]
fn input_beyond_the_cap_is_dropped_and_counted() {
    let (mut dev, _evt) = serial_with(Box::new(io::sink()));
    let accepted = dev.fifo_size + PENDING_INPUT_CAP;
    let input = pattern(accepted + 10);
    dev.enqueue_input(&input).unwrap();
    assert_eq!(dev.dropped_input(), 10);
    dev.enqueue_input(b"xyz").unwrap();
    assert_eq!(dev.dropped_input(), 13);

    let got = guest_drain(&mut dev, usize::MAX);
    assert_eq!(got, input[..accepted]);

    // Once the guest has caught up, input flows again.
    dev.enqueue_input(b"ok").unwrap();
    assert_eq!(guest_drain(&mut dev, usize::MAX), b"ok");
    assert_eq!(dev.dropped_input(), 13);
}

#[test]
fn pending_input_waits_out_loopback_mode() {
    let (mut dev, _evt) = serial_with(Box::new(io::sink()));
    write_reg(&mut dev, MCR, MCR_LOOP);
    dev.enqueue_input(b"hello").unwrap();
    assert_eq!(dev.pending_input(), 5);
    assert_eq!(read_reg(&mut dev, LSR) & LSR_DR, 0);

    write_reg(&mut dev, MCR, 0);
    assert_eq!(guest_drain(&mut dev, usize::MAX), b"hello");
}

#[test]
fn closed_output_does_not_stop_the_guest() {
    let (mut dev, evt) = serial_with(Box::new(ClosedPipe));
    write_reg(&mut dev, IER, IER_THRI);
    assert_eq!(interrupts(&evt), 1);
    for (i, &byte) in b"boot log".iter().enumerate() {
        read_reg(&mut dev, IIR);
        write_reg(&mut dev, 0, byte);
        // The guest still sees its byte sent, or its driver would wait forever.
        assert_eq!(interrupts(&evt), 1, "byte {i}");
    }
    assert_eq!(dev.bytes_written(), 0);
    assert_eq!(dev.lost_output_bytes(), 8);
    assert!(dev.output_error_logged);
}

#[test]
fn a_failed_interrupt_is_reported_but_input_is_kept() {
    let (mut dev, evt) = serial_with(Box::new(io::sink()));
    write_reg(&mut dev, IER, IER_RDI);
    // An eventfd counter at its maximum makes every further signal fail with EAGAIN.
    evt.write(u64::MAX - 1).unwrap();

    let input = pattern(100);
    let err = dev.enqueue_input(&input).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    assert_eq!(guest_drain(&mut dev, usize::MAX), input);
    assert!(dev.interrupt_error_logged);
}

/// What the guest sees of the registers that keep what it wrote, and the divisor latch.
fn guest_registers(dev: &mut SerialDevice) -> [u8; 6] {
    let lcr = read_reg(dev, LCR);
    write_reg(dev, LCR, lcr | LCR_DLAB);
    let (dll, dlm) = (read_reg(dev, DLL), read_reg(dev, DLM));
    write_reg(dev, LCR, lcr);
    [
        lcr,
        read_reg(dev, IER),
        read_reg(dev, MCR),
        read_reg(dev, SCR),
        dll,
        dlm,
    ]
}

/// A device a guest has set up (9600 baud, 8N1, receive interrupt, modem control,
/// scratch) with 100 bytes of input of which it has read 10: 54 in the FIFO, 36 waiting
/// on the host side.
fn busy_serial() -> (SerialDevice, EventFd, Vec<u8>) {
    let (mut dev, evt) = serial_with(Box::new(io::sink()));
    write_reg(&mut dev, LCR, LCR_DLAB);
    write_reg(&mut dev, DLL, 12);
    write_reg(&mut dev, DLM, 0);
    write_reg(&mut dev, LCR, LCR_8N1);
    write_reg(&mut dev, IER, IER_RDI);
    write_reg(&mut dev, MCR, MCR_DTR_RTS_OUT2);
    write_reg(&mut dev, SCR, 0x5a);
    let input = pattern(100);
    dev.enqueue_input(&input).unwrap();
    assert_eq!(guest_drain(&mut dev, 10), input[..10]);
    assert_eq!(dev.pending_input(), 36);
    interrupts(&evt);
    (dev, evt, input[10..].to_vec())
}

#[test]
fn state_restored_into_a_fresh_device_reads_the_same() {
    let (mut old, _old_evt, unread) = busy_serial();
    let state = old.state();
    assert_eq!(state.in_buffer.len(), 54);
    assert_eq!(state.pending_input, unread[54..]);
    assert_eq!((state.baud_divisor_low, state.scratch), (12, 0x5a));
    let json = serde_json::to_string(&state).unwrap();
    assert_eq!(serde_json::from_str::<SerialState>(&json).unwrap(), state);

    let writer = TestWriter::default();
    let (mut new, evt) = serial_with(Box::new(writer.clone()));
    write_reg(&mut new, 0, b'a');
    new.restore(&state).unwrap();
    assert_eq!(new.state(), state);
    // The guest's reads acknowledged the receive interrupt: none is pending.
    assert_eq!(interrupts(&evt), 0);
    assert_eq!(guest_registers(&mut new), guest_registers(&mut old));
    assert_eq!(
        guest_registers(&mut new),
        [LCR_8N1, IER_RDI, MCR_DTR_RTS_OUT2, 0x5a, 12, 0]
    );
    assert_eq!(guest_drain(&mut new, usize::MAX), unread);
    assert_eq!(guest_drain(&mut old, usize::MAX), unread);
    // The device kept its writer and its counters.
    write_reg(&mut new, 0, b'b');
    assert_eq!(writer.flushed(), b"ab");
    assert_eq!(new.bytes_written(), 2);
}

#[test]
fn a_pending_interrupt_is_raised_again_on_restore() {
    let (mut dev, evt) = serial_with(Box::new(io::sink()));
    write_reg(&mut dev, IER, IER_RDI);
    dev.enqueue_input(b"hi").unwrap();
    assert_eq!(interrupts(&evt), 1);
    let state = dev.state();

    let (mut new, evt) = serial_with(Box::new(io::sink()));
    new.restore(&state).unwrap();
    assert_eq!(interrupts(&evt), 1, "the guest had not handled it yet");
    assert_eq!(read_reg(&mut new, IIR) & IIR_ID_MASK, IIR_RDI);
    assert_eq!(guest_drain(&mut new, usize::MAX), b"hi");
}

#[test]
fn state_with_pending_input_and_an_empty_fifo_lets_the_input_in() {
    let (mut dev, _evt, _) = busy_serial();
    let mut state = dev.state();
    state.in_buffer.clear();
    let (mut new, _evt) = serial_with(Box::new(io::sink()));
    new.restore(&state).unwrap();
    assert_eq!(guest_drain(&mut new, usize::MAX), state.pending_input);
    assert_eq!(guest_drain(&mut dev, usize::MAX).len(), 54 + 36);
}

#[test]
fn bad_states_are_refused_and_change_nothing() {
    let (dev, _evt, _) = busy_serial();
    let good = dev.state();
    let (mut new, evt) = serial_with(Box::new(io::sink()));
    write_reg(&mut new, SCR, 1);
    let before = new.state();

    let mut state = good.clone();
    state.in_buffer = pattern(65);
    let err = new.restore(&state).unwrap_err();
    assert!(matches!(
        err,
        SerialStateError::FifoTooLong {
            len: 65,
            capacity: 64
        }
    ));
    let mut state = good.clone();
    state.pending_input = pattern(PENDING_INPUT_CAP + 1);
    let err = new.restore(&state).unwrap_err();
    assert!(matches!(err, SerialStateError::PendingInputTooLong { .. }));
    assert_eq!(new.state(), before);
    assert_eq!(interrupts(&evt), 0);

    // At the limits, accepted.
    let mut state = good;
    state.in_buffer = pattern(64);
    state.pending_input = pattern(PENDING_INPUT_CAP);
    new.restore(&state).unwrap();
    assert_eq!(new.pending_input(), PENDING_INPUT_CAP);
}

#[test]
fn odd_sized_and_out_of_range_accesses_are_harmless() {
    let writer = TestWriter::default();
    let (mut dev, _evt) = serial_with(Box::new(writer.clone()));

    let mut wide = [0u8; 2];
    dev.read(BASE, 0, &mut wide);
    assert_eq!(wide, [0xff, 0xff]);
    let mut empty = [0u8; 0];
    dev.read(BASE, 0, &mut empty);
    let mut beyond = [0u8];
    dev.read(BASE, SERIAL_PORT_LEN, &mut beyond);
    assert_eq!(beyond, [0xff]);
    dev.read(BASE, u64::MAX, &mut beyond);

    dev.write(BASE, 0, b"ab");
    dev.write(BASE, 0, &[]);
    dev.write(BASE, SERIAL_PORT_LEN, b"c");
    dev.write(BASE, u64::MAX, b"d");
    assert!(writer.flushed().is_empty());
    assert_eq!(dev.bytes_written(), 0);
}
