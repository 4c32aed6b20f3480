//! The API 2.0 wire protocol, shared by the server (which verifies and answers) and the
//! CLI (which signs and asks), so both sides run the same code.
//!
//! - [`params`]: decoding `application/x-www-form-urlencoded` text into parameters and
//!   the `name.N.field` flattening into a tree;
//! - [`signature`]: the string to sign, HMAC-SHA1/SHA256 signing and verification;
//! - [`envelope`]: the JSON answers (`{code, message, …}`) and the error codes.
//!
//! Architecture invariant: only this crate knows the wire format. Other crates see
//! decoded parameters and typed answers.

pub mod envelope;
pub mod params;
pub mod signature;

pub use envelope::{ApiError, ErrorCode};
pub use params::{ParamError, Params};
pub use signature::{HttpMethod, SignatureMethod};

/// The one path every action is served on.
pub const API_PATH: &str = "/v2/index.php";
