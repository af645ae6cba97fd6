/*
 * Entry of the 64-bit test guest: the VMM starts it in 64-bit long mode with
 * identity paging, a flat GDT and %rsi = physical address of the Linux zero
 * page (struct boot_params), as for a 64-bit Linux kernel entry.
 */
    .section .text.entry, "ax", @progbits
    .code64
    .globl _start
    .type _start, @function
_start:
    cli
    cld
    leaq stack_top(%rip), %rsp
    movq %rsi, %r12
    leaq __bss_start(%rip), %rdi
    leaq __bss_end(%rip), %rcx
1:  cmpq %rcx, %rdi
    jae 2f
    movq $0, (%rdi)
    addq $8, %rdi
    jmp 1b
2:  movq %r12, %rdi         /* struct boot_params * */
    call main
3:  cli
    hlt
    jmp 3b
    .size _start, . - _start

    .section .stack, "aw", @nobits
    .balign 16
    .space 16384
stack_top:

    .section .note.GNU-stack, "", @progbits
