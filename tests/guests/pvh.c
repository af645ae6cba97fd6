/*
 * 32-bit PVH test guest. Behaviour is chosen by `test=NAME` on the command line
 * (default `hello`); see README.md for the list and the exact output of each.
 */
#include "common.h"

/* Xen public/arch-x86/hvm/start_info.h */
#define XEN_HVM_START_MAGIC_VALUE 0x336ec578
struct hvm_start_info {
    u32 magic;           /* 0 */
    u32 version;         /* 4 */
    u32 flags;           /* 8 */
    u32 nr_modules;      /* 12 */
    u64 modlist_paddr;   /* 16 */
    u64 cmdline_paddr;   /* 24 */
    u64 rsdp_paddr;      /* 32 */
    u64 memmap_paddr;    /* 40 */
    u32 memmap_entries;  /* 48 */
    u32 reserved;        /* 52 */
} __attribute__((packed));

struct hvm_memmap_table_entry {
    u64 addr;
    u64 size;
    u32 type;
    u32 reserved;
} __attribute__((packed));

_Static_assert(sizeof(struct hvm_start_info) == 56, "hvm_start_info layout");
_Static_assert(sizeof(struct hvm_memmap_table_entry) == 24, "memmap entry layout");

/* Real-mode AP trampoline (pvh_entry.S), copied below 1 MiB. */
extern const char ap_tramp_start[], ap_tramp_end[];
#define AP_TRAMP_ADDR 0x30000u
#define AP_LOCK_OFF 4
#define AP_COUNT_OFF 8

#define LAPIC_BASE 0xfee00000u
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define ICR_DELIVERY_PENDING (1u << 12)
#define ICR_INIT_ALL_BUT_SELF 0x000c4500u
#define ICR_SIPI_ALL_BUT_SELF 0x000c4600u

void load_zero_idt(void);
/* blk.c: virtio-blk over virtio-mmio */
void test_blk(const char *cmdline) __attribute__((noreturn));
void test_blkbench(const char *cmdline) __attribute__((noreturn));
void test_blklines(const char *cmdline) __attribute__((noreturn));
void test_blkflood(const char *cmdline) __attribute__((noreturn));
/* net.c: virtio-net over virtio-mmio */
void test_net(const char *cmdline) __attribute__((noreturn));
void test_netbench(const char *cmdline) __attribute__((noreturn));
void test_hostile(const char *cmdline) __attribute__((noreturn));

static const char *cmdline = "";

/* A short delay whose length is set by VM exits rather than by instruction speed:
 * each read of the UART's LSR traps to the VMM (microseconds on hardware, more when
 * the guest is emulated). */
static void io_delay(u32 n)
{
    while (n--)
        (void)inb(COM1 + 5);
}

static u32 apic_id(void)
{
    u32 a = 1, b, c = 0, d;
    __asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
    return b >> 24;
}

static void lapic_icr(u32 lo)
{
    mmio_write32(LAPIC_BASE + LAPIC_ICR_HI, 0);
    mmio_write32(LAPIC_BASE + LAPIC_ICR_LO, lo);
    for (u32 i = 0; i < 100000 && (mmio_read32(LAPIC_BASE + LAPIC_ICR_LO) & ICR_DELIVERY_PENDING); i++)
        cpu_relax();
}

static void test_hello(void)
{
    print("vmm-test-guest: hello from PVH guest\n");
    print("cmdline: ");
    print(cmdline);
    print("\n");
    reboot();
}

static void test_echo(void)
{
    print("echo: ready\n");
    for (;;) {
        int c = serial_getc();
        if (c == 0x04)
            break;
        serial_putc((char)c);
    }
    print("\necho: done\n");
    reboot();
}

static void test_smp(void)
{
    u32 cpus = cmdline_get_u32(cmdline, "cpus", 1);
    u32 want = cpus ? cpus - 1 : 0;
    volatile u32 *count = (volatile u32 *)(AP_TRAMP_ADDR + AP_COUNT_OFF);

    print("cpu ");
    print_dec(apic_id());
    print(" online\n");

    memcpy((void *)AP_TRAMP_ADDR, ap_tramp_start, (size_t)(ap_tramp_end - ap_tramp_start));
    *(volatile u8 *)(AP_TRAMP_ADDR + AP_LOCK_OFF) = 0;
    *count = 0;

    if (want) {
        lapic_icr(ICR_INIT_ALL_BUT_SELF);
        io_delay(100);
        lapic_icr(ICR_SIPI_ALL_BUT_SELF | (AP_TRAMP_ADDR >> 12));
        io_delay(20);
        lapic_icr(ICR_SIPI_ALL_BUT_SELF | (AP_TRAMP_ADDR >> 12));
        /* Bounded wait, paced by VM exits: ~1 s on hardware KVM, longer when emulated. */
        for (u32 i = 0; i < 200000 && *count < want; i++)
            io_delay(1);
    }
    u32 got = *count;
    if (got < want) {
        print("smp: timeout, ");
        print_dec(got);
        print(" of ");
        print_dec(want);
        print(" APs\n");
    }
    print("smp: ");
    print_dec(got + 1);
    print(" cpus online\n");
    reboot();
}

static void test_triple(void)
{
    print("triple: faulting\n");
    load_zero_idt();
    __asm__ volatile("ud2");
    halt_forever();
}

static void test_int3(void)
{
    print("int3: trapping\n");
    load_zero_idt();
    __asm__ volatile("int3");
    halt_forever();
}

/* Asks for a reset, then runs into an instruction a PVM host cannot emulate (int3 with an
 * empty IDT; a triple fault elsewhere): the VM's end must be the reset, whatever the vCPU
 * would do after it asked. */
static void test_resetint3(void)
{
    print("resetint3: resetting\n");
    load_zero_idt();
    outb(0x64, 0xfe); /* i8042: pulse the CPU reset line */
    __asm__ volatile("int3");
    halt_forever();
}

static void test_spin(void)
{
    print("spin: ready\n");
    __asm__ volatile("cli\n1: pause\njmp 1b" : : : "memory");
    halt_forever();
}

static void test_halt(void)
{
    print("halt: ready\n");
    halt_forever();
}

static void test_write(void)
{
    u32 n = cmdline_get_u32(cmdline, "bytes", 1048576);
    print("write: ");
    print_dec(n);
    print(" bytes\n");
    /* n bytes: lines of 63 letters a..z repeating plus '\n'; the last byte is
     * always '\n' so that the next line starts clean. Sent 64 bytes at a time,
     * one LSR poll per 16 bytes. */
    char line[64];
    for (u32 col = 0; col < 64; col++)
        line[col] = col == 63 ? '\n' : (char)('a' + col % 26);
    for (u32 i = 0; i < n; i += 64) {
        u32 len = n - i < 64 ? n - i : 64;
        if (len < 64)
            line[len - 1] = '\n';
        serial_write_fifo(line, len);
    }
    print("write: done\n");
    reboot();
}

/* Numbered lines forever, a busy-wait of `delay` loop iterations apart: pausing the VM
 * stops them, resuming continues with the next number. */
static void test_count(void)
{
    u32 delay = cmdline_get_u32(cmdline, "delay", 20000);
    for (u32 n = 0;; n++) {
        print("count: ");
        print_dec(n);
        print("\n");
        for (volatile u32 i = 0; i < delay; i++)
            cpu_relax();
    }
}

/* Answers each line read from COM1 with its number, `line <n>: <text>`; the counter lives in
 * guest memory, so a VM restored from a snapshot continues it. `quit` resets the VM. */
static void test_lines(void)
{
    char buf[128];
    print("lines: ready\n");
    for (u32 n = 1;; n++) {
        serial_getline(buf, sizeof buf);
        if (str_eq(buf, "quit")) {
            print("lines: done\n");
            reboot();
        }
        print("line ");
        print_dec(n);
        print(": ");
        print(buf);
        print("\n");
    }
}

/* `writes` one-byte writes to a port where the VMM has no device (COM3's address by
 * default), so its exit statistics can be checked against a known number; then idles. */
static void test_ports(void)
{
    u32 writes = cmdline_get_u32(cmdline, "writes", 1000);
    u32 port = cmdline_get_u32(cmdline, "port", 0x3e8);
    u32 first = cmdline_get_u32(cmdline, "first", 0);
    print("ports: ");
    print_dec(writes);
    print(" writes to port ");
    print_hex32(port);
    print("\n");
    for (u32 i = 0; i < writes; i++)
        outb((u16)port, (u8)(first + i));
    print("ports: done\n");
    halt_forever();
}

static struct hvm_start_info *start_info;

static void test_memmap(void)
{
    print("memmap: ");
    print_dec(start_info->memmap_entries);
    print(" entries\n");
    const struct hvm_memmap_table_entry *e =
        (const struct hvm_memmap_table_entry *)(uptr)start_info->memmap_paddr;
    for (u32 i = 0; i < start_info->memmap_entries; i++) {
        print("memmap: ");
        print_hex(e[i].addr);
        print(" ");
        print_hex(e[i].size);
        print(" ");
        print_dec(e[i].type);
        print("\n");
    }
    reboot();
}

void main(struct hvm_start_info *si)
{
    char test[32];

    outb(DEBUG_PORT, 0x01);
    serial_init();
    start_info = si;
    if (si->magic != XEN_HVM_START_MAGIC_VALUE) {
        print("pvh: bad start_info magic ");
        print_hex32(si->magic);
        print("\n");
    } else if (si->cmdline_paddr && si->cmdline_paddr < 0x100000000ull) {
        cmdline = (const char *)(uptr)si->cmdline_paddr;
    }

    if (!cmdline_get(cmdline, "test", test, sizeof test))
        test_hello();
    if (str_eq(test, "hello"))
        test_hello();
    if (str_eq(test, "echo"))
        test_echo();
    if (str_eq(test, "smp"))
        test_smp();
    if (str_eq(test, "triple"))
        test_triple();
    if (str_eq(test, "int3"))
        test_int3();
    if (str_eq(test, "resetint3"))
        test_resetint3();
    if (str_eq(test, "spin"))
        test_spin();
    if (str_eq(test, "halt"))
        test_halt();
    if (str_eq(test, "write"))
        test_write();
    if (str_eq(test, "count"))
        test_count();
    if (str_eq(test, "ports"))
        test_ports();
    if (str_eq(test, "lines"))
        test_lines();
    if (str_eq(test, "blklines"))
        test_blklines(cmdline);
    if (str_eq(test, "blk"))
        test_blk(cmdline);
    if (str_eq(test, "blkbench"))
        test_blkbench(cmdline);
    if (str_eq(test, "blkflood"))
        test_blkflood(cmdline);
    if (str_eq(test, "net"))
        test_net(cmdline);
    if (str_eq(test, "netbench"))
        test_netbench(cmdline);
    if (str_eq(test, "hostile"))
        test_hostile(cmdline);
    if (str_eq(test, "memmap") && si->magic == XEN_HVM_START_MAGIC_VALUE)
        test_memmap();
    print("unknown test ");
    print(test);
    print("\n");
    reboot();
}
