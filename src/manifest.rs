//! The backup manifest: a versioned JSON document written after the artifact
//! it describes. A backup exists for `list`, `verify` and `restore` only if
//! its manifest does, so a manifest is written last and never changed.
//!
//! Object layout on every target:
//! `<job>/<id>.rdb.zst` (the artifact), `<job>/<id>.aof.tar.zst` (the AOF
//! set, for jobs with `include_aof`) and `<job>/<id>.manifest.json`, where
//! `<id>` is `<UTC yyyymmddThhmmss.mmmZ>-<8 hex digits>`, so names sort by
//! time.
//!
//! The manifest contains no secret: no password, and the Redis URL only without
//! credentials.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::rdb;
use crate::target::ObjectName;

/// Value of the `format` field, so a stray JSON file is not taken for a manifest.
pub const FORMAT: &str = "sessbackup-manifest";
/// Manifest layout version this build writes and reads.
pub const VERSION: u32 = 1;

pub const ARTIFACT_SUFFIX: &str = ".rdb.zst";
pub const AOF_SUFFIX: &str = ".aof.tar.zst";
pub const MANIFEST_SUFFIX: &str = ".manifest.json";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub id: String,
    pub job: String,
    /// When the snapshot was requested, RFC 3339 UTC.
    pub created_at: String,
    /// When the artifact was complete, RFC 3339 UTC.
    pub finished_at: String,
    pub tool_version: String,
    pub redis: RedisInfo,
    pub rdb: RdbInfo,
    pub artifact: ArtifactInfo,
    /// The multi-part AOF set shipped with the backup, if the job asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aof: Option<AofInfo>,
}

/// The AOF artifact: a tar archive of `appendonlydir/` (the manifest, then
/// the base and incremental files in load order), compressed with zstd.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AofInfo {
    /// Object name of the archive, relative to the target.
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
    pub compression: Compression,
    /// Redis's `appendfilename`: the AOF manifest is `<appendfilename>.manifest`.
    pub appendfilename: String,
    pub files: Vec<AofFileInfo>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AofFileInfo {
    pub name: String,
    /// "manifest", "base" or "incr".
    pub kind: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RedisInfo {
    /// Server address without credentials.
    pub url: String,
    pub version: String,
    pub role: String,
    /// `rdb_saves` after the snapshot, when the server reports it.
    pub rdb_saves: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RdbInfo {
    pub bytes: u64,
    pub sha256: String,
    /// "redis" or "valkey".
    pub format: String,
    pub version: u32,
    /// "verified", "disabled" (zero trailer) or "absent" (versions before 5).
    pub checksum: String,
    pub keys: u64,
    pub expires: u64,
    pub databases: Vec<DatabaseCounts>,
    pub types: BTreeMap<String, u64>,
    /// AUX fields of the file (redis-ver, ctime, used-mem, …).
    pub aux: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DatabaseCounts {
    pub db: u64,
    pub keys: u64,
    pub expires: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ArtifactInfo {
    /// Object name of the compressed RDB, relative to the target.
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
    pub compression: Compression,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Compression {
    pub algorithm: String,
    pub level: i32,
}

impl RdbInfo {
    pub fn from_summary(summary: &rdb::Summary, bytes: u64, sha256: String) -> Self {
        RdbInfo {
            bytes,
            sha256,
            format: match summary.format {
                rdb::Format::Redis => "redis".to_string(),
                rdb::Format::Valkey => "valkey".to_string(),
            },
            version: summary.version,
            checksum: checksum_name(summary.checksum).to_string(),
            keys: summary.keys(),
            expires: summary.expires(),
            databases: database_counts(summary),
            types: summary.types.iter().map(|(name, count)| (name.to_string(), *count)).collect(),
            aux: summary.aux.iter().cloned().collect(),
        }
    }
}

pub fn checksum_name(checksum: Option<rdb::Checksum>) -> &'static str {
    match checksum {
        Some(rdb::Checksum::Verified(_)) => "verified",
        Some(rdb::Checksum::Disabled) => "disabled",
        Some(rdb::Checksum::Absent) | None => "absent",
    }
}

pub fn database_counts(summary: &rdb::Summary) -> Vec<DatabaseCounts> {
    summary
        .databases
        .iter()
        .map(|(db, counts)| DatabaseCounts { db: *db, keys: counts.keys, expires: counts.expires })
        .collect()
}

impl Manifest {
    pub fn to_json(&self) -> Vec<u8> {
        let mut json = serde_json::to_vec_pretty(self).expect("a manifest always serializes");
        json.push(b'\n');
        json
    }

    /// Parses a manifest, rejecting other formats and newer versions.
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, String> {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|err| format!("not valid JSON: {err}"))?;
        if value.get("format").and_then(|format| format.as_str()) != Some(FORMAT) {
            return Err(format!("not a sessbackup manifest (\"format\" is not {FORMAT:?})"));
        }
        match value.get("version").and_then(|version| version.as_u64()) {
            Some(version) if version == VERSION as u64 => {}
            Some(version) => {
                return Err(format!(
                    "manifest version {version} is not supported by this sessbackup (reads version {VERSION}); upgrade sessbackup"
                ));
            }
            None => return Err("manifest has no version".to_string()),
        }
        let manifest: Manifest = serde_json::from_value(value).map_err(|err| format!("invalid manifest: {err}"))?;
        manifest.check_names()?;
        Ok(manifest)
    }

    /// The artifact must sit beside the manifest under the expected name, so
    /// a manifest cannot point a restore at an unrelated object.
    fn check_names(&self) -> Result<(), String> {
        let expected = artifact_name(&self.job, &self.id).map_err(|err| err.to_string())?;
        if self.artifact.name != expected.as_str() {
            return Err(format!("manifest names artifact {:?}, expected {expected}", self.artifact.name));
        }
        if let Some(aof) = &self.aof {
            let expected = aof_name(&self.job, &self.id).map_err(|err| err.to_string())?;
            if aof.name != expected.as_str() {
                return Err(format!("manifest names AOF artifact {:?}, expected {expected}", aof.name));
            }
            for file in &aof.files {
                if file.name.contains('/') || file.name.starts_with('.') || file.name.is_empty() {
                    return Err(format!("manifest names AOF file {:?}, which is not a plain file name", file.name));
                }
            }
        }
        Ok(())
    }

    pub fn created_at(&self) -> Option<OffsetDateTime> {
        OffsetDateTime::parse(&self.created_at, &Rfc3339).ok()
    }
}

/// Returns a new backup id for a snapshot taken at `at`.
pub fn new_backup_id(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    // Milliseconds keep runs of the same second in order; the random part
    // only separates runs of the same millisecond.
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z-{:08x}",
        at.year(),
        at.month() as u8,
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond(),
        rand::random::<u32>()
    )
}

pub fn aof_name(job: &str, id: &str) -> Result<ObjectName, crate::target::InvalidName> {
    ObjectName::new(format!("{job}/{id}{AOF_SUFFIX}"))
}

pub fn artifact_name(job: &str, id: &str) -> Result<ObjectName, crate::target::InvalidName> {
    ObjectName::new(format!("{job}/{id}{ARTIFACT_SUFFIX}"))
}

pub fn manifest_name(job: &str, id: &str) -> Result<ObjectName, crate::target::InvalidName> {
    ObjectName::new(format!("{job}/{id}{MANIFEST_SUFFIX}"))
}

/// Splits a manifest object name into job and backup id.
pub fn parse_manifest_name(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_suffix(MANIFEST_SUFFIX)?;
    let (job, id) = rest.split_once('/')?;
    (!id.contains('/')).then_some((job, id))
}

pub fn rfc3339(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .expect("zero nanoseconds is valid")
        .format(&Rfc3339)
        .expect("UTC times always format")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let id = "20261204T205145Z-0000abcd".to_string();
        Manifest {
            format: FORMAT.to_string(),
            version: VERSION,
            id: id.clone(),
            job: "sessions".to_string(),
            created_at: "2026-12-04T20:51:45Z".to_string(),
            finished_at: "2026-12-04T20:51:47Z".to_string(),
            tool_version: "0.1.0".to_string(),
            redis: RedisInfo {
                url: "redis://127.0.0.1:6379/".to_string(),
                version: "7.0.15".to_string(),
                role: "master".to_string(),
                rdb_saves: Some(3),
            },
            rdb: RdbInfo {
                bytes: 100,
                sha256: "00".repeat(32),
                format: "redis".to_string(),
                version: 10,
                checksum: "verified".to_string(),
                keys: 2,
                expires: 1,
                databases: vec![DatabaseCounts { db: 0, keys: 2, expires: 1 }],
                types: BTreeMap::new(),
                aux: BTreeMap::new(),
            },
            artifact: ArtifactInfo {
                name: format!("sessions/{id}.rdb.zst"),
                bytes: 50,
                sha256: "11".repeat(32),
                compression: Compression { algorithm: "zstd".to_string(), level: 3 },
            },
            aof: None,
        }
    }

    #[test]
    fn manifest_round_trips() {
        let manifest = sample();
        assert_eq!(Manifest::from_json(&manifest.to_json()).unwrap(), manifest);
    }

    #[test]
    fn newer_manifest_version_is_rejected() {
        let mut value: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        value["version"] = 2.into();
        let err = Manifest::from_json(&serde_json::to_vec(&value).unwrap()).unwrap_err();
        assert!(err.contains("upgrade sessbackup"), "{err}");
    }

    #[test]
    fn foreign_json_is_rejected() {
        assert!(Manifest::from_json(b"{\"hello\": 1}").unwrap_err().contains("not a sessbackup manifest"));
    }

    #[test]
    fn aof_archive_must_sit_beside_manifest() {
        let mut manifest = sample();
        let id = manifest.id.clone();
        manifest.aof = Some(AofInfo {
            name: format!("sessions/{id}.aof.tar.zst"),
            bytes: 10,
            sha256: "22".repeat(32),
            compression: Compression { algorithm: "zstd".to_string(), level: 3 },
            appendfilename: "appendonly.aof".to_string(),
            files: vec![AofFileInfo {
                name: "appendonly.aof.1.base.rdb".to_string(),
                kind: "base".to_string(),
                bytes: 5,
                sha256: "33".repeat(32),
            }],
        });
        assert_eq!(Manifest::from_json(&manifest.to_json()).unwrap(), manifest);

        let mut elsewhere = manifest.clone();
        elsewhere.aof.as_mut().unwrap().name = "other/x.aof.tar.zst".to_string();
        assert!(Manifest::from_json(&elsewhere.to_json()).unwrap_err().contains("AOF artifact"));

        let mut escaping = manifest.clone();
        escaping.aof.as_mut().unwrap().files[0].name = "../etc/passwd".to_string();
        assert!(Manifest::from_json(&escaping.to_json()).unwrap_err().contains("not a plain file name"));
    }

    #[test]
    fn artifact_must_sit_beside_manifest() {
        let mut manifest = sample();
        manifest.artifact.name = "other/secret.rdb.zst".to_string();
        assert!(Manifest::from_json(&manifest.to_json()).unwrap_err().contains("expected sessions/"));
    }

    #[test]
    fn backup_ids_sort_by_time() {
        let early = new_backup_id(time::macros::datetime!(2026-01-02 03:04:05.009 UTC));
        let late = new_backup_id(time::macros::datetime!(2026-11-02 03:04:05 UTC));
        assert!(early.starts_with("20260102T030405.009Z-"), "{early}");
        assert!(early < late);
        assert!(artifact_name("sessions", &early).is_ok());
    }

    #[test]
    fn ids_in_one_second_keep_order() {
        for millis in 0..999 {
            let at = time::macros::datetime!(2026-01-02 03:04:05 UTC);
            let earlier = new_backup_id(at + time::Duration::milliseconds(millis));
            let later = new_backup_id(at + time::Duration::milliseconds(millis + 1));
            assert!(earlier < later, "{earlier} sorts after {later}");
        }
    }

    #[test]
    fn manifest_names_parse() {
        assert_eq!(parse_manifest_name("sessions/ID.manifest.json"), Some(("sessions", "ID")));
        assert_eq!(parse_manifest_name("sessions/ID.rdb.zst"), None);
        assert_eq!(parse_manifest_name("a/b/c.manifest.json"), None);
    }
}
