/* A PVH guest built the way a newcomer builds one, with binutils' defaults:
 *     as --64 ld_default.s -o ld_default.o
 *     ld -m elf_x86_64 -Ttext=0x100000 -e entry ld_default.o -o ld-default.elf
 * `-z separate-code` (ld's default) gives it a first PT_LOAD segment holding only the ELF and
 * program headers, at 0xff000, below 1 MiB; the PVH note lands in a segment at 4 MiB.
 * It writes one line to COM1, then resets through the i8042. */

    .section .note.Xen, "a", @note
    .balign 4
    .long 4             /* n_namesz: "Xen\0" */
    .long 4             /* n_descsz */
    .long 18            /* n_type: XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long entry         /* the 32-bit PVH entry point */
    .balign 4

    .text
    .code32             /* PVH starts in 32-bit protected mode, paging off */
    .globl entry
entry:
    mov $msg, %esi
    mov $0x3f8, %dx     /* COM1 data register */
1:  lodsb
    test %al, %al
    jz 2f
    out %al, %dx
    jmp 1b
2:  mov $0xfe, %al      /* i8042: pulse the CPU reset line */
    out %al, $0x64
3:  hlt
    jmp 3b

msg: .asciz "hello from a PVH guest linked the default way\n"
