/*
 * Minimal virtio-blk driver over virtio-mmio for the 32-bit PVH test guest
 * (`test=blk` and `test=blkbench`; see README.md for the exact output).
 *
 * Virtio 1.2: §4.2.2 MMIO registers (version 2 "modern" layout only), §3.1.1 driver
 * initialisation, §2.7 split virtqueues, §5.2 block device. Polled: the guest runs with
 * interrupts off and waits for completions by watching the used ring's idx, reading and
 * acknowledging InterruptStatus between looks (each read is a VM exit, which also bounds
 * the wait in time rather than in instructions).
 *
 * The transport (discovery from `virtio_mmio.device=` as Linux does it, status and feature
 * negotiation, queue setup, ring helpers) is virtio.c, shared with net.c.
 *
 * Guest memory used (paging is off, addresses are physical):
 *   0x40000  descriptor table (16 bytes x queue size)
 *   0x41000  available ring
 *   0x42000  used ring
 *   0x43000  request headers (16 bytes per slot), 0x43800 status bytes (16 per slot),
 *            0x43c00 GET_ID buffer
 *   0x50000  `blk` data buffer when count <= 512 sectors (up to 0x90000), else 0x1000000
 *   0x1000000 `blkbench` data buffers, one per in-flight request (at most 32 MiB)
 * The VMM's boot structures sit at 0x500-0xffff, the command line at 0x20000, the SMP
 * trampoline at 0x30000, the MP table at 0x9fc00 and this image at 0x100000.
 */
#include "virtio.h"

/* Feature bits (§5.2.3) */
#define F_BLK_RO 5
#define F_BLK_SIZE 6
#define F_BLK_FLUSH 9

/* Block requests (§5.2.6) */
#define T_IN 0
#define T_OUT 1
#define T_FLUSH 4
#define T_GET_ID 8
#define T_UNKNOWN 0x99
#define BLK_ID_BYTES 20

struct blk_req_hdr {
    u32 type;
    u32 reserved;
    u64 sector;
};

_Static_assert(sizeof(struct blk_req_hdr) == 16, "virtio_blk_req header layout");

#define RING_DESC 0x40000u
#define RING_AVAIL 0x41000u
#define RING_USED 0x42000u
#define REQ_HDRS 0x43000u
#define REQ_STATUS 0x43800u
#define ID_BUF 0x43c00u
#define BLK_BUF_LOW 0x50000u
#define BLK_BUF_LOW_SECTORS 512u
#define BUF_HIGH 0x1000000u
#define BUF_HIGH_SIZE 0x2000000u

#define QUEUE_MAX 16u
#define NO_STATUS 0xff /* status byte preset: the device did not write one */

static struct virtio_dev dev = { .tag = "blk" };
static struct virtq vq;     /* queue 0 */
static u32 spin_limit;      /* InterruptStatus reads per wait before `blk: timeout` */
static int has_flush, read_only;
static u64 capacity;

/* Decimal u64 without libgcc: 64/32 divl with the high remainder in %edx (no overflow). */
static void print_u64(u64 v)
{
    char buf[20];
    int n = 0;
    do {
        u32 hi = (u32)(v >> 32), lo = (u32)v, r;
        u32 qhi = hi / 10;
        r = hi % 10;
        __asm__("divl %4" : "=a"(lo), "=d"(r) : "0"(lo), "1"(r), "rm"(10u));
        buf[n++] = (char)('0' + r);
        v = ((u64)qhi << 32) | lo;
    } while (v);
    while (n)
        serial_putc(buf[--n]);
}

static void stop(void) __attribute__((noreturn));
static void stop(void)
{
    reboot();
}

static void fail(const char *msg) __attribute__((noreturn));
static void fail(const char *msg)
{
    virtio_fail(&dev, msg);
}

/* ---- virtqueue ---- */

/*
 * Queues request `type` at `sector` in slot `slot` (descriptors 3*slot..3*slot+2):
 * header (device-readable), optional data (device-writable if `in`), status byte
 * (device-writable). Makes it visible in the avail ring; the caller notifies.
 */
static void submit(u32 slot, u32 type, u64 sector, uptr buf, u32 len, int in)
{
    volatile struct blk_req_hdr *h = (volatile struct blk_req_hdr *)(REQ_HDRS + slot * 16);
    volatile u8 *st = (volatile u8 *)(REQ_STATUS + slot * 16);
    volatile struct virtq_desc *desc = vq.desc;
    u32 d = slot * 3;

    h->type = type;
    h->reserved = 0;
    h->sector = sector;
    *st = NO_STATUS;

    desc[d].addr = (uptr)h;
    desc[d].len = sizeof *h;
    desc[d].flags = DESC_F_NEXT;
    desc[d].next = (u16)(len ? d + 1 : d + 2);
    if (len) {
        desc[d + 1].addr = buf;
        desc[d + 1].len = len;
        desc[d + 1].flags = (u16)(DESC_F_NEXT | (in ? DESC_F_WRITE : 0));
        desc[d + 1].next = (u16)(d + 2);
    }
    desc[d + 2].addr = (uptr)st;
    desc[d + 2].len = 1;
    desc[d + 2].flags = DESC_F_WRITE;
    desc[d + 2].next = 0;

    virtq_add(&vq, (u16)d);
    virtq_publish(&vq);
}

static void notify(void)
{
    virtq_notify(&dev, &vq);
}

/* Waits for the next used ring entry; returns its slot. Prints `blk: timeout` and stops. */
static u32 wait_used(void)
{
    for (u32 i = 0; !virtq_poll(&dev, &vq); i++)
        if (i >= spin_limit)
            fail("blk: timeout");
    u32 len;
    return virtq_pop_used(&vq, &len) / 3;
}

static u32 slot_status(u32 slot)
{
    return *(volatile u8 *)(REQ_STATUS + slot * 16);
}

/* One request, waited for; returns the status byte (255 if the device wrote none). */
static u32 do_req(u32 type, u64 sector, uptr buf, u32 len, int in)
{
    submit(0, type, sector, buf, len, in);
    notify();
    u32 slot = wait_used();
    if (slot != 0)
        fail("blk: used ring returned a descriptor that was not queued");
    return slot_status(0);
}

/* ---- initialisation (§3.1.1) ---- */

static u64 config_read64(u32 off)
{
    u32 gen, lo, hi;
    do {
        gen = vdev_rd(&dev, VM_CONFIG_GENERATION);
        lo = vdev_rd(&dev, VM_CONFIG + off);
        hi = vdev_rd(&dev, VM_CONFIG + off + 4);
    } while (vdev_rd(&dev, VM_CONFIG_GENERATION) != gen);
    return ((u64)hi << 32) | lo;
}

static void blk_init(const char *cmdline)
{
    u64 offered, accepted;

    spin_limit = cmdline_get_u32(cmdline, "blkspin", 1000000);
    print("cmdline: ");
    print(cmdline);
    print("\n");

    virtio_find(&dev, cmdline, VIRTIO_ID_BLOCK, "block", cmdline_get_u32(cmdline, "blkdev", 0));
    /* steps 1-6 */
    accepted = virtio_negotiate(&dev, (1ull << F_VERSION_1) | (1u << F_BLK_FLUSH), spin_limit,
                                &offered);
    has_flush = !!(accepted & (1u << F_BLK_FLUSH));
    read_only = !!(offered & (1u << F_BLK_RO));
    /* 7. queue 0 */
    virtio_setup_queue(&dev, &vq, 0, QUEUE_MAX, 3, RING_DESC, RING_AVAIL, RING_USED);
    /* 8. DRIVER_OK */
    virtio_driver_ok(&dev);

    capacity = config_read64(0);
    print("blk: capacity ");
    print_u64(capacity);
    print(" sectors\n");
    if (offered & (1u << F_BLK_SIZE)) {
        print("blk: block size ");
        print_dec(vdev_rd(&dev, VM_CONFIG + 20));
        print("\n");
    }
    print(read_only ? "blk: read-only\n" : "blk: read-write\n");
}

static void print_status(const char *what, u32 s)
{
    print("blk: ");
    print(what);
    print(" status ");
    print_dec(s);
    print("\n");
}

/* ---- test=blk ---- */

/* Byte i of the test write: (P + i*7 + i/512) & 0xff, i counted from the first byte of
 * sector S. Per sector j (i = 512*j + k): P + 3585*j + 7*k. */
static void fill_pattern(volatile u8 *buf, u32 sectors, u32 seed)
{
    for (u32 j = 0; j < sectors; j++) {
        u32 v = seed + j * 3585;
        for (u32 k = 0; k < 512; k++, v += 7)
            *buf++ = (u8)v;
    }
}

/* Offset of the first byte that differs from the pattern, or -1. */
static int check_pattern(const volatile u8 *buf, u32 sectors, u32 seed)
{
    for (u32 j = 0; j < sectors; j++) {
        u32 v = seed + j * 3585;
        for (u32 k = 0; k < 512; k++, v += 7)
            if (buf[j * 512 + k] != (u8)v)
                return (int)(j * 512 + k);
    }
    return -1;
}

void test_blk(const char *cmdline) __attribute__((noreturn));
void test_blk(const char *cmdline)
{
    blk_init(cmdline);

    u32 sector = cmdline_get_u32(cmdline, "sector", 0);
    u32 count = cmdline_get_u32(cmdline, "count", 8);
    u32 seed = cmdline_get_u32(cmdline, "pattern", 0x5a) & 0xff;
    if (count == 0 || count > BUF_HIGH_SIZE / 512)
        fail("blk: count must be 1..65536");
    uptr buf = count <= BLK_BUF_LOW_SECTORS ? BLK_BUF_LOW : BUF_HIGH;
    u32 len = count * 512;

    /* 1. GET_ID */
    volatile u8 *id = (volatile u8 *)ID_BUF;
    zero32(ID_BUF, 32);
    u32 s = do_req(T_GET_ID, 0, ID_BUF, BLK_ID_BYTES, 1);
    if (s == 0) {
        print("blk: id ");
        for (u32 i = 0; i < BLK_ID_BYTES && id[i]; i++)
            serial_putc(id[i] >= 0x20 && id[i] < 0x7f ? (char)id[i] : '?');
        print("\n");
    } else {
        print_status("id", s);
    }

    /* 2. write */
    fill_pattern((volatile u8 *)buf, count, seed);
    print_status("write", do_req(T_OUT, sector, buf, len, 0));

    /* 3. flush */
    if (has_flush)
        print_status("flush", do_req(T_FLUSH, 0, 0, 0, 0));

    /* 4. read back */
    zero32(buf, len);
    s = do_req(T_IN, sector, buf, len, 1);
    print_status("read", s);
    if (!read_only) {
        int off = check_pattern((const volatile u8 *)buf, count, seed);
        if (off < 0) {
            print("blk: verify ok\n");
        } else {
            print("blk: verify mismatch at ");
            print_dec((u32)off);
            print("\n");
        }
    }

    /* 5. past the end, 6. unknown type */
    print_status("past-end", do_req(T_IN, capacity, buf, 512, 1));
    print_status("unknown-type", do_req(T_UNKNOWN, 0, 0, 0, 0));

    print("blk: done\n");
    stop();
}

/* ---- test=blklines ---- */

static u32 parse_dec(const char **sp)
{
    u32 v = 0;
    while (**sp >= '0' && **sp <= '9')
        v = v * 10 + (u32)(*(*sp)++ - '0');
    return v;
}

/*
 * One request per line read from COM1, on one queue set up once, so that a VM restored from a
 * snapshot must continue the queue's ring indices: `r N` reads sector N and prints its first 16
 * bytes (non-printable ones as '.'), `w N TEXT` writes TEXT (zero-padded) to sector N, `quit`
 * resets. Each answer says how many requests the queue has completed (the used ring's idx).
 */
void test_blklines(const char *cmdline) __attribute__((noreturn));
void test_blklines(const char *cmdline)
{
    char line[128];
    blk_init(cmdline);
    print("blklines: ready\n");
    for (;;) {
        serial_getline(line, sizeof line);
        if (str_eq(line, "quit")) {
            print("blklines: done\n");
            stop();
        }
        const char *p = line + 1;
        if ((line[0] != 'r' && line[0] != 'w') || *p++ != ' ') {
            print("blklines: bad command\n");
            continue;
        }
        u32 sector = parse_dec(&p);
        volatile u8 *buf = (volatile u8 *)BLK_BUF_LOW;
        u32 s;
        if (line[0] == 'w') {
            zero32(BLK_BUF_LOW, 512);
            if (*p == ' ')
                p++;
            for (u32 i = 0; p[i] && i < 512; i++)
                buf[i] = (u8)p[i];
            s = do_req(T_OUT, sector, BLK_BUF_LOW, 512, 0);
        } else {
            zero32(BLK_BUF_LOW, 512);
            s = do_req(T_IN, sector, BLK_BUF_LOW, 512, 1);
        }
        print("blklines: used ");
        print_dec(vq.used[1]);
        print(" status ");
        print_dec(s);
        if (line[0] == 'r') {
            print(" data ");
            for (u32 i = 0; i < 16; i++)
                serial_putc(buf[i] >= 0x20 && buf[i] < 0x7f ? (char)buf[i] : '.');
        }
        print("\n");
    }
}

/* ---- test=blkbench ---- */

static u32 depth, req_bytes;
static u32 bench_errors;

/*
 * `nreq` requests of `type`, at most `depth` in flight, refilled as they complete.
 * Sequential (`rand` = 0): request r covers [first + r*req_sectors, ...), the last one
 * clipped to `total` sectors. Random: 4 KiB at an LCG-chosen 4 KiB block below `total`.
 */
static void run_phase(u32 type, u32 nreq, u32 req_sectors, u32 total, int rand)
{
    u32 free_slots[QUEUE_MAX];
    u32 nfree = 0, issued = 0, done = 0, lcg = 12345;
    u32 blocks = total / 8;

    for (u32 i = 0; i < depth; i++)
        free_slots[nfree++] = depth - 1 - i;
    while (done < nreq) {
        u32 queued = 0;
        while (nfree && issued < nreq) {
            u32 slot = free_slots[--nfree];
            u32 sec, n;
            if (rand) {
                lcg = lcg * 1103515245u + 12345u;
                sec = ((lcg >> 8) % blocks) * 8;
                n = 8;
            } else {
                sec = issued * req_sectors;
                n = total - sec < req_sectors ? total - sec : req_sectors;
            }
            submit(slot, type, sec, BUF_HIGH + slot * req_bytes, n * 512, type == T_IN);
            issued++;
            queued++;
        }
        if (queued)
            notify();
        /* Consume every completion that is there, at least one. */
        do {
            u32 slot = wait_used();
            if (slot >= depth)
                fail("blk: used ring returned a descriptor that was not queued");
            if (slot_status(slot) != 0)
                bench_errors++;
            free_slots[nfree++] = slot;
            done++;
        } while (virtq_used_pending(&vq));
    }
}

void test_blkbench(const char *cmdline) __attribute__((noreturn));
void test_blkbench(const char *cmdline)
{
    blk_init(cmdline);

    u32 mb = cmdline_get_u32(cmdline, "mb", 16);
    u32 reqsize = cmdline_get_u32(cmdline, "reqsize", 128);
    u32 ops = cmdline_get_u32(cmdline, "ops", 2000);
    u32 maxdepth = vq.size / 3;
    depth = cmdline_get_u32(cmdline, "depth", maxdepth);
    if (depth < 1)
        depth = 1;
    if (depth > maxdepth)
        depth = maxdepth;
    if (mb < 1 || mb > 2047 || reqsize < 4 || reqsize > 4096)
        fail("blkbench: need mb 1..2047, reqsize 4..4096");
    req_bytes = reqsize * 1024;
    if (depth * req_bytes > BUF_HIGH_SIZE)
        depth = BUF_HIGH_SIZE / req_bytes;
    u32 total = mb * 2048;
    if (capacity < total) {
        print("blkbench: disk too small: ");
        print_u64(capacity);
        print(" sectors, need ");
        print_dec(total);
        print("\n");
        stop();
    }
    u32 req_sectors = reqsize * 2;
    u32 nseq = (total + req_sectors - 1) / req_sectors;
    print("blkbench: mb ");
    print_dec(mb);
    print(" reqsize ");
    print_dec(reqsize);
    print(" KiB ops ");
    print_dec(ops);
    print(" depth ");
    print_dec(depth);
    print("\n");

    outb(DEBUG_PORT, 0x10);
    run_phase(T_OUT, nseq, req_sectors, total, 0);
    if (has_flush) {
        submit(0, T_FLUSH, 0, 0, 0, 0);
        notify();
        (void)wait_used();
        if (slot_status(0) != 0)
            bench_errors++;
    }
    outb(DEBUG_PORT, 0x11);

    outb(DEBUG_PORT, 0x12);
    run_phase(T_IN, nseq, req_sectors, total, 0);
    outb(DEBUG_PORT, 0x13);

    outb(DEBUG_PORT, 0x14);
    run_phase(T_IN, ops, 8, total, 1);
    outb(DEBUG_PORT, 0x15);

    print("blkbench: write ");
    print_dec(mb);
    print(" MiB, read ");
    print_dec(mb);
    print(" MiB, ");
    print_dec(ops);
    print(" 4k reads, errors ");
    print_dec(bench_errors);
    print("\n");
    stop();
}

/* ---- test=blkflood ---- */

/*
 * Keeps the request queue full without end: every slot holds a read of `floodkib` KiB
 * (default 4096) from sector 0 into one shared buffer at BUF_HIGH, and each completion is
 * resubmitted at once, so the device never finds the ring empty. Prints
 * `blkflood: flooding` once, then nothing; the VM ends only from outside.
 */
void test_blkflood(const char *cmdline) __attribute__((noreturn));
void test_blkflood(const char *cmdline)
{
    blk_init(cmdline);
    u32 kib = cmdline_get_u32(cmdline, "floodkib", 4096);
    if (kib < 1 || kib > BUF_HIGH_SIZE / 1024 || (u64)kib * 2 > capacity)
        fail("blkflood: need floodkib 1..32768 within the disk");
    u32 slots = vq.size / 3;
    for (u32 slot = 0; slot < slots; slot++)
        submit(slot, T_IN, 0, BUF_HIGH, kib * 1024, 1);
    notify();
    print("blkflood: flooding\n");
    for (;;) {
        u32 again = 0;
        while (virtq_used_pending(&vq)) {
            u32 len;
            u32 slot = virtq_pop_used(&vq, &len) / 3;
            if (slot < slots) {
                submit(slot, T_IN, 0, BUF_HIGH, kib * 1024, 1);
                again++;
            }
        }
        if (again)
            virtq_kick(&dev, &vq);
    }
}
