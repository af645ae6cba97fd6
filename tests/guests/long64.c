/* 64-bit long-mode test guest: prints a greeting, its command line and the e820 map
 * from the Linux zero page, then reboots via the i8042. */
#include "common.h"

#define BP_EXT_CMD_LINE_PTR 0x0c8 /* u32: high half of the cmdline address */
#define BP_E820_ENTRIES 0x1e8     /* u8 */
#define BP_CMD_LINE_PTR 0x228     /* u32: setup_header.cmd_line_ptr */
#define BP_E820_TABLE 0x2d0       /* struct boot_e820_entry[128] */
#define E820_MAX_ENTRIES 128

struct boot_e820_entry {
    u64 addr;
    u64 size;
    u32 type;
} __attribute__((packed));

_Static_assert(sizeof(struct boot_e820_entry) == 20, "e820 entry layout");

static u32 rd32(const u8 *bp, u32 off)
{
    return *(const volatile u32 *)(bp + off);
}

void main(const u8 *bp)
{
    outb(DEBUG_PORT, 0x01);
    serial_init();
    print("vmm-test-guest: hello from 64-bit guest\n");

    u64 cmd = (u64)rd32(bp, BP_CMD_LINE_PTR) | (u64)rd32(bp, BP_EXT_CMD_LINE_PTR) << 32;
    print("cmdline: ");
    if (cmd)
        print((const char *)cmd);
    print("\n");

    u32 n = bp[BP_E820_ENTRIES];
    if (n > E820_MAX_ENTRIES)
        n = E820_MAX_ENTRIES;
    const struct boot_e820_entry *e = (const struct boot_e820_entry *)(bp + BP_E820_TABLE);
    for (u32 i = 0; i < n; i++) {
        print("e820: ");
        print_hex(e[i].addr);
        print(" ");
        print_hex(e[i].size);
        print(" ");
        print_dec(e[i].type);
        print("\n");
    }
    reboot();
}
