//! Password hashing and the JSON Web Tokens that carry a session.

pub mod password;
pub mod scan_token;
pub mod tokens;

use chrono::Utc;

use crate::domain::user::NewUser;
use crate::domain::value::{Email, Phone};
use crate::storage::{NewUserRecord, Store, StoreError, UserRecord};

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error(transparent)]
    Password(#[from] password::PasswordError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Hashes the new user's password and stores the account. The API and the
/// command line both create accounts through here.
pub async fn create_account(
    store: &dyn Store,
    new_user: NewUser,
) -> Result<UserRecord, AccountError> {
    let password_hash = password::hash(&new_user.password).await?;
    let record = NewUserRecord {
        username: new_user.username.into_inner(),
        full_name: new_user.full_name.into_inner(),
        email: new_user.email.map(Email::into_inner),
        phone: new_user.phone.map(Phone::into_inner),
        role: new_user.role,
        password_hash,
    };
    Ok(store.create_user(record, Utc::now()).await?)
}
