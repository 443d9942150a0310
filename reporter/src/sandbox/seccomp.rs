//! The seccomp filter bwrap loads for every step (`--seccomp FD`): the few system calls a build
//! has no use for and that reach past the sandbox's other walls fail as if this kernel lacked
//! them (`ENOSYS`, which programs already handle: those calls are optional kernel features).
//!
//! - `add_key`, `request_key`, `keyctl`: kernel keyrings are not namespaced by mounts or pids.
//!   A key of the volunteer's (a login token in their user keyring) is listed in `/proc/keys`
//!   by serial, and a process of the same uid may link it into a keyring of its own and read
//!   it. Docker's default profile blocks the same three for the same reason.
//! - `ioprio_set`: steps run at the lowest best-effort I/O priority when the volunteer wants their
//!   own work first (`priority = "low"`), and a process may raise its own within that class.
//! - `memfd_create`, `memfd_secret`: memory that no process maps is in no process's memory
//!   figures, so a step could hold gigabytes outside its memory limit. Without them programs
//!   fall back to files in `/dev/shm`, which is on disk here and counts against the disk limit.
//!
//! The filter is plain classic BPF, written out here rather than through libseccomp (a C
//! library and a build dependency for some twenty instructions). It knows the system call
//! numbers of the architectures a step may run code of on x86 and ARM machines (and RISC-V);
//! any other architecture passes unfiltered.

/// One BPF instruction, as `struct sock_filter`.
#[derive(Debug, Clone, Copy)]
struct Insn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
/// Offsets in `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;
/// x32 system calls are x86_64's with this bit set.
const X32_BIT: u32 = 0x4000_0000;

/// An architecture's `AUDIT_ARCH_*`, and its numbers for add_key, request_key, keyctl,
/// memfd_create, memfd_secret and ioprio_set.
struct Arch {
    audit: u32,
    clear: Option<u32>,
    denied: [u32; 6],
}

const ARCHES: &[Arch] = &[
    // x86_64, and x32 (same numbers with X32_BIT).
    Arch { audit: 0xC000_003E, clear: Some(X32_BIT), denied: [248, 249, 250, 319, 447, 251] },
    // i386, which an x86_64 machine runs too.
    Arch { audit: 0x4000_0003, clear: None, denied: [286, 287, 288, 356, 447, 289] },
    // aarch64 and riscv64 (the generic table).
    Arch { audit: 0xC000_00B7, clear: None, denied: [217, 218, 219, 279, 447, 30] },
    Arch { audit: 0xC000_00F3, clear: None, denied: [217, 218, 219, 279, 447, 30] },
    // 32-bit ARM (EABI), which many aarch64 machines run too.
    Arch { audit: 0x4000_0028, clear: None, denied: [309, 310, 311, 385, 447, 314] },
];

/// The filter, as the bytes bwrap reads from its `--seccomp` descriptor.
pub fn filter() -> Vec<u8> {
    let jump = |from: usize, to: usize| u8::try_from(to - from - 1).unwrap_or(u8::MAX);
    let mut blocks: Vec<Vec<Insn>> = Vec::new();
    for arch in ARCHES {
        let mut b = vec![Insn { code: LD_W_ABS, jt: 0, jf: 0, k: NR }];
        if let Some(bit) = arch.clear {
            b.push(Insn { code: AND_K, jt: 0, jf: 0, k: !bit });
        }
        let first = b.len();
        let deny = first + arch.denied.len() + 1;
        for (i, nr) in arch.denied.iter().enumerate() {
            b.push(Insn { code: JEQ_K, jt: jump(first + i, deny), jf: 0, k: *nr });
        }
        b.push(Insn { code: RET_K, jt: 0, jf: 0, k: RET_ALLOW });
        b.push(Insn { code: RET_K, jt: 0, jf: 0, k: RET_ERRNO | libc::ENOSYS as u32 });
        blocks.push(b);
    }
    // Dispatch on the architecture: `ld arch`, one `jeq` per architecture, `ret allow`, blocks.
    let mut prog = vec![Insn { code: LD_W_ABS, jt: 0, jf: 0, k: ARCH }];
    let mut start = 1 + ARCHES.len() + 1;
    for (i, (arch, block)) in ARCHES.iter().zip(&blocks).enumerate() {
        prog.push(Insn { code: JEQ_K, jt: jump(1 + i, start), jf: 0, k: arch.audit });
        start += block.len();
    }
    prog.push(Insn { code: RET_K, jt: 0, jf: 0, k: RET_ALLOW });
    prog.extend(blocks.into_iter().flatten());
    let mut bytes = Vec::with_capacity(prog.len() * 8);
    for i in prog {
        bytes.extend_from_slice(&i.code.to_ne_bytes());
        bytes.push(i.jt);
        bytes.push(i.jf);
        bytes.extend_from_slice(&i.k.to_ne_bytes());
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the filter the way the kernel does, for one (arch, nr).
    fn verdict(arch: u32, nr: u32) -> u32 {
        let prog: Vec<Insn> = filter()
            .chunks(8)
            .map(|c| Insn {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = prog[pc];
            match i.code {
                LD_W_ABS => acc = if i.k == ARCH { arch } else { nr },
                AND_K => acc &= i.k,
                JEQ_K => pc += usize::from(if acc == i.k { i.jt } else { i.jf }),
                RET_K => return i.k,
                other => panic!("unexpected instruction {other:#x}"),
            }
            pc += 1;
        }
    }

    #[test]
    fn the_denied_calls_fail_and_the_rest_pass_on_every_architecture() {
        let enosys = RET_ERRNO | libc::ENOSYS as u32;
        for arch in ARCHES {
            for nr in arch.denied {
                assert_eq!(verdict(arch.audit, nr), enosys, "{:#x} {nr}", arch.audit);
            }
            for nr in [0, 1, 59, 60, 231, 246, 251, 318, 320, 446, 448] {
                if !arch.denied.contains(&nr) {
                    assert_eq!(verdict(arch.audit, nr), RET_ALLOW, "{:#x} {nr}", arch.audit);
                }
            }
        }
        // x32's keyctl, and an architecture the filter does not know.
        assert_eq!(verdict(0xC000_003E, 250 | X32_BIT), enosys);
        assert_eq!(verdict(0x8000_0016, 280), RET_ALLOW);
    }
}
