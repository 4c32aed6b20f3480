//! Regions: the long names of the API family and the legacy short codes, which name the
//! same region (`gz` is `ap-guangzhou`).

use std::fmt;
use std::str::FromStr;

/// (long name, legacy short code)
const REGIONS: &[(&str, Option<&str>)] = &[
    ("ap-guangzhou", Some("gz")),
    ("ap-shanghai", Some("sh")),
    ("ap-beijing", Some("bj")),
    ("ap-hongkong", Some("hk")),
    ("na-toronto", Some("ca")),
    ("ap-chengdu", Some("cd")),
    ("ap-chongqing", None),
    ("ap-nanjing", None),
    ("ap-shanghai-fsi", Some("shjr")),
    ("ap-shenzhen-fsi", Some("szjr")),
    ("ap-singapore", Some("sg")),
    ("ap-bangkok", None),
    ("ap-jakarta", None),
    ("ap-mumbai", None),
    ("ap-seoul", Some("kr")),
    ("ap-tokyo", Some("jp")),
    ("na-siliconvalley", Some("usw")),
    ("na-ashburn", None),
    ("eu-frankfurt", Some("de")),
    ("sa-saopaulo", None),
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown region {0:?}")]
pub struct RegionError(pub String);

/// A region, always held by its long name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Region(&'static str);

impl Region {
    pub fn as_str(self) -> &'static str {
        self.0
    }

    /// Every region qtask knows, by long name.
    pub fn all() -> impl Iterator<Item = Region> {
        REGIONS.iter().map(|(name, _)| Region(name))
    }

    /// Whether `zone` (such as `ap-guangzhou-3`) is a zone of this region.
    pub fn has_zone(self, zone: &str) -> bool {
        zone.strip_prefix(self.0)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|n| !n.is_empty() && n.len() <= 2 && n.bytes().all(|b| b.is_ascii_digit()))
    }

    /// The zone new resources land in when the caller names none.
    pub fn default_zone(self) -> String {
        format!("{}-1", self.0)
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl FromStr for Region {
    type Err = RegionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        REGIONS
            .iter()
            .find(|(long, short)| *long == s || *short == Some(s))
            .map(|(long, _)| Region(long))
            .ok_or_else(|| RegionError(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_codes_name_the_same_region() {
        assert_eq!("gz".parse::<Region>(), "ap-guangzhou".parse::<Region>());
        assert_eq!("ca".parse::<Region>().unwrap().as_str(), "na-toronto");
        assert!("mars-1".parse::<Region>().is_err());
        assert!("".parse::<Region>().is_err());
        assert!("AP-GUANGZHOU".parse::<Region>().is_err());
    }

    #[test]
    fn zones_belong_to_their_region() {
        let gz: Region = "gz".parse().unwrap();
        assert!(gz.has_zone("ap-guangzhou-3"));
        assert!(gz.has_zone(&gz.default_zone()));
        assert!(!gz.has_zone("ap-guangzhou-"));
        assert!(!gz.has_zone("ap-guangzhou-x"));
        assert!(!gz.has_zone("ap-shanghai-2"));
    }
}
