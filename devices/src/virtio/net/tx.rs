//! The transmit path: frames from the guest's transmit chains to the backend (virtio 1.2
//! §5.1.6.2).

use std::io;

use log::{debug, warn};
use virtio_queue::DescriptorChain;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

use super::{
    queue, Active, ChainError, Host, NetBackend, NetCounters, ETH_HLEN, IOV_MAX, MAX_BUFFER_LEN,
    VNET_HDR_LEN,
};

impl Active {
    /// The standard loop ([`queue::process_chains`]) on the transmit queue: every chain goes
    /// to the backend and back to the used ring with length 0 (§5.1.6.2: the device writes
    /// nothing into a transmit buffer). Returns whether the run stopped at its budget.
    pub(super) fn process_tx<B: NetBackend>(&mut self, host: &mut Host<B>) -> bool {
        let mem = &self.mem;
        let run = queue::process_chains(&mut self.tx, mem, "virtio-net transmit", |chain| {
            transmit(mem, host, chain);
            0
        });
        self.tx_added |= run.added;
        run.more
    }
}

/// Sends the frame in transmit chain `chain` to the backend, header included, straight from
/// guest memory; a malformed chain is dropped and counted.
fn transmit<B: NetBackend>(
    mem: &GuestMemoryMmap,
    host: &mut Host<B>,
    chain: DescriptorChain<&GuestMemoryMmap>,
) {
    let counters = &host.counters;
    let slices = match tx_slices(mem, chain) {
        Ok(slices) => slices,
        Err(e) => {
            debug!("virtio-net: dropping a transmit chain: {e}");
            NetCounters::add(&counters.tx_dropped, 1);
            return;
        }
    };
    let len: usize = slices.iter().map(VolatileSlice::len).sum();
    match host.backend.write_frame(&slices) {
        Ok(n) if n == len => {
            NetCounters::add(&counters.tx_frames, 1);
            NetCounters::add(&counters.tx_bytes, (len - VNET_HDR_LEN) as u64);
        }
        result => {
            let e = match result {
                Ok(n) => io::Error::other(format!("the backend took {n} of {len} bytes")),
                Err(e) => e,
            };
            if std::mem::replace(&mut host.tx_error_logged, true) {
                debug!("virtio-net: the backend refused a frame: {e}");
            } else {
                warn!("virtio-net: the backend refused a frame (further errors are counted): {e}");
            }
            NetCounters::add(&counters.tx_errors, 1);
        }
    }
}

/// The guest memory of a transmit chain: device-readable, a header and at least an Ethernet
/// header, at most [`MAX_BUFFER_LEN`] bytes, in guest memory.
fn tx_slices<'m>(
    mem: &'m GuestMemoryMmap,
    chain: DescriptorChain<&'m GuestMemoryMmap>,
) -> Result<Vec<VolatileSlice<'m>>, ChainError> {
    let mut slices = Vec::new();
    let mut total = 0u64;
    let mut complete = false;
    for desc in chain {
        complete = !desc.has_next();
        if desc.is_write_only() {
            return Err(ChainError::Writable);
        }
        total += u64::from(desc.len());
        if total > MAX_BUFFER_LEN as u64 {
            return Err(ChainError::TooLong);
        }
        // desc.len() <= MAX_BUFFER_LEN here.
        for slice in GuestMemoryBackend::get_slices(mem, desc.addr(), desc.len() as usize) {
            slices.push(slice.map_err(ChainError::Access)?);
        }
        if slices.len() > IOV_MAX {
            return Err(ChainError::TooManyPieces);
        }
    }
    if !complete {
        return Err(ChainError::Broken);
    }
    if total < (VNET_HDR_LEN + ETH_HLEN) as u64 {
        return Err(ChainError::TooShort(total));
    }
    Ok(slices)
}
