//! Which file system a library's root is on: the scan compares it with the one it recorded last
//! time, and refuses a root that moved to another file system like a missing root. A disk that
//! got unmounted leaves its mount point behind, an ordinary folder of the parent file system,
//! often empty but sometimes holding a stray file: without this, the scan would find that one
//! file, record every other file of the library as deleted, and sync the deletions everywhere.
//!
//! What identifies the file system is chosen to survive a reboot. `st_dev` does not (removable
//! and network file systems get a new device number on each mount), so on Linux the mount that
//! holds the root is looked up in `/proc/self/mountinfo` (the longest mount point that contains
//! the canonical root) and named by:
//!
//! - the file system's UUID, when its source is a block device listed in `/dev/disk/by-uuid`
//!   (the same disk mounted from another device node, `/dev/sdb1` today and `/dev/sdc1`
//!   tomorrow, is still the same file system);
//! - else its type and source (`nfs` and `server:/export`, `tmpfs` and `tmpfs`): what the mount
//!   names. Two tmpfs mounts look alike this way; their contents do not survive a reboot, and
//!   the path below catches the usual case of a mount point left behind. A disk without a
//!   UUID link (no udev) that comes back under another device name is taken for another file
//!   system: a false alarm that `agent scan --allow-other-file-system` answers, where the
//!   opposite mistake would delete the library everywhere;
//!
//! plus the root's path within that file system (the mount's root, field 4 of mountinfo, joined
//! with the rest of the root's path). Elsewhere than Linux, or when mountinfo cannot be read,
//! nothing is compared.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where a library's root is: on which file system, and where within it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// The library's root as configured when this was taken: a root configured elsewhere since
    /// is a new root, not a moved one.
    pub root: PathBuf,
    /// `uuid:<UUID>`, or `<type>:<source>`.
    pub fs: String,
    /// The file system's type (`ext4`, `nfs4`, `fuse.sshfs`).
    pub fs_type: String,
    /// The root's path within the file system.
    pub path: String,
}

impl RootFs {
    /// The same file system, and the same place in it.
    pub fn same_place(&self, other: &RootFs) -> bool {
        self.fs == other.fs && self.path == other.path
    }

    /// For messages: `ext4 uuid:1234-abcd, at /photos`.
    pub fn describe(&self) -> String {
        format!("{} {}, at {}", self.fs_type, self.fs, self.path)
    }

    /// The form kept in `lib_kv`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads the form kept in `lib_kv`; `None` when damaged (it is then recorded afresh).
    pub fn from_json(s: &str) -> Option<RootFs> {
        serde_json::from_str(s).ok()
    }
}

/// One line of `/proc/self/mountinfo`, the fields used here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Field 4: the path, within its file system, that is mounted.
    pub root: String,
    /// Field 5: where it is mounted.
    pub mount_point: String,
    pub fs_type: String,
    pub source: String,
}

/// Parses mountinfo (proc(5)): `36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3
/// /dev/root rw`. Optional fields end at the `-`. Lines that do not parse are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            if dash < 6 || fields.len() < dash + 3 {
                return None;
            }
            Some(Mount {
                root: unescape(fields[3]),
                mount_point: unescape(fields[4]),
                fs_type: unescape(fields[dash + 1]),
                source: unescape(fields[dash + 2]),
            })
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` (octal).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let (b'\\', Some(d)) = (bytes[i], octal) {
            let value = d.iter().fold(0u32, |v, b| v * 8 + u32::from(b - b'0'));
            if let Ok(b) = u8::try_from(value) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount that holds `path` (canonical): the longest mount point containing it; of mounts
/// on the same point, the last listed (it hides the ones before).
pub fn containing_mount<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    let mut best: Option<&Mount> = None;
    for mount in mounts {
        if !path.starts_with(&mount.mount_point) {
            continue;
        }
        let longer = best.is_none_or(|b| {
            Path::new(&mount.mount_point).components().count()
                >= Path::new(&b.mount_point).components().count()
        });
        if longer {
            best = Some(mount);
        }
    }
    best
}

/// Identifies where `canonical` (the configured `root`, resolved) is, given the mounts and a
/// way to find a block device's UUID.
pub fn identify_in(
    mounts: &[Mount],
    root: &Path,
    canonical: &Path,
    uuid_of: impl Fn(&str) -> Option<String>,
) -> Option<RootFs> {
    let mount = containing_mount(mounts, canonical)?;
    let rest = canonical.strip_prefix(&mount.mount_point).ok()?;
    let path = Path::new(&mount.root).join(rest);
    let fs = match uuid_of(&mount.source) {
        Some(uuid) => format!("uuid:{uuid}"),
        None => format!("{}:{}", mount.fs_type, mount.source),
    };
    Some(RootFs {
        root: root.to_owned(),
        fs,
        fs_type: mount.fs_type.clone(),
        path: path.to_string_lossy().into_owned(),
    })
}

/// Where library root `root` is now; `None` when that cannot be told (not Linux, no
/// mountinfo, the root unavailable): then nothing is compared.
#[cfg(target_os = "linux")]
pub fn identify(root: &Path) -> Option<RootFs> {
    let canonical = root.canonicalize().ok()?;
    let text = match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(text) => text,
        Err(e) => {
            tracing::debug!(
                "cannot read /proc/self/mountinfo ({e}): file system of library roots not checked"
            );
            return None;
        }
    };
    identify_in(&parse_mountinfo(&text), root, &canonical, uuid_of_device)
}

#[cfg(not(target_os = "linux"))]
pub fn identify(_root: &Path) -> Option<RootFs> {
    tracing::debug!("not on Linux: file system of library roots not checked");
    None
}

/// The UUID of a block device, from the links in `/dev/disk/by-uuid` (links resolved on both
/// sides: a source may be `/dev/mapper/x`, itself a link to `/dev/dm-0`).
#[cfg(target_os = "linux")]
fn uuid_of_device(source: &str) -> Option<String> {
    if !source.starts_with("/dev/") {
        return None;
    }
    let device = Path::new(source).canonicalize().ok()?;
    std::fs::read_dir("/dev/disk/by-uuid")
        .ok()?
        .flatten()
        .find(|entry| entry.path().canonicalize().ok().as_deref() == Some(&*device))
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
}

/// The kind of a network or FUSE file system under `path`, where the kernel sees only the
/// changes made through this machine (and so the watcher misses the others').
#[cfg(target_os = "linux")]
pub fn remote_kind(path: &Path) -> Option<&'static str> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a statfs buffer of the right size.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut fs) } != 0 {
        return None;
    }
    // The magic numbers of statfs(2).
    #[allow(clippy::unnecessary_cast)]
    match fs.f_type as i64 {
        0x6969 => Some("NFS"),
        0xFF53_4D42 | 0xFE53_4D42 | 0x517B => Some("SMB/CIFS"),
        0x6573_5546 => Some("FUSE"),
        0x0102_1997 => Some("9p"),
        0x00C3_6400 => Some("Ceph"),
        0x5346_414F => Some("AFS"),
        _ => None,
    }
}

#[cfg(not(target_os = "linux"))]
pub fn remote_kind(_path: &Path) -> Option<&'static str> {
    None
}

/// What the recorded file system says of a library's root now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compared {
    /// Nothing to compare: never recorded, recorded for another root, or not identifiable now.
    Unknown,
    Same,
    /// On another file system (or elsewhere in it) than recorded.
    Other {
        was: RootFs,
        now: RootFs,
    },
}

/// Compares `now` (see [`identify`]) with what was recorded (`lib_kv`, as JSON).
pub fn compare(recorded: Option<&str>, now: Option<&RootFs>) -> Compared {
    let (Some(was), Some(now)) = (recorded.and_then(RootFs::from_json), now) else {
        return Compared::Unknown;
    };
    if was.root != now.root {
        return Compared::Unknown;
    }
    if was.same_place(now) {
        Compared::Same
    } else {
        Compared::Other {
            was,
            now: now.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
30 27 0:27 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24683784k
40 27 8:17 / /media/disk rw,nosuid shared:7 master:1 - ext4 /dev/sdb1 rw
41 27 0:50 /exports/home /mnt/nas rw,relatime - nfs4 nas:/exports rw,vers=4.2
42 27 0:51 / /mnt/my\\040photos rw - fuse.sshfs me@host:/photos rw
43 40 0:52 / /media/disk rw - vfat /dev/sdc1 rw
";

    fn uuids(source: &str) -> Option<String> {
        (source == "/dev/sdb1").then(|| "1234-ABCD".to_owned())
    }

    fn at(path: &str) -> Option<RootFs> {
        let mounts = parse_mountinfo(MOUNTINFO);
        identify_in(&mounts, Path::new(path), Path::new(path), uuids)
    }

    #[test]
    fn mountinfo_lines_give_root_mount_point_type_and_source_with_optional_fields_skipped() {
        let mounts = parse_mountinfo(MOUNTINFO);
        assert_eq!(mounts.len(), 7);
        assert_eq!(
            mounts[3],
            Mount {
                root: "/".into(),
                mount_point: "/media/disk".into(),
                fs_type: "ext4".into(),
                source: "/dev/sdb1".into(),
            }
        );
        assert_eq!(
            mounts[5].mount_point, "/mnt/my photos",
            "octal escapes undone"
        );
        assert!(parse_mountinfo("garbage line\n").is_empty());
    }

    #[test]
    fn a_block_device_with_a_uuid_is_named_by_it_and_the_path_within_it() {
        // The last mount on /media/disk hides the one before it.
        let mounts = parse_mountinfo(MOUNTINFO);
        let hidden = &mounts[..6];
        let fs = identify_in(
            hidden,
            Path::new("/media/disk/photos"),
            Path::new("/media/disk/photos"),
            uuids,
        )
        .unwrap();
        assert_eq!(fs.fs, "uuid:1234-ABCD");
        assert_eq!(fs.path, "/photos");
        let top = at("/media/disk/photos").unwrap();
        assert_eq!(top.fs, "vfat:/dev/sdc1", "the mount listed last wins");
    }

    #[test]
    fn a_network_mount_is_named_by_type_and_source_and_its_root_within_the_export() {
        let fs = at("/mnt/nas/alice").unwrap();
        assert_eq!(fs.fs, "nfs4:nas:/exports");
        assert_eq!(fs.path, "/exports/home/alice");
        assert_eq!(fs.fs_type, "nfs4");
    }

    #[test]
    fn an_unmounted_disk_leaves_its_mount_point_on_the_parent_file_system() {
        let mounted = at("/media/disk").unwrap();
        let mounts: Vec<Mount> = parse_mountinfo(MOUNTINFO)
            .into_iter()
            .filter(|m| m.mount_point != "/media/disk")
            .collect();
        let unmounted = identify_in(
            &mounts,
            Path::new("/media/disk"),
            Path::new("/media/disk"),
            uuids,
        )
        .unwrap();
        assert_eq!(unmounted.fs, "ext4:/dev/vda");
        assert_eq!(unmounted.path, "/media/disk");
        assert!(matches!(
            compare(Some(&mounted.to_json()), Some(&unmounted)),
            Compared::Other { .. }
        ));
        assert_eq!(
            compare(Some(&mounted.to_json()), Some(&mounted)),
            Compared::Same
        );
    }

    #[test]
    fn a_mount_point_matches_whole_components_only() {
        // /dev/shmfoo is not under /dev/shm.
        assert_eq!(at("/dev/shmfoo").unwrap().fs, "ext4:/dev/vda");
        assert_eq!(at("/dev/shm/x").unwrap().fs, "tmpfs:tmpfs");
    }

    #[test]
    fn nothing_is_compared_without_a_record_for_this_root_or_a_look_now() {
        let now = at("/media/disk/photos").unwrap();
        assert_eq!(compare(None, Some(&now)), Compared::Unknown);
        assert_eq!(compare(Some("not json"), Some(&now)), Compared::Unknown);
        assert_eq!(compare(Some(&now.to_json()), None), Compared::Unknown);
        let mut elsewhere = now.clone();
        elsewhere.root = "/other/root".into();
        elsewhere.fs = "ext4:/dev/vda".into();
        assert_eq!(
            compare(Some(&elsewhere.to_json()), Some(&now)),
            Compared::Unknown,
            "a root configured elsewhere since is a new root"
        );
    }
}
