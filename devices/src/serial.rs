//! The serial console: a 16550A UART (COM1) on top of [`vm_superio::Serial`].
//!
//! `vm_superio::Serial` models the registers (PC16550D data sheet; Linux
//! `include/uapi/linux/serial_reg.h`). [`SerialDevice`] adds what a VMM console needs around it:
//!
//! - **Input without loss.** The UART's receive FIFO holds only 64 bytes, while a user may paste
//!   far more into stdin at once. Bytes that do not fit wait in a host-side queue (up to
//!   [`PENDING_INPUT_CAP`] bytes) and move into the FIFO, in order, each time the guest drains it.
//!   Refilling only an empty FIFO costs the guest one receive interrupt per 64 bytes rather than
//!   one per byte, and the guest's receive loop (read LSR, read RBR, while "data ready") keeps
//!   going across the refill without a new interrupt.
//! - **Output that never stops the guest.** Each byte the guest writes to the transmit register
//!   is written and flushed to the host writer at once (by `vm_superio`). If that fails — stdout
//!   is a closed pipe, say — the error is logged once, the byte is counted as lost and the guest
//!   carries on.
//! - **Output accounting.** [`SerialDevice::bytes_written`] counts bytes delivered to the
//!   writer, [`SerialDevice::lost_output_bytes`] those the writer refused.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use vm_superio::serial::{Error as SerialError, SerialEvents};
use vm_superio::Serial;

use crate::interrupt::EventFdTrigger;

/// Number of I/O ports a 16550 occupies (base..base + 8); map the device with this length.
pub const SERIAL_PORT_LEN: u64 = 8;
/// Most bytes of guest input kept waiting for room in the UART's FIFO; beyond this, input is
/// dropped and counted in [`SerialDevice::dropped_input`].
pub const PENDING_INPUT_CAP: usize = 64 * 1024;

/// Offset of the receive buffer (read) / transmit holding register (write), when LCR.DLAB is 0.
const DATA_OFFSET: u8 = 0;

/// Counts output bytes for the VMM; `vm_superio` calls these hooks from `Serial::write`.
#[derive(Debug, Default)]
struct OutputEvents {
    /// Bytes written and flushed to the host writer.
    delivered: AtomicU64,
    /// Bytes the guest wrote that the host writer refused.
    lost: AtomicU64,
}

impl SerialEvents for OutputEvents {
    fn buffer_read(&self) {}

    fn out_byte(&self) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }

    fn tx_lost_byte(&self) {
        self.lost.fetch_add(1, Ordering::Relaxed);
    }

    fn in_buffer_empty(&self) {}
}

type Uart = Serial<EventFdTrigger, OutputEvents, Box<dyn Write + Send>>;

/// A 16550A UART for the guest's console, to be put on the port I/O [`Bus`](crate::Bus) with
/// length [`SERIAL_PORT_LEN`].
pub struct SerialDevice {
    uart: Uart,
    /// Guest input that did not fit in the FIFO yet, oldest first.
    pending_input: VecDeque<u8>,
    /// Input bytes dropped because `pending_input` was full.
    dropped_input: u64,
    /// Capacity of the UART's receive FIFO.
    fifo_size: usize,
    output_error_logged: bool,
    interrupt_error_logged: bool,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice")
            .field("pending_input", &self.pending_input.len())
            .field("dropped_input", &self.dropped_input)
            .field("bytes_written", &self.bytes_written())
            .field("lost_output_bytes", &self.lost_output_bytes())
            .finish_non_exhaustive()
    }
}

impl SerialDevice {
    /// Creates a UART that raises its interrupt through `interrupt` and writes the guest's
    /// output to `out`, flushing after every byte.
    pub fn new(interrupt: EventFdTrigger, out: Box<dyn Write + Send>) -> Self {
        let uart = Serial::with_events(interrupt, OutputEvents::default(), out);
        let fifo_size = uart.fifo_capacity();
        Self {
            uart,
            pending_input: VecDeque::new(),
            dropped_input: 0,
            fifo_size,
            output_error_logged: false,
            interrupt_error_logged: false,
        }
    }

    /// Queues `bytes` (from the host's stdin, say) for the guest to read, in order.
    ///
    /// What fits goes into the UART's FIFO now, raising the receive interrupt if the guest
    /// enabled it; the rest waits on the host side and follows as the guest drains the FIFO. Up
    /// to [`PENDING_INPUT_CAP`] bytes wait; any more are dropped and counted in
    /// [`dropped_input`](Self::dropped_input).
    ///
    /// Returns an error only if the interrupt could not be raised; the bytes are queued anyway.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut bytes = bytes;
        let mut result = Ok(());
        // Straight into the FIFO only when nothing older is waiting, to keep the order.
        if self.pending_input.is_empty() && self.uart.fifo_capacity() > 0 && !bytes.is_empty() {
            let (taken, res) = push_to_fifo(&mut self.uart, bytes);
            bytes = &bytes[taken..];
            result = res;
        }
        let room = PENDING_INPUT_CAP.saturating_sub(self.pending_input.len());
        let (kept, dropped) = bytes.split_at(bytes.len().min(room));
        self.pending_input.extend(kept);
        if !dropped.is_empty() {
            if self.dropped_input == 0 {
                log::warn!(
                    "serial: guest is not reading its console input; dropping input beyond {PENDING_INPUT_CAP} waiting bytes"
                );
            }
            self.dropped_input += dropped.len() as u64;
        }
        // Covers a FIFO that stayed empty while pending input exists (loopback mode).
        result.and(self.refill_fifo())
    }

    /// Bytes of input dropped so far because the guest did not read them fast enough.
    pub fn dropped_input(&self) -> u64 {
        self.dropped_input
    }

    /// Bytes of input waiting on the host side for room in the UART's FIFO.
    pub fn pending_input(&self) -> usize {
        self.pending_input.len()
    }

    /// Guest output bytes delivered to the writer so far.
    pub fn bytes_written(&self) -> u64 {
        self.uart.events().delivered.load(Ordering::Relaxed)
    }

    /// Guest output bytes the writer refused (and that were therefore lost).
    pub fn lost_output_bytes(&self) -> u64 {
        self.uart.events().lost.load(Ordering::Relaxed)
    }

    /// Refills the FIFO from the pending input once the guest has emptied it.
    fn refill_fifo(&mut self) -> io::Result<()> {
        if self.pending_input.is_empty() || self.uart.fifo_capacity() < self.fifo_size {
            return Ok(());
        }
        let mut result = Ok(());
        // The queue's bytes lie in at most two slices: fill from the first, then the second.
        for _ in 0..2 {
            let room = self.uart.fifo_capacity();
            let (front, _) = self.pending_input.as_slices();
            let chunk = &front[..front.len().min(room)];
            if chunk.is_empty() {
                break;
            }
            let (taken, res) = push_to_fifo(&mut self.uart, chunk);
            result = result.and(res);
            if taken == 0 {
                // Loopback mode: the UART takes no input until the guest leaves it.
                break;
            }
            self.pending_input.drain(..taken);
        }
        result
    }

    /// Logs a failure the guest caused nothing to do with: once loudly, then quietly.
    fn report(&mut self, err: SerialError<io::Error>) {
        match err {
            SerialError::IOError(e) => {
                if self.output_error_logged {
                    log::debug!("serial: cannot write guest output: {e}");
                } else {
                    self.output_error_logged = true;
                    log::warn!(
                        "serial: cannot write guest output ({e}); dropping output that cannot be written, further errors are not logged"
                    );
                }
            }
            SerialError::Trigger(e) => self.report_interrupt_error(e),
            SerialError::FullFifo => log::debug!("serial: receive FIFO full"),
        }
    }

    fn report_interrupt_error(&mut self, e: io::Error) {
        if self.interrupt_error_logged {
            log::debug!("serial: cannot raise the guest interrupt: {e}");
        } else {
            self.interrupt_error_logged = true;
            log::error!(
                "serial: cannot raise the guest interrupt ({e}); further errors are not logged"
            );
        }
    }

    /// The register a bus access addresses, if it is a one-byte access inside the UART.
    fn register(offset: u64, len: usize) -> Option<u8> {
        if len != 1 || offset >= SERIAL_PORT_LEN {
            return None;
        }
        u8::try_from(offset).ok()
    }
}

/// Moves as much of `bytes` into the UART's FIFO as fits (raising the receive interrupt if the
/// guest enabled it); returns how many bytes moved.
fn push_to_fifo(uart: &mut Uart, bytes: &[u8]) -> (usize, io::Result<()>) {
    let before = uart.fifo_capacity();
    let result = uart.enqueue_raw_bytes(bytes);
    // Measured rather than taken from the result: when raising the interrupt fails, the bytes
    // are in the FIFO all the same.
    let taken = before.saturating_sub(uart.fifo_capacity());
    (taken, result.map(drop).map_err(into_io_error))
}

fn into_io_error(err: SerialError<io::Error>) -> io::Error {
    match err {
        SerialError::Trigger(e) | SerialError::IOError(e) => e,
        SerialError::FullFifo => io::Error::other("serial receive FIFO full"),
    }
}

impl crate::BusDevice for SerialDevice {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        let Some(register) = Self::register(offset, data.len()) else {
            log::debug!(
                "serial: unsupported {}-byte read at {:#x}",
                data.len(),
                base.wrapping_add(offset)
            );
            data.fill(0xff);
            return;
        };
        data[0] = self.uart.read(register);
        if register == DATA_OFFSET {
            if let Err(e) = self.refill_fifo() {
                self.report_interrupt_error(e);
            }
        }
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        let Some(register) = Self::register(offset, data.len()) else {
            log::debug!(
                "serial: ignoring {}-byte write at {:#x}",
                data.len(),
                base.wrapping_add(offset)
            );
            return;
        };
        if let Err(e) = self.uart.write(register, data[0]) {
            self.report(e);
        }
        // Leaving loopback mode (MCR) lets the pending input in.
        if let Err(e) = self.refill_fifo() {
            self.report_interrupt_error(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BusDevice;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    const BASE: u64 = 0x3f8;
    // Register offsets and bits, from Linux include/uapi/linux/serial_reg.h.
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const MCR: u64 = 4;
    const LSR: u64 = 5;
    const IER_RDI: u8 = 0x01;
    const IER_THRI: u8 = 0x02;
    const IIR_ID_MASK: u8 = 0x0f;
    const IIR_THRI: u8 = 0x02;
    const MCR_LOOP: u8 = 0x10;
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
}
