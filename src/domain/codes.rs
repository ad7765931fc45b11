//! Generation of the codes printed on a cylinder and of the per-cylinder
//! secret, and the auth hash that binds them to the serial number.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Random bytes behind a QR code: 128 bits, well above the 64-bit minimum,
/// so that codes cannot be guessed or enumerated.
const QR_CODE_BYTES: usize = 16;
/// Random bytes behind an RFID tag id: 96 bits, the size of an EPC-96
/// identifier that UHF tags carry.
const RFID_TAG_BYTES: usize = 12;
/// Random bytes of the per-cylinder secret: 256 bits.
const SECRET_BYTES: usize = 32;

/// Crockford's base32 alphabet: no I, L, O or U, so that a code read aloud
/// or typed from a damaged label is less often misread.
const BASE32_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Prefix of every QR code, so that a scanner app can tell a cyltrack label
/// from other QR codes before it calls the server.
pub const QR_PREFIX: &str = "CYL-";

/// The codes and secret generated for a new cylinder.
pub struct CylinderCodes {
    pub qr_code: String,
    pub rfid_tag: String,
    /// Never leaves the server: not in responses, logs or Debug output.
    pub secret_key: [u8; SECRET_BYTES],
}

impl std::fmt::Debug for CylinderCodes {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CylinderCodes")
            .field("qr_code", &self.qr_code)
            .field("rfid_tag", &self.rfid_tag)
            .field("secret_key", &"[redacted]")
            .finish()
    }
}

/// Failure of the operating system's random number generator.
#[derive(Debug, thiserror::Error)]
#[error("the system random number generator failed: {0}")]
pub struct RandomError(String);

/// Fills `buffer` from the operating system's CSPRNG.
pub fn fill_random(buffer: &mut [u8]) -> Result<(), RandomError> {
    getrandom::fill(buffer).map_err(|error| RandomError(error.to_string()))
}

impl CylinderCodes {
    /// Draws fresh codes and a secret from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, RandomError> {
        let mut qr = [0u8; QR_CODE_BYTES];
        let mut rfid = [0u8; RFID_TAG_BYTES];
        let mut secret_key = [0u8; SECRET_BYTES];
        fill_random(&mut qr)?;
        fill_random(&mut rfid)?;
        fill_random(&mut secret_key)?;

        Ok(Self {
            qr_code: format!("{QR_PREFIX}{}", base32(&qr)),
            rfid_tag: hex::encode_upper(rfid),
            secret_key,
        })
    }
}

/// Encodes bytes in Crockford base32 without padding.
fn base32(bytes: &[u8]) -> String {
    let mut output = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            output.push(BASE32_ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        output.push(BASE32_ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    output
}

/// Computes the auth hash of a cylinder: HMAC-SHA-256 keyed by the server's
/// `SECRET_KEY` over the serial number, both codes and the cylinder secret.
/// Each part is length-prefixed, so no two different inputs can produce the
/// same message. Without the server key, a matching hash cannot be forged,
/// even with a copy of the database.
pub fn auth_hash(
    server_key: &[u8],
    serial_number: &str,
    qr_code: &str,
    rfid_tag: &str,
    secret_key: &[u8],
) -> String {
    let mut mac = keyed_mac(server_key);
    for part in [
        serial_number.as_bytes(),
        qr_code.as_bytes(),
        rfid_tag.as_bytes(),
        secret_key,
    ] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    hex::encode(mac.finalize().into_bytes())
}

/// Starts an HMAC-SHA-256 computation keyed by `key`.
pub fn keyed_mac(key: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length (RFC 2104 hashes longer ones), so
    // this error branch cannot be taken.
    #[allow(clippy::expect_used)]
    <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_have_expected_shape() {
        let codes = CylinderCodes::generate().map_err(|e| e.to_string());
        let codes = codes.as_ref().map(|c| (c.qr_code.len(), c.rfid_tag.len()));
        // 128 bits in base32 is 26 characters; 96 bits in hex is 24.
        assert_eq!(codes, Ok((QR_PREFIX.len() + 26, 24)));
    }

    #[test]
    fn codes_do_not_repeat() {
        let mut seen = HashSet::new();
        for _ in 0..1000 {
            let Ok(codes) = CylinderCodes::generate() else {
                unreachable!("RNG failed")
            };
            assert!(seen.insert(codes.qr_code));
            assert!(seen.insert(codes.rfid_tag));
        }
    }

    #[test]
    fn base32_known_values() {
        assert_eq!(base32(&[0x00]), "00");
        assert_eq!(base32(&[0xff]), "ZW");
        assert_eq!(base32(&[0x12, 0x34, 0x56, 0x78, 0x9a]), "28T5CY4T");
    }

    #[test]
    fn auth_hash_depends_on_every_part() {
        let base = auth_hash(b"server", "SN1", "CYL-A", "AB", b"secret");
        assert_ne!(base, auth_hash(b"other", "SN1", "CYL-A", "AB", b"secret"));
        assert_ne!(base, auth_hash(b"server", "SN2", "CYL-A", "AB", b"secret"));
        assert_ne!(base, auth_hash(b"server", "SN1", "CYL-B", "AB", b"secret"));
        assert_ne!(base, auth_hash(b"server", "SN1", "CYL-A", "AC", b"secret"));
        assert_ne!(base, auth_hash(b"server", "SN1", "CYL-A", "AB", b"secrex"));
        // Moving a character across a boundary changes the hash too.
        assert_ne!(base, auth_hash(b"server", "SN1C", "YL-A", "AB", b"secret"));
        assert_eq!(base.len(), 64);
    }
}
