/*
 * Minimal virtio-net driver over virtio-mmio for the 32-bit PVH test guest
 * (`test=net` and `test=netbench`; see README.md for the exact output).
 *
 * Virtio 1.2 §5.1 network device, on the transport of virtio.c. Only VIRTIO_F_VERSION_1
 * and VIRTIO_NET_F_MAC are negotiated: no mergeable RX buffers, no offloads, one queue
 * pair (receiveq1 = queue 0, transmitq1 = queue 1). Every buffer starts with a 12-byte
 * struct virtio_net_hdr_v1 (§5.1.6), all zero on TX. Polled, interrupts off: waits watch
 * the used ring's idx and read/acknowledge InterruptStatus between looks (each read is a
 * VM exit, which bounds the waits in time rather than in instructions).
 *
 * Guest memory used (paging is off, addresses are physical):
 *   0x60000  RX descriptor table, 0x61000 RX avail ring, 0x62000 RX used ring
 *   0x63000  TX descriptor table, 0x64000 TX avail ring, 0x65000 TX used ring
 *            (queues of up to 256 entries: 4 KiB, 518 B and 2054 B)
 *   0x200000 RX buffers, 2048 bytes each (header + frame), buffer i = descriptor i
 *            (at most 256: up to 0x280000)
 *   0x280000 the TX buffer (header + frame, 2048 bytes); `netbench` points every TX
 *            descriptor at this one buffer, since every frame is the same
 * The VMM's boot structures sit at 0x500-0xffff, the command line at 0x20000, the SMP
 * trampoline at 0x30000, the MP table at 0x9fc00 and this image at 0x100000. (blk.c's
 * `blk` data buffer may reach 0x90000; only one test runs per boot.)
 */
#include "virtio.h"

#define F_NET_MAC 5 /* VIRTIO_NET_F_MAC: config space 0x00..0x05 holds the MAC */

#define NET_HDR_LEN 12 /* struct virtio_net_hdr_v1 */
#define ETH_ALEN 6
#define ETH_HLEN 14
#define ETH_ZLEN 60 /* minimum frame without FCS: 46-byte minimum payload */
#define ETHERTYPE_TEST 0x88b5 /* IEEE 802 local experimental EtherType 1 */

#define RX_RING_DESC 0x60000u
#define RX_RING_AVAIL 0x61000u
#define RX_RING_USED 0x62000u
#define TX_RING_DESC 0x63000u
#define TX_RING_AVAIL 0x64000u
#define TX_RING_USED 0x65000u
#define RX_BUFS 0x200000u
#define TX_BUF 0x280000u
#define BUF_SIZE 2048u
#define MAX_FRAME (BUF_SIZE - NET_HDR_LEN)

#define NET_QUEUE_SIZE 8u       /* `net`: both queues, so 8 RX buffers */
#define BENCH_QUEUE_SIZE 256u   /* `netbench` */
#define DEFAULT_WAIT 250000u    /* empty looks: ~10 s under QEMU on the PVM hosts */

static struct virtio_dev dev = { .tag = "net" };
static struct virtq rxq, txq;
static u8 mac[ETH_ALEN];
static u32 wait_limit; /* `netwait=N` */

static const char hexdig[] = "0123456789abcdef";

static void fail(const char *msg) __attribute__((noreturn));
static void fail(const char *msg)
{
    virtio_fail(&dev, msg);
}

static volatile u8 *rx_buf(u32 id)
{
    return (volatile u8 *)(RX_BUFS + id * BUF_SIZE);
}

/* MAC from config space (byte reads: §4.2.2.2 wants 8-bit accesses for 8-bit fields),
 * inside a ConfigGeneration check. Without VIRTIO_NET_F_MAC: 02:00:00:00:00:01. */
static void read_mac(int have_mac)
{
    if (!have_mac) {
        static const u8 fallback[ETH_ALEN] = { 0x02, 0, 0, 0, 0, 0x01 };
        memcpy(mac, fallback, ETH_ALEN);
        return;
    }
    u32 gen;
    do {
        gen = vdev_rd(&dev, VM_CONFIG_GENERATION);
        for (u32 i = 0; i < ETH_ALEN; i++)
            mac[i] = vdev_config8(&dev, i);
    } while (vdev_rd(&dev, VM_CONFIG_GENERATION) != gen);
}

/* §3.1.1 and §5.1.5: both queues of `qsize` (at most), MAC, descriptors pre-built, DRIVER_OK.
 * RX descriptor i = RX buffer i (device-writable), TX descriptors all = the TX buffer. */
static void net_init(const char *cmdline, u32 qsize)
{
    u64 offered, accepted;

    wait_limit = cmdline_get_u32(cmdline, "netwait", DEFAULT_WAIT);
    print("cmdline: ");
    print(cmdline);
    print("\n");

    virtio_find(&dev, cmdline, VIRTIO_ID_NET, "net", cmdline_get_u32(cmdline, "netdev", 0));
    accepted = virtio_negotiate(&dev, (1ull << F_VERSION_1) | (1u << F_NET_MAC), wait_limit,
                                &offered);
    if (!(accepted & (1ull << F_VERSION_1)))
        fail("net: VIRTIO_F_VERSION_1 not offered");
    virtio_setup_queue(&dev, &rxq, 0, qsize, 1, RX_RING_DESC, RX_RING_AVAIL, RX_RING_USED);
    virtio_setup_queue(&dev, &txq, 1, qsize, 1, TX_RING_DESC, TX_RING_AVAIL, TX_RING_USED);
    read_mac(!!(accepted & (1u << F_NET_MAC)));

    for (u32 i = 0; i < rxq.size; i++) {
        rxq.desc[i].addr = RX_BUFS + i * BUF_SIZE;
        rxq.desc[i].len = BUF_SIZE;
        rxq.desc[i].flags = DESC_F_WRITE;
        rxq.desc[i].next = 0;
    }
    for (u32 i = 0; i < txq.size; i++) {
        txq.desc[i].addr = TX_BUF;
        txq.desc[i].len = 0;
        txq.desc[i].flags = 0;
        txq.desc[i].next = 0;
    }
    virtio_driver_ok(&dev);

    char line[] = "net: mac xx:xx:xx:xx:xx:xx\n";
    for (u32 i = 0; i < ETH_ALEN; i++) {
        line[9 + 3 * i] = hexdig[mac[i] >> 4];
        line[10 + 3 * i] = hexdig[mac[i] & 0xf];
    }
    print(line);
}

/* Puts every RX buffer in the avail ring and notifies (after DRIVER_OK, §3.1.1). */
static void post_all_rx(void)
{
    for (u32 i = 0; i < rxq.size; i++)
        virtq_add(&rxq, (u16)i);
    virtq_publish(&rxq);
    virtq_notify(&dev, &rxq);
}

/* Zeroed header, then dst broadcast, src = our MAC, EtherType 0x88b5, `text`, zeros up to
 * `frame_len` bytes of frame. Returns the descriptor length (header + frame). */
static u32 build_tx_frame(u32 frame_len, const char *text)
{
    volatile u8 *b = (volatile u8 *)TX_BUF;
    zero32(TX_BUF, BUF_SIZE);
    volatile u8 *f = b + NET_HDR_LEN;
    for (u32 i = 0; i < ETH_ALEN; i++) {
        f[i] = 0xff;
        f[ETH_ALEN + i] = mac[i];
    }
    f[12] = ETHERTYPE_TEST >> 8;
    f[13] = ETHERTYPE_TEST & 0xff;
    for (u32 i = 0; text[i] && ETH_HLEN + i < frame_len; i++)
        f[ETH_HLEN + i] = (u8)text[i];
    return NET_HDR_LEN + frame_len;
}

/* Frame length (without the header) of a used RX buffer, clamped to the buffer. */
static u32 rx_frame_len(u32 used_len)
{
    if (used_len < NET_HDR_LEN)
        return 0;
    if (used_len > BUF_SIZE)
        used_len = BUF_SIZE;
    return used_len - NET_HDR_LEN;
}

static int is_test_frame(const volatile u8 *f, u32 len)
{
    return len >= ETH_HLEN && f[12] == (ETHERTYPE_TEST >> 8) && f[13] == (ETHERTYPE_TEST & 0xff);
}

/* `net: rx <len> <hex>`: lowercase, two digits per byte, no separators. */
static void print_rx(const volatile u8 *f, u32 len)
{
    char chunk[64];
    print("net: rx ");
    print_dec(len);
    print(" ");
    for (u32 i = 0; i < len;) {
        u32 n = 0;
        for (; i < len && n < sizeof chunk; i++) {
            chunk[n++] = hexdig[f[i] >> 4];
            chunk[n++] = hexdig[f[i] & 0xf];
        }
        serial_write_fifo(chunk, n);
    }
    print("\n");
}

static void print_count(const char *what, u32 n)
{
    print(what);
    print_dec(n);
    print("\n");
}

/* ---- test=net ---- */

void test_net(const char *cmdline) __attribute__((noreturn));
void test_net(const char *cmdline)
{
    u32 want = cmdline_get_u32(cmdline, "count", 1);

    net_init(cmdline, NET_QUEUE_SIZE);
    post_all_rx();
    print("net: ready\n");

    /* One broadcast frame of the minimum size. */
    txq.desc[0].len = build_tx_frame(ETH_ZLEN, "vmm-test-guest says hello");
    virtq_add(&txq, 0);
    virtq_publish(&txq);
    virtq_notify(&dev, &txq);
    for (u32 i = 0; !virtq_poll(&dev, &txq); i++)
        if (i >= wait_limit)
            fail("net: tx timeout");
    u32 len;
    if (virtq_pop_used(&txq, &len) != 0)
        fail("net: used ring returned a descriptor that was not queued");
    print("net: tx done\n");

    /* Receive until `count` test frames arrived or `netwait` empty looks in all. */
    u32 matched = 0, ignored = 0, looks = 0;
    while (matched < want) {
        if (!virtq_poll(&dev, &rxq)) {
            if (++looks >= wait_limit) {
                print_count("net: ignored ", ignored);
                print("net: timeout\n");
                reboot();
            }
            continue;
        }
        u32 id = virtq_pop_used(&rxq, &len);
        if (id >= rxq.size)
            fail("net: used ring returned a descriptor that was not queued");
        const volatile u8 *f = rx_buf(id) + NET_HDR_LEN;
        u32 flen = rx_frame_len(len);
        if (is_test_frame(f, flen)) {
            print_rx(f, flen);
            matched++;
        } else {
            ignored++;
        }
        virtq_add(&rxq, (u16)id);
        virtq_publish(&rxq);
        virtq_kick(&dev, &rxq);
    }
    print_count("net: ignored ", ignored);
    print("net: done\n");
    reboot();
}

/* ---- test=netbench ---- */

void test_netbench(const char *cmdline) __attribute__((noreturn));
void test_netbench(const char *cmdline)
{
    u32 frames = cmdline_get_u32(cmdline, "frames", 20000);
    u32 size = cmdline_get_u32(cmdline, "size", 1514);
    u32 rxframes = cmdline_get_u32(cmdline, "rxframes", 0);
    u32 errors = 0;

    net_init(cmdline, BENCH_QUEUE_SIZE);
    if (size < ETH_HLEN || size > MAX_FRAME)
        fail("netbench: size must be 14..2036");
    print("netbench: frames ");
    print_dec(frames);
    print(" size ");
    print_dec(size);
    print(" rxframes ");
    print_dec(rxframes);
    print("\n");

    /* TX: keep the ring full. Every descriptor carries the same frame; ids come back
     * through the used ring onto a free stack. */
    u32 dlen = build_tx_frame(size, "vmm-test-guest netbench");
    u16 free_ids[BENCH_QUEUE_SIZE];
    u32 nfree = 0;
    for (u32 i = 0; i < txq.size; i++) {
        txq.desc[i].len = dlen;
        free_ids[nfree++] = (u16)(txq.size - 1 - i);
    }
    u32 sent = 0, done = 0, looks = 0;
    outb(DEBUG_PORT, 0x20);
    while (done < frames) {
        if (nfree && sent < frames) {
            do {
                virtq_add(&txq, free_ids[--nfree]);
                sent++;
            } while (nfree && sent < frames);
            virtq_publish(&txq);
            virtq_kick(&dev, &txq);
        }
        if (!virtq_poll(&dev, &txq)) {
            if (++looks >= wait_limit) {
                print("netbench: tx timeout\n");
                break;
            }
            continue;
        }
        looks = 0;
        do {
            u32 len, id = virtq_pop_used(&txq, &len);
            if (id < txq.size)
                free_ids[nfree++] = (u16)id;
            else
                errors++; /* lost: that slot is not reused */
            done++;
        } while (virtq_used_pending(&txq));
    }
    outb(DEBUG_PORT, 0x21);

    /* RX: all buffers posted, each reposted as soon as it is consumed. */
    u32 got = 0;
    if (rxframes) {
        post_all_rx();
        looks = 0;
        while (got < rxframes) {
            if (!virtq_poll(&dev, &rxq)) {
                if (++looks >= wait_limit) {
                    print("netbench: rx timeout\n");
                    break;
                }
                continue;
            }
            looks = 0;
            do {
                u32 len, id = virtq_pop_used(&rxq, &len);
                if (id >= rxq.size) {
                    errors++;
                    continue;
                }
                if (len < NET_HDR_LEN || len > BUF_SIZE)
                    errors++;
                else if (is_test_frame(rx_buf(id) + NET_HDR_LEN, len - NET_HDR_LEN)) {
                    if (got == 0)
                        outb(DEBUG_PORT, 0x22);
                    if (++got == rxframes)
                        outb(DEBUG_PORT, 0x23);
                }
                virtq_add(&rxq, (u16)id);
            } while (virtq_used_pending(&rxq) && got < rxframes);
            virtq_publish(&rxq);
            virtq_kick(&dev, &rxq);
        }
    }

    print("netbench: tx ");
    print_dec(done);
    print(" frames of ");
    print_dec(size);
    print(" bytes, rx ");
    print_dec(got);
    print(" frames, errors ");
    print_dec(errors);
    print("\n");
    reboot();
}
