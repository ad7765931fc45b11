//! Accounts as the registry creates them.

use super::access::Role;
use super::value::{Email, FullName, Password, Phone, Username};

/// An account to create, parsed from a request or the command line.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub username: Username,
    pub full_name: FullName,
    pub email: Option<Email>,
    pub phone: Option<Phone>,
    pub role: Role,
    pub password: Password,
}
