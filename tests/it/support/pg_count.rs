//! A proxy between Gatehouse and the test PostgreSQL that reads the wire protocol as it passes
//! and counts, for what happened since it was last asked: round trips (each simple `Query`, and
//! each `Sync` of the extended protocol that executed something), statement preparations (a
//! `Sync` that only prepared: once per statement and pooled connection), statements executed, and
//! commits (each `COMMIT`, and each write executed outside a transaction, which commits alone).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the database was asked, since the last [`PgCounter::take`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counted {
    /// Round trips that executed statements: the client waited for the server once per `Query`,
    /// and once per `Sync` after an `Execute`.
    pub round_trips: usize,
    /// Round trips that only prepared a statement (a connection's first use of it).
    pub prepares: usize,
    /// Statements executed (`BEGIN` and `COMMIT` included).
    pub statements: usize,
    /// Commits: `COMMIT`s, and writes executed outside a transaction.
    pub commits: usize,
    /// The statements, in order, shortened.
    pub sql: Vec<String>,
}

/// The proxy: point the application at [`PgCounter::url`].
#[derive(Debug, Clone)]
pub struct PgCounter {
    counted: Arc<Mutex<Counted>>,
}

impl PgCounter {
    /// Listens on loopback and forwards each connection to the server of `database_url`.
    pub async fn start(database_url: &str) -> (Self, String) {
        let mut url = url::Url::parse(database_url).expect("postgres URL");
        let upstream = format!(
            "{}:{}",
            url.host_str().expect("host"),
            url.port().unwrap_or(5432)
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let counted: Arc<Mutex<Counted>> = Arc::default();
        let shared = counted.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(&upstream).await.expect("postgres");
                tokio::spawn(relay(client, server, shared.clone()));
            }
        });
        url.set_host(Some("127.0.0.1")).expect("host");
        url.set_port(Some(addr.port())).expect("port");
        // The proxy reads plain messages.
        url.query_pairs_mut().append_pair("sslmode", "disable");
        (Self { counted }, url.to_string())
    }

    /// What was counted since the last call; starts counting afresh.
    pub fn take(&self) -> Counted {
        std::mem::take(&mut *self.counted.lock().expect("counted"))
    }
}

async fn relay(client: TcpStream, server: TcpStream, counted: Arc<Mutex<Counted>>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // The server's last transaction status (ReadyForQuery): in a transaction or not.
    let in_transaction = Arc::new(AtomicBool::new(false));
    let status = in_transaction.clone();
    let to_server = async move {
        let mut statements: HashMap<String, String> = HashMap::new();
        let mut portals: HashMap<String, String> = HashMap::new();
        let mut started = false;
        let mut executes_since_sync = 0;
        loop {
            let (kind, body) = if started {
                let Ok(kind) = client_read.read_u8().await else {
                    break;
                };
                let Ok(len) = client_read.read_u32().await else {
                    break;
                };
                let mut body = vec![0; len as usize - 4];
                if client_read.read_exact(&mut body).await.is_err() {
                    break;
                }
                (kind, body)
            } else {
                // The startup message has no type byte.
                let Ok(len) = client_read.read_u32().await else {
                    break;
                };
                let mut body = vec![0; len as usize - 4];
                if client_read.read_exact(&mut body).await.is_err() {
                    break;
                }
                started = true;
                (0, body)
            };
            // Counted before it is passed on: the server's answer, and so the test's next
            // step, can only come after.
            let text = |bytes: &[u8]| {
                let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
                (String::from_utf8_lossy(&bytes[..end]).into_owned(), end + 1)
            };
            {
                let mut c = counted.lock().expect("counted");
                match kind {
                    b'Q' => {
                        let (sql, _) = text(&body);
                        c.round_trips += 1;
                        executed(&mut c, &sql, in_transaction.load(Ordering::SeqCst));
                    }
                    b'P' => {
                        let (name, at) = text(&body);
                        let (sql, _) = text(&body[at..]);
                        statements.insert(name, sql);
                    }
                    b'B' => {
                        let (portal, at) = text(&body);
                        let (statement, _) = text(&body[at..]);
                        let sql = statements.get(&statement).cloned().unwrap_or_default();
                        portals.insert(portal, sql);
                    }
                    b'E' => {
                        let (portal, _) = text(&body);
                        let sql = portals.get(&portal).cloned().unwrap_or_default();
                        executed(&mut c, &sql, in_transaction.load(Ordering::SeqCst));
                        executes_since_sync += 1;
                    }
                    b'S' if executes_since_sync > 0 => {
                        c.round_trips += 1;
                        executes_since_sync = 0;
                    }
                    b'S' => c.prepares += 1,
                    _ => {}
                }
            }
            let mut frame = Vec::with_capacity(body.len() + 5);
            if kind != 0 {
                frame.push(kind);
            }
            frame.extend_from_slice(
                &u32::try_from(body.len() + 4)
                    .unwrap_or(u32::MAX)
                    .to_be_bytes(),
            );
            frame.extend_from_slice(&body);
            if server_write.write_all(&frame).await.is_err() {
                break;
            }
        }
    };
    let to_client = async move {
        while let Ok(kind) = server_read.read_u8().await {
            let Ok(len) = server_read.read_u32().await else {
                break;
            };
            let mut body = vec![0; len as usize - 4];
            if server_read.read_exact(&mut body).await.is_err() {
                break;
            }
            if kind == b'Z' {
                status.store(body.first() != Some(&b'I'), Ordering::SeqCst);
            }
            let mut frame = Vec::with_capacity(len as usize + 1);
            frame.push(kind);
            frame.extend_from_slice(&len.to_be_bytes());
            frame.extend_from_slice(&body);
            if client_write.write_all(&frame).await.is_err() {
                break;
            }
        }
    };
    tokio::join!(to_server, to_client);
}

/// Counts one executed statement.
fn executed(c: &mut Counted, sql: &str, in_transaction: bool) {
    let head = sql.trim_start().to_ascii_uppercase();
    c.statements += 1;
    let write = ["INSERT", "UPDATE", "DELETE", "WITH"]
        .iter()
        .any(|w| head.starts_with(w));
    if head.starts_with("COMMIT") || (write && !in_transaction) {
        c.commits += 1;
    }
    c.sql.push(sql.chars().take(90).collect());
}
