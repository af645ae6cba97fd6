/*
 * virtio-mmio transport and split virtqueues for the 32-bit PVH test guest, shared by the
 * block (blk.c) and network (net.c) drivers. Polled, modern (version 2) registers only.
 *
 * Virtio 1.2: §4.2.2 MMIO registers, §3.1.1 driver initialisation, §2.7 split virtqueues.
 */
#ifndef GUEST_VIRTIO_H
#define GUEST_VIRTIO_H

#include "common.h"

/* virtio-mmio registers (§4.2.2) */
#define VM_MAGIC 0x000
#define VM_VERSION 0x004
#define VM_DEVICE_ID 0x008
#define VM_DEVICE_FEATURES 0x010
#define VM_DEVICE_FEATURES_SEL 0x014
#define VM_DRIVER_FEATURES 0x020
#define VM_DRIVER_FEATURES_SEL 0x024
#define VM_QUEUE_SEL 0x030
#define VM_QUEUE_NUM_MAX 0x034
#define VM_QUEUE_NUM 0x038
#define VM_QUEUE_READY 0x044
#define VM_QUEUE_NOTIFY 0x050
#define VM_INTERRUPT_STATUS 0x060
#define VM_INTERRUPT_ACK 0x064
#define VM_STATUS 0x070
#define VM_QUEUE_DESC_LOW 0x080
#define VM_QUEUE_DESC_HIGH 0x084
#define VM_QUEUE_DRIVER_LOW 0x090
#define VM_QUEUE_DRIVER_HIGH 0x094
#define VM_QUEUE_DEVICE_LOW 0x0a0
#define VM_QUEUE_DEVICE_HIGH 0x0a4
#define VM_CONFIG_GENERATION 0x0fc
#define VM_CONFIG 0x100

#define VIRTIO_MMIO_MAGIC 0x74726976 /* "virt" */
#define VIRTIO_ID_NET 1
#define VIRTIO_ID_BLOCK 2
#define VIRTIO_ID_VSOCK 19

/* Device status (§2.1) */
#define S_ACKNOWLEDGE 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8
#define S_FAILED 128

#define F_VERSION_1 32 /* VIRTIO_F_VERSION_1 */

/* Split virtqueue (§2.7) */
#define DESC_F_NEXT 1
#define DESC_F_WRITE 2
#define USED_F_NO_NOTIFY 1 /* used ring flags: the device asks not to be notified */

struct virtq_desc {
    u64 addr;
    u32 len;
    u16 flags;
    u16 next;
};
_Static_assert(sizeof(struct virtq_desc) == 16, "virtq_desc layout");

/* One virtio-mmio transport. `tag` prefixes every line printed for it ("blk", "net"). */
struct virtio_dev {
    const char *tag;
    uptr base; /* 0 until virtio_find() picked one */
    u32 irq;
};

/* One split virtqueue in guest memory. Indexes are free-running u16s (§2.7.6, §2.7.8). */
struct virtq {
    u32 index; /* queue number (QueueSel / QueueNotify value) */
    u32 size;  /* QueueNum, a power of 2 */
    volatile struct virtq_desc *desc;
    volatile u16 *avail; /* flags, idx, ring[size] */
    volatile u16 *used;  /* flags, idx, then struct { u32 id; u32 len; } ring[size] */
    u16 avail_idx;       /* next avail ring slot: published to avail[1] by virtq_publish */
    u16 used_seen;       /* used ring entries consumed */
};

#define barrier() __asm__ volatile("" : : : "memory") /* x86 is TSO: compiler barrier only */

/* Full fence (store -> load ordering) with an integer instruction: mfence is SSE2. */
static inline void full_barrier(void)
{
    __asm__ volatile("lock; addl $0, (%%esp)" : : : "memory", "cc");
}

static inline u32 vdev_rd(const struct virtio_dev *d, u32 off)
{
    return mmio_read32(d->base + off);
}

static inline void vdev_wr(const struct virtio_dev *d, u32 off, u32 v)
{
    mmio_write32(d->base + off, v);
}

static inline u8 vdev_config8(const struct virtio_dev *d, u32 off)
{
    return *(volatile u8 *)(d->base + VM_CONFIG + off);
}

/* Prints `msg` and a newline, sets FAILED if a device was picked, then the i8042 reset. */
void virtio_fail(const struct virtio_dev *d, const char *msg) __attribute__((noreturn));

/*
 * Probes every `virtio_mmio.device=<size>@<base>:<irq>[:<id>]` on the command line and
 * picks the `want`th version-2 device with DeviceID `device_id` (`kind` names it in the
 * messages: "block", "net"). Prints `<tag>: mmio …` per entry and `<tag>: using <kind>
 * device <want> at …`; on failure prints why and resets (does not return).
 */
void virtio_find(struct virtio_dev *d, const char *cmdline, u32 device_id, const char *kind,
                 u32 want);

/* Like virtio_find, silently: 1 and `d` set if the `want`th version-2 device with DeviceID
 * `device_id` is on the command line, else 0. */
int virtio_probe(struct virtio_dev *d, const char *cmdline, u32 device_id, u32 want);

/*
 * §3.1.1 steps 1-6: reset (waiting up to `spin` reads for status 0), ACKNOWLEDGE, DRIVER,
 * accept the offered features that are in `wanted`, FEATURES_OK and check it stuck.
 * Prints `<tag>: features <offered> accepted <accepted>`. Stores the offered set in
 * *offered; returns the accepted set.
 */
u64 virtio_negotiate(const struct virtio_dev *d, u64 wanted, u32 spin, u64 *offered);

/*
 * Sets up queue `index` with QueueNum = the largest power of 2 <= min(QueueNumMax, want),
 * rings at `desc`, `avail`, `used` (zeroed here), and QueueReady = 1. Prints
 * `<tag>: queue <index> size <n> (max <QueueNumMax>)`. Fails if the queue is already
 * ready, absent (max 0) or smaller than `min`.
 */
void virtio_setup_queue(const struct virtio_dev *d, struct virtq *q, u32 index, u32 want,
                        u32 min, uptr desc, uptr avail, uptr used);

/* The selected queue's ring addresses (all below 4 GiB), then QueueReady = 1. */
void virtio_queue_ready(const struct virtio_dev *d, uptr desc, uptr avail, uptr used);

void virtio_driver_ok(const struct virtio_dev *d);

/* Reads InterruptStatus (a VM exit) and acknowledges whatever bits are set. */
void virtio_ack_interrupt(const struct virtio_dev *d);

/* Puts descriptor chain `head` in the next avail ring slot; not visible until published. */
static inline __attribute__((always_inline)) void virtq_add(struct virtq *q, u16 head)
{
    q->avail[2 + (q->avail_idx & (q->size - 1))] = head;
    q->avail_idx++;
}

/* Makes the added entries visible: ring entries before idx (§2.7.13). */
static inline __attribute__((always_inline)) void virtq_publish(struct virtq *q)
{
    barrier();
    q->avail[1] = q->avail_idx;
}

/* QueueNotify, unconditionally. */
static inline __attribute__((always_inline)) void virtq_notify(const struct virtio_dev *d, const struct virtq *q)
{
    barrier();
    vdev_wr(d, VM_QUEUE_NOTIFY, q->index);
}

/* QueueNotify unless the device set VIRTQ_USED_F_NO_NOTIFY (§2.7.10; idx store before the
 * flags load, hence the full fence). */
static inline __attribute__((always_inline)) void virtq_kick(const struct virtio_dev *d, const struct virtq *q)
{
    full_barrier();
    if (!(q->used[0] & USED_F_NO_NOTIFY))
        vdev_wr(d, VM_QUEUE_NOTIFY, q->index);
}

/* Number of used ring entries not consumed yet. */
static inline __attribute__((always_inline)) u16 virtq_used_pending(const struct virtq *q)
{
    return (u16)(q->used[1] - q->used_seen);
}

/* Consumes the next used ring entry (the caller checked one is pending): returns its
 * descriptor id, stores the written length in *len. */
static inline __attribute__((always_inline)) u32 virtq_pop_used(struct virtq *q, u32 *len)
{
    barrier(); /* idx before the entry */
    volatile u32 *elem = (volatile u32 *)((uptr)q->used + 4 + (q->used_seen & (q->size - 1)) * 8);
    u32 id = elem[0];
    *len = elem[1];
    q->used_seen++;
    return id;
}

/* One look at the used ring: 1 if an entry is pending; else acknowledges interrupts
 * (one VM exit, which paces the caller's bounded wait) and returns 0. */
int virtq_poll(const struct virtio_dev *d, const struct virtq *q);

#endif
