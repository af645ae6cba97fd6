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
 * Discovery is Linux's: every `virtio_mmio.device=<size>@<base>:<irq>[:<id>]` on the
 * command line (drivers/virtio/virtio_mmio.c, vm_cmdline_set).
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
#define VIRTIO_ID_BLOCK 2

/* Device status (§2.1) */
#define S_ACKNOWLEDGE 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8
#define S_FAILED 128

/* Feature bits */
#define F_BLK_RO 5
#define F_BLK_FLUSH 9
#define F_VERSION_1 32

/* Block requests (§5.2.6) */
#define T_IN 0
#define T_OUT 1
#define T_FLUSH 4
#define T_GET_ID 8
#define T_UNKNOWN 0x99
#define BLK_ID_BYTES 20

/* Split virtqueue (§2.7) */
#define DESC_F_NEXT 1
#define DESC_F_WRITE 2

struct virtq_desc {
    u64 addr;
    u32 len;
    u16 flags;
    u16 next;
};

struct blk_req_hdr {
    u32 type;
    u32 reserved;
    u64 sector;
};

_Static_assert(sizeof(struct virtq_desc) == 16, "virtq_desc layout");
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

static uptr mmio;           /* base of the chosen transport */
static u32 qsize;           /* QueueNum */
static u16 avail_idx;       /* next free avail ring index (free-running) */
static u16 used_seen;       /* used ring entries consumed (free-running) */
static u32 spin_limit;      /* InterruptStatus reads per wait before `blk: timeout` */
static int has_flush, read_only;
static u64 capacity;

static volatile struct virtq_desc *const desc = (volatile struct virtq_desc *)RING_DESC;
static volatile u16 *const avail = (volatile u16 *)RING_AVAIL; /* flags, idx, ring[] */
static volatile u16 *const used = (volatile u16 *)RING_USED;   /* flags, idx, then ring */

#define barrier() __asm__ volatile("" : : : "memory") /* x86 is TSO: compiler barrier only */

static u32 rd(u32 off)
{
    return mmio_read32(mmio + off);
}

static void wr(u32 off, u32 v)
{
    mmio_write32(mmio + off, v);
}

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
    print(msg);
    print("\n");
    if (mmio)
        wr(VM_STATUS, rd(VM_STATUS) | S_FAILED);
    stop();
}

/* ---- command line: virtio_mmio.device=<size>@<base>:<irq>[:<id>] ---- */

/* simple_strtoull with base 0: 0x.. hex, 0.. octal, else decimal. 0 if no digits. */
static int parse_num(const char **sp, u64 *out)
{
    const char *s = *sp;
    u32 base = 10;
    u64 v = 0;
    int digits = 0;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        s += 2;
    } else if (s[0] == '0') {
        base = 8;
    }
    for (;; s++, digits++) {
        u32 d;
        if (*s >= '0' && *s <= '9')
            d = (u32)(*s - '0');
        else if (*s >= 'a' && *s <= 'f')
            d = (u32)(*s - 'a' + 10);
        else if (*s >= 'A' && *s <= 'F')
            d = (u32)(*s - 'A' + 10);
        else
            break;
        if (d >= base)
            break;
        v = base == 16 ? v << 4 : base == 8 ? v << 3 : v * 10;
        v += d;
    }
    if (!digits)
        return 0;
    *sp = s;
    *out = v;
    return 1;
}

/* Linux memparse: a number then an optional K/M/G/T/P/E suffix (either case). */
static int parse_size(const char **sp, u64 *out)
{
    if (!parse_num(sp, out))
        return 0;
    u32 shift = 0;
    switch (**sp) {
    case 'E': case 'e': shift += 10; /* fall through */
    case 'P': case 'p': shift += 10; /* fall through */
    case 'T': case 't': shift += 10; /* fall through */
    case 'G': case 'g': shift += 10; /* fall through */
    case 'M': case 'm': shift += 10; /* fall through */
    case 'K': case 'k': shift += 10; (*sp)++; break;
    default: break;
    }
    *out <<= shift;
    return 1;
}

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n';
}

static const char PREFIX[] = "virtio_mmio.device=";

/*
 * Finds the next virtio_mmio.device= token at or after *cursor; 1 and its fields if it
 * parses, 0 at the end of the command line. Malformed entries are reported and skipped.
 */
static int next_device(const char **cursor, u64 *size, u64 *base, u32 *irq)
{
    const char *p = *cursor;
    while (*p) {
        while (is_space(*p))
            p++;
        const char *tok = p;
        while (*p && !is_space(*p))
            p++;
        u32 i = 0;
        while (PREFIX[i] && tok + i < p && tok[i] == PREFIX[i])
            i++;
        if (PREFIX[i])
            continue;
        const char *s = tok + i;
        u64 irq64 = 0, id;
        int ok = parse_size(&s, size) && *s++ == '@' && parse_num(&s, base) && *s++ == ':';
        if (ok) {
            /* irq: %u, decimal */
            ok = *s >= '0' && *s <= '9';
            irq64 = 0;
            while (*s >= '0' && *s <= '9')
                irq64 = irq64 * 10 + (u32)(*s++ - '0');
        }
        if (ok && *s == ':') {
            s++;
            if (*s == '-')
                s++;
            ok = parse_num(&s, &id);
        }
        if (ok && s == p) {
            *irq = (u32)irq64;
            *cursor = p;
            return 1;
        }
        print("blk: bad ");
        serial_write(tok, (size_t)(p - tok));
        print("\n");
    }
    *cursor = p;
    return 0;
}

/* ---- virtqueue ---- */

static void zero(uptr addr, u32 len)
{
    volatile u32 *p = (volatile u32 *)addr;
    for (u32 i = 0; i < len / 4; i++)
        p[i] = 0;
}

/*
 * Queues request `type` at `sector` in slot `slot` (descriptors 3*slot..3*slot+2):
 * header (device-readable), optional data (device-writable if `in`), status byte
 * (device-writable). Makes it visible in the avail ring; the caller notifies.
 */
static void submit(u32 slot, u32 type, u64 sector, uptr buf, u32 len, int in)
{
    volatile struct blk_req_hdr *h = (volatile struct blk_req_hdr *)(REQ_HDRS + slot * 16);
    volatile u8 *st = (volatile u8 *)(REQ_STATUS + slot * 16);
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

    avail[2 + avail_idx % qsize] = (u16)d;
    barrier(); /* ring entry before idx */
    avail_idx++;
    avail[1] = avail_idx;
}

static void notify(void)
{
    barrier();
    wr(VM_QUEUE_NOTIFY, 0);
}

/* Waits for the next used ring entry; returns its slot. Prints `blk: timeout` and stops. */
static u32 wait_used(void)
{
    for (u32 i = 0;; i++) {
        if (used[1] != used_seen)
            break;
        if (i >= spin_limit)
            fail("blk: timeout");
        u32 isr = rd(VM_INTERRUPT_STATUS);
        if (isr)
            wr(VM_INTERRUPT_ACK, isr);
        cpu_relax();
    }
    barrier(); /* idx before the entry */
    /* used ring: u16 flags, u16 idx, then {u32 id; u32 len}[qsize] */
    volatile u32 *elem = (volatile u32 *)(RING_USED + 4 + (used_seen % qsize) * 8);
    u32 id = elem[0];
    used_seen++;
    return id / 3;
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
        gen = rd(VM_CONFIG_GENERATION);
        lo = rd(VM_CONFIG + off);
        hi = rd(VM_CONFIG + off + 4);
    } while (rd(VM_CONFIG_GENERATION) != gen);
    return ((u64)hi << 32) | lo;
}

static void blk_init(const char *cmdline)
{
    u32 want = cmdline_get_u32(cmdline, "blkdev", 0);
    u32 found = 0, entries = 0, legacy = 0;
    u64 size, base;
    u32 irq;
    const char *cur = cmdline;

    spin_limit = cmdline_get_u32(cmdline, "blkspin", 1000000);
    print("cmdline: ");
    print(cmdline);
    print("\n");

    while (next_device(&cur, &size, &base, &irq)) {
        entries++;
        print("blk: mmio ");
        print_hex(base);
        print(" size ");
        print_hex(size);
        print(" irq ");
        print_dec(irq);
        if (base >= 0x100000000ull || base + 0x104 > 0x100000000ull) {
            print(": above 4 GiB, skipped\n");
            continue;
        }
        uptr b = (uptr)base;
        u32 magic = mmio_read32(b + VM_MAGIC);
        u32 version = mmio_read32(b + VM_VERSION);
        u32 dev = mmio_read32(b + VM_DEVICE_ID);
        print(" magic ");
        print_hex32(magic);
        print(" version ");
        print_dec(version);
        print(" device ");
        print_dec(dev);
        print("\n");
        if (magic != VIRTIO_MMIO_MAGIC || dev != VIRTIO_ID_BLOCK)
            continue;
        if (version != 2) {
            legacy++;
            continue;
        }
        if (found++ == want) {
            mmio = b;
            print("blk: using block device ");
            print_dec(want);
            print(" at ");
            print_hex32(b);
            print(" irq ");
            print_dec(irq);
            print("\n");
        }
    }
    if (!entries)
        fail("blk: no virtio_mmio.device= on the command line");
    if (!mmio) {
        print("blk: no block device ");
        print_dec(want);
        print(" (");
        print_dec(found);
        print(" found");
        if (legacy) {
            print(", ");
            print_dec(legacy);
            print(" legacy/non-version-2 skipped");
        }
        print(")\n");
        stop();
    }

    /* 1. reset, 2. ACKNOWLEDGE, 3. DRIVER */
    wr(VM_STATUS, 0);
    for (u32 i = 0; rd(VM_STATUS) != 0; i++)
        if (i >= spin_limit)
            fail("blk: reset timeout");
    wr(VM_STATUS, S_ACKNOWLEDGE);
    wr(VM_STATUS, S_ACKNOWLEDGE | S_DRIVER);

    /* 4. features */
    wr(VM_DEVICE_FEATURES_SEL, 0);
    u32 f_lo = rd(VM_DEVICE_FEATURES);
    wr(VM_DEVICE_FEATURES_SEL, 1);
    u32 f_hi = rd(VM_DEVICE_FEATURES);
    u32 a_lo = f_lo & (1u << F_BLK_FLUSH);
    u32 a_hi = f_hi & (1u << (F_VERSION_1 - 32));
    has_flush = !!a_lo;
    read_only = !!(f_lo & (1u << F_BLK_RO));
    print("blk: features ");
    print_hex(((u64)f_hi << 32) | f_lo);
    print(" accepted ");
    print_hex(((u64)a_hi << 32) | a_lo);
    print("\n");
    wr(VM_DRIVER_FEATURES_SEL, 0);
    wr(VM_DRIVER_FEATURES, a_lo);
    wr(VM_DRIVER_FEATURES_SEL, 1);
    wr(VM_DRIVER_FEATURES, a_hi);

    /* 5. FEATURES_OK, 6. check it stuck */
    wr(VM_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    if (!(rd(VM_STATUS) & S_FEATURES_OK))
        fail("blk: features refused");

    /* 7. queue 0 */
    wr(VM_QUEUE_SEL, 0);
    if (rd(VM_QUEUE_READY) != 0)
        fail("blk: queue 0 already ready");
    u32 qmax = rd(VM_QUEUE_NUM_MAX);
    if (qmax == 0)
        fail("blk: queue 0 not available");
    qsize = qmax < QUEUE_MAX ? qmax : QUEUE_MAX;
    if (qsize < 3)
        fail("blk: queue 0 too small");
    wr(VM_QUEUE_NUM, qsize);
    zero(RING_DESC, 0x1000);
    zero(RING_AVAIL, 0x1000);
    zero(RING_USED, 0x1000);
    avail_idx = 0;
    used_seen = 0;
    wr(VM_QUEUE_DESC_LOW, RING_DESC);
    wr(VM_QUEUE_DESC_HIGH, 0);
    wr(VM_QUEUE_DRIVER_LOW, RING_AVAIL);
    wr(VM_QUEUE_DRIVER_HIGH, 0);
    wr(VM_QUEUE_DEVICE_LOW, RING_USED);
    wr(VM_QUEUE_DEVICE_HIGH, 0);
    wr(VM_QUEUE_READY, 1);
    print("blk: queue 0 size ");
    print_dec(qsize);
    print(" (max ");
    print_dec(qmax);
    print(")\n");

    /* 8. DRIVER_OK */
    wr(VM_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);

    capacity = config_read64(0);
    print("blk: capacity ");
    print_u64(capacity);
    print(" sectors\n");
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
    zero(ID_BUF, 32);
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
    zero(buf, len);
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
        } while (used[1] != used_seen);
    }
}

void test_blkbench(const char *cmdline) __attribute__((noreturn));
void test_blkbench(const char *cmdline)
{
    blk_init(cmdline);

    u32 mb = cmdline_get_u32(cmdline, "mb", 16);
    u32 reqsize = cmdline_get_u32(cmdline, "reqsize", 128);
    u32 ops = cmdline_get_u32(cmdline, "ops", 2000);
    u32 maxdepth = qsize / 3;
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
