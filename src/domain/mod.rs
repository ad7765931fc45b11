//! Pure rules of the cylinder registry: roles and the access matrix, the
//! cylinder lifecycle, code generation and the value types that request
//! bodies are parsed into. Nothing here performs I/O.

pub mod access;
pub mod audit;
pub mod codes;
pub mod cylinder;
pub mod rule_memory;
pub mod scan;
pub mod user;
pub mod value;

pub use access::{Action, Reach, Role};
pub use cylinder::{CylinderStatus, TransitionError};
pub use value::InvalidValue;
