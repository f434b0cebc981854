//! A minimal reader of kernel BTF, enough to find the byte offset of a named
//! member of a named struct, looking through anonymous struct and union
//! members. It resolves the [`KernelOffsets`] the eBPF programs need, since
//! Rust eBPF has no CO-RE relocations.
//!
//! Format: <https://docs.kernel.org/bpf/btf.html>. Only the type and string
//! sections are read; every kind is skipped by its documented size so that
//! type ids stay right on kernels that use kinds this reader does not know.

use std::{collections::HashMap, path::Path};

use psmon_ebpf::{KernelOffsets, NO_MEMORY_CGROUP};

const MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Why kernel struct offsets could not be read from BTF.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The BTF file could not be read.
    #[error("cannot read kernel BTF at {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The data is not BTF as psmon reads it.
    #[error("kernel BTF is malformed: {what}")]
    Malformed {
        /// What is wrong with it.
        what: &'static str,
    },
    /// The kernel has no struct of this name.
    #[error("kernel BTF has no struct `{name}`")]
    NoStruct {
        /// The struct.
        name: String,
    },
    /// The struct has no member of this name.
    #[error("kernel BTF has no member `{member}` in struct `{name}`")]
    NoMember {
        /// The struct.
        name: String,
        /// The member.
        member: String,
    },
}

#[derive(Clone, Copy)]
struct StructMember {
    name_off: u32,
    type_id: u32,
    /// Bit offset from the start of the enclosing struct.
    bit_offset: u32,
}

struct Type {
    kind: u32,
    name_off: u32,
    /// Members, parameters or values.
    vlen: u32,
    /// An enum's values: (name offset, value).
    values: Vec<(u32, i64)>,
    /// Referenced type for modifiers and typedefs.
    type_id: u32,
    members: Vec<StructMember>,
}

/// Parsed BTF types (only what offset lookups need).
pub struct Btf {
    strings: Vec<u8>,
    /// Index `i` holds type id `i + 1` (id 0 is `void`).
    types: Vec<Type>,
    structs_by_name: HashMap<String, u32>,
}

impl Btf {
    /// Reads `/sys/kernel/btf/vmlinux`.
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    /// Reads and parses a BTF file (`/sys/kernel/btf/vmlinux`).
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    /// Parses BTF data.
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let u16_at = |at: usize| {
            data.get(at..at + 2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
        };
        let u32_at = |at: usize| {
            data.get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let bad = |what| BtfError::Malformed { what };
        if u16_at(0) != Some(MAGIC) {
            return Err(bad("wrong magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(4).ok_or(bad("short header"))? as usize;
        let field = |n: usize| {
            u32_at(8 + 4 * n)
                .map(|v| v as usize)
                .ok_or(bad("short header"))
        };
        let (type_off, type_len, str_off, str_len) = (field(0)?, field(1)?, field(2)?, field(3)?);
        let types_at = hdr_len + type_off;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(bad("string section out of bounds"))?
            .to_vec();
        let end = types_at + type_len;
        if end > data.len() {
            return Err(bad("type section out of bounds"));
        }

        let mut types = Vec::new();
        let mut at = types_at;
        while at < end {
            let name_off = u32_at(at).ok_or(bad("truncated type"))?;
            let info = u32_at(at + 4).ok_or(bad("truncated type"))?;
            let size_or_type = u32_at(at + 8).ok_or(bad("truncated type"))?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            let mut values = Vec::new();
            if kind == KIND_ENUM {
                for i in 0..vlen {
                    let v = at + 8 * i;
                    let name = u32_at(v).ok_or(bad("truncated enum"))?;
                    let val = u32_at(v + 4).ok_or(bad("truncated enum"))? as i32;
                    values.push((name, i64::from(val)));
                }
            }
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = at + 12 * i;
                        let offset = u32_at(m + 8).ok_or(bad("truncated member"))?;
                        members.push(StructMember {
                            name_off: u32_at(m).ok_or(bad("truncated member"))?,
                            type_id: u32_at(m + 4).ok_or(bad("truncated member"))?,
                            // With kind_flag the top 8 bits are a bitfield size.
                            bit_offset: if kind_flag {
                                offset & 0x00ff_ffff
                            } else {
                                offset
                            },
                        });
                    }
                    12 * vlen
                }
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                _ => 0,
            };
            at += extra;
            types.push(Type {
                kind,
                name_off,
                vlen: vlen as u32,
                values,
                type_id: size_or_type,
                members,
            });
        }

        let mut btf = Btf {
            strings,
            types,
            structs_by_name: HashMap::new(),
        };
        for (i, t) in btf.types.iter().enumerate() {
            if t.kind == KIND_STRUCT && t.name_off != 0 {
                let name = btf.name(t.name_off).to_string();
                // Keep the first definition; later ones are rare forward duplicates.
                btf.structs_by_name.entry(name).or_insert(i as u32 + 1);
            }
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let len = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..len]).unwrap_or("")
    }

    fn get(&self, id: u32) -> Option<&Type> {
        id.checked_sub(1).and_then(|i| self.types.get(i as usize))
    }

    /// How many arguments tracepoint `name`'s programs get (its
    /// `btf_trace_NAME` typedef: a pointer to a function whose first
    /// parameter is the context, not counted). `None` when there is none.
    pub fn tracepoint_args(&self, name: &str) -> Option<u32> {
        let wanted = format!("btf_trace_{name}");
        let typedef = self
            .types
            .iter()
            .find(|t| t.kind == KIND_TYPEDEF && self.name(t.name_off) == wanted)?;
        let ptr = self.get(typedef.type_id).filter(|t| t.kind == KIND_PTR)?;
        let proto = self
            .get(ptr.type_id)
            .filter(|t| t.kind == KIND_FUNC_PROTO)?;
        proto.vlen.checked_sub(1)
    }

    /// Follows typedefs and qualifiers to the underlying type id.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.get(id) {
                Some(t)
                    if matches!(
                        t.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = t.type_id
                }
                _ => break,
            }
        }
        id
    }

    /// Byte offset of `member` in `struct name`, searching anonymous
    /// struct/union members recursively.
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self
            .structs_by_name
            .get(name)
            .ok_or_else(|| BtfError::NoStruct { name: name.into() })?;
        self.find_member(id, member, 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoMember {
                name: name.into(),
                member: member.into(),
            })
    }

    fn find_member(&self, id: u32, member: &str, depth: u32) -> Option<u32> {
        let t = self.get(id)?;
        if depth > 8 {
            return None;
        }
        for m in &t.members {
            if m.name_off != 0 && self.name(m.name_off) == member {
                return Some(m.bit_offset);
            }
        }
        for m in t.members.iter().filter(|m| m.name_off == 0) {
            let inner = self.resolve(m.type_id);
            let aggregate = matches!(
                self.get(inner).map(|t| t.kind),
                Some(KIND_STRUCT | KIND_UNION)
            );
            if aggregate && let Some(bits) = self.find_member(inner, member, depth + 1) {
                return Some(m.bit_offset + bits);
            }
        }
        None
    }

    /// The value of enumerator `name` of any enum.
    pub fn enum_value(&self, name: &str) -> Option<i64> {
        self.types
            .iter()
            .filter(|t| t.kind == KIND_ENUM)
            .flat_map(|t| t.values.iter())
            .find(|(n, _)| self.name(*n) == name)
            .map(|(_, v)| *v)
    }

    /// Where a task's memory cgroup id is: `task->cgroups->subsys[memory]
    /// ->cgroup->kn->id`. `None` (and [`NO_MEMORY_CGROUP`]) when the kernel
    /// has no memory controller or the members moved.
    fn memory_cgroup_offsets(&self) -> Option<[u32; 6]> {
        let id = self.enum_value("memory_cgrp_id")?;
        Some([
            self.member_offset("task_struct", "cgroups").ok()?,
            self.member_offset("css_set", "subsys").ok()?,
            self.member_offset("cgroup_subsys_state", "cgroup").ok()?,
            self.member_offset("cgroup", "kn").ok()?,
            self.member_offset("kernfs_node", "id").ok()?,
            u32::try_from(id).ok()?,
        ])
    }

    /// The offsets psmon's kernel programs read.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        let task = |m| self.member_offset("task_struct", m);
        // Renamed from real_start_time in 5.5.
        let start = task("start_boottime").or_else(|_| task("real_start_time"))?;
        Ok(KernelOffsets {
            task_pid: task("pid")?,
            task_tgid: task("tgid")?,
            task_start_boottime: start,
            task_exit_code: task("exit_code")?,
            task_real_parent: task("real_parent")?,
            task_group_leader: task("group_leader")?,
            task_signal: task("signal")?,
            task_comm: task("comm")?,
            signal_live: self.member_offset("signal_struct", "live")?,
            signal_group_exit_code: self.member_offset("signal_struct", "group_exit_code")?,
            binprm_filename: self.member_offset("linux_binprm", "filename")?,
            memory_cgroup: self.memory_cgroup_offsets().unwrap_or([
                0,
                0,
                0,
                0,
                0,
                NO_MEMORY_CGROUP,
            ]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob: `int`, and `struct s { int a; union { int b; struct { int c; }; }; }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0s\0a\0b\0c\0".to_vec();
        let (int, s, a, b, c) = (1u32, 5u32, 7u32, 9u32, 11u32);
        let mut types = Vec::new();
        let mut push = |words: &[u32]| words.iter().for_each(|w| types.extend(w.to_le_bytes()));
        // 1: int
        push(&[int, KIND_INT << 24, 4, 32]);
        // 2: struct { int c; } (anonymous), size 4
        push(&[0, KIND_STRUCT << 24 | 1, 4, c, 1, 0]);
        // 3: union { int b; struct {int c;} }, size 4
        push(&[0, KIND_UNION << 24 | 2, 4, b, 1, 0, 0, 2, 0]);
        // 4: struct s { int a; union (at bit 64) }
        push(&[s, KIND_STRUCT << 24 | 2, 12, a, 1, 0, 0, 3, 64]);
        let mut out = Vec::new();
        out.extend(MAGIC.to_le_bytes());
        out.extend([1u8, 0]);
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            out.extend(w.to_le_bytes());
        }
        out.extend(&types);
        out.extend(&strings);
        out
    }

    #[test]
    fn finds_direct_and_anonymous_members() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.member_offset("s", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("s", "b").unwrap(), 8);
        assert_eq!(btf.member_offset("s", "c").unwrap(), 8);
        assert!(matches!(
            btf.member_offset("s", "d"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member_offset("t", "a"),
            Err(BtfError::NoStruct { .. })
        ));
    }

    #[test]
    fn tells_a_tracepoints_arguments_on_this_kernel() {
        let btf = Btf::from_sys_fs().expect("kernel BTF (psmon's ebpf source needs it)");
        // sched_process_fork(parent, child)
        assert_eq!(btf.tracepoint_args("sched_process_fork"), Some(2));
        assert_eq!(btf.tracepoint_args("signal_generate"), Some(5));
        assert!(matches!(btf.tracepoint_args("mark_victim"), Some(1 | 2)));
        assert_eq!(btf.tracepoint_args("no_such_tracepoint"), None);
        // This kernel has the memory controller (v1 here, v2 on RHEL 9).
        let o = btf.kernel_offsets().unwrap();
        assert_ne!(o.memory_cgroup[5], NO_MEMORY_CGROUP, "{o:?}");
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all, really").is_err());
    }

    #[test]
    fn resolves_this_kernels_offsets() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            eprintln!("skipped: this kernel has no {}", path.display());
            return;
        }
        let offsets = Btf::from_file(path).unwrap().kernel_offsets().unwrap();
        // pid and tgid are adjacent pid_t members in every kernel since 2.6.
        assert_eq!(offsets.task_tgid, offsets.task_pid + 4);
        assert_ne!(offsets.task_comm, 0);
    }
}
