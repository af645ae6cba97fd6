/*
 * vmm-api SOCKET METHOD PATH [BODY]: one HTTP/1.1 request to vmm's control API on a Unix
 * socket, for the nested test host, which has no curl (the tests on this machine use curl).
 * Prints the status code and the body on one line; exits 0 for a 2xx answer, 1 otherwise.
 * Built static with the host's libc: it runs in the test host's busybox initramfs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 4 || argc > 5) {
        fprintf(stderr, "usage: vmm-api SOCKET METHOD PATH [BODY]\n");
        return 2;
    }
    const char *body = argc == 5 ? argv[4] : "";
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(argv[1]) >= sizeof addr.sun_path) {
        fprintf(stderr, "vmm-api: socket path too long\n");
        return 2;
    }
    strcpy(addr.sun_path, argv[1]);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror("vmm-api: connect");
        return 1;
    }
    static char buf[65536];
    int n = snprintf(buf, sizeof buf,
                     "%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                     argv[2], argv[3], strlen(body), body);
    if (n < 0 || (size_t)n >= sizeof buf) {
        fprintf(stderr, "vmm-api: request too long\n");
        return 2;
    }
    for (int done = 0; done < n;) {
        ssize_t w = write(fd, buf + done, n - done);
        if (w <= 0) {
            perror("vmm-api: write");
            return 1;
        }
        done += w;
    }
    size_t len = 0;
    for (;;) {
        ssize_t r = read(fd, buf + len, sizeof buf - 1 - len);
        if (r < 0) {
            perror("vmm-api: read");
            return 1;
        }
        if (r == 0 || (len += r) == sizeof buf - 1)
            break;
    }
    buf[len] = 0;
    int code = 0;
    if (sscanf(buf, "HTTP/1.1 %d", &code) != 1) {
        fprintf(stderr, "vmm-api: not an HTTP answer: %.80s\n", buf);
        return 1;
    }
    const char *answer = strstr(buf, "\r\n\r\n");
    printf("%d %s\n", code, answer ? answer + 4 : "");
    return code / 100 == 2 ? 0 : 1;
}
