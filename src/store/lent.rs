//! A connection lent by its owner (the committer's writer, the set of readers), which goes back
//! to the owner when the borrower drops it, whatever the borrower did with it: a statement left
//! running (its future dropped) finishes before the next one starts, since the connection's
//! thread runs them in order.

use std::ops::{Deref, DerefMut};

use sqlx::AnyConnection;

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
    pub(super) fn new(conn: AnyConnection, home: H) -> Self {
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
