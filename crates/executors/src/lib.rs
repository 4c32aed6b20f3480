//! Executors that hand a task's work to something outside qtask.
//!
//! - [`ExecExecutor`] runs a program (argv from the catalog, never through a shell).
//! - [`HttpExecutor`] POSTs the task to a webhook.
//!
//! Both send the same **task document**, one JSON object:
//!
//! ```json
//! {"requestId": 42, "action": "BackupDatabases", "resourceId": "db-1a2b3c4d",
//!  "region": "ap-guangzhou", "account": 1001, "attempt": 1, "chainId": 41,
//!  "params": {...}, "resource": {...}}
//! ```
//!
//! `attempt` counts from 1, so the receiving side can make its work idempotent per
//! `requestId`; `chainId` is present only for a task that belongs to a chain;
//! `params` are the call's parameters as they apply to this task (a chain's task lists
//! only its own resource under the action's IDs parameter); `resource` is the
//! resource's attributes when the task was claimed.
//!
//! # Outcomes
//!
//! | | success | retryable | fatal |
//! |---|---|---|---|
//! | `exec` | exit 0; the last stdout line that is a JSON object is the result | exit 75 (`EX_TEMPFAIL`), cannot spawn for lack of resources or because the program file is being written (after ≈ 0.6 s of tries) | any other exit or a signal (message: the code or signal and the end of stderr), program missing or not executable |
//! | `http` | 2xx; a JSON body is the result, an empty body (or `null`) none | 429, 5xx, connection errors, timeouts | other statuses (message: the status and the start of the body), a 2xx whose body is not JSON |
//!
//! A 2xx whose body is not JSON is fatal rather than retryable: the receiver said it
//! did the work, so another attempt would do it again, and it would answer the same.
//!
//! # Webhook signatures
//!
//! With a shared secret, every request carries
//! `X-Qtask-Signature: sha256=<hex of HMAC-SHA256(secret, "<timestamp>.<body>")>`, where
//! `<timestamp>` is the `X-Qtask-Timestamp` header (Unix seconds) and `<body>` the raw
//! request body. A receiver recomputes it with [`verify_signature`] (a constant-time
//! comparison) and should also refuse timestamps more than a few minutes old, which
//! keeps a captured request from being replayed later.

pub mod callbacks;
mod document;
mod exec;
mod http;

pub use document::task_document;
pub use exec::{
    ExecExecutor, ExecSettings, DEFAULT_CANCEL_GRACE, DEFAULT_MAX_OUTPUT_BYTES, EXIT_TEMPFAIL,
    INHERITED_ENV,
};
pub use http::{
    sign, verify_signature, HttpConfigError, HttpExecutor, HttpSettings, ATTEMPT_HEADER,
    REQUEST_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER,
};
