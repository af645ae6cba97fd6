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
//! - **Snapshots.** [`SerialDevice::state`] is what the guest can observe (the registers and
//!   the FIFO) plus the input still waiting on the host side; [`SerialDevice::restore`] puts
//!   it back, checking it first, since it comes from a file. The counters stay the device's.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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

/// Shared so that a restored UART keeps counting where the old one was.
type Uart = Serial<EventFdTrigger, Arc<OutputEvents>, Box<dyn Write + Send>>;

/// What a snapshot of a [`SerialDevice`] holds: every register and the receive FIFO of the
/// 16550 (the fields of [`vm_superio::serial::SerialState`]) and the input waiting on the host
/// side for room in the FIFO.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialState {
    /// Divisor latch, low byte (DLL).
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte (DLM).
    pub baud_divisor_high: u8,
    /// Interrupt enable register (IER).
    pub interrupt_enable: u8,
    /// Interrupt identification register (IIR).
    pub interrupt_identification: u8,
    /// Line control register (LCR).
    pub line_control: u8,
    /// Line status register (LSR).
    pub line_status: u8,
    /// Modem control register (MCR).
    pub modem_control: u8,
    /// Modem status register (MSR).
    pub modem_status: u8,
    /// Scratch register (SCR).
    pub scratch: u8,
    /// The receive FIFO, oldest byte first; at most the FIFO's 64 bytes.
    pub in_buffer: Vec<u8>,
    /// Guest input waiting for room in the FIFO, oldest first; at most [`PENDING_INPUT_CAP`]
    /// bytes.
    pub pending_input: Vec<u8>,
}

/// Why [`SerialDevice::restore`] refused a state; the device is left as it was.
#[derive(Debug, thiserror::Error)]
pub enum SerialStateError {
    /// More bytes in the receive FIFO than it holds.
    #[error("{len} bytes in the serial receive FIFO; it holds {capacity}")]
    FifoTooLong {
        /// Bytes in the state.
        len: usize,
        /// The FIFO's size.
        capacity: usize,
    },
    /// More pending input than the device keeps.
    #[error("{len} bytes of pending serial input; at most {PENDING_INPUT_CAP} are kept")]
    PendingInputTooLong {
        /// Bytes in the state.
        len: usize,
    },
    /// The interrupt the restored registers say is pending could not be raised, or its
    /// eventfd could not be duplicated.
    #[error("cannot raise the serial interrupt of the restored state")]
    Interrupt(#[source] io::Error),
}

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
        let uart = Serial::with_events(interrupt, Arc::default(), out);
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

    /// The guest-visible state (registers, receive FIFO) and the input waiting on the host
    /// side, for a snapshot.
    pub fn state(&self) -> SerialState {
        let uart = self.uart.state();
        SerialState {
            baud_divisor_low: uart.baud_divisor_low,
            baud_divisor_high: uart.baud_divisor_high,
            interrupt_enable: uart.interrupt_enable,
            interrupt_identification: uart.interrupt_identification,
            line_control: uart.line_control,
            line_status: uart.line_status,
            modem_control: uart.modem_control,
            modem_status: uart.modem_status,
            scratch: uart.scratch,
            in_buffer: uart.in_buffer,
            pending_input: self.pending_input.iter().copied().collect(),
        }
    }

    /// Puts back a [`state`](Self::state) taken from this or another device (read from a
    /// snapshot file, so checked first).
    ///
    /// The device keeps its interrupt eventfd, writer and counters. If the registers say an
    /// interrupt is pending and enabled, it is raised again (as `vm_superio` does on restore),
    /// so a guest that had not handled it yet still gets it. On error nothing changed.
    pub fn restore(&mut self, state: &SerialState) -> Result<(), SerialStateError> {
        if state.in_buffer.len() > self.fifo_size {
            return Err(SerialStateError::FifoTooLong {
                len: state.in_buffer.len(),
                capacity: self.fifo_size,
            });
        }
        if state.pending_input.len() > PENDING_INPUT_CAP {
            return Err(SerialStateError::PendingInputTooLong {
                len: state.pending_input.len(),
            });
        }
        let uart_state = vm_superio::serial::SerialState {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        };
        let trigger = self
            .uart
            .interrupt_evt()
            .try_clone()
            .map_err(SerialStateError::Interrupt)?;
        let events = Arc::clone(self.uart.events());
        // Built with a stand-in writer, so that on error the device still has its own.
        let stand_in: Box<dyn Write + Send> = Box::new(io::sink());
        let mut uart: Uart =
            Serial::from_state(&uart_state, trigger, events, stand_in).map_err(|e| match e {
                SerialError::Trigger(e) | SerialError::IOError(e) => SerialStateError::Interrupt(e),
                SerialError::FullFifo => SerialStateError::FifoTooLong {
                    len: state.in_buffer.len(),
                    capacity: self.fifo_size,
                },
            })?;
        std::mem::swap(uart.writer_mut(), self.uart.writer_mut());
        self.uart = uart;
        self.pending_input = state.pending_input.iter().copied().collect();
        // A state whose FIFO is empty while input waits (taken in loopback mode) lets the
        // input in now if the guest has left loopback mode; as the bus accesses do.
        if let Err(e) = self.refill_fifo() {
            self.report_interrupt_error(e);
        }
        Ok(())
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

impl crate::Persist for SerialDevice {
    type State = SerialState;
    type Error = SerialStateError;

    fn save(&self) -> Result<SerialState, SerialStateError> {
        Ok(self.state())
    }

    fn restore(&mut self, state: &SerialState) -> Result<(), SerialStateError> {
        SerialDevice::restore(self, state)
    }
}

#[cfg(test)]
mod tests;
