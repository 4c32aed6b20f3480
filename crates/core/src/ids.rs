//! Identifiers, parsed at the edge into newtypes so that a malformed one never travels
//! further than the parameter that carried it.

use std::fmt;
use std::str::FromStr;

/// Why a string is not a valid identifier. The caller names the parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("is empty")]
    Empty,
    #[error("must be a positive integer of at most {max}")]
    NotPositiveInteger { max: u64 },
    #[error("must look like {prefix}-xxxxxxxx (eight lowercase letters or digits)")]
    BadResourceId { prefix: &'static str },
    #[error("must be 1 to 128 ASCII letters or digits")]
    BadSecretId,
}

/// The largest integer the stores keep in a signed 64-bit column.
pub const MAX_ID: u64 = i64::MAX as u64;

/// The ID a mutating call answers with (`requestId`). It names either one task or a
/// chain (the tasks one batch call created); both come from one sequence, so an ID is
/// never reused for anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(u64);

impl RequestId {
    pub fn new(value: u64) -> Result<Self, IdError> {
        if value == 0 || value > MAX_ID {
            return Err(IdError::NotPositiveInteger { max: MAX_ID });
        }
        Ok(Self(value))
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for RequestId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_positive(s).and_then(Self::new)
    }
}

/// A replay-protection nonce: a positive integer up to 2^63−1 (the Python SDK draws from
/// `random.randint(1, sys.maxsize)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Nonce(u64);

impl Nonce {
    pub fn new(value: u64) -> Result<Self, IdError> {
        RequestId::new(value).map(|id| Self(id.get()))
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl FromStr for Nonce {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_positive(s).and_then(Self::new)
    }
}

fn parse_positive(s: &str) -> Result<u64, IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(IdError::NotPositiveInteger { max: MAX_ID });
    }
    s.parse::<u64>()
        .map_err(|_| IdError::NotPositiveInteger { max: MAX_ID })
}

/// An account: the owner of resources, tasks and API keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(pub i64);

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The public half of an API key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretId(String);

impl SecretId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for SecretId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        if s.len() > 128 || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(IdError::BadSecretId);
        }
        Ok(Self(s.to_owned()))
    }
}

/// The number of random characters after a resource ID's prefix.
pub const RESOURCE_SUFFIX_LEN: usize = 8;

/// A resource's ID: a type prefix, a dash and eight lowercase letters or digits
/// (`ins-1a2b3c4d`, `lb-0000abcd`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceId(String);

impl ResourceId {
    /// Parses `s` as an ID of the resource type whose prefix is `prefix`.
    pub fn parse(prefix: &'static str, s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        let suffix = s
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('-'))
            .ok_or(IdError::BadResourceId { prefix })?;
        let well_formed = suffix.len() == RESOURCE_SUFFIX_LEN
            && suffix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !well_formed {
            return Err(IdError::BadResourceId { prefix });
        }
        Ok(Self(s.to_owned()))
    }

    /// Builds an ID whose suffix is `value` in base 36 (digits, then letters, most
    /// significant first), so IDs sort as their values do. `value` is taken modulo
    /// 36^8, the number of suffixes.
    pub fn ordered(prefix: &'static str, value: u64) -> Self {
        const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let mut suffix = [0u8; RESOURCE_SUFFIX_LEN];
        let mut rest = value;
        for digit in suffix.iter_mut().rev() {
            *digit = DIGITS[(rest % 36) as usize];
            rest /= 36;
        }
        let mut id = String::with_capacity(prefix.len() + 1 + RESOURCE_SUFFIX_LEN);
        id.push_str(prefix);
        id.push('-');
        id.extend(suffix.iter().map(|d| *d as char));
        Self(id)
    }

    /// Trusts a value that came from the store, where only parsed IDs are written.
    pub fn from_stored(s: String) -> Self {
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_ids_are_positive_63_bit_integers() {
        assert_eq!("1".parse::<RequestId>().unwrap().get(), 1);
        assert_eq!(
            "9223372036854775807".parse::<RequestId>().unwrap().get(),
            MAX_ID
        );
        for bad in [
            "",
            "0",
            "-1",
            "+1",
            "1.0",
            " 1",
            "9223372036854775808",
            "abc",
        ] {
            assert!(bad.parse::<RequestId>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn resource_ids_need_prefix_and_eight_lowercase_alphanumerics() {
        assert!(ResourceId::parse("ins", "ins-09dx96dg").is_ok());
        for bad in [
            "",
            "ins-",
            "ins-09DX96DG",
            "ins-09dx96d",
            "ins-09dx96dgg",
            "lb-09dx96dg",
            "ins_09dx96dg",
            "ins-09dx96d!",
        ] {
            assert!(ResourceId::parse("ins", bad).is_err(), "{bad:?} accepted");
        }
    }

    proptest! {
        #[test]
        fn ordered_ids_parse_and_sort_as_their_values(a in 0..36u64.pow(8), b in 0..36u64.pow(8)) {
            let (x, y) = (ResourceId::ordered("ins", a), ResourceId::ordered("ins", b));
            prop_assert_eq!(ResourceId::parse("ins", x.as_str()).unwrap(), x.clone());
            prop_assert_eq!(x.cmp(&y), a.cmp(&b));
        }

        #[test]
        fn nonces_round_trip(n in 1..=MAX_ID) {
            prop_assert_eq!(n.to_string().parse::<Nonce>().unwrap().get(), n);
        }
    }
}
