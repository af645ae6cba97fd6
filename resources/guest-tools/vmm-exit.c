/* vmm-exit N: tells the VMM to end with exit code N (0-255) once the guest powers off or
 * reboots, by writing the byte N to the VMM's guest exit-code port. The port is
 * GUEST_EXIT_CODE_PORT in boot/src/layout.rs, passed in by the build script as VMM_EXIT_PORT.
 * Needs root (ioperm). The initramfs and root disk inits run it with the status of vmmcmd. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/io.h>

#ifndef VMM_EXIT_PORT
#error "build with -DVMM_EXIT_PORT=<GUEST_EXIT_CODE_PORT from boot/src/layout.rs>"
#endif

int main(int argc, char **argv)
{
    char *end;
    long code;

    if (argc != 2) {
        fprintf(stderr, "usage: vmm-exit N   (N: the VMM's exit code, 0-255)\n");
        return 2;
    }
    code = strtol(argv[1], &end, 10);
    if (*argv[1] == '\0' || *end != '\0' || code < 0 || code > 255) {
        fprintf(stderr, "vmm-exit: %s is not an exit code (0-255)\n", argv[1]);
        return 2;
    }
    if (ioperm(VMM_EXIT_PORT, 1, 1) != 0) {
        perror("vmm-exit: ioperm");
        return 1;
    }
    outb((unsigned char)code, VMM_EXIT_PORT);
    return 0;
}
