//! The Kubernetes version a double reports, stored in a patchable placeholder.
//!
//! Why a placeholder instead of a build-time env var: the bundle needs the doubles for two versions
//! (v1.34.x and v1.35.x); one release build stamped twice is much cheaper on our shared 2-core machine than
//! two builds. The marker is found in the file bytes and the version written after it (NUL padded).

/// Length of the marker `KFDOUBLEVERSION=` that precedes the slot.
const MARKER_LEN: usize = 16;

/// The marker, assembled at run time so that the stamper's own search pattern never appears in the
/// binary as a second copy of the marker.
fn marker() -> Vec<u8> {
    [b"KFDOUBLE".as_slice(), b"VERSION="].concat()
}
/// Bytes reserved after the marker for the version text.
pub const SLOT_LEN: usize = 32;

/// The patchable slot: marker, then `v0.0.0` and NUL padding. Kept in `.rodata`; read through
/// `black_box` so the optimiser cannot fold the unpatched value into the code.
#[used]
static VERSION_SLOT: [u8; 48] =
    *b"KFDOUBLEVERSION=v0.0.0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";

/// The stamped version text, e.g. `v1.35.7` (`v0.0.0` when the binary was never stamped).
pub fn stamped() -> String {
    let slot: &[u8; 48] = std::hint::black_box(&VERSION_SLOT);
    let body = &slot[MARKER_LEN..];
    let end = body.iter().position(|b| *b == 0).unwrap_or(body.len());
    String::from_utf8_lossy(&body[..end]).into_owned()
}

/// A parsed `vMAJOR.MINOR.PATCH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KubeVersion {
    /// Major version (1).
    pub major: u32,
    /// Minor version (34, 35, ...).
    pub minor: u32,
    /// Patch version.
    pub patch: u32,
}

impl KubeVersion {
    /// Parses `v1.35.7`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.strip_prefix('v')?.splitn(3, '.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch_text = parts.next()?;
        let digits: String = patch_text.chars().take_while(|c| c.is_ascii_digit()).collect();
        Some(Self { major, minor, patch: digits.parse().ok()? })
    }
}

impl std::fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Writes `version` into the slot of a copy of the doubles binary. Fails when the marker is missing or
/// appears more than once (a second copy would mean the stamp could be read from the wrong place).
pub fn stamp(binary: &mut [u8], version: &str) -> Result<(), String> {
    if KubeVersion::parse(version).is_none() {
        return Err(format!("version {version:?} is not of the form vX.Y.Z"));
    }
    if version.len() >= SLOT_LEN {
        return Err(format!("version {version:?} longer than the slot"));
    }
    let marker = marker();
    let hits: Vec<usize> = binary
        .windows(MARKER_LEN)
        .enumerate()
        .filter(|(_, w)| *w == marker.as_slice())
        .map(|(i, _)| i)
        .collect();
    match hits.as_slice() {
        [at] => {
            let start = at + MARKER_LEN;
            let slot = &mut binary[start..start + SLOT_LEN];
            slot.fill(0);
            slot[..version.len()].copy_from_slice(version.as_bytes());
            Ok(())
        }
        [] => Err("version marker not found in binary".into()),
        _ => Err(format!("version marker found {} times in binary", hits.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_writes_exactly_one_slot() {
        let mut bin = b"xxxxKFDOUBLEVERSION=v0.0.0".to_vec();
        bin.extend_from_slice(&[0u8; SLOT_LEN]);
        stamp(&mut bin, "v1.35.7").unwrap();
        assert_eq!(&bin[20..27], b"v1.35.7");
        assert!(bin[27..20 + SLOT_LEN].iter().all(|b| *b == 0));
        let mut twice = bin.clone();
        twice.extend_from_slice(&bin);
        assert!(stamp(&mut twice, "v1.35.7").unwrap_err().contains("2 times"));
        assert!(stamp(&mut b"nothing here at all, no marker".to_vec(), "v1.35.7").is_err());
        assert!(stamp(&mut bin, "1.35").is_err());
    }

    #[test]
    fn parses_versions() {
        assert_eq!(KubeVersion::parse("v1.34.10"), Some(KubeVersion { major: 1, minor: 34, patch: 10 }));
        assert_eq!(KubeVersion::parse("1.34.10"), None);
        assert_eq!(stamped(), "v0.0.0", "the unit-test binary is never stamped");
    }
}
