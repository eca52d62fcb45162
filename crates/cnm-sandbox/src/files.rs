//! The sandbox's /etc/hosts and /etc/resolv.conf, rendered from data and updated in place.
//!
//! A process in the sandbox sees these files through bind mounts over its `/etc/hosts` and
//! `/etc/resolv.conf` (see [`crate::exec`]). A bind mount pins the inode, so a file replaced by
//! rename stays old forever for every process already running (issue 8: a process started before
//! a connect never saw the new network's names). The files are therefore rewritten in place, on
//! the same inode, as Docker does; see [`write_in_place`] for what a concurrent reader may see.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;

use crate::SandboxError;

/// One line of a hosts file: an address and its names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostsEntry {
    /// The address.
    pub ip: IpAddr,
    /// Host names for it, canonical name first.
    pub names: Vec<String>,
}

impl HostsEntry {
    /// An entry for `ip` with `names`.
    pub fn new(ip: IpAddr, names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            ip,
            names: names.into_iter().map(Into::into).collect(),
        }
    }
}

/// A hosts file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostsFile {
    /// Entries in file order.
    pub entries: Vec<HostsEntry>,
}

impl HostsFile {
    /// The entries every container gets: localhost and the ip6-* names, as Docker writes them.
    pub fn with_defaults() -> Self {
        let v6 = |s: [u16; 8]| IpAddr::V6(Ipv6Addr::from(s));
        Self {
            entries: vec![
                HostsEntry::new(IpAddr::from([127, 0, 0, 1]), ["localhost"]),
                HostsEntry::new(
                    IpAddr::V6(Ipv6Addr::LOCALHOST),
                    ["localhost", "ip6-localhost", "ip6-loopback"],
                ),
                HostsEntry::new(v6([0xfe00, 0, 0, 0, 0, 0, 0, 0]), ["ip6-localnet"]),
                HostsEntry::new(v6([0xff00, 0, 0, 0, 0, 0, 0, 0]), ["ip6-mcastprefix"]),
                HostsEntry::new(v6([0xff02, 0, 0, 0, 0, 0, 0, 1]), ["ip6-allnodes"]),
                HostsEntry::new(v6([0xff02, 0, 0, 0, 0, 0, 0, 2]), ["ip6-allrouters"]),
            ],
        }
    }

    /// Appends an entry.
    pub fn push(&mut self, ip: IpAddr, names: impl IntoIterator<Item = impl Into<String>>) {
        self.entries.push(HostsEntry::new(ip, names));
    }

    /// Parses a hosts file, skipping comments, blank lines and lines without a valid address.
    pub fn parse(text: &str) -> Self {
        let entries = text
            .lines()
            .filter_map(|line| {
                let line = line.split('#').next().unwrap_or_default();
                let mut words = line.split_whitespace();
                let ip = words.next()?.parse().ok()?;
                let names: Vec<String> = words.map(str::to_owned).collect();
                (!names.is_empty()).then_some(HostsEntry { ip, names })
            })
            .collect();
        Self { entries }
    }

    /// The file's text: one `ip<TAB>name name…` line per entry.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for e in &self.entries {
            // Writing to a String cannot fail.
            let _ = writeln!(out, "{}\t{}", e.ip, e.names.join(" "));
        }
        out
    }

    /// Writes the file at `path` in place (created 0644 if missing).
    pub fn write(&self, path: &Path) -> Result<(), SandboxError> {
        write_in_place(path, self.render().as_bytes(), "write hosts file")
    }
}

/// A resolv.conf: name servers, search domains and options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvConf {
    /// Name servers in order.
    pub nameservers: Vec<IpAddr>,
    /// Search domains.
    pub search: Vec<String>,
    /// Resolver options (`ndots:0`, `edns0`, …).
    pub options: Vec<String>,
}

impl ResolvConf {
    /// Parses resolv.conf text the way glibc reads it: the last `search`/`domain` line wins,
    /// `options` accumulate, unparsable name servers (e.g. with a zone id) are skipped.
    pub fn parse(text: &str) -> Self {
        let mut conf = Self::default();
        for line in text.lines() {
            let line = line.trim_start();
            if line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    if let Some(ip) = words.next().and_then(|w| w.parse().ok()) {
                        conf.nameservers.push(ip);
                    }
                }
                Some("search") | Some("domain") => {
                    conf.search = words.map(str::to_owned).collect();
                }
                Some("options") => conf.options.extend(words.map(str::to_owned)),
                _ => {}
            }
        }
        conf
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        if !self.search.is_empty() {
            let _ = writeln!(out, "search {}", self.search.join(" "));
        }
        for ns in &self.nameservers {
            let _ = writeln!(out, "nameserver {ns}");
        }
        if !self.options.is_empty() {
            let _ = writeln!(out, "options {}", self.options.join(" "));
        }
        out
    }

    /// Writes the file at `path` in place (created 0644 if missing).
    pub fn write(&self, path: &Path) -> Result<(), SandboxError> {
        write_in_place(path, self.render().as_bytes(), "write resolv.conf")
    }

    /// Docker's rule: drop name servers on the host's loopback (127.0.0.0/8, ::1), which the
    /// container cannot reach from its own namespace; if none are left, use `fallback`.
    /// Search domains and options are kept.
    pub fn for_container(host: &ResolvConf, fallback: &[IpAddr]) -> Self {
        let mut nameservers: Vec<IpAddr> = host
            .nameservers
            .iter()
            .copied()
            .filter(|ip| !ip.is_loopback())
            .collect();
        if nameservers.is_empty() {
            nameservers = fallback.to_vec();
        }
        Self {
            nameservers,
            search: host.search.clone(),
            options: host.options.clone(),
        }
    }
}

/// The mode of a newly created file: every user in the sandbox reads its `/etc/hosts`.
const FILE_MODE: u32 = 0o644;

/// Writes `data` over the file at `path` on the same inode, creating it (mode 0644) if missing.
///
/// What a process reading the file at the same moment can see, and why:
/// - The new text goes out in one `pwrite` at offset 0 from one buffer, never a truncate first:
///   a truncate-then-write (Docker's way) shows a reader an empty file in between, and an empty
///   `/etc/hosts` makes lookups fail.
/// - When the new text is shorter, the buffer is padded with newlines up to the old length and
///   the file is cut to the new length afterwards. A reader between the write and the cut sees
///   the new lines followed by blank lines, which hosts and resolv.conf parsers skip: never a
///   stale tail of old lines.
/// - A reader whose own reads straddle the write (a file larger than its read buffer, 4 KiB for
///   glibc's stdio) may combine old and new halves. Rename would have given it a consistent
///   snapshot, but would leave every bind-mounted reader on the old inode for good; a rare
///   mixed read that the next lookup corrects is the lesser harm.
///
/// Writers are serialised by the caller (the sandbox's lock). No fsync: these files live in the
/// run dir beside a network namespace that cannot outlive a reboot either.
fn write_in_place(path: &Path, data: &[u8], op: &'static str) -> Result<(), SandboxError> {
    use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _, PermissionsExt as _};

    let fail = |e: std::io::Error| SandboxError::kernel(op, path.display().to_string(), e);
    let file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
    {
        Ok(f) => {
            // The umask may have taken read bits away; a container's non-root user needs them.
            f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
                .map_err(fail)?;
            f
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(fail)?,
        Err(e) => return Err(fail(e)),
    };
    let old_len = file.metadata().map_err(fail)?.len();
    let new_len = data.len() as u64;
    if new_len < old_len {
        let mut padded = data.to_vec();
        padded.resize(usize::try_from(old_len).unwrap_or(data.len()), b'\n');
        file.write_all_at(&padded, 0).map_err(fail)?;
        file.set_len(new_len).map_err(fail)?;
    } else {
        file.write_all_at(data, 0).map_err(fail)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_hosts_render() {
        let mut h = HostsFile::with_defaults();
        h.push("172.17.0.2".parse().unwrap(), ["c1", "c1.docker.io"]);
        let text = h.render();
        assert!(
            text.starts_with("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
        );
        assert!(text.contains("fe00::\tip6-localnet\n"));
        assert!(text.contains("ff02::2\tip6-allrouters\n"));
        assert!(text.ends_with("172.17.0.2\tc1 c1.docker.io\n"));
        assert_eq!(HostsFile::parse(&text), h);
    }

    #[test]
    fn hosts_parse_skips_junk() {
        let h = HostsFile::parse("# comment\n\nnot-an-ip foo\n10.0.0.1 a b # trailing\n10.0.0.2\n");
        assert_eq!(
            h.entries,
            vec![HostsEntry::new("10.0.0.1".parse().unwrap(), ["a", "b"])]
        );
    }

    #[test]
    fn resolv_parse_and_render() {
        let text = "# generated\nnameserver 127.0.0.53\nnameserver 8.8.8.8\nnameserver fe80::1%eth0\n\
                    domain old.example\nsearch a.example b.example\noptions ndots:2\noptions edns0 trust-ad\n";
        let r = ResolvConf::parse(text);
        assert_eq!(
            r.nameservers,
            vec![
                "127.0.0.53".parse::<IpAddr>().unwrap(),
                "8.8.8.8".parse().unwrap()
            ]
        );
        assert_eq!(r.search, ["a.example", "b.example"]);
        assert_eq!(r.options, ["ndots:2", "edns0", "trust-ad"]);
        let out = r.render();
        assert_eq!(
            out,
            "search a.example b.example\nnameserver 127.0.0.53\nnameserver 8.8.8.8\noptions ndots:2 edns0 trust-ad\n"
        );
        assert_eq!(ResolvConf::parse(&out), r);
    }

    #[test]
    fn for_container_drops_loopback_and_falls_back() {
        let fallback: Vec<IpAddr> = vec!["8.8.8.8".parse().unwrap(), "8.8.4.4".parse().unwrap()];
        let host = ResolvConf::parse(
            "nameserver 127.0.0.53\nnameserver ::1\nsearch corp\noptions ndots:1\n",
        );
        let c = ResolvConf::for_container(&host, &fallback);
        assert_eq!(c.nameservers, fallback);
        assert_eq!(c.search, ["corp"]);
        assert_eq!(c.options, ["ndots:1"]);

        let host = ResolvConf::parse(
            "nameserver 127.1.2.3\nnameserver 192.0.2.53\nnameserver 2001:db8::53\n",
        );
        let c = ResolvConf::for_container(&host, &fallback);
        assert_eq!(
            c.nameservers,
            vec![
                "192.0.2.53".parse::<IpAddr>().unwrap(),
                "2001:db8::53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn in_place_write_keeps_the_inode_and_cuts_the_old_tail() {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        let mut h = HostsFile::with_defaults();
        h.push(
            "10.0.0.2".parse().unwrap(),
            ["a-long-name-that-will-go-away"],
        );
        h.write(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        // A reader holding the file open (as a bind mount holds the inode) sees each update.
        let held = std::fs::File::open(&path).unwrap();
        let read_held = || {
            use std::os::unix::fs::FileExt as _;
            let mut buf = vec![0; 4096];
            let n = held.read_at(&mut buf, 0).unwrap();
            String::from_utf8(buf[..n].to_vec()).unwrap()
        };
        h.push("10.1.0.2".parse().unwrap(), ["second"]);
        h.write(&path).unwrap();
        assert_eq!(read_held(), h.render());
        // Shorter content: no stale tail, same inode.
        let short = HostsFile::with_defaults();
        short.write(&path).unwrap();
        let after = std::fs::metadata(&path).unwrap();
        assert_eq!(after.ino(), meta.ino());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), short.render());
        assert_eq!(read_held(), short.render());
    }

    #[test]
    fn in_place_write_replaces_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(&path, "old").unwrap();
        let r = ResolvConf {
            nameservers: vec!["192.0.2.1".parse().unwrap()],
            ..Default::default()
        };
        r.write(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "nameserver 192.0.2.1\n"
        );
        HostsFile::with_defaults()
            .write(&dir.path().join("hosts"))
            .unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "no temporary files left: {names:?}");
        let missing = r
            .write(&dir.path().join("no/such/dir/resolv.conf"))
            .unwrap_err();
        assert_eq!(missing.kind(), cnm_types::ErrorKind::NotFound);
    }
}
