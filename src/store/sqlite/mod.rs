//! The SQLite machinery: how one process writes and reads a SQLite file without queueing a
//! transaction per request. On PostgreSQL none of this is used (writes and reads go to the
//! pool).
//!
//! The vocabulary:
//! - **guarded write** (`store/write.rs`): a conditional `UPDATE` that may happen once (a code
//!   consumed, a refresh token rotated), then the rows that follow from it, in one transaction;
//!   **appends** are rows written unconditionally (audit events, issued codes).
//! - **committer** ([`committer`]): the one task that writes the file. Every guarded write and
//!   append waiting when it is free goes into its next transaction (group commit).
//! - **engine** ([`engine`]): the committer's own connection (rusqlite over the same SQLite
//!   library), run from its task with prepared statements; a locked file sends the batch to a
//!   blocking thread to wait.
//! - **lent connection** ([`lent`]): the one sqlx connection other SQLite writes borrow from the
//!   committer (`Store::writer`); while it is lent no batch runs, so the file has one writer in
//!   this process. Readers are lent the same way.
//! - **readers** ([`readers`]): the few reading connections the store holds itself.
//! - **checkpoint**: copying the write-ahead log back into the file, run beside the writer on a
//!   connection of its own every so many transactions; when the log has grown past a bound,
//!   it also has the log start over, which SQLite does not do by itself under steady load.
//! - **hints** (`store/fresh.rs`): codes and refresh tokens this instance issued and has not seen
//!   used, so a token request can be checked without a read; the guarded write decides.

pub(crate) mod committer;
pub(crate) mod engine;
pub(crate) mod lent;
pub(crate) mod readers;
