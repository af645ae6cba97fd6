/*
 * test=hostile: a guest that attacks its VMM (see README.md, "test=hostile"). Round after
 * round it
 *   1. writes random values of random sizes to every I/O port (and reads them back),
 *   2. writes random values to every register and the configuration space of every
 *      virtio-mmio device on the command line,
 *   3. starts each device with random features and queue sizes, fills its rings with
 *      random and adversarial descriptor chains (loops, huge lengths, addresses beyond RAM
 *      and wrapping past 2^64, chains over the rings themselves, indirect tables of junk,
 *      avail indexes far ahead) and notifies it, valid and invalid queue numbers alike,
 *   4. sends a vsock device packets whose headers mostly look right (this guest's CID to the
 *      host's, a stream) with random operations, ports, lengths, flags and credit, with and
 *      without receive buffers for the replies,
 * then sets the serial port up again and prints `hostile: round <n>`. It stops after the
 * round in which a `q` arrived on COM1, sets exit code 0 on the exit-code port and resets.
 *
 * The only values it never writes are the ones that end the VM on purpose: 0xfe to the
 * i8042 command port (reset), SLP_EN to the ACPI sleep register (power-off), the panic bits to
 * pvpanic, and the seccomp trigger bytes (0xfd-0xff) to the debug port (a test-only build's). It keeps the
 * device's DMA away from its own code and stack (1 MiB), which a guest is free to wreck but
 * then could not report: every in-RAM address it hands a device is in the scratch area or the
 * rings.
 *
 * Guest memory: at least 64 MiB (`--memory 64`).
 */
#include "virtio.h"

#define RING_BASE 0x400000u     /* queue q: descriptors +q*0x4000, avail +0x1000, used +0x2000 */
#define SCRATCH 0x800000u       /* device buffers and indirect tables: 8..32 MiB */
#define SCRATCH_LEN 0x1800000u
#define RAM_END 0x4000000u      /* 64 MiB */
#define MAX_DEVICES 8

#define I8042_COMMAND 0x64
#define I8042_RESET 0xfe
#define ACPI_SLEEP 0x600
#define SLP_EN 0x20
#define PVPANIC 0x505
#define EXIT_CODE_PORT 0x506
#define SECCOMP_TRIGGER 0xfd /* 0xfd..0xff: the triggers of a test-only build */


static u32 rng = 1;

static u32 rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

static void outw(u16 port, u16 v)
{
    __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port) : "memory");
}

static void outl(u16 port, u32 v)
{
    __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port) : "memory");
}

static u32 inl(u16 port)
{
    u32 v;
    __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port) : "memory");
    return v;
}

/* A value for `port` with the VM-ending bits taken out. */
static u32 tame(u32 port, u32 v, u32 size)
{
    for (u32 i = 0; i < size; i++) {
        u32 p = port + i;
        u32 b = (v >> (8 * i)) & 0xff;
        if ((p == I8042_COMMAND && b == I8042_RESET) || (p == DEBUG_PORT && b >= SECCOMP_TRIGGER))
            b = 0;
        if (p == ACPI_SLEEP)
            b &= ~SLP_EN;
        if (p == PVPANIC)
            b = 0;
        v = (v & ~(0xffu << (8 * i))) | (b << (8 * i));
    }
    return v;
}

static u32 port_round(void)
{
    u32 writes = 0;
    for (u32 port = 0; port < 0x10000; port++) {
        u32 r = rnd();
        u32 size = 1u << (r & 3) % 3; /* 1, 2, 4 */
        if (port + size > 0x10000)
            size = 1;
        u32 v = tame(port, rnd(), size);
        if (size == 1)
            outb((u16)port, (u8)v);
        else if (size == 2)
            outw((u16)port, (u16)v);
        else
            outl((u16)port, v);
        if (r & 0x100)
            (void)inl((u16)(port & ~3u));
        writes++;
    }
    return writes;
}

/* An address to hand a device: inside the scratch area or the rings, or nowhere in RAM. */
static u64 hostile_addr(void)
{
    switch (rnd() & 7) {
    case 0:
        return SCRATCH + (rnd() & 0xffff);
    case 1:
        return SCRATCH + rnd() % SCRATCH_LEN;
    case 2:
        return RING_BASE + (rnd() & 0xbfff); /* the rings themselves */
    case 3:
        return RAM_END - (rnd() & 0xfff); /* runs off the end of RAM */
    case 4:
        return 0x100000000ull + rnd(); /* above 4 GiB: no RAM there */
    case 5:
        return 0xfffffffffffff000ull + (rnd() & 0xfff); /* wraps past 2^64 */
    case 6:
        return 0xd0000000u + (rnd() & 0xffff); /* MMIO: the devices' own registers */
    default:
        return ((u64)(rnd() | 0x80000000u) << 32) | rnd(); /* anywhere, far beyond RAM */
    }
}

static u32 hostile_len(void)
{
    switch (rnd() & 7) {
    case 0:
        return 0;
    case 1:
        return 0xffffffffu;
    case 2:
        return 0x80000000u + (rnd() & 0xffff);
    case 3:
        return 16;
    case 4:
        return 512;
    case 5:
        return rnd() & 0xfffff;
    default:
        return rnd() & 0xfff;
    }
}

static void mmio_write(uptr addr, u32 size, u32 v)
{
    if (size == 1)
        *(volatile u8 *)addr = (u8)v;
    else if (size == 2)
        *(volatile u16 *)addr = (u16)v;
    else
        *(volatile u32 *)addr = v;
}

static u32 mmio_round(const struct virtio_dev *d)
{
    u32 n = 0;
    for (u32 i = 0; i < 2048; i++, n++) {
        u32 r = rnd();
        u32 size = 1u << (r & 3) % 3;
        u32 off = (rnd() & 0x1ff) & ~(size - 1);
        if (r & 0x10) {
            (void)mmio_read32(d->base + (off & ~3u));
            continue;
        }
        u32 v = rnd();
        /* Ring addresses: only ones that keep the device off this guest's code. */
        if (off >= VM_QUEUE_DESC_LOW && off < VM_QUEUE_DEVICE_HIGH + 4) {
            u64 a = hostile_addr();
            v = (off & 4) ? (u32)(a >> 32) : (u32)a;
            size = 4;
            off &= ~3u;
        }
        mmio_write(d->base + off, size, v);
    }
    vdev_wr(d, VM_STATUS, 0);
    return n;
}

static void fill_desc(volatile struct virtq_desc *desc, u32 size)
{
    for (u32 i = 0; i < size; i++) {
        u32 r = rnd();
        desc[i].addr = hostile_addr();
        desc[i].len = hostile_len();
        desc[i].flags = (u16)((r & 0x3) ? (r >> 8) & 7 : rnd()); /* NEXT, WRITE, INDIRECT */
        switch ((r >> 4) & 3) {
        case 0:
            desc[i].next = (u16)i; /* a loop of one */
            break;
        case 1:
            desc[i].next = (u16)((i + 1) & (size - 1)); /* a ring of them */
            break;
        case 2:
            desc[i].next = (u16)rnd(); /* out of the table */
            break;
        default:
            desc[i].next = (u16)(i ? i - 1 : size - 1);
            break;
        }
    }
}

/* A start the device must refuse: queue 0's descriptor table at 64 GiB, where there is no RAM
 * (the VMM then sets DEVICE_NEEDS_RESET, and may log it once). */
static void bad_start(const struct virtio_dev *d)
{
    vdev_wr(d, VM_STATUS, 0);
    vdev_wr(d, VM_STATUS, S_ACKNOWLEDGE);
    vdev_wr(d, VM_STATUS, S_ACKNOWLEDGE | S_DRIVER);
    vdev_wr(d, VM_DRIVER_FEATURES_SEL, 1);
    vdev_wr(d, VM_DRIVER_FEATURES, 1); /* VIRTIO_F_VERSION_1 only */
    vdev_wr(d, VM_DRIVER_FEATURES_SEL, 0);
    vdev_wr(d, VM_DRIVER_FEATURES, 0);
    vdev_wr(d, VM_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    vdev_wr(d, VM_QUEUE_SEL, 0);
    vdev_wr(d, VM_QUEUE_NUM, 1);
    vdev_wr(d, VM_QUEUE_DESC_LOW, 0);
    vdev_wr(d, VM_QUEUE_DESC_HIGH, 0x10);
    vdev_wr(d, VM_QUEUE_READY, 1);
    vdev_wr(d, VM_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    vdev_wr(d, VM_STATUS, 0);
}

static u32 chain_round(const struct virtio_dev *d, u32 queues)
{
    u32 chains = 0;
    for (u32 i = 0; i < 4; i++)
        bad_start(d);
    vdev_wr(d, VM_STATUS, 0);
    vdev_wr(d, VM_STATUS, S_ACKNOWLEDGE);
    vdev_wr(d, VM_STATUS, S_ACKNOWLEDGE | S_DRIVER);
    for (u32 sel = 0; sel < 2; sel++) {
        vdev_wr(d, VM_DEVICE_FEATURES_SEL, sel);
        u32 offered = vdev_rd(d, VM_DEVICE_FEATURES);
        vdev_wr(d, VM_DRIVER_FEATURES_SEL, sel);
        vdev_wr(d, VM_DRIVER_FEATURES, (offered & rnd()) | (sel ? 1u : 0)); /* VERSION_1 */
    }
    vdev_wr(d, VM_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    u32 sizes[3] = {0, 0, 0};
    for (u32 q = 0; q < queues; q++) {
        vdev_wr(d, VM_QUEUE_SEL, q);
        u32 max = vdev_rd(d, VM_QUEUE_NUM_MAX);
        u32 size = 1;
        for (u32 want = rnd() % 9; want && size * 2 <= max; want--)
            size *= 2;
        sizes[q] = size;
        uptr desc = RING_BASE + q * 0x4000;
        uptr avail = desc + 0x1000, used = desc + 0x2000;
        if ((rnd() & 7) == 0) { /* rings on top of each other */
            avail = desc + 2 * (rnd() & 0x7f);
            used = desc + 4 * (rnd() & 0x3f);
        }
        zero32(desc, 0x3000);
        vdev_wr(d, VM_QUEUE_NUM, size);
        virtio_queue_ready(d, desc, avail, used);
    }
    vdev_wr(d, VM_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    for (u32 pass = 0; pass < 16; pass++) {
        for (u32 q = 0; q < queues; q++) {
            uptr desc = RING_BASE + q * 0x4000;
            volatile u16 *avail = (volatile u16 *)(desc + 0x1000);
            fill_desc((volatile struct virtq_desc *)desc, sizes[q]);
            for (u32 i = 0; i < sizes[q] + 1; i++) /* entries, then used_event */
                avail[2 + i] = (u16)((rnd() & 1) ? rnd() % sizes[q] : rnd());
            avail[0] = (u16)rnd();
            avail[1] = (u16)(avail[1] + ((rnd() & 3) ? (rnd() & 0x3f) : rnd()));
            chains += sizes[q];
        }
        vdev_wr(d, VM_QUEUE_NOTIFY, (rnd() & 3) ? rnd() % queues : rnd());
        virtio_ack_interrupt(d);
    }
    vdev_wr(d, VM_STATUS, 0);
    return chains;
}

static void put_le(volatile u8 *p, u64 v, u32 bytes)
{
    for (u32 i = 0; i < bytes; i++)
        p[i] = (u8)(v >> (8 * i));
}

/* A vsock packet header (virtio 1.2 §5.10.6): this guest (CID 3) to the host (CID 2), a
 * stream, 7 times in 8; ports from a small set, so packets meet connections. */
static void vsock_header(volatile u8 *h)
{
    put_le(h, (rnd() & 7) ? 3 : rnd(), 8);
    put_le(h + 8, (rnd() & 7) ? 2 : rnd(), 8);
    put_le(h + 16, rnd() & 0x3f, 4);                           /* src_port */
    put_le(h + 20, (rnd() & 3) ? 1024 + (rnd() & 3) : rnd(), 4); /* dst_port */
    put_le(h + 24, (rnd() & 3) ? rnd() & 0x3ff : rnd(), 4);   /* len */
    put_le(h + 28, (rnd() & 7) ? 1 : rnd(), 2);               /* type */
    put_le(h + 30, rnd() % 9, 2);                              /* op, 0-8 */
    put_le(h + 32, rnd(), 4);                                  /* flags */
    put_le(h + 36, rnd(), 4);                                  /* buf_alloc */
    put_le(h + 40, rnd(), 4);                                  /* fwd_cnt */
}

#define VSOCK_QUEUE 64
#define VSOCK_HEADERS (SCRATCH + 0x20000)  /* a header and data, 0x800 each */
#define VSOCK_RX_BUFS (SCRATCH + 0x80000)  /* 0x1100 each */

/* Packets from the guest: VSOCK_QUEUE on the transmit queue per pass, receive buffers for
 * the replies half the time; returns the packets sent. */
static u32 vsock_round(const struct virtio_dev *d)
{
    vdev_wr(d, VM_STATUS, 0);
    vdev_wr(d, VM_STATUS, S_ACKNOWLEDGE);
    vdev_wr(d, VM_STATUS, S_ACKNOWLEDGE | S_DRIVER);
    vdev_wr(d, VM_DRIVER_FEATURES_SEL, 1);
    vdev_wr(d, VM_DRIVER_FEATURES, 1); /* VIRTIO_F_VERSION_1 */
    vdev_wr(d, VM_DRIVER_FEATURES_SEL, 0);
    vdev_wr(d, VM_DRIVER_FEATURES, 0);
    vdev_wr(d, VM_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    for (u32 q = 0; q < 3; q++) {
        uptr desc = RING_BASE + q * 0x4000;
        zero32(desc, 0x3000);
        vdev_wr(d, VM_QUEUE_SEL, q);
        vdev_wr(d, VM_QUEUE_NUM, VSOCK_QUEUE);
        virtio_queue_ready(d, desc, desc + 0x1000, desc + 0x2000);
    }
    vdev_wr(d, VM_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    u32 sent = 0;
    for (u32 pass = 0; pass < 8; pass++) {
        if (rnd() & 1) { /* receive buffers: header and data in one, or two descriptors */
            volatile struct virtq_desc *rx = (volatile struct virtq_desc *)RING_BASE;
            volatile u16 *avail = (volatile u16 *)(RING_BASE + 0x1000);
            for (u32 i = 0; i < VSOCK_QUEUE; i++) {
                rx[i].addr = (rnd() & 15) ? VSOCK_RX_BUFS + i * 0x1100 : hostile_addr();
                rx[i].len = (rnd() & 7) ? 44 + 4096 : hostile_len();
                rx[i].flags = (rnd() & 15) ? 2 : (u16)rnd(); /* WRITE */
                rx[i].next = (u16)rnd();
                avail[2 + i] = (u16)i;
            }
            avail[1] = (u16)(avail[1] + VSOCK_QUEUE);
            vdev_wr(d, VM_QUEUE_NOTIFY, 0);
        }
        volatile struct virtq_desc *tx = (volatile struct virtq_desc *)(RING_BASE + 0x4000);
        volatile u16 *avail = (volatile u16 *)(RING_BASE + 0x5000);
        for (u32 i = 0; i < VSOCK_QUEUE; i++) {
            volatile u8 *h = (volatile u8 *)(VSOCK_HEADERS + i * 0x800);
            vsock_header(h);
            tx[i].addr = (uptr)h;
            tx[i].len = (rnd() & 3) ? 44 + (rnd() & 0x7ff) : hostile_len();
            tx[i].flags = (rnd() & 15) ? 0 : (u16)rnd();
            tx[i].next = (u16)rnd();
            avail[2 + i] = (u16)i;
        }
        avail[1] = (u16)(avail[1] + VSOCK_QUEUE);
        vdev_wr(d, VM_QUEUE_NOTIFY, 1);
        vdev_wr(d, VM_QUEUE_NOTIFY, (rnd() & 3) ? 0 : rnd());
        virtio_ack_interrupt(d);
        sent += VSOCK_QUEUE;
    }
    vdev_wr(d, VM_STATUS, 0);
    return sent;
}

static int quit_requested(void)
{
    int quit = 0;
    for (int c; (c = serial_poll()) >= 0;)
        if (c == 'q')
            quit = 1;
    return quit;
}

void test_hostile(const char *cmdline) __attribute__((noreturn));
void test_hostile(const char *cmdline)
{
    struct virtio_dev devs[MAX_DEVICES];
    u32 queues[MAX_DEVICES];
    u32 ndev = 0;

    rng = cmdline_get_u32(cmdline, "seed", 1) | 1;
    /* Every version-2 blk, net and vsock device on the command line. */
    static const u32 kinds[3] = {VIRTIO_ID_BLOCK, VIRTIO_ID_NET, VIRTIO_ID_VSOCK};
    static const char *const tags[3] = {"hostile blk", "hostile net", "hostile vsock"};
    for (u32 kind = 0; kind < 3; kind++) {
        for (u32 want = 0; ndev < MAX_DEVICES; want++) {
            struct virtio_dev *d = &devs[ndev];
            d->tag = tags[kind];
            if (!virtio_probe(d, cmdline, kinds[kind], want))
                break;
            queues[ndev++] = kind + 1;
        }
    }
    for (u32 i = 0; i < 0x10000; i += 4) /* junk for indirect tables and request headers */
        *(volatile u32 *)(SCRATCH + i) = rnd();
    print("hostile: ready, ");
    print_dec(ndev);
    print(" virtio devices\n");

    u32 round = 0, ports = 0, regs = 0, chains = 0, packets = 0;
    int quit = 0;
    while (!quit) {
        ports += port_round();
        for (u32 i = 0; i < ndev; i++)
            regs += mmio_round(&devs[i]);
        for (u32 i = 0; i < ndev; i++)
            chains += chain_round(&devs[i], queues[i]);
        for (u32 i = 0; i < ndev; i++)
            if (queues[i] == 3)
                packets += vsock_round(&devs[i]);
        serial_reinit(); /* keeps a `q` that is waiting */
        quit = quit_requested();
        print("hostile: round ");
        print_dec(++round);
        print(" ports ");
        print_dec(ports);
        print(" registers ");
        print_dec(regs);
        print(" descriptors ");
        print_dec(chains);
        print(" vsock packets ");
        print_dec(packets);
        print("\n");
    }
    outb(EXIT_CODE_PORT, 0);
    print("hostile: done\n");
    reboot();
}
