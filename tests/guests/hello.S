/* A minimal TD guest for the SVM engine's end-to-end test. Linked at 0xFFFF4000 inside a
   64 KiB TDVF-format image mapped at 0xFFFF0000 (page tables at +0, GDT at +0x3000). */
    .intel_syntax noprefix
    .code32
entry32:
    mov eax, 0xFFFF0000          /* PML4 */
    mov cr3, eax
    mov eax, cr4
    or eax, 0x20                 /* CR4.PAE */
    mov cr4, eax
    lgdt [0xFFFF3020]
    mov eax, cr0
    or eax, 0x80000000           /* CR0.PG: EFER.LME is set at reset in a TD */
    mov cr0, eax
    ljmp 0x08:long64
    .code64
long64:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov eax, 1                   /* TDG.VP.INFO */
    .byte 0x66, 0x0f, 0x01, 0xcc
    cmp rcx, 48                  /* GPAW */
    jne fail
    lea rsi, [rip + msg]
next:
    movzx r15d, byte ptr [rsi]
    test r15d, r15d
    jz done
    xor eax, eax                 /* TDG.VP.VMCALL */
    mov ecx, 0xFC00              /* expose R10-R15 */
    xor r10d, r10d
    mov r11d, 30                 /* Instruction.IO */
    mov r12d, 1                  /* one byte */
    mov r13d, 1                  /* out */
    mov r14d, 0x3F8
    .byte 0x66, 0x0f, 0x01, 0xcc
    test r10, r10
    jnz fail
    inc rsi
    jmp next
done:
    lidt [rip + empty_idt]            /* an empty IDT: the next exception shuts the TD down */
    int3
fail:
    xor eax, eax                 /* TDG.VP.VMCALL ReportFatalError(0x5EC0DE) */
    mov ecx, 0x1000
    xor r10d, r10d
    mov r11d, 0x10003
    mov r12d, 0x5EC0DE
    .byte 0x66, 0x0f, 0x01, 0xcc
    hlt
    jmp fail
empty_idt:
    .word 0
    .quad 0
msg:
    .asciz "hello from a TD on SVM\n"
