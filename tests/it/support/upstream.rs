//! Upstream MCP servers for the gateway tests, on loopback: the reference server
//! `@modelcontextprotocol/server-everything` from npm (pinned in `tests/fixtures/upstream`,
//! installed by `tests/run`), and a recorder that keeps every request's headers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The reference server's entry point; the suite stops here, loudly, when it is not installed.
pub fn everything_js() -> String {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "tests/fixtures/upstream/node_modules/@modelcontextprotocol/server-everything/dist/index.js",
    ]
    .iter()
    .collect();
    assert!(
        path.exists(),
        "{} is missing: run tests/run (it installs the pinned npm fixtures), or `npm ci` in tests/fixtures/upstream",
        path.display()
    );
    path.display().to_string()
}

/// `server-everything` over Streamable HTTP on a free loopback port; stopped when dropped.
pub struct Everything {
    child: Child,
    /// Its MCP endpoint.
    pub url: String,
}

impl Everything {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let server = Self {
            child: Command::new("node")
                .arg(everything_js())
                .arg("streamableHttp")
                .env("PORT", port.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("node (installed by tests/run)"),
            url: format!("http://127.0.0.1:{port}/mcp"),
        };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server-everything did not listen on {port}");
    }
}

impl Drop for Everything {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An upstream that answers as a minimal MCP server (one tool) and keeps the headers of every
/// request it receives. It can be told to forget its sessions, as a restarted server does.
pub struct Recorder {
    pub url: String,
    pub seen: Arc<Mutex<Vec<HeaderMap>>>,
    state: Arc<RecorderState>,
}

#[derive(Default)]
struct RecorderState {
    seen: Arc<Mutex<Vec<HeaderMap>>>,
    /// Every JSON-RPC message received, in order.
    messages: Mutex<Vec<Value>>,
    /// Sessions given so far; only the newest is known, unless forgotten.
    sessions: std::sync::atomic::AtomicUsize,
    forgotten: std::sync::atomic::AtomicBool,
}

/// The session id the recorder gives first (`recorder-session-N` after that).
pub const RECORDER_SESSION: &str = "recorder-session-1";

impl Recorder {
    /// Forgets every session: the next request in one gets 404, as from a restarted server.
    pub fn forget_sessions(&self) {
        self.state
            .forgotten
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub async fn start() -> Self {
        let state = Arc::new(RecorderState::default());
        let seen = state.seen.clone();
        let app = axum::Router::new()
            .route("/mcp", axum::routing::post(record))
            .with_state(state.clone());
        let addr: SocketAddr = super::serve_on_loopback(app).await;
        Self {
            url: format!("http://{addr}/mcp"),
            seen,
            state,
        }
    }

    pub fn headers(&self) -> Vec<HeaderMap> {
        self.seen.lock().expect("lock").clone()
    }

    /// The JSON-RPC messages received so far.
    pub fn messages(&self) -> Vec<Value> {
        self.state.messages.lock().expect("lock").clone()
    }
}

async fn record(
    State(state): State<Arc<RecorderState>>,
    headers: HeaderMap,
    Json(message): Json<Value>,
) -> Response {
    use std::sync::atomic::Ordering;
    let session = headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    state.seen.lock().expect("lock").push(headers);
    state.messages.lock().expect("lock").push(message.clone());
    let id = message.get("id").cloned().unwrap_or(Value::Null);
    let method = message["method"].as_str().unwrap_or_default();
    if method == "initialize" {
        state.sessions.fetch_add(1, Ordering::SeqCst);
        state.forgotten.store(false, Ordering::SeqCst);
    } else if let Some(session) = session {
        let known = format!("recorder-session-{}", state.sessions.load(Ordering::SeqCst));
        if state.forgotten.load(Ordering::SeqCst) || session != known {
            return StatusCode::NOT_FOUND.into_response();
        }
    }
    let current = format!("recorder-session-{}", state.sessions.load(Ordering::SeqCst));
    let result = match method {
        "initialize" => json!({
            "protocolVersion": message["params"]["protocolVersion"],
            "capabilities": { "tools": {} },
            "serverInfo": { "name": "recorder", "version": "1" }
        }),
        "tools/list" => json!({ "tools": [
            { "name": "record", "description": "Records the call", "inputSchema": { "type": "object" } },
            { "name": "wait", "description": "Answers after 30 s", "inputSchema": { "type": "object" } },
            { "name": "flood", "description": "Streams an endless event", "inputSchema": { "type": "object" } }
        ] }),
        "tools/call" if message["params"]["name"] == "flood" => {
            // One event that never ends: 64 pieces of 1 MiB with no blank line, then the
            // stream stays open.
            let pieces = futures::StreamExt::map(futures::stream::iter(0..64), |i| {
                let mut piece = if i == 0 {
                    b"data: ".to_vec()
                } else {
                    Vec::new()
                };
                piece.resize(piece.len() + (1 << 20), b'x');
                Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(piece))
            });
            let pieces = futures::StreamExt::chain(pieces, futures::stream::pending());
            return (
                [
                    ("content-type", "text/event-stream"),
                    ("mcp-session-id", current.as_str()),
                ],
                axum::body::Body::from_stream(pieces),
            )
                .into_response();
        }
        "tools/call" if message["params"]["name"] == "wait" => {
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            json!({ "content": [{ "type": "text", "text": "waited" }] })
        }
        "tools/call" => json!({ "content": [{ "type": "text", "text": "recorded" }] }),
        m if m.starts_with("notifications/") => return StatusCode::ACCEPTED.into_response(),
        _ => {
            return Json(json!({ "jsonrpc": "2.0", "id": id, "error": { "code": -32601, "message": "no such method" } }))
                .into_response();
        }
    };
    (
        [("mcp-session-id", current)],
        Json(json!({ "jsonrpc": "2.0", "id": id, "result": result })),
    )
        .into_response()
}

/// An upstream on the 2026-07-28 protocol as well as the 2025 ones: an rmcp server (stateless,
/// `server/discover`), with one tool, `echo`. It keeps the JSON-RPC method of every request.
pub struct ModernEcho {
    pub url: String,
    pub methods: Arc<Mutex<Vec<String>>>,
}

#[derive(Debug, Clone)]
struct EchoServer {
    tool_router: rmcp::handler::server::router::tool::ToolRouter<EchoServer>,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct EchoArgs {
    message: String,
}

#[rmcp::tool_router]
impl EchoServer {
    #[rmcp::tool(description = "Echoes the message")]
    async fn echo(
        &self,
        rmcp::handler::server::wrapper::Parameters(args): rmcp::handler::server::wrapper::Parameters<EchoArgs>,
    ) -> rmcp::model::CallToolResult {
        rmcp::model::CallToolResult::success(vec![rmcp::model::ContentBlock::text(format!(
            "Echo: {}",
            args.message
        ))])
    }
}

#[rmcp::tool_handler(router = self.tool_router, name = "modern-echo")]
impl rmcp::ServerHandler for EchoServer {}

impl ModernEcho {
    pub async fn start() -> Self {
        use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
        use rmcp::transport::streamable_http_server::{
            StreamableHttpServerConfig, StreamableHttpService,
        };
        let mut config =
            StreamableHttpServerConfig::default().with_allowed_hosts(["127.0.0.1".to_owned()]);
        config.legacy_session_mode = false;
        config.json_response = true;
        let router = EchoServer::tool_router();
        let service = StreamableHttpService::new(
            move || {
                Ok(EchoServer {
                    tool_router: router.clone(),
                })
            },
            Arc::new(NeverSessionManager::default()),
            config,
        );
        let methods: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = methods.clone();
        let app =
            axum::Router::new()
                .route_service("/mcp", service)
                .layer(axum::middleware::from_fn(
                    move |request: axum::extract::Request, next: axum::middleware::Next| {
                        let seen = seen.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let bytes = axum::body::to_bytes(body, 1 << 20)
                                .await
                                .unwrap_or_default();
                            if let Ok(message) = serde_json::from_slice::<Value>(&bytes) {
                                if let Some(method) = message["method"].as_str() {
                                    seen.lock().expect("lock").push(method.to_owned());
                                }
                            }
                            next.run(axum::extract::Request::from_parts(
                                parts,
                                axum::body::Body::from(bytes),
                            ))
                            .await
                        }
                    },
                ));
        let addr: SocketAddr = super::serve_on_loopback(app).await;
        Self {
            url: format!("http://{addr}/mcp"),
            methods,
        }
    }
}
