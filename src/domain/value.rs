//! Value types that request bodies and command-line arguments are parsed
//! into. Each constructor states its rule in the error it returns, so code
//! that receives one of these types never checks it again.

use std::fmt;

/// A value that breaks its field's rule. `field` is the request field name,
/// and `rule` is a sentence fragment such as "must be at most 64 characters".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {rule}")]
pub struct InvalidValue {
    pub field: &'static str,
    pub rule: String,
}

impl InvalidValue {
    pub fn new(field: &'static str, rule: impl Into<String>) -> Self {
        Self {
            field,
            rule: rule.into(),
        }
    }
}

/// Trims `raw` and checks its length in characters and that it contains no
/// control characters.
fn bounded_text(
    field: &'static str,
    raw: &str,
    min: usize,
    max: usize,
) -> Result<String, InvalidValue> {
    let text = raw.trim();
    let length = text.chars().count();
    if length < min {
        let rule = if min == 1 {
            "must not be empty".to_string()
        } else {
            format!("must be at least {min} characters")
        };
        return Err(InvalidValue::new(field, rule));
    }
    if length > max {
        return Err(InvalidValue::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(InvalidValue::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(text.to_string())
}

macro_rules! string_newtype {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_inner(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(&self.0)
            }
        }
    };
}

string_newtype!(
    /// A manufacturer's serial number as stamped on the cylinder collar:
    /// 3 to 40 characters of A-Z, 0-9, `-` and `/`, stored in upper case.
    SerialNumber
);
string_newtype!(
    /// A brand name such as "K-Gas" or "Total": 1 to 60 printable characters.
    Brand
);
string_newtype!(
    /// A login name: 3 to 150 characters of a-z, 0-9 and `.`, `_`, `-`, `@`,
    /// `+`, stored in lower case so that "Wanjiru" and "wanjiru" are one user.
    Username
);
string_newtype!(
    /// A person's display name: up to 150 printable characters.
    FullName
);
string_newtype!(
    /// An e-mail address with one `@`, a non-empty local part and a dotted
    /// domain; at most 254 characters.
    Email
);
string_newtype!(
    /// A phone number in E.164 form, for example `+254712345678`.
    Phone
);
string_newtype!(
    /// Free-text notes on a history entry: up to 1,000 characters.
    Notes
);
string_newtype!(
    /// A depot's name, 1 to 100 printable characters.
    DepotName
);
string_newtype!(
    /// A place as a person describes it: up to 300 printable characters.
    Address
);

impl SerialNumber {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, InvalidValue> {
        let text = bounded_text(field, raw, 3, 40)?.to_ascii_uppercase();
        let allowed = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '/';
        if !text.chars().all(allowed) {
            return Err(InvalidValue::new(
                field,
                "must contain only letters A-Z, digits 0-9, '-' and '/'",
            ));
        }
        Ok(Self(text))
    }
}

impl Brand {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, InvalidValue> {
        bounded_text(field, raw, 1, 60).map(Self)
    }
}

impl Address {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, InvalidValue> {
        bounded_text(field, raw, 0, 300).map(Self)
    }
}

impl DepotName {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, InvalidValue> {
        bounded_text(field, raw, 1, 100).map(Self)
    }
}

impl Username {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, InvalidValue> {
        let text = bounded_text(field, raw, 3, 150)?.to_lowercase();
        let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_@+".contains(c);
        if !text.chars().all(allowed) {
            return Err(InvalidValue::new(
                field,
                "must contain only letters a-z, digits 0-9 and . _ - @ +",
            ));
        }
        Ok(Self(text))
    }
}

impl FullName {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, InvalidValue> {
        bounded_text(field, raw, 0, 150).map(Self)
    }
}

impl Notes {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, InvalidValue> {
        bounded_text(field, raw, 0, 1000).map(Self)
    }

    pub fn empty() -> Self {
        Self(String::new())
    }
}

impl Email {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, InvalidValue> {
        let text = bounded_text(field, raw, 3, 254)?;
        let invalid = || {
            InvalidValue::new(
                field,
                "must be an e-mail address such as name@example.co.ke",
            )
        };
        let (local, domain) = text.split_once('@').ok_or_else(invalid)?;
        let domain_ok = domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
        if local.is_empty() || local.contains(char::is_whitespace) || !domain_ok {
            return Err(invalid());
        }
        Ok(Self(format!("{local}@{}", domain.to_ascii_lowercase())))
    }
}

impl Phone {
    /// Accepts E.164 (`+254712345678`) and the Kenyan national form
    /// (`0712 345 678`), ignoring spaces and dashes, and stores E.164.
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, InvalidValue> {
        let compact: String = raw
            .trim()
            .chars()
            .filter(|c| *c != ' ' && *c != '-')
            .collect();
        let international = match compact.strip_prefix('0') {
            Some(national) if national.len() == 9 => format!("+254{national}"),
            _ => compact,
        };
        let digits = international.strip_prefix('+').unwrap_or("");
        let valid = (8..=15).contains(&digits.len())
            && digits.chars().all(|c| c.is_ascii_digit())
            && !digits.starts_with('0');
        if !valid {
            return Err(InvalidValue::new(
                field,
                "must be a phone number in international form such as +254712345678",
            ));
        }
        Ok(Self(international))
    }
}

/// A password that meets the length policy. It is hashed at once and never
/// stored or logged; Debug does not show it.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    /// Minimum length in characters. Length matters more than composition
    /// rules, following NIST SP 800-63B.
    pub const MIN_CHARS: usize = 10;
    /// Maximum length in bytes, which bounds the hashing work per request.
    pub const MAX_BYTES: usize = 256;

    pub fn parse(field: &'static str, raw: String) -> Result<Self, InvalidValue> {
        if raw.chars().count() < Self::MIN_CHARS {
            return Err(InvalidValue::new(
                field,
                format!("must be at least {} characters", Self::MIN_CHARS),
            ));
        }
        if raw.len() > Self::MAX_BYTES {
            return Err(InvalidValue::new(
                field,
                format!("must be at most {} bytes", Self::MAX_BYTES),
            ));
        }
        Ok(Self(raw))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Password([redacted])")
    }
}

/// A cylinder's nominal LPG capacity in kilograms, from 0.5 kg camping
/// cylinders to 100 kg industrial ones, in steps of 0.1 kg.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CapacityKg(f64);

impl CapacityKg {
    pub fn parse(field: &'static str, raw: f64) -> Result<Self, InvalidValue> {
        if !raw.is_finite() || !(0.5..=100.0).contains(&raw) {
            return Err(InvalidValue::new(field, "must be between 0.5 and 100 kg"));
        }
        let tenths = raw * 10.0;
        if (tenths - tenths.round()).abs() > 1e-9 {
            return Err(InvalidValue::new(
                field,
                "must have at most one decimal place",
            ));
        }
        Ok(Self(tenths.round() / 10.0))
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_number_is_upper_cased() {
        let serial = SerialNumber::parse("serial_number", " kg-13/0042 ");
        assert_eq!(
            serial.map(SerialNumber::into_inner),
            Ok("KG-13/0042".to_string())
        );
    }

    #[test]
    fn serial_number_rejects_spaces_and_length() {
        assert!(SerialNumber::parse("serial_number", "AB 123").is_err());
        assert!(SerialNumber::parse("serial_number", "AB").is_err());
        assert!(SerialNumber::parse("serial_number", &"A".repeat(41)).is_err());
    }

    #[test]
    fn username_is_lower_cased_and_checked() {
        assert_eq!(
            Username::parse("username", "Wanjiru.K").map(Username::into_inner),
            Ok("wanjiru.k".to_string())
        );
        assert!(Username::parse("username", "has space").is_err());
        assert!(Username::parse("username", "ab").is_err());
    }

    #[test]
    fn phone_accepts_kenyan_national_form() {
        assert_eq!(
            Phone::parse("phone", "0712 345 678").map(Phone::into_inner),
            Ok("+254712345678".to_string())
        );
        assert!(Phone::parse("phone", "12345").is_err());
        assert!(Phone::parse("phone", "+0712345678").is_err());
    }

    #[test]
    fn email_requires_dotted_domain() {
        assert!(Email::parse("email", "ops@kgas.co.ke").is_ok());
        assert!(Email::parse("email", "ops@localhost").is_err());
        assert!(Email::parse("email", "no-at-sign").is_err());
    }

    #[test]
    fn capacity_range_and_precision() {
        assert_eq!(
            CapacityKg::parse("capacity_kg", 13.0).map(CapacityKg::get),
            Ok(13.0)
        );
        assert_eq!(
            CapacityKg::parse("capacity_kg", 22.5).map(CapacityKg::get),
            Ok(22.5)
        );
        assert!(CapacityKg::parse("capacity_kg", 0.0).is_err());
        assert!(CapacityKg::parse("capacity_kg", 101.0).is_err());
        assert!(CapacityKg::parse("capacity_kg", 6.25).is_err());
        assert!(CapacityKg::parse("capacity_kg", f64::NAN).is_err());
    }

    #[test]
    fn password_length_policy() {
        assert!(Password::parse("password", "short".into()).is_err());
        assert!(Password::parse("password", "long enough pass".into()).is_ok());
        assert!(Password::parse("password", "x".repeat(257)).is_err());
        let password = Password::parse("password", "long enough pass".into());
        assert_eq!(format!("{password:?}"), "Ok(Password([redacted]))");
    }

    #[test]
    fn text_rejects_control_characters() {
        assert!(Brand::parse("brand", "K-Gas\u{0007}").is_err());
        assert!(Brand::parse("brand", "   ").is_err());
    }
}
