/* vmm-vsock: stream sockets between a vmm guest and its host, for tests, benchmarks and the
 * README's examples. Static, so the same binary runs in the guest (over AF_VSOCK) and on the
 * host (over the Unix sockets of vmm's --vsock, Firecracker's convention).
 *
 * Addresses:
 *   vsock:CID:PORT   (guest) a vsock address; CID 2 is the host. To listen: vsock:PORT
 *   fc:PATH:PORT     (host) connect to the guest's PORT through vmm's --vsock uds=PATH:
 *                    writes `CONNECT PORT\n` and reads vmm's `OK <port>\n`
 *   unix:PATH        (host) a Unix socket; to take the guest's connections to host port P,
 *                    listen on unix:PATH_P
 *
 * Commands:
 *   connect ADDR          copy stdin to the connection (then shut it down for writing) and
 *                         the connection to stdout, until both ends are done
 *   listen ADDR           accept one connection, then as connect
 *   echo-server ADDR      accept connections forever, each echoed back (a process each)
 *   clients ADDR N BYTES  N connections at once, each sends BYTES bytes (its own pattern) to
 *                         an echo server and checks what comes back; prints
 *                         `VSOCK-CLIENTS ok=K of N` and fails unless K == N
 *   gen BYTES SEED        writes BYTES pseudo-random bytes from SEED to stdout (the same on
 *                         both sides, to compare SHA-256s)
 *   rr ADDR COUNT         COUNT round trips of 1 byte with an echo server; prints the median
 *                         and the total in ns
 *   send ADDR MIB         sends MIB MiB, shuts down and waits for the peer to close; prints
 *                         the bytes and ns
 *   sink ADDR             accepts one connection, reads it to the end; prints the bytes and
 *                         ns (first byte to end)
 *   hold ADDR             connects and never reads (a slow reader, for tests)
 * Connecting to a port nobody listens on prints `VSOCK-REFUSED` and exits 111.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#define REFUSED 111

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            die("write");
        p += w;
        len -= (size_t)w;
    }
}

static void unix_addr(struct sockaddr_un *a, const char *path)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof a->sun_path) {
        fprintf(stderr, "path too long: %s\n", path);
        exit(2);
    }
    strcpy(a->sun_path, path);
}

/* A connected socket to ADDR; exits REFUSED if nobody listens. */
static int dial(const char *addr)
{
    int s;
    if (!strncmp(addr, "vsock:", 6)) {
        unsigned cid, port;
        if (sscanf(addr + 6, "%u:%u", &cid, &port) != 2) {
            fprintf(stderr, "bad address %s\n", addr);
            exit(2);
        }
        struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port};
        if ((s = socket(AF_VSOCK, SOCK_STREAM, 0)) < 0)
            die("socket");
        if (connect(s, (struct sockaddr *)&a, sizeof a)) {
            if (errno == ECONNREFUSED || errno == ECONNRESET) {
                printf("VSOCK-REFUSED\n");
                exit(REFUSED);
            }
            die("connect");
        }
        return s;
    }
    char path[256];
    unsigned port = 0;
    int fc = !strncmp(addr, "fc:", 3);
    if (fc) {
        const char *colon = strrchr(addr + 3, ':');
        if (!colon || (size_t)(colon - addr - 3) >= sizeof path || sscanf(colon + 1, "%u", &port) != 1) {
            fprintf(stderr, "bad address %s\n", addr);
            exit(2);
        }
        memcpy(path, addr + 3, colon - addr - 3);
        path[colon - addr - 3] = 0;
    } else if (!strncmp(addr, "unix:", 5)) {
        snprintf(path, sizeof path, "%s", addr + 5);
    } else {
        fprintf(stderr, "bad address %s\n", addr);
        exit(2);
    }
    struct sockaddr_un a;
    unix_addr(&a, path);
    if ((s = socket(AF_UNIX, SOCK_STREAM, 0)) < 0)
        die("socket");
    if (connect(s, (struct sockaddr *)&a, sizeof a))
        die("connect");
    if (fc) {
        char line[64];
        int n = snprintf(line, sizeof line, "CONNECT %u\n", port);
        write_all(s, line, n);
        /* A byte at a time: what follows the line is the stream's. */
        size_t len = 0;
        while (len < sizeof line - 1) {
            ssize_t r = read(s, line + len, 1);
            if (r <= 0) {
                printf("VSOCK-REFUSED\n");
                exit(REFUSED);
            }
            if (line[len] == '\n')
                break;
            len++;
        }
        line[len] = 0;
        if (strncmp(line, "OK ", 3)) {
            fprintf(stderr, "unexpected answer: %s\n", line);
            exit(1);
        }
    }
    return s;
}

static int listener(const char *addr)
{
    int s, one = 1;
    if (!strncmp(addr, "vsock:", 6)) {
        struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY,
                                .svm_port = (unsigned)atol(addr + 6)};
        if ((s = socket(AF_VSOCK, SOCK_STREAM, 0)) < 0)
            die("socket");
        if (bind(s, (struct sockaddr *)&a, sizeof a))
            die("bind");
    } else if (!strncmp(addr, "unix:", 5)) {
        struct sockaddr_un a;
        unix_addr(&a, addr + 5);
        unlink(addr + 5);
        if ((s = socket(AF_UNIX, SOCK_STREAM, 0)) < 0)
            die("socket");
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(s, (struct sockaddr *)&a, sizeof a))
            die("bind");
    } else {
        fprintf(stderr, "bad address %s\n", addr);
        exit(2);
    }
    if (listen(s, 1024))
        die("listen");
    return s;
}

/* stdin → s (then SHUT_WR), s → stdout, until both are done. */
static int copy(int s)
{
    static char buf[1 << 16];
    struct pollfd p[2] = {{.fd = 0, .events = POLLIN}, {.fd = s, .events = POLLIN}};
    int in_open = 1, out_open = 1;
    while (in_open || out_open) {
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            die("poll");
        }
        if (in_open && p[0].revents) {
            ssize_t r = read(0, buf, sizeof buf);
            if (r <= 0) {
                in_open = 0;
                p[0].fd = -1;
                shutdown(s, SHUT_WR);
            } else {
                write_all(s, buf, r);
            }
        }
        if (out_open && p[1].revents) {
            ssize_t r = read(s, buf, sizeof buf);
            if (r < 0 && errno == ECONNRESET)
                r = 0;
            if (r < 0)
                die("read");
            if (r == 0) {
                out_open = 0;
                p[1].fd = -1;
            } else {
                write_all(1, buf, r);
            }
        }
    }
    close(s);
    return 0;
}

static int accept_one(int l)
{
    int s = accept(l, NULL, NULL);
    if (s < 0)
        die("accept");
    return s;
}

static void echo(int s)
{
    static char buf[1 << 16];
    ssize_t r;
    while ((r = read(s, buf, sizeof buf)) > 0)
        write_all(s, buf, r);
    close(s);
}

static int echo_server(const char *addr)
{
    int l = listener(addr);
    signal(SIGCHLD, SIG_IGN);
    printf("VSOCK-LISTENING %s\n", addr);
    fflush(stdout);
    for (;;) {
        int s = accept_one(l);
        pid_t pid = fork();
        if (pid == 0) {
            close(l);
            echo(s);
            _exit(0);
        }
        close(s);
    }
}

static uint64_t lcg(uint64_t *x)
{
    *x = *x * 6364136223846793005ULL + 1442695040888963407ULL;
    return *x >> 24;
}

static void fill(unsigned char *buf, size_t len, uint64_t *x)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = (unsigned char)lcg(x);
}

static int gen(long long bytes, uint64_t seed)
{
    static unsigned char buf[1 << 16];
    while (bytes > 0) {
        size_t n = bytes < (long long)sizeof buf ? (size_t)bytes : sizeof buf;
        fill(buf, n, &seed);
        write_all(1, buf, n);
        bytes -= n;
    }
    return 0;
}

/* One client: sends `bytes` of its pattern while reading the echo, checks it. */
static int client(const char *addr, long bytes, uint64_t seed)
{
    static unsigned char out[1 << 14], want[1 << 14], in[1 << 14];
    int s = dial(addr);
    uint64_t xs = seed, xr = seed;
    long sent = 0, got = 0;
    size_t out_len = 0, out_off = 0;
    struct pollfd p = {.fd = s};
    while (got < bytes) {
        p.events = POLLIN | (sent < bytes ? POLLOUT : 0);
        if (poll(&p, 1, 30000) <= 0)
            return 1;
        if ((p.revents & POLLOUT) && sent < bytes) {
            if (out_off == out_len) {
                out_len = bytes - sent < (long)sizeof out ? (size_t)(bytes - sent) : sizeof out;
                fill(out, out_len, &xs);
                out_off = 0;
            }
            ssize_t w = write(s, out + out_off, out_len - out_off);
            if (w <= 0)
                return 1;
            out_off += w;
            sent += w;
            if (sent == bytes)
                shutdown(s, SHUT_WR);
        }
        if (p.revents & (POLLIN | POLLHUP)) {
            ssize_t r = read(s, in, sizeof in);
            if (r <= 0)
                return 1;
            fill(want, r, &xr);
            if (memcmp(in, want, r))
                return 1;
            got += r;
        }
    }
    close(s);
    return 0;
}

static int clients(const char *addr, int n, long bytes)
{
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid == 0)
            _exit(client(addr, bytes, 1000 + i));
        if (pid < 0)
            die("fork");
    }
    int ok = 0, status;
    while (wait(&status) > 0)
        ok += WIFEXITED(status) && WEXITSTATUS(status) == 0;
    printf("VSOCK-CLIENTS ok=%d of %d\n", ok, n);
    return ok == n ? 0 : 1;
}

static int cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

static int rr(const char *addr, int count)
{
    int s = dial(addr);
    long long *t = malloc(sizeof *t * count), t0 = now_ns();
    char c = 'x';
    for (int i = 0; i < count; i++) {
        long long a = now_ns();
        write_all(s, &c, 1);
        if (read(s, &c, 1) != 1)
            die("read");
        t[i] = now_ns() - a;
    }
    long long total = now_ns() - t0;
    qsort(t, count, sizeof *t, cmp_ll);
    printf("VSOCK-RR count=%d median_ns=%lld total_ns=%lld\n", count, t[count / 2], total);
    return 0;
}

static int send_mib(const char *addr, long mib)
{
    static char buf[1 << 16];
    memset(buf, 0xa5, sizeof buf);
    long long t0 = now_ns();
    int s = dial(addr);
    for (long long left = (long long)mib << 20; left > 0; left -= sizeof buf)
        write_all(s, buf, sizeof buf);
    shutdown(s, SHUT_WR);
    while (read(s, buf, sizeof buf) > 0)
        ;
    printf("VSOCK-SEND bytes=%lld ns=%lld\n", (long long)mib << 20, now_ns() - t0);
    return 0;
}

static int sink(const char *addr)
{
    static char buf[1 << 16];
    int l = listener(addr);
    printf("VSOCK-LISTENING %s\n", addr);
    fflush(stdout);
    int s = accept_one(l);
    long long bytes = 0, t0 = 0;
    ssize_t r;
    while ((r = read(s, buf, sizeof buf)) > 0) {
        if (!bytes)
            t0 = now_ns();
        bytes += r;
    }
    printf("VSOCK-SINK bytes=%lld ns=%lld\n", bytes, now_ns() - t0);
    close(s);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    if (argc == 3 && !strcmp(argv[1], "connect"))
        return copy(dial(argv[2]));
    if (argc == 3 && !strcmp(argv[1], "listen")) {
        int l = listener(argv[2]);
        fprintf(stderr, "VSOCK-LISTENING %s\n", argv[2]);
        int s = accept_one(l);
        close(l);
        return copy(s);
    }
    if (argc == 3 && !strcmp(argv[1], "echo-server"))
        return echo_server(argv[2]);
    if (argc == 5 && !strcmp(argv[1], "clients"))
        return clients(argv[2], atoi(argv[3]), atol(argv[4]));
    if (argc == 4 && !strcmp(argv[1], "gen"))
        return gen(atoll(argv[2]), strtoull(argv[3], NULL, 10));
    if (argc == 4 && !strcmp(argv[1], "rr"))
        return rr(argv[2], atoi(argv[3]));
    if (argc == 4 && !strcmp(argv[1], "send"))
        return send_mib(argv[2], atol(argv[3]));
    if (argc == 3 && !strcmp(argv[1], "sink"))
        return sink(argv[2]);
    if (argc == 3 && !strcmp(argv[1], "hold")) {
        dial(argv[2]);
        printf("VSOCK-HOLDING\n");
        for (;;)
            pause();
    }
    fprintf(stderr, "usage: vmm-vsock connect ADDR | listen ADDR | echo-server ADDR | "
                    "clients ADDR N BYTES | gen BYTES SEED | rr ADDR COUNT | send ADDR MIB | "
                    "sink ADDR | hold ADDR\n");
    return 2;
}
