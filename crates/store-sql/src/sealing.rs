//! SecretKeys at rest: sealed with ChaCha20-Poly1305 under a master key kept outside
//! the database, so a copy of the database alone reveals no SecretKey.
//!
//! A sealed value is `sealed1:` followed by base64(nonce ‖ ciphertext ‖ tag). The
//! SecretId is the associated data: a sealed key copied onto another row does not open.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

const SEALED_PREFIX: &str = "sealed1:";
/// The length of a master key, in bytes.
pub const MASTER_KEY_LEN: usize = 32;

/// The key that seals every SecretKey of a data directory.
pub struct MasterKey {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A key from its base64 text (the key file's content, or `QTASK_MASTER_KEY`).
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let bytes = BASE64
            .decode(text.trim())
            .map_err(|e| format!("the master key is not base64: {e}"))?;
        if bytes.len() != MASTER_KEY_LEN {
            return Err(format!(
                "the master key must be {MASTER_KEY_LEN} bytes, not {}",
                bytes.len()
            ));
        }
        let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes)
            .map_err(|_| "the master key is not a valid key".to_owned())?;
        Ok(Self {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
        })
    }

    /// A new random key, as base64 text.
    pub fn generate() -> Result<String, String> {
        let mut bytes = [0u8; MASTER_KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| "no system randomness".to_owned())?;
        Ok(BASE64.encode(bytes))
    }

    pub fn seal(&self, secret_id: &str, secret_key: &str) -> Result<String, String> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| "no system randomness".to_owned())?;
        let mut sealed = secret_key.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(secret_id.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| "cannot seal the SecretKey".to_owned())?;
        let mut stored = nonce.to_vec();
        stored.extend_from_slice(&sealed);
        Ok(format!("{SEALED_PREFIX}{}", BASE64.encode(stored)))
    }

    pub fn open(&self, secret_id: &str, stored: &str) -> Result<String, String> {
        let wrong = || {
            format!(
                "the SecretKey of {secret_id} does not open with this master key (another data directory's key, or a damaged row)"
            )
        };
        let body = stored.strip_prefix(SEALED_PREFIX).ok_or_else(wrong)?;
        let mut bytes = BASE64.decode(body).map_err(|_| wrong())?;
        if bytes.len() < NONCE_LEN {
            return Err(wrong());
        }
        let mut sealed = bytes.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&bytes).map_err(|_| wrong())?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(secret_id.as_bytes()), &mut sealed)
            .map_err(|_| wrong())?;
        String::from_utf8(plain.to_vec()).map_err(|_| wrong())
    }
}

pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(SEALED_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MasterKey {
        MasterKey::from_base64(&MasterKey::generate().unwrap()).unwrap()
    }

    #[test]
    fn a_sealed_key_opens_only_with_its_master_key_and_secret_id() {
        let (master, other) = (key(), key());
        let sealed = master.seal("AKIDone", "canary-secret").unwrap();
        assert!(is_sealed(&sealed));
        assert!(!sealed.contains("canary-secret"));
        assert_eq!(master.open("AKIDone", &sealed).unwrap(), "canary-secret");
        assert!(
            other.open("AKIDone", &sealed).is_err(),
            "another master key"
        );
        assert!(master.open("AKIDtwo", &sealed).is_err(), "another row");
        assert!(
            master.open("AKIDone", "canary-secret").is_err(),
            "plaintext"
        );
        assert_ne!(
            master.seal("AKIDone", "canary-secret").unwrap(),
            sealed,
            "a fresh nonce each time"
        );
    }

    #[test]
    fn master_keys_must_be_32_bytes_of_base64() {
        assert!(MasterKey::from_base64("not base64!").is_err());
        assert!(MasterKey::from_base64(&BASE64.encode([0u8; 16])).is_err());
        assert!(MasterKey::from_base64(&format!("{}\n", BASE64.encode([7u8; 32]))).is_ok());
    }
}
