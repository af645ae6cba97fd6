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
 *   iobench mktree DIR FILES BIG_MIB
 *       Makes the file-system benchmark's data in DIR (a new directory): FILES small files of
 *       1-16 KiB in DIR/tree/dNN (100 to a directory) and DIR/big of BIG_MIB MiB, contents
 *       and sizes from a fixed LCG, so every run (and bench/nested.py on this machine, for
 *       the ext4 image) makes the same bytes. Prints their count, bytes and big's SHA-256.
 *   iobench fs DIR MIB
 *       On the data mktree made: reads every file under DIR/tree (tree_ns: the walk, open,
 *       read to the end, close), reads DIR/big in 1 MiB read(2)s and hashes it (big_ns: the
 *       time spent in read(2); the SHA-256 is printed to be checked), then writes DIR/out, MIB
 *       MiB in 1 MiB write(2)s, and fsync()s it (write_ns), and removes it.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
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

/* SHA-256 (FIPS 180-4), for checking the 64 MiB file read back in the guest. */
struct sha256 {
    uint32_t h[8];
    unsigned char block[64];
    size_t used;
    uint64_t bytes;
};

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(struct sha256 *c, const unsigned char *p)
{
    uint32_t w[64], v[8];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    memcpy(v, c->h, sizeof v);
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = v[7] + (ROR(v[4], 6) ^ ROR(v[4], 11) ^ ROR(v[4], 25)) +
                      ((v[4] & v[5]) ^ (~v[4] & v[6])) + K256[i] + w[i];
        uint32_t t2 = (ROR(v[0], 2) ^ ROR(v[0], 13) ^ ROR(v[0], 22)) +
                      ((v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]));
        memmove(v + 1, v, 7 * sizeof v[0]);
        v[4] += t1;
        v[0] = t1 + t2;
    }
    for (int i = 0; i < 8; i++)
        c->h[i] += v[i];
}

static void sha256_init(struct sha256 *c)
{
    static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(c->h, h0, sizeof h0);
    c->used = 0;
    c->bytes = 0;
}

static void sha256_update(struct sha256 *c, const unsigned char *p, size_t len)
{
    c->bytes += len;
    while (len > 0) {
        size_t n = 64 - c->used < len ? 64 - c->used : len;
        memcpy(c->block + c->used, p, n);
        c->used += n;
        p += n;
        len -= n;
        if (c->used == 64) {
            sha256_block(c, c->block);
            c->used = 0;
        }
    }
}

static void sha256_hex(struct sha256 *c, char out[65])
{
    uint64_t bits = c->bytes * 8;
    unsigned char pad[72] = {0x80};
    size_t n = (c->used < 56 ? 56 : 120) - c->used;
    for (int i = 0; i < 8; i++)
        pad[n + i] = (unsigned char)(bits >> (56 - 8 * i));
    sha256_update(c, pad, n + 8);
    for (int i = 0; i < 8; i++)
        sprintf(out + 8 * i, "%08x", c->h[i]);
}

static uint64_t lcg(uint64_t *x)
{
    *x = *x * 6364136223846793005ULL + 1442695040888963407ULL;
    return *x >> 16;
}

static void lcg_fill(unsigned char *buf, size_t len, uint64_t *x)
{
    for (size_t i = 0; i < len; i += 4) {
        uint32_t v = (uint32_t)lcg(x);
        memcpy(buf + i, &v, len - i < 4 ? len - i : 4);
    }
}

static void write_all(int fd, const unsigned char *buf, size_t len, const char *what)
{
    while (len > 0) {
        ssize_t w = write(fd, buf, len);
        if (w <= 0)
            die(what);
        buf += w;
        len -= (size_t)w;
    }
}

static int mktree(const char *dir, long files, long big_mib)
{
    static unsigned char buf[1 << 20];
    char path[4096];
    uint64_t x = 42;
    long long bytes = 0;
    snprintf(path, sizeof path, "%s/tree", dir);
    if (mkdir(dir, 0755) || mkdir(path, 0755))
        die(path);
    for (long i = 0; i < files; i++) {
        if (i % 100 == 0) {
            snprintf(path, sizeof path, "%s/tree/d%02ld", dir, i / 100);
            if (mkdir(path, 0755))
                die(path);
        }
        snprintf(path, sizeof path, "%s/tree/d%02ld/f%04ld", dir, i / 100, i);
        size_t len = 1024 + lcg(&x) % (15 * 1024 + 1);
        lcg_fill(buf, len, &x);
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
        if (fd < 0)
            die(path);
        write_all(fd, buf, len, path);
        close(fd);
        bytes += len;
    }
    snprintf(path, sizeof path, "%s/big", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (fd < 0)
        die(path);
    struct sha256 c;
    sha256_init(&c);
    for (long i = 0; i < big_mib; i++) {
        lcg_fill(buf, sizeof buf, &x);
        sha256_update(&c, buf, sizeof buf);
        write_all(fd, buf, sizeof buf, path);
    }
    close(fd);
    char hex[65];
    sha256_hex(&c, hex);
    printf("IOBENCH mktree files=%ld tree_bytes=%lld big_mib=%ld sha256=%s\n", files, bytes,
           big_mib, hex);
    return 0;
}

/* Reads every regular file under path (which it extends in place); counts files and bytes. */
static void read_tree(char *path, size_t len, size_t cap, long *files, long long *bytes)
{
    static unsigned char buf[1 << 16];
    DIR *d = opendir(path);
    if (!d)
        die(path);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        int n = snprintf(path + len, cap - len, "/%s", e->d_name);
        if (n < 0 || (size_t)n >= cap - len) {
            fprintf(stderr, "path too long under %s\n", path);
            exit(1);
        }
        struct stat st;
        if (lstat(path, &st))
            die(path);
        if (S_ISDIR(st.st_mode)) {
            read_tree(path, len + n, cap, files, bytes);
        } else if (S_ISREG(st.st_mode)) {
            int fd = open(path, O_RDONLY);
            if (fd < 0)
                die(path);
            ssize_t r;
            while ((r = read(fd, buf, sizeof buf)) > 0)
                *bytes += r;
            if (r < 0)
                die(path);
            close(fd);
            ++*files;
        }
        path[len] = 0;
    }
    closedir(d);
}

static int fs(const char *dir, long mib)
{
    static unsigned char buf[1 << 20];
    char path[4096];
    long files = 0;
    long long tree_bytes = 0;

    snprintf(path, sizeof path, "%s/tree", dir);
    long long t0 = now_ns();
    read_tree(path, strlen(path), sizeof path, &files, &tree_bytes);
    long long tree_ns = now_ns() - t0;

    snprintf(path, sizeof path, "%s/big", dir);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        die(path);
    struct sha256 c;
    sha256_init(&c);
    long long big_ns = 0, big_bytes = 0;
    for (;;) {
        long long t = now_ns();
        ssize_t r = read(fd, buf, sizeof buf);
        big_ns += now_ns() - t;
        if (r < 0)
            die(path);
        if (r == 0)
            break;
        sha256_update(&c, buf, (size_t)r);
        big_bytes += r;
    }
    close(fd);
    char hex[65];
    sha256_hex(&c, hex);

    snprintf(path, sizeof path, "%s/out", dir);
    memset(buf, 0xa5, sizeof buf);
    t0 = now_ns();
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        die(path);
    for (long i = 0; i < mib; i++)
        write_all(fd, buf, sizeof buf, path);
    if (fsync(fd))
        die("fsync");
    close(fd);
    long long write_ns = now_ns() - t0;
    if (unlink(path))
        die(path);
    printf("IOBENCH fs files=%ld tree_bytes=%lld tree_ns=%lld big_bytes=%lld big_ns=%lld "
           "sha256=%s write_mib=%ld write_ns=%lld\n", files, tree_bytes, tree_ns, big_bytes,
           big_ns, hex, mib, write_ns);
    return 0;
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
    if (argc == 5 && !strcmp(argv[1], "mktree"))
        return mktree(argv[2], atol(argv[3]), atol(argv[4]));
    if (argc == 4 && !strcmp(argv[1], "fs"))
        return fs(argv[2], atol(argv[3]));
    fprintf(stderr, "usage: iobench blk DEV MIB REQ_KIB OPS | get IP PORT PATH | "
                    "put IP PORT MIB | sink PORT | mktree DIR FILES BIG_MIB | fs DIR MIB\n");
    return 2;
}
