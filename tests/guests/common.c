/* Serial, printing and command-line helpers shared by the 32-bit PVH guest and the
 * 64-bit long-mode guest. Plain integer code only (the guests may be emulated). */
#include "common.h"

#define UART_THR 0 /* transmit holding (write), DLAB=0 */
#define UART_RBR 0 /* receive buffer (read), DLAB=0 */
#define UART_DLL 0 /* divisor latch low, DLAB=1 */
#define UART_IER 1
#define UART_DLM 1 /* divisor latch high, DLAB=1 */
#define UART_FCR 2
#define UART_LCR 3
#define UART_MCR 4
#define UART_LSR 5
#define LSR_DR 0x01   /* data ready */
#define LSR_THRE 0x20 /* transmit holding register empty */
#define UART_FIFO_SIZE 16

static void serial_setup(u8 fcr)
{
    outb(COM1 + UART_IER, 0x00);  /* no interrupts */
    outb(COM1 + UART_LCR, 0x80);  /* DLAB on */
    outb(COM1 + UART_DLL, 0x01);  /* divisor 1: 115200 baud */
    outb(COM1 + UART_DLM, 0x00);
    outb(COM1 + UART_LCR, 0x03);  /* 8N1, DLAB off */
    outb(COM1 + UART_FCR, fcr);
    outb(COM1 + UART_MCR, 0x03);  /* DTR, RTS */
}

void serial_init(void)
{
    serial_setup(0xc7); /* FIFO on, clear both, 14-byte trigger */
}

void serial_reinit(void)
{
    serial_setup(0xc1); /* FIFO on, 14-byte trigger, nothing cleared */
}

void serial_putc(char c)
{
    while (!(inb(COM1 + UART_LSR) & LSR_THRE))
        cpu_relax();
    outb(COM1 + UART_THR, (u8)c);
}

int serial_poll(void)
{
    return (inb(COM1 + UART_LSR) & LSR_DR) ? inb(COM1 + UART_RBR) : -1;
}

int serial_getc(void)
{
    while (!(inb(COM1 + UART_LSR) & LSR_DR))
        cpu_relax();
    return inb(COM1 + UART_RBR);
}

u32 serial_getline(char *buf, u32 cap)
{
    for (;;) {
        u32 len = 0;
        for (;;) {
            int c = serial_getc();
            if (c == '\r' || c == '\n')
                break;
            if (len + 1 < cap)
                buf[len++] = (char)c;
        }
        buf[len] = 0;
        if (len)
            return len;
    }
}

void serial_write(const char *buf, size_t len)
{
    for (size_t i = 0; i < len; i++)
        serial_putc(buf[i]);
}

void serial_write_fifo(const char *buf, size_t len)
{
    while (len) {
        while (!(inb(COM1 + UART_LSR) & LSR_THRE))
            cpu_relax();
        /* THRE set with the FIFO on means the whole 16-byte transmit FIFO is free. */
        size_t n = len < UART_FIFO_SIZE ? len : UART_FIFO_SIZE;
        for (size_t i = 0; i < n; i++)
            outb(COM1 + UART_THR, (u8)buf[i]);
        buf += n;
        len -= n;
    }
}

void print(const char *s)
{
    while (*s)
        serial_putc(*s++);
}

static const char hexdig[] = "0123456789abcdef";

void print_hex(u64 v)
{
    char buf[18];
    buf[0] = '0';
    buf[1] = 'x';
    for (int i = 0; i < 16; i++)
        buf[2 + i] = hexdig[(u32)(v >> (60 - 4 * i)) & 0xf];
    serial_write(buf, sizeof buf);
}

void print_hex32(u32 v)
{
    char buf[10];
    buf[0] = '0';
    buf[1] = 'x';
    for (int i = 0; i < 8; i++)
        buf[2 + i] = hexdig[(v >> (28 - 4 * i)) & 0xf];
    serial_write(buf, sizeof buf);
}

void print_dec(u32 v)
{
    char buf[10];
    int n = 0;
    do {
        buf[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        serial_putc(buf[--n]);
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

int str_eq(const char *a, const char *b)
{
    while (*a && *a == *b) {
        a++;
        b++;
    }
    return *a == *b;
}

int cmdline_get(const char *p, const char *key, char *buf, size_t len)
{
    size_t klen = strlen(key);
    if (!p)
        return 0;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == '\n')
            p++;
        if (!*p)
            break;
        const char *tok = p;
        while (*p && *p != ' ' && *p != '\t' && *p != '\n')
            p++;
        size_t tlen = (size_t)(p - tok);
        size_t i = 0;
        while (i < klen && i < tlen && tok[i] == key[i])
            i++;
        if (i == klen && tlen > klen && tok[klen] == '=') {
            size_t n = 0;
            for (const char *v = tok + klen + 1; v < p && n + 1 < len; v++)
                buf[n++] = *v;
            buf[n] = 0;
            return 1;
        }
    }
    return 0;
}

u32 hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return (u32)(c - '0');
    if (c >= 'a' && c <= 'f')
        return (u32)(c - 'a' + 10);
    if (c >= 'A' && c <= 'F')
        return (u32)(c - 'A' + 10);
    return 16;
}

void zero32(uptr addr, u32 len)
{
    volatile u32 *p = (volatile u32 *)addr;
    for (u32 i = 0; i < len / 4; i++)
        p[i] = 0;
}

u32 cmdline_get_u32(const char *cmdline, const char *key, u32 def)
{
    char buf[24];
    if (!cmdline_get(cmdline, key, buf, sizeof buf) || !buf[0])
        return def;
    u32 v = 0;
    const char *s = buf;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        s += 2;
        if (!*s)
            return def;
        for (; *s; s++) {
            u32 d = hex_digit(*s);
            if (d >= 16)
                return def;
            v = v * 16 + d;
        }
        return v;
    }
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return def;
        v = v * 10 + (u32)(*s - '0');
    }
    return v;
}

void halt_forever(void)
{
    for (;;)
        __asm__ volatile("cli; hlt" : : : "memory");
}

void reboot(void)
{
    outb(DEBUG_PORT, 0x02);
    outb(0x64, 0xfe); /* i8042: pulse the CPU reset line */
    halt_forever();
}

void *memset(void *d, int c, size_t n)
{
    volatile u8 *p = d; /* volatile: keep gcc from turning this into a call to itself */
    while (n--)
        *p++ = (u8)c;
    return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
    volatile u8 *p = d;
    const u8 *q = s;
    while (n--)
        *p++ = *q++;
    return d;
}
