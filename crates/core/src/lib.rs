//! The domain of qtask: identifiers, the task state machine, resource states and the
//! reasons a resource can refuse an operation.
//!
//! Architecture invariant: this crate does no I/O. It knows no tokio, SQL, HTTP or wire
//! format; every other crate builds on these types.

pub mod ids;
pub mod region;
pub mod resource;
pub mod task;

pub use ids::{AccountId, IdError, Nonce, RequestId, ResourceId, SecretId};
pub use region::{Region, RegionError};
pub use resource::{Effect, Rejection, ResourceState};
pub use task::{TaskError, TaskState};

/// Milliseconds since the Unix epoch. Passed in by callers: the domain reads no clock.
pub type UnixMillis = i64;
