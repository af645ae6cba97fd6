/*
 * virtio-mmio discovery, initialisation and split-virtqueue setup for the 32-bit PVH test
 * guest (see virtio.h). Used by blk.c and net.c.
 *
 * Discovery is Linux's: every `virtio_mmio.device=<size>@<base>:<irq>[:<id>]` on the
 * command line (drivers/virtio/virtio_mmio.c, vm_cmdline_set).
 */
#include "virtio.h"

static void print_tagged(const struct virtio_dev *d, const char *msg)
{
    print(d->tag);
    print(": ");
    print(msg);
}

void virtio_fail(const struct virtio_dev *d, const char *msg)
{
    print(msg);
    print("\n");
    if (d->base)
        vdev_wr(d, VM_STATUS, vdev_rd(d, VM_STATUS) | S_FAILED);
    reboot();
}

/* `<tag>: <msg>` and virtio_fail. */
static void fail_tagged(const struct virtio_dev *d, const char *msg) __attribute__((noreturn));
static void fail_tagged(const struct virtio_dev *d, const char *msg)
{
    print_tagged(d, "");
    virtio_fail(d, msg);
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
        u32 d = hex_digit(*s);
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
static int next_device(const struct virtio_dev *d, const char **cursor, u64 *size, u64 *base,
                       u32 *irq)
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
        print_tagged(d, "bad ");
        serial_write(tok, (size_t)(p - tok));
        print("\n");
    }
    *cursor = p;
    return 0;
}

void virtio_find(struct virtio_dev *d, const char *cmdline, u32 device_id, const char *kind,
                 u32 want)
{
    u32 found = 0, entries = 0, legacy = 0;
    u64 size, base;
    u32 irq;
    const char *cur = cmdline;

    d->base = 0;
    while (next_device(d, &cur, &size, &base, &irq)) {
        entries++;
        print_tagged(d, "mmio ");
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
        if (magic != VIRTIO_MMIO_MAGIC || dev != device_id)
            continue;
        if (version != 2) {
            legacy++;
            continue;
        }
        if (found++ == want) {
            d->base = b;
            d->irq = irq;
            print_tagged(d, "using ");
            print(kind);
            print(" device ");
            print_dec(want);
            print(" at ");
            print_hex32(b);
            print(" irq ");
            print_dec(irq);
            print("\n");
        }
    }
    if (!entries)
        fail_tagged(d, "no virtio_mmio.device= on the command line");
    if (!d->base) {
        print_tagged(d, "no ");
        print(kind);
        print(" device ");
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
        reboot();
    }
}

int virtio_probe(struct virtio_dev *d, const char *cmdline, u32 device_id, u32 want)
{
    u64 size, base;
    u32 irq, found = 0;
    const char *cur = cmdline;

    d->base = 0;
    while (next_device(d, &cur, &size, &base, &irq)) {
        if (base >= 0x100000000ull || base + 0x104 > 0x100000000ull)
            continue;
        uptr b = (uptr)base;
        if (mmio_read32(b + VM_MAGIC) != VIRTIO_MMIO_MAGIC || mmio_read32(b + VM_VERSION) != 2 ||
            mmio_read32(b + VM_DEVICE_ID) != device_id)
            continue;
        if (found++ == want) {
            d->base = b;
            d->irq = irq;
            return 1;
        }
    }
    return 0;
}

/* ---- initialisation (§3.1.1) ---- */

u64 virtio_negotiate(const struct virtio_dev *d, u64 wanted, u32 spin, u64 *offered)
{
    /* 1. reset, 2. ACKNOWLEDGE, 3. DRIVER */
    vdev_wr(d, VM_STATUS, 0);
    for (u32 i = 0; vdev_rd(d, VM_STATUS) != 0; i++)
        if (i >= spin)
            fail_tagged(d, "reset timeout");
    vdev_wr(d, VM_STATUS, S_ACKNOWLEDGE);
    vdev_wr(d, VM_STATUS, S_ACKNOWLEDGE | S_DRIVER);

    /* 4. features */
    vdev_wr(d, VM_DEVICE_FEATURES_SEL, 0);
    u32 f_lo = vdev_rd(d, VM_DEVICE_FEATURES);
    vdev_wr(d, VM_DEVICE_FEATURES_SEL, 1);
    u32 f_hi = vdev_rd(d, VM_DEVICE_FEATURES);
    u32 a_lo = f_lo & (u32)wanted;
    u32 a_hi = f_hi & (u32)(wanted >> 32);
    print_tagged(d, "features ");
    print_hex(((u64)f_hi << 32) | f_lo);
    print(" accepted ");
    print_hex(((u64)a_hi << 32) | a_lo);
    print("\n");
    vdev_wr(d, VM_DRIVER_FEATURES_SEL, 0);
    vdev_wr(d, VM_DRIVER_FEATURES, a_lo);
    vdev_wr(d, VM_DRIVER_FEATURES_SEL, 1);
    vdev_wr(d, VM_DRIVER_FEATURES, a_hi);

    /* 5. FEATURES_OK, 6. check it stuck */
    vdev_wr(d, VM_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    if (!(vdev_rd(d, VM_STATUS) & S_FEATURES_OK))
        fail_tagged(d, "features refused");
    *offered = ((u64)f_hi << 32) | f_lo;
    return ((u64)a_hi << 32) | a_lo;
}

static void fail_queue(const struct virtio_dev *d, u32 index, const char *what)
    __attribute__((noreturn));
static void fail_queue(const struct virtio_dev *d, u32 index, const char *what)
{
    print_tagged(d, "queue ");
    print_dec(index);
    virtio_fail(d, what);
}

void virtio_queue_ready(const struct virtio_dev *d, uptr desc, uptr avail, uptr used)
{
    vdev_wr(d, VM_QUEUE_DESC_LOW, desc);
    vdev_wr(d, VM_QUEUE_DESC_HIGH, 0);
    vdev_wr(d, VM_QUEUE_DRIVER_LOW, avail);
    vdev_wr(d, VM_QUEUE_DRIVER_HIGH, 0);
    vdev_wr(d, VM_QUEUE_DEVICE_LOW, used);
    vdev_wr(d, VM_QUEUE_DEVICE_HIGH, 0);
    vdev_wr(d, VM_QUEUE_READY, 1);
}

void virtio_setup_queue(const struct virtio_dev *d, struct virtq *q, u32 index, u32 want,
                        u32 min, uptr desc, uptr avail, uptr used)
{
    vdev_wr(d, VM_QUEUE_SEL, index);
    if (vdev_rd(d, VM_QUEUE_READY) != 0)
        fail_queue(d, index, " already ready");
    u32 qmax = vdev_rd(d, VM_QUEUE_NUM_MAX);
    if (qmax == 0)
        fail_queue(d, index, " not available");
    u32 lim = qmax < want ? qmax : want, size = 1;
    while (size * 2 <= lim)
        size *= 2;
    if (size < min)
        fail_queue(d, index, " too small");
    vdev_wr(d, VM_QUEUE_NUM, size);
    /* §2.7: descriptor table 16*n, avail 6+2*n, used 6+8*n bytes (rounded up to 4). */
    zero32(desc, 16 * size);
    zero32(avail, 8 + 2 * size);
    zero32(used, 8 + 8 * size);
    q->index = index;
    q->size = size;
    q->desc = (volatile struct virtq_desc *)desc;
    q->avail = (volatile u16 *)avail;
    q->used = (volatile u16 *)used;
    q->avail_idx = 0;
    q->used_seen = 0;
    virtio_queue_ready(d, desc, avail, used);
    print_tagged(d, "queue ");
    print_dec(index);
    print(" size ");
    print_dec(size);
    print(" (max ");
    print_dec(qmax);
    print(")\n");
}

void virtio_driver_ok(const struct virtio_dev *d)
{
    vdev_wr(d, VM_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
}

void virtio_ack_interrupt(const struct virtio_dev *d)
{
    u32 isr = vdev_rd(d, VM_INTERRUPT_STATUS);
    if (isr)
        vdev_wr(d, VM_INTERRUPT_ACK, isr);
}

int virtq_poll(const struct virtio_dev *d, const struct virtq *q)
{
    if (q->used[1] != q->used_seen)
        return 1;
    virtio_ack_interrupt(d);
    cpu_relax();
    return 0;
}
