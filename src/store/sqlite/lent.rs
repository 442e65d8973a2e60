//! A connection lent by its owner (the committer's writer, the set of readers), which goes back
//! to the owner when the borrower drops it, whatever the borrower did with it: a statement left
//! running (its future dropped) finishes before the next one starts, since the connection's
//! thread runs them in order. [`Borrowed`] is either that or a pooled PostgreSQL connection.

use std::ops::{Deref, DerefMut};

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection};

/// Where a lent connection goes back to.
pub(crate) trait Home {
    /// Takes the connection back.
    fn take_back(&mut self, conn: AnyConnection);
}

/// A lent connection.
#[derive(Debug)]
pub(crate) struct Lent<H: Home> {
    conn: Option<AnyConnection>,
    home: H,
}

impl<H: Home> Lent<H> {
    pub(crate) fn new(conn: AnyConnection, home: H) -> Self {
        Self {
            conn: Some(conn),
            home,
        }
    }
}

impl<H: Home> Deref for Lent<H> {
    type Target = AnyConnection;
    #[allow(clippy::expect_used)]
    fn deref(&self) -> &AnyConnection {
        // Only `Drop` takes it.
        self.conn
            .as_ref()
            .expect("a lent connection is held until dropped")
    }
}

impl<H: Home> DerefMut for Lent<H> {
    #[allow(clippy::expect_used)]
    fn deref_mut(&mut self) -> &mut AnyConnection {
        self.conn
            .as_mut()
            .expect("a lent connection is held until dropped")
    }
}

impl<H: Home> Drop for Lent<H> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.home.take_back(conn);
        }
    }
}

/// A connection to work on: one lent by its SQLite owner, or one from the PostgreSQL pool.
#[derive(Debug)]
pub(crate) enum Borrowed<H: Home> {
    /// SQLite.
    Lent(Lent<H>),
    /// PostgreSQL.
    Pooled(PoolConnection<Any>),
}

impl<H: Home> Deref for Borrowed<H> {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        match self {
            Self::Lent(lent) => lent,
            Self::Pooled(conn) => conn,
        }
    }
}

impl<H: Home> DerefMut for Borrowed<H> {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match self {
            Self::Lent(lent) => lent,
            Self::Pooled(conn) => conn,
        }
    }
}
