//! What the benchmarks share: a temporary directory that goes away, a tally of failures, and
//! the CPU and memory figures Linux keeps in `/proc`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::Command;

/// A directory removed when dropped (logs, and private keys in some benches).
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Failures seen: how many, and the first one's message.
#[derive(Debug, Default)]
pub struct Errors {
    pub count: u64,
    pub first: Option<String>,
}

impl Errors {
    pub fn add(&mut self, e: String) {
        self.count += 1;
        self.first.get_or_insert(e);
    }

    pub fn merge(&mut self, other: Errors) {
        self.count += other.count;
        if self.first.is_none() {
            self.first = other.first;
        }
    }
}

/// A process's `/proc/<pid>/stat` fields the benches read; CPU times in clock ticks
/// ([`ticks_per_second`]). With tick-based accounting the kernel scales user and system time
/// so that their sum is the precise run time; the split between them is sampled.
#[derive(Debug, Clone, Copy)]
pub struct ProcStat {
    pub pgrp: u32,
    pub utime: u64,
    pub stime: u64,
    /// Of its children reaped so far.
    pub cutime: u64,
    pub cstime: u64,
}

/// `/proc/<pid>/stat`, or `None` once the process is gone.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the parenthesised command name: state is the 3rd field of the line.
    let close = stat.rfind(')')?;
    let fields: Vec<&str> = stat.get(close + 2..)?.split(' ').collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some(ProcStat {
        pgrp: u32::try_from(field(2)?).ok()?,
        utime: field(11)?,
        stime: field(12)?,
        cutime: field(13)?,
        cstime: field(14)?,
    })
}

/// VmRSS of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Linux's `USER_HZ`, the unit of `/proc/<pid>/stat`'s CPU times.
pub fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// What kind of build an executable is, for the reader of a benchmark: its size, and whether
/// it is linked statically (as the images ship it) or against the system's libc (a plain
/// `cargo build`). An ELF executable that names a program interpreter is dynamic.
pub fn describe_executable(path: &std::path::Path) -> String {
    let (Ok(size), Ok(interpreted)) = (
        std::fs::metadata(path).map(|m| m.len()),
        names_an_interpreter(path),
    ) else {
        return format!("{} (unreadable)", path.display());
    };
    format!(
        "{} ({:.1} MB, {})",
        path.display(),
        size as f64 / 1e6,
        if interpreted {
            "dynamically linked"
        } else {
            "static"
        }
    )
}

/// Whether the 64-bit little-endian ELF file at `path` has a `PT_INTERP` program header; only
/// its headers are read.
fn names_an_interpreter(path: &std::path::Path) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    const PT_INTERP: u32 = 3;
    let mut file = std::fs::File::open(path)?;
    let mut header = [0u8; 64];
    file.read_exact(&mut header)?;
    if &header[..4] != b"\x7fELF" {
        return Ok(false);
    }
    let phoff = u64::from_le_bytes(header[0x20..0x28].try_into().expect("8 bytes"));
    let phentsize = u16::from_le_bytes([header[0x36], header[0x37]]);
    let phnum = u16::from_le_bytes([header[0x38], header[0x39]]);
    let mut entry = vec![0u8; usize::from(phentsize).max(4)];
    for n in 0..u64::from(phnum) {
        file.seek(SeekFrom::Start(phoff + n * u64::from(phentsize)))?;
        file.read_exact(&mut entry)?;
        if u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]) == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether the command line asks for help (`-h`, `--help`); if so, prints `usage` and `about`
/// to standard output, as a `--help` should, and the caller exits with success.
pub fn help_requested(args: &[String], usage: &str, about: &str) -> bool {
    let asked = matches!(
        args.first().map(String::as_str),
        Some("-h" | "--help" | "help")
    );
    if asked {
        println!("{usage}\n\n{about}");
    }
    asked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let me = std::process::id();
        let stat = proc_stat(me).expect("our own stat");
        assert!(stat.pgrp > 0);
        assert!(rss_kib(me).is_some_and(|kib| kib > 0));
        assert!(ticks_per_second() > 0.0);
    }

    #[test]
    fn errors_keep_the_first_message_and_count_all() {
        let mut a = Errors::default();
        a.add("one".into());
        a.add("two".into());
        let mut b = Errors::default();
        b.add("three".into());
        b.merge(a);
        assert_eq!((b.count, b.first.as_deref()), (3, Some("three")));
    }

    #[test]
    fn help_is_asked_only_by_its_flags_in_first_place() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(help_requested(&args(&["--help"]), "usage", "about"));
        assert!(help_requested(&args(&["-h"]), "usage", "about"));
        assert!(!help_requested(&args(&[]), "usage", "about"));
        assert!(!help_requested(&args(&["10", "--help"]), "usage", "about"));
        assert!(!help_requested(&args(&["10"]), "usage", "about"));
    }

    #[test]
    fn this_test_binary_is_told_apart_by_its_interpreter() {
        let me = std::env::current_exe().unwrap();
        let static_build = std::env::var("RUSTFLAGS").is_ok_and(|f| f.contains("crt-static"));
        assert_eq!(names_an_interpreter(&me).unwrap(), !static_build);
        assert!(describe_executable(&me).contains(" MB, "));
        assert!(
            describe_executable(std::path::Path::new("/nonexistent")).ends_with("(unreadable)")
        );
    }
}
