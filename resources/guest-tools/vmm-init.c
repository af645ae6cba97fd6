/* vmm-init: the guest's init for resources/vmm-run, which runs a command in a VM in the
 * current directory: the host's root file system is the guest's root (virtio-fs, read-only)
 * and the current directory is shared writable at the same path.
 *
 * From the kernel command line (the VMM's --cmdline):
 *   vmm.cwd=HEX  the directory to run in (hex of its bytes), mounted from the virtio-fs tag
 *                "cwd" over the same path of the read-only root
 *   vmm.cmd=HEX  the shell command (hex of its bytes), run with /bin/sh -c
 * It mounts /proc, /sys, /dev, and tmpfs on /tmp and /run (the root is read-only), runs the
 * command with stdin, stdout and stderr on the console, writes its exit status (0-255; 128+N
 * after signal N) to the VMM's exit-code port, and reboots: vmm ends with that status.
 *
 * Static, so it runs whatever the root holds. The port is GUEST_EXIT_CODE_PORT in
 * boot/src/layout.rs, passed in by the build as VMM_EXIT_PORT. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef VMM_EXIT_PORT
#error "build with -DVMM_EXIT_PORT=<GUEST_EXIT_CODE_PORT from boot/src/layout.rs>"
#endif

/* Exit status for a failure of vmm-init itself (not of the command). */
#define INIT_FAILED 125

static void finish(int status)
{
    if (ioperm(VMM_EXIT_PORT, 1, 1) == 0)
        outb((unsigned char)status, VMM_EXIT_PORT);
    else
        perror("vmm-init: ioperm");
    sync();
    reboot(RB_AUTOBOOT);
    for (;;)
        pause();
}

static void fail(const char *what)
{
    fprintf(stderr, "vmm-init: %s: %s\n", what, strerror(errno));
    finish(INIT_FAILED);
}

/* The value of `key=` on the kernel command line, hex-decoded into a new string. */
static char *hex_arg(const char *cmdline, const char *key)
{
    size_t klen = strlen(key);
    const char *p = cmdline;
    while ((p = strstr(p, key)) != NULL) {
        if ((p == cmdline || p[-1] == ' ') && p[klen] == '=')
            break;
        p += klen;
    }
    if (p == NULL)
        return NULL;
    p += klen + 1;
    size_t n = strcspn(p, " \n");
    char *out = malloc(n / 2 + 1);
    if (out == NULL)
        return NULL;
    size_t i;
    for (i = 0; i + 1 < n; i += 2) {
        unsigned int byte;
        if (sscanf(p + i, "%2x", &byte) != 1)
            return NULL;
        out[i / 2] = (char)byte;
    }
    out[i / 2] = '\0';
    return out;
}

int main(void)
{
    static char cmdline[65536];

    if (mount("proc", "/proc", "proc", 0, NULL) != 0)
        fail("mount /proc");
    mount("sysfs", "/sys", "sysfs", 0, NULL);
    mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
    mount("tmpfs", "/tmp", "tmpfs", 0, "mode=1777");
    mount("tmpfs", "/run", "tmpfs", 0, "mode=0755");

    int fd = open("/proc/cmdline", O_RDONLY);
    if (fd < 0)
        fail("open /proc/cmdline");
    ssize_t n = read(fd, cmdline, sizeof cmdline - 1);
    if (n < 0)
        fail("read /proc/cmdline");
    cmdline[n] = '\0';
    close(fd);

    char *cwd = hex_arg(cmdline, "vmm.cwd");
    char *cmd = hex_arg(cmdline, "vmm.cmd");
    if (cwd == NULL || cmd == NULL) {
        fprintf(stderr, "vmm-init: no vmm.cwd= and vmm.cmd= on the kernel command line\n");
        finish(INIT_FAILED);
    }
    if (mount("cwd", cwd, "virtiofs", 0, NULL) != 0)
        fail("mount the current directory (virtio-fs tag cwd)");
    if (chdir(cwd) != 0)
        fail("chdir");

    int console = open("/dev/console", O_RDWR);
    if (console >= 0) {
        dup2(console, 0);
        dup2(console, 1);
        dup2(console, 2);
        if (console > 2)
            close(console);
    }
    setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
    setenv("HOME", "/root", 0);
    setenv("TERM", "linux", 0);

    pid_t child = fork();
    if (child < 0)
        fail("fork");
    if (child == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        perror("vmm-init: exec /bin/sh");
        _exit(127);
    }
    int status = 0;
    while (waitpid(child, &status, 0) < 0)
        if (errno != EINTR)
            fail("waitpid");
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    finish(code);
    return 0;
}
