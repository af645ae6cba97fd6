/*
 * PVH entry for the 32-bit test guest, and the real-mode AP trampoline.
 *
 * PVH boot ABI: 32-bit protected mode, paging off, flat CS/DS/ES/SS,
 * %ebx = physical address of struct hvm_start_info. Nothing here reloads a
 * segment register, so no GDT of our own is needed.
 */
#define XEN_ELFNOTE_PHYS32_ENTRY 18

    .section .note.Xen, "a", @note
    .balign 4
    .long 2f - 1f           /* namesz */
    .long 4f - 3f           /* descsz */
    .long XEN_ELFNOTE_PHYS32_ENTRY
1:  .asciz "Xen"
2:  .balign 4
3:  .long pvh_start         /* 32-bit physical entry point */
4:  .balign 4

    .section .text.entry, "ax", @progbits
    .code32
    .globl pvh_start
    .type pvh_start, @function
pvh_start:
    cli
    cld
    movl $stack_top, %esp
    /* Zero .bss (the stack lives outside it, in .stack). */
    movl $__bss_start, %edi
1:  cmpl $__bss_end, %edi
    jae 2f
    movl $0, (%edi)
    addl $4, %edi
    jmp 1b
2:  pushl %ebx              /* struct hvm_start_info * */
    call main
3:  cli
    hlt
    jmp 3b
    .size pvh_start, . - pvh_start

/*
 * A zero-limit IDT: any exception after `lidt` of this escalates to a triple fault.
 */
    .globl load_zero_idt
    .type load_zero_idt, @function
load_zero_idt:
    lidt zero_idt_desc
    ret
    .size load_zero_idt, . - load_zero_idt

    .section .rodata
    .balign 8
zero_idt_desc:
    .word 0                 /* limit */
    .long 0                 /* base */

/*
 * Real-mode AP trampoline. The BSP copies [ap_tramp_start, ap_tramp_end) to
 * AP_TRAMP_ADDR (a page below 1 MiB) and sends STARTUP IPIs with vector
 * AP_TRAMP_ADDR >> 12, so an AP starts here with CS = AP_TRAMP_ADDR >> 4, IP = 0.
 * The code is position independent (relative jumps/calls, data addressed
 * relative to DS = CS). Layout: offset 4 = lock byte, offset 8 = u32 counter
 * of APs that came online (pvh.c relies on these offsets).
 *
 * Each AP: takes the spinlock, reads its APIC id (CPUID.1:EBX[31:24]), prints
 * "cpu <id> online\n" on COM1 (polling LSR), increments the counter, releases
 * the lock and halts with interrupts off.
 */
#define T(sym) ((sym) - ap_tramp_start)

    .section .rodata.trampoline, "a", @progbits
    .code16
    .globl ap_tramp_start, ap_tramp_end
ap_tramp_start:
    jmp ap_main
    .org ap_tramp_start + 4, 0
ap_lock:
    .byte 0
    .org ap_tramp_start + 8, 0
ap_count:
    .long 0
ap_msg_cpu:
    .asciz "cpu "
ap_msg_online:
    .asciz " online\n"

ap_main:
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    movw %ax, %ss
    /* Spinlock: lock xchg on the lock byte (no stack needed yet). */
1:  movb $1, %al
    lock xchgb %al, T(ap_lock)
    testb %al, %al
    jz 2f
    pause
    jmp 1b
2:  /* Lock held: the stack at the top of this 4 KiB page is ours alone. */
    movw $0x1000, %sp
    movl $1, %eax
    cpuid
    shrl $24, %ebx          /* %bl = initial APIC id */
    movw $T(ap_msg_cpu), %si
    call ap_puts
    movb %bl, %al
    call ap_putdec
    movw $T(ap_msg_online), %si
    call ap_puts
    lock incl T(ap_count)
    movb $0, T(ap_lock)     /* release */
3:  cli
    hlt
    jmp 3b

/* ap_putc: %al -> COM1. Preserves all registers but flags. */
ap_putc:
    pushw %dx
    pushw %ax
    movw $0x3fd, %dx        /* LSR */
1:  inb %dx, %al
    testb $0x20, %al        /* THR empty */
    jz 1b
    popw %ax
    movw $0x3f8, %dx
    outb %al, %dx
    popw %dx
    ret

/* ap_puts: NUL-terminated string at %ds:%si. Clobbers %al, %si. */
ap_puts:
1:  movb (%si), %al
    incw %si
    testb %al, %al
    jz 2f
    call ap_putc
    jmp 1b
2:  ret

/* ap_putdec: %al (0..255) in decimal. Clobbers %ax, %cx, %dx. */
ap_putdec:
    xorw %cx, %cx
    movb $10, %dl
1:  xorb %ah, %ah
    divb %dl                /* %al = quotient, %ah = remainder */
    pushw %ax
    incw %cx
    testb %al, %al
    jnz 1b
2:  popw %ax
    movb %ah, %al
    addb $'0', %al
    call ap_putc
    decw %cx
    jnz 2b
    ret
ap_tramp_end:

    .code32

/* 16 KiB boot stack, outside .bss so the entry can zero .bss under it. */
    .section .stack, "aw", @nobits
    .balign 16
    .space 16384
stack_top:

    .section .note.GNU-stack, "", @progbits
