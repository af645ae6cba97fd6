/* iobench: the I/O side of bench/nested.py, timed with CLOCK_MONOTONIC (nanoseconds).
 * Static, so the same binary runs in the guest (copied into its root disk) and in the test
 * host. Each subcommand prints one `IOBENCH ...` line of key=value pairs on stdout.
 *
 *   iobench blk DEV MIB REQ_KIB OPS
 *       On DEV with O_DIRECT, one request in flight: writes MIB MiB in REQ_KIB KiB requests
 *       from offset 0 and fdatasync()s (write_ns), reads them back and checks them (read_ns),
 *       then OPS 4 KiB reads at pseudo-random 4 KiB-aligned offsets within those MIB MiB
 *       (rand_ns; a fixed LCG, so every run reads the same offsets).
 *   iobench get IP PORT PATH
 *       HTTP/1.0 GET of PATH from IP:PORT, read to the end (ns: connect to EOF; bytes: the
 *       body's size).
 *   iobench put IP PORT MIB
 *       Sends MIB MiB to IP:PORT, shuts down its side and waits for the peer to close (ns:
 *       connect to the peer's close, so all of it was received).
 *   iobench sink PORT
 *       Accepts one connection on PORT, reads it to the end, closes it (bytes).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

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

static void fill(unsigned char *buf, size_t len, uint64_t offset)
{
    /* Every 8 bytes hold their own offset on the disk: a misplaced block is caught. */
    for (size_t i = 0; i < len; i += 8) {
        uint64_t v = (offset + i) ^ 0x5a5a5a5a5a5a5a5aULL;
        memcpy(buf + i, &v, 8);
    }
}

static int blk(const char *dev, long mib, long req_kib, long ops)
{
    size_t req = (size_t)req_kib << 10;
    uint64_t total = (uint64_t)mib << 20;
    unsigned char *buf, *want;
    if (posix_memalign((void **)&buf, 4096, req) || posix_memalign((void **)&want, 4096, req))
        die("posix_memalign");
    int fd = open(dev, O_RDWR | O_DIRECT);
    if (fd < 0)
        die(dev);
    long errors = 0;

    long long t0 = now_ns();
    for (uint64_t off = 0; off < total; off += req) {
        fill(buf, req, off);
        if (pwrite(fd, buf, req, off) != (ssize_t)req)
            die("pwrite");
    }
    if (fdatasync(fd))
        die("fdatasync");
    long long t1 = now_ns();
    for (uint64_t off = 0; off < total; off += req) {
        if (pread(fd, buf, req, off) != (ssize_t)req)
            die("pread");
        fill(want, req, off);
        errors += memcmp(buf, want, req) != 0;
    }
    long long t2 = now_ns();
    uint64_t x = 12345, blocks = total / 4096;
    for (long i = 0; i < ops; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        uint64_t off = ((x >> 33) % blocks) * 4096;
        if (pread(fd, buf, 4096, off) != 4096)
            die("pread 4k");
        fill(want, 4096, off);
        errors += memcmp(buf, want, 4096) != 0;
    }
    long long t3 = now_ns();
    close(fd);
    printf("IOBENCH blk mib=%ld req_kib=%ld ops=%ld write_ns=%lld read_ns=%lld rand_ns=%lld "
           "errors=%ld\n", mib, req_kib, ops, t1 - t0, t2 - t1, t3 - t2, errors);
    return errors != 0;
}

static int connect_to(const char *ip, int port)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0)
        die("socket");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
        fprintf(stderr, "bad address %s\n", ip);
        exit(2);
    }
    if (connect(s, (struct sockaddr *)&a, sizeof a))
        die("connect");
    return s;
}

static int get(const char *ip, int port, const char *path)
{
    static char buf[1 << 16];
    long long t0 = now_ns();
    int s = connect_to(ip, port);
    int n = snprintf(buf, sizeof buf, "GET /%s HTTP/1.0\r\nHost: %s\r\n\r\n", path, ip);
    if (write(s, buf, n) != n)
        die("write request");
    long long bytes = 0, header = -1;
    char tail[4] = {0};
    ssize_t r;
    while ((r = read(s, buf, sizeof buf)) > 0) {
        /* The body starts after the first \r\n\r\n (seen across reads). */
        for (ssize_t i = 0; header < 0 && i < r; i++) {
            memmove(tail, tail + 1, 3);
            tail[3] = buf[i];
            if (!memcmp(tail, "\r\n\r\n", 4))
                header = bytes + i + 1;
        }
        bytes += r;
    }
    if (r < 0)
        die("read");
    long long t1 = now_ns();
    close(s);
    printf("IOBENCH get bytes=%lld ns=%lld\n", header < 0 ? -1 : bytes - header, t1 - t0);
    return header < 0;
}

static int put(const char *ip, int port, long mib)
{
    static char buf[1 << 16];
    memset(buf, 0xa5, sizeof buf);
    long long t0 = now_ns();
    int s = connect_to(ip, port);
    long long left = (long long)mib << 20;
    while (left > 0) {
        ssize_t w = write(s, buf, left < (long long)sizeof buf ? left : (long long)sizeof buf);
        if (w <= 0)
            die("write");
        left -= w;
    }
    shutdown(s, SHUT_WR);
    while (read(s, buf, sizeof buf) > 0)
        ;
    long long t1 = now_ns();
    close(s);
    printf("IOBENCH put bytes=%lld ns=%lld\n", (long long)mib << 20, t1 - t0);
    return 0;
}

static int sink(int port)
{
    static char buf[1 << 16];
    int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (l < 0)
        die("socket");
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1))
        die("bind/listen");
    int s = accept(l, NULL, NULL);
    if (s < 0)
        die("accept");
    long long bytes = 0;
    ssize_t r;
    while ((r = read(s, buf, sizeof buf)) > 0)
        bytes += r;
    close(s);
    close(l);
    printf("IOBENCH sink bytes=%lld\n", bytes);
    return r < 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 6 && !strcmp(argv[1], "blk"))
        return blk(argv[2], atol(argv[3]), atol(argv[4]), atol(argv[5]));
    if (argc == 5 && !strcmp(argv[1], "get"))
        return get(argv[2], atoi(argv[3]), argv[4]);
    if (argc == 5 && !strcmp(argv[1], "put"))
        return put(argv[2], atoi(argv[3]), atol(argv[4]));
    if (argc == 3 && !strcmp(argv[1], "sink"))
        return sink(atoi(argv[2]));
    fprintf(stderr, "usage: iobench blk DEV MIB REQ_KIB OPS | get IP PORT PATH | "
                    "put IP PORT MIB | sink PORT\n");
    return 2;
}
