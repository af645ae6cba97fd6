/* Shared declarations for the freestanding test guests (compiled -m32 and -m64). */
#ifndef GUEST_COMMON_H
#define GUEST_COMMON_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned long uptr; /* pointer-sized: 32 bits with -m32, 64 with -m64 */
typedef unsigned long size_t;

#define COM1 0x3f8
#define DEBUG_PORT 0x80

static inline void outb(u16 port, u8 val)
{
    __asm__ volatile("outb %0, %1" : : "a"(val), "Nd"(port) : "memory");
}

static inline u8 inb(u16 port)
{
    u8 v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port) : "memory");
    return v;
}

static inline void cpu_relax(void)
{
    __asm__ volatile("pause" : : : "memory");
}

static inline u32 mmio_read32(uptr addr)
{
    return *(volatile u32 *)addr;
}

static inline void mmio_write32(uptr addr, u32 val)
{
    *(volatile u32 *)addr = val;
}

/* Serial port (COM1, polled). */
void serial_init(void);
/* serial_init again, keeping what the receive FIFO holds. */
void serial_reinit(void);
/* The next received byte, or -1 if none is waiting. */
int serial_poll(void);
void serial_putc(char c);
int serial_getc(void); /* blocks until a byte arrives */
/* Blocks until a non-empty line (ended by CR or LF) arrives; NUL-terminates it in `buf`,
 * dropping what does not fit in `cap` - 1 bytes; returns its length. */
u32 serial_getline(char *buf, u32 cap);
void serial_write(const char *buf, size_t len);
/* Like serial_write, but one LSR poll per 16 bytes (16550 FIFO, as Linux's 8250 driver). */
void serial_write_fifo(const char *buf, size_t len);

/* Printing. */
void print(const char *s);
void print_hex(u64 v);     /* 0x followed by 16 hex digits */
void print_hex32(u32 v);   /* 0x followed by 8 hex digits */
void print_dec(u32 v);

/* Command line: "key=value" tokens separated by spaces. */
/* Copies the value of KEY into buf (NUL-terminated, truncated to len-1); 1 if found. */
int cmdline_get(const char *cmdline, const char *key, char *buf, size_t len);
/* Decimal (or 0x-prefixed hex) value of KEY, or def if absent or malformed. */
u32 cmdline_get_u32(const char *cmdline, const char *key, u32 def);
int str_eq(const char *a, const char *b);
/* The value of hex digit c, or 16 when c is not one. */
u32 hex_digit(char c);
/* Zeroes len bytes (a multiple of 4) at addr with volatile 32-bit stores (rings, DMA buffers). */
void zero32(uptr addr, u32 len);

/* Debug-port mark 0x02, i8042 reset (0xFE to port 0x64), then cli; hlt forever. */
void reboot(void) __attribute__((noreturn));
void halt_forever(void) __attribute__((noreturn));

void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
size_t strlen(const char *s);

#endif
