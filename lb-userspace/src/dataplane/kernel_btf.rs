//! The two facts the datapath needs from the running kernel's BTF (`/sys/kernel/btf/vmlinux`)
//! that aya 0.14 cannot resolve for it: the BTF id of a kfunc, and where a bitfield member of a
//! kernel struct sits (`struct sk_buff`'s `ip_summed`, through its anonymous unions and
//! structs). A reader of just what those need: the header, the type records (to step over each
//! kind) and the strings. Format: the kernel's Documentation/bpf/btf.rst.

/// Where the kernel's own BTF is.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_TYPE_TAG: u32 = 18;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("not BTF data (bad magic or a header past the end)")]
    NotBtf,
    #[error("type {id} runs past the end of the type section")]
    Truncated { id: u32 },
    #[error("type {id} has an unknown kind {kind}")]
    UnknownKind { id: u32, kind: u32 },
}

/// A parsed BTF blob (little-endian, as on our machines): the type section as it is, with where
/// each record starts (one pass, no per-type allocation: the kernel's BTF has ~150,000 types).
pub struct KernelBtf {
    /// The whole blob, and where its type and string sections are in it.
    blob: Vec<u8>,
    types_at: std::ops::Range<usize>,
    strings_at: std::ops::Range<usize>,
    /// Offset in `types` of each type's record, by id (id 0, `void`, has none: `u32::MAX`).
    starts: Vec<u32>,
}

/// Where a bitfield (or a whole-byte member) sits in its struct.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BitField {
    /// The byte holding the field.
    pub byte: u32,
    /// Its lowest bit in that byte (little-endian bit order).
    pub shift: u32,
    /// Its width in bits.
    pub bits: u32,
}

/// One type record's header.
struct Type {
    kind: u32,
    name_off: u32,
    size_or_type: u32,
    kind_flag: bool,
    vlen: usize,
    /// Where the kind-specific data (a struct's members) starts in the type section.
    data: usize,
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

impl KernelBtf {
    /// The running kernel's BTF.
    pub fn running() -> std::io::Result<Result<Self, BtfError>> {
        std::fs::read(VMLINUX_BTF).map(Self::parse)
    }

    pub fn parse(blob: Vec<u8>) -> Result<Self, BtfError> {
        let b = &blob;
        let magic = b.get(0..2).map(|m| u16::from_le_bytes([m[0], m[1]]));
        if magic != Some(MAGIC) {
            return Err(BtfError::NotBtf);
        }
        let field = |i: usize| u32_at(b, 4 + 4 * i).map(|v| v as usize).ok_or(BtfError::NotBtf);
        let (hdr_len, type_off, type_len, str_off, str_len) = (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
        let types_at = hdr_len + type_off..hdr_len + type_off + type_len;
        let strings_at = hdr_len + str_off..hdr_len + str_off + str_len;
        let types = b.get(types_at.clone()).ok_or(BtfError::NotBtf)?;
        b.get(strings_at.clone()).ok_or(BtfError::NotBtf)?;
        let mut starts = vec![u32::MAX];
        let mut off = 0;
        while off < types.len() {
            let id = starts.len() as u32;
            let info = u32_at(types, off + 4).ok_or(BtfError::Truncated { id })?;
            let (vlen, kind) = ((info & 0xffff) as usize, (info >> 24) & 0x1f);
            let extra = match kind {
                1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
                2 | 7..=12 | 16 | 18 => 0,    // PTR, FWD, TYPEDEF, modifiers, FUNC, FLOAT, TYPE_TAG
                3 => 12,                      // ARRAY
                4 | 5 | 15 | 19 => 12 * vlen, // STRUCT, UNION, DATASEC, ENUM64
                6 | 13 => 8 * vlen,           // ENUM, FUNC_PROTO
                _ => return Err(BtfError::UnknownKind { id, kind }),
            };
            if off + 12 + extra > types.len() {
                return Err(BtfError::Truncated { id });
            }
            starts.push(off as u32);
            off += 12 + extra;
        }
        Ok(Self { blob, types_at, strings_at, starts })
    }

    fn types(&self) -> &[u8] {
        &self.blob[self.types_at.clone()]
    }

    fn ty(&self, id: u32) -> Option<Type> {
        let start = *self.starts.get(id as usize)? as usize;
        let word = |i: usize| u32_at(self.types(), start + 4 * i);
        let info = word(1)?;
        Some(Type {
            kind: (info >> 24) & 0x1f,
            name_off: word(0)?,
            size_or_type: word(2)?,
            kind_flag: info >> 31 == 1,
            vlen: (info & 0xffff) as usize,
            data: start + 12,
        })
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.blob[self.strings_at.clone()].get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    /// The first type of `kind` named `name`.
    fn find(&self, kind: u32, name: &str) -> Option<u32> {
        (1..self.starts.len() as u32)
            .find(|&id| self.ty(id).is_some_and(|t| t.kind == kind && self.name(t.name_off) == name.as_bytes()))
    }

    /// The BTF id of the function (kfunc) `name`.
    pub fn func_id(&self, name: &str) -> Option<u32> {
        self.find(KIND_FUNC, name)
    }

    /// Where member `member` of `struct strct` sits, looking through anonymous structs and unions.
    pub fn member(&self, strct: &str, member: &str) -> Option<BitField> {
        let id = self.find(KIND_STRUCT, strct)?;
        let (bit_off, bits) = self.find_member(id, member, 0, 0)?;
        Some(BitField { byte: bit_off / 8, shift: bit_off % 8, bits })
    }

    /// `(bit offset from the outer struct, width)` of `member` in type `id` (at `base` bits).
    /// `depth` bounds the walk through anonymous members.
    fn find_member(&self, id: u32, member: &str, base: u32, depth: u32) -> Option<(u32, u32)> {
        let t = self.ty(self.skip_modifiers(id)?)?;
        if depth > 8 || (t.kind != KIND_STRUCT && t.kind != KIND_UNION) {
            return None;
        }
        for m in 0..t.vlen {
            let at = |i: usize| u32_at(self.types(), t.data + 12 * m + 4 * i);
            let (name_off, ty, offset) = (at(0)?, at(1)?, at(2)?);
            // With kind_flag, the offset's high 8 bits are a bitfield's width.
            let (bit_off, bits) = if t.kind_flag { (offset & 0x00ff_ffff, offset >> 24) } else { (offset, 0) };
            if name_off == 0 {
                if let Some(found) = self.find_member(ty, member, base + bit_off, depth + 1) {
                    return Some(found);
                }
            } else if self.name(name_off) == member.as_bytes() {
                let bits = if bits == 0 { self.byte_size(ty)? * 8 } else { bits };
                return Some((base + bit_off, bits));
            }
        }
        None
    }

    fn skip_modifiers(&self, mut id: u32) -> Option<u32> {
        for _ in 0..16 {
            let t = self.ty(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => id = t.size_or_type,
                _ => return Some(id),
            }
        }
        None
    }

    /// The size of an INT, STRUCT, UNION or ENUM type (the kinds whose third word is a size).
    fn byte_size(&self, id: u32) -> Option<u32> {
        let t = self.ty(self.skip_modifiers(id)?)?;
        matches!(t.kind, 1 | 4 | 5 | 6 | 19).then_some(t.size_or_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blob with `struct outer { int a; union { struct { u8 pad:3, flag:2; }; }; }`, ids:
    /// 1 int, 2 inner struct, 3 anonymous union, 4 outer, 5 a FUNC "f".
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0pad\0flag\0outer\0a\0f\0".to_vec();
        let s = |name: &str| {
            let pos = strings
                .windows(name.len() + 2)
                .position(|w| w[0] == 0 && &w[1..=name.len()] == name.as_bytes() && w[name.len() + 1] == 0);
            pos.map_or(0, |p| p as u32 + 1)
        };
        let mut t: Vec<u32> = Vec::new();
        let info = |kind: u32, vlen: u32, kflag: bool| (kind << 24) | vlen | (u32::from(kflag) << 31);
        // 1: int, 4 bytes.
        t.extend([s("int"), info(1, 0, false), 4, 32]);
        // 2: struct { pad:3 at bit 0, flag:2 at bit 3 } (kind_flag: widths in the offsets).
        t.extend([0, info(4, 2, true), 1, s("pad"), 1, 3 << 24, s("flag"), 1, (2 << 24) | 3]);
        // 3: union { struct 2 }.
        t.extend([0, info(5, 1, false), 1, 0, 2, 0]);
        // 4: struct outer { int a at 0; union 3 at bit 32 }.
        t.extend([s("outer"), info(4, 2, false), 8, s("a"), 1, 0, 0, 3, 32]);
        // 5: FUNC f.
        t.extend([s("f"), info(12, 0, false), 0]);
        let types: Vec<u8> = t.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut b = Vec::new();
        b.extend(MAGIC.to_le_bytes());
        b.extend([1, 0]);
        for w in [24u32, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
            b.extend(w.to_le_bytes());
        }
        b.extend(types);
        b.extend(strings);
        b
    }

    #[test]
    fn a_bitfield_inside_anonymous_members_is_found_at_its_outer_offset() {
        let btf = KernelBtf::parse(blob()).unwrap();
        assert_eq!(btf.member("outer", "flag"), Some(BitField { byte: 4, shift: 3, bits: 2 }));
        assert_eq!(btf.member("outer", "a"), Some(BitField { byte: 0, shift: 0, bits: 32 }));
        assert_eq!(btf.member("outer", "missing"), None);
        assert_eq!(btf.func_id("f"), Some(5));
        assert_eq!(btf.func_id("g"), None);
    }

    #[test]
    fn damaged_data_is_an_error_not_a_panic() {
        let b = blob();
        assert!(matches!(KernelBtf::parse(b[..3].to_vec()), Err(BtfError::NotBtf)));
        let mut cut = b.clone();
        cut[12] = 0xff; // type_len far past the end
        assert!(KernelBtf::parse(cut).is_err());
        let mut bad_kind = b;
        bad_kind[24 + 7] = 0x1f; // the first type's kind byte
        assert!(matches!(KernelBtf::parse(bad_kind), Err(BtfError::UnknownKind { id: 1, .. })));
    }

    /// The running kernel's `sk_buff` (when this machine exposes its BTF): `ip_summed` is a 2-bit
    /// field and the kfunc the TC programs use exists.
    #[test]
    fn the_running_kernel_has_what_the_tc_programs_read() {
        let Ok(parsed) = KernelBtf::running() else {
            eprintln!("SKIP: no {VMLINUX_BTF}");
            return;
        };
        let btf = parsed.unwrap();
        let f = btf.member("sk_buff", "ip_summed").expect("sk_buff.ip_summed");
        assert_eq!(f.bits, 2);
        assert!(f.shift + f.bits <= 8, "{f:?}");
        assert!(f.byte > 0);
        assert!(btf.func_id(lb_common::KFUNC_CAST_TO_KERN_CTX).is_some());
    }
}
