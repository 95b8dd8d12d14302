//! The embedded eBPF object as this kernel loads it. The TC programs read `skb->ip_summed`
//! through the `bpf_cast_to_kern_ctx` kfunc (see lb-ebpf's `skb.rs`), which aya 0.14 cannot link:
//! they call a placeholder helper id instead, and this module rewrites each such call before
//! loading, into the kfunc call the verifier expects (`src_reg` `BPF_PSEUDO_KFUNC_CALL`, `imm`
//! the kfunc's id in the kernel's BTF), and sets the `.rodata` globals that say where
//! `ip_summed` is. Where the kernel's BTF lacks either, the call becomes `r0 = 0` and the
//! globals stay 0: the programs then keep the checksum helpers (correct, one or two helper calls
//! slower per translated packet). It also sets the seed of the SNAT port hash
//! (`maps::snat_seed`). Every loader of the object (the agent, `lb explain`'s private copy) goes
//! through [`prepared`], so the same program has the same tag everywhere.

use std::sync::OnceLock;

use aya::EbpfLoader;
use lb_common::{
    GLOBAL_SKB_IP_SUMMED_BYTE, GLOBAL_SKB_IP_SUMMED_SHIFT, GLOBAL_SNAT_SEED, KFUNC_CAST_TO_KERN_CTX,
    KFUNC_CAST_TO_KERN_CTX_PLACEHOLDER,
};

use super::{
    OBJECT,
    kernel_btf::{BitField, KernelBtf},
};

/// `BPF_JMP | BPF_CALL`.
const OP_CALL: u8 = 0x85;
/// `BPF_ALU64 | BPF_MOV | BPF_K`.
const OP_MOV64_IMM: u8 = 0xb7;
/// `src_reg` of a call into a kernel function named by BTF id.
const BPF_PSEUDO_KFUNC_CALL: u8 = 2;

/// The object's bytes with the placeholder calls rewritten, and the globals to set.
pub struct Prepared {
    /// 8-aligned storage: the ELF parser reads its structures in place.
    words: Vec<u64>,
    len: usize,
    /// `ip_summed`'s byte and bit in `struct sk_buff`, when the kfunc and the field were found.
    ip_summed: Option<(u32, u32)>,
    /// The seed of the SNAT port hash (`maps::snat_seed`).
    snat_seed: u32,
    /// Why the checksum helpers stay, for the log.
    pub fallback: Option<String>,
}

impl Prepared {
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialised bytes; u8 has no alignment needs.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    /// Whether the TC programs update L4 checksums by direct writes (the kernel context found).
    #[cfg(test)]
    fn direct_checksums(&self) -> bool {
        self.ip_summed.is_some()
    }

    /// Sets the globals the programs read (`.rodata`: the kernel freezes them after load).
    pub fn configure<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        let (byte, shift) = match &self.ip_summed {
            Some((byte, shift)) => (byte, shift),
            None => (&0, &0),
        };
        loader.override_global(GLOBAL_SKB_IP_SUMMED_BYTE, byte, true);
        loader.override_global(GLOBAL_SKB_IP_SUMMED_SHIFT, shift, true);
        loader.override_global(GLOBAL_SNAT_SEED, &self.snat_seed, true);
    }
}

/// The object prepared for the running kernel. What the kernel offers is worked out once per
/// process; the object's copy is made for each load and dropped after it (2 MiB a start would
/// otherwise hold for its lifetime).
pub fn prepared() -> Prepared {
    static KERNEL: OnceLock<Result<(u32, BitField), String>> = OnceLock::new();
    let found = KERNEL.get_or_init(|| {
        KernelBtf::running()
            .map_err(|e| format!("cannot read {}: {e}", super::kernel_btf::VMLINUX_BTF))
            .and_then(|r| r.map_err(|e| format!("cannot parse {}: {e}", super::kernel_btf::VMLINUX_BTF)))
            .and_then(|btf| kernel_ctx(&btf))
    });
    prepare(OBJECT, found.clone())
}

/// The kfunc's id and `ip_summed`'s place, or why they cannot be used.
fn kernel_ctx(btf: &KernelBtf) -> Result<(u32, BitField), String> {
    let id = btf.func_id(KFUNC_CAST_TO_KERN_CTX).ok_or_else(|| format!("the kernel has no {KFUNC_CAST_TO_KERN_CTX}"))?;
    let f = btf.member("sk_buff", "ip_summed").ok_or("the kernel's struct sk_buff has no ip_summed")?;
    if f.bits != 2 || f.shift + f.bits > 8 || f.byte == 0 {
        return Err(format!("sk_buff.ip_summed has an unexpected shape: {f:?}"));
    }
    Ok((id, f))
}

/// `object` with each placeholder call rewritten: into a call of the kfunc `kernel` names when
/// the kernel has it, else into `r0 = 0`.
fn prepare(object: &[u8], kernel: Result<(u32, BitField), String>) -> Prepared {
    let mut words = vec![0u64; object.len().div_ceil(8)];
    // SAFETY: `words` has room for `object.len()` bytes.
    let bytes = unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), object.len()) };
    bytes.copy_from_slice(object);
    let rewritten = rewrite_placeholder_calls(bytes, kernel.as_ref().ok().map(|(id, _)| *id));
    let (ip_summed, fallback) = match kernel {
        Ok((_, f)) if rewritten > 0 => (Some((f.byte, f.shift)), None),
        Ok(_) => (None, Some("the eBPF object calls no kernel context".to_owned())),
        Err(why) => (None, Some(why)),
    };
    Prepared { words, len: object.len(), ip_summed, fallback, snat_seed: crate::maps::snat_seed() }
}

/// Rewrites every placeholder call in the object's executable sections; returns how many.
fn rewrite_placeholder_calls(elf: &mut [u8], kfunc_id: Option<u32>) -> usize {
    let mut n = 0;
    for (start, size) in executable_sections(elf) {
        let Some(code) = elf.get_mut(start..start + size) else { continue };
        for insn in code.chunks_exact_mut(8) {
            let imm = u32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
            if insn[0] != OP_CALL || insn[1] != 0 || imm != KFUNC_CAST_TO_KERN_CTX_PLACEHOLDER {
                continue;
            }
            match kfunc_id {
                // dst 0, src BPF_PSEUDO_KFUNC_CALL; off 0: the id is in vmlinux's BTF.
                Some(id) => {
                    insn[1] = BPF_PSEUDO_KFUNC_CALL << 4;
                    insn[4..8].copy_from_slice(&id.to_le_bytes());
                }
                None => {
                    insn[0] = OP_MOV64_IMM;
                    insn[4..8].copy_from_slice(&0u32.to_le_bytes());
                }
            }
            n += 1;
        }
    }
    n
}

/// `(offset, size)` of every `SHF_EXECINSTR` section of a little-endian ELF64 file.
fn executable_sections(elf: &[u8]) -> Vec<(usize, usize)> {
    const SHF_EXECINSTR: u64 = 4;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u64_at = |o: usize| elf.get(o..o + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    if elf.get(0..4) != Some(b"\x7fELF".as_slice()) || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Vec::new();
    }
    let (Some(shoff), Some(shentsize), Some(shnum)) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c)) else {
        return Vec::new();
    };
    (0..shnum)
        .filter_map(|i| {
            let h = shoff as usize + i * shentsize;
            let (flags, offset, size) = (u64_at(h + 8)?, u64_at(h + 24)?, u64_at(h + 32)?);
            (flags & SHF_EXECINSTR != 0).then_some((offset as usize, size as usize))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placeholder_calls(p: &Prepared) -> usize {
        let mut copy = p.bytes().to_vec();
        rewrite_placeholder_calls(&mut copy, None)
    }

    #[test]
    fn every_placeholder_call_of_the_object_is_rewritten_one_way_or_the_other() {
        if OBJECT.is_empty() {
            eprintln!("SKIP: built without the eBPF object");
            return;
        }
        let mut original = OBJECT.to_vec();
        let in_object = rewrite_placeholder_calls(&mut original, None);
        assert!(in_object >= 3, "one per TC program at least, found {in_object}");

        let field = BitField { byte: 130, shift: 1, bits: 2 };
        let with_kernel = prepare(OBJECT, Ok((4242, field)));
        assert_eq!(placeholder_calls(&with_kernel), 0);
        assert!(with_kernel.direct_checksums());
        let kfunc_calls = with_kernel
            .bytes()
            .chunks_exact(8)
            .filter(|i| i[0] == OP_CALL && i[1] == BPF_PSEUDO_KFUNC_CALL << 4 && i[4..8] == 4242u32.to_le_bytes())
            .count();
        assert_eq!(kfunc_calls, in_object);

        let without = prepare(OBJECT, Err("no BTF".to_owned()));
        assert_eq!(placeholder_calls(&without), 0);
        assert!(!without.direct_checksums());
        assert_eq!(without.bytes().len(), OBJECT.len());
    }

    #[test]
    fn a_file_that_is_not_elf64_is_left_alone() {
        let mut junk = vec![0x85u8, 0, 0, 0, 0x01, 0xc0, 0xff, 0x7f];
        assert_eq!(rewrite_placeholder_calls(&mut junk, Some(1)), 0);
        assert_eq!(junk[1], 0);
    }
}
