/* spawn-until: runs a command with its stdout on a pipe and times it, in nanoseconds.
 *
 *   spawn-until [-o LOG] [-t SECONDS] NEEDLE COMMAND [ARG...]
 *
 * Prints one line on stdout: `<ns until NEEDLE appeared> <ns until the output ended>`, both
 * from just before fork(); the first is -1 if NEEDLE never appeared. The command's stdout is
 * read to its end (copied to LOG, default /dev/null), the command is reaped, and its exit
 * code is this program's (128+N if a signal N ended it). stdin and stderr are inherited.
 * After SECONDS (default 300) the command is sent SIGKILL. For bench/nested.py, where the
 * busybox clock (/proc/uptime) has only 10 ms steps.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    const char *log = "/dev/null";
    long limit_s = 300;
    int opt;
    while ((opt = getopt(argc, argv, "+o:t:")) != -1) {
        if (opt == 'o')
            log = optarg;
        else if (opt == 't')
            limit_s = atol(optarg);
        else
            return 2;
    }
    if (argc - optind < 2) {
        fprintf(stderr, "usage: spawn-until [-o LOG] [-t SECONDS] NEEDLE COMMAND [ARG...]\n");
        return 2;
    }
    const char *needle = argv[optind];
    size_t nlen = strlen(needle);
    int logfd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (logfd < 0) {
        perror(log);
        return 2;
    }
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) {
        perror("pipe");
        return 2;
    }

    long long t0 = now_ns();
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 2;
    }
    if (pid == 0) {
        dup2(p[1], 1);
        execvp(argv[optind + 1], argv + optind + 1);
        perror(argv[optind + 1]);
        _exit(127);
    }
    close(p[1]);

    /* Matching across reads: keep the last nlen-1 bytes of what came before. */
    char buf[65536 + 4096];
    size_t keep = 0;
    long long found = -1, deadline = t0 + limit_s * 1000000000LL;
    for (;;) {
        long long left = deadline - now_ns();
        if (left <= 0) {
            kill(pid, SIGKILL);
            fprintf(stderr, "spawn-until: killed after %ld s\n", limit_s);
            break;
        }
        struct pollfd pfd = {.fd = p[0], .events = POLLIN};
        int r = poll(&pfd, 1, (int)(left / 1000000 + 1));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            continue;
        ssize_t n = read(p[0], buf + keep, 65536);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        if (found < 0) {
            if (memmem(buf, keep + n, needle, nlen))
                found = now_ns() - t0;
        }
        if (write(logfd, buf + keep, n) != n) {
            perror("write log");
        }
        size_t total = keep + n;
        keep = nlen > 1 ? (total < nlen - 1 ? total : nlen - 1) : 0;
        memmove(buf, buf + total - keep, keep);
    }
    long long end = now_ns() - t0;
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    printf("%lld %lld\n", found, end);
    fflush(stdout);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return WEXITSTATUS(status);
}
