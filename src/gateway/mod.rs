//! Gateway mode: the operator's own MCP servers (`[[upstreams]]`) behind `/mcp`, each tool under
//! `<upstream>__<tool>`. Gatehouse is the only authorization the client deals with; to the
//! upstream it is a client of its own, with a session per caller (never shared between people)
//! and the caller's identity presented as the upstream is configured to receive it
//! ([`identity`]). Which tools a caller may see and call is decided in [`crate::mcp::access`],
//! the same way for both.
//!
//! A stdio upstream is a local program started on first use, one per person by default, with a
//! cleared environment, in a process group of its own; it ends when idle, when the cap on
//! processes needs its place, or when Gatehouse stops. Every start and exit is logged with the
//! person it belongs to.

pub mod cancel;
mod content;
pub mod http;
pub mod identity;
pub mod names;
pub mod relay;
mod uri_template;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResponse, CancelledNotificationParam,
    ClientCapabilities, ClientConfig, ClientRequest, ErrorCode, Implementation, ProtocolVersion,
    RequestMetaObject, ServerResult, Tool,
};
use rmcp::service::{
    ClientLifecycleMode, ClientServiceExt, PeerRequestOptions, RunningService, ServiceError,
};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ErrorData, RoleClient};
use serde::Serialize;
use tokio::io::AsyncBufReadExt;

use crate::clock::Clock;
use crate::config::{Config, Isolation, Upstream, UpstreamKind};
use crate::keys::KeyStore;

pub use content::ResourceRef;
pub use identity::Caller;
use identity::{Identity, Minter};
use names::Catalog;
pub use relay::Downstream;
use relay::{Relay, Tap};

/// JSON-RPC error code of a failure to reach an upstream (the implementation-defined server
/// error range of JSON-RPC 2.0, §5.1).
pub const UPSTREAM_UNAVAILABLE: i32 = -32001;

/// The gateway: every configured upstream.
pub struct Gateway {
    links: Vec<Arc<Link>>,
    max_name_len: usize,
    /// Which upstream serves each resource URI, as last listed.
    resources: RwLock<content::Owners>,
    /// The upstreams' resource templates, as last listed.
    templates: RwLock<Vec<content::TemplateRef>>,
    /// Upstream calls in flight, for the client's `notifications/cancelled`.
    pub in_flight: cancel::InFlight,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("upstreams", &self.links.len())
            .finish()
    }
}

/// An upstream tool call's outcome besides the answer, for the audit log.
#[derive(Debug, Clone, Serialize)]
pub struct Routed {
    /// The upstream.
    pub upstream: String,
    /// The tool's name at the upstream.
    pub tool: String,
}

/// What the operator sees of one upstream.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamStatus {
    /// Its name.
    pub name: String,
    /// `streamable_http` or `stdio`.
    pub transport: &'static str,
    /// Live sessions (for stdio: processes).
    pub sessions: Vec<SessionStatus>,
    /// Tools known, under their advertised names.
    pub tools: usize,
    /// Tool names two tools would share (not served).
    pub collisions: Vec<String>,
    /// The protocol era it speaks, once known.
    pub protocol: Option<&'static str>,
}

/// One live upstream session.
#[derive(Debug, Clone, Serialize)]
pub struct SessionStatus {
    /// Whose it is.
    pub subject: String,
    /// The process, for stdio.
    pub pid: Option<u32>,
    /// Seconds since it started.
    pub age_seconds: u64,
    /// Seconds since its last use.
    pub idle_seconds: u64,
}

impl Gateway {
    /// The upstreams of `config`. Nothing is contacted until a caller needs it; [`Self::probe`]
    /// checks them all.
    pub fn new(
        config: &Config,
        keys: Arc<KeyStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, reqwest::Error> {
        // An upstream's redirect is not followed: the identity it carries is for that URL.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .build()?;
        let minter = Minter {
            issuer: config.issuer.as_str().to_owned(),
            keys,
            clock,
        };
        let started = Instant::now();
        let links = config
            .upstreams
            .iter()
            .map(|u| {
                Arc::new(Link {
                    upstream: u.clone(),
                    minter: minter.clone(),
                    http: http.clone(),
                    catalog: RwLock::new(Catalog::default()),
                    era: Mutex::new(None),
                    sessions: Mutex::new(HashMap::new()),
                    epoch: started,
                    max_name_len: config.mcp.max_tool_name_len,
                })
            })
            .collect();
        Ok(Self {
            links,
            max_name_len: config.mcp.max_tool_name_len,
            resources: RwLock::default(),
            templates: RwLock::default(),
            in_flight: cancel::InFlight::default(),
        })
    }

    /// Whether any upstream is configured.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// Every upstream's tools that `caller` gets to see from it, under advertised names. An
    /// upstream that cannot be reached is left out of the list (and logged); the others are
    /// listed.
    pub async fn list_tools(&self, caller: &Caller) -> Vec<Tool> {
        let lists = futures::future::join_all(self.links.iter().map(|l| l.list_tools(caller)));
        let mut all = Vec::new();
        for (link, list) in self.links.iter().zip(lists.await) {
            match list {
                Ok(tools) => all.extend(tools),
                Err(e) => {
                    tracing::warn!(upstream = %link.upstream.name, error = %e.message, "upstream tools not listed")
                }
            }
        }
        all
    }

    /// The upstream whose prefix `advertised` carries, if any.
    pub fn owns(&self, advertised: &str) -> bool {
        self.link_of(advertised).is_some()
    }

    /// Whether the operator asked for the arguments of calls to `advertised` to be audited
    /// (`audit_arguments` of its upstream).
    pub fn audits_arguments(&self, advertised: &str) -> bool {
        self.link_of(advertised)
            .is_some_and(|l| l.upstream.audit_arguments)
    }

    fn link_of(&self, advertised: &str) -> Option<&Arc<Link>> {
        let (prefix, _) = advertised.split_once(crate::config::NAME_SEPARATOR)?;
        self.links.iter().find(|l| l.upstream.name == prefix)
    }

    /// Calls `advertised` at its upstream for `caller`. `Ok(None)`: no such tool (the caller
    /// is told what it is told of any unknown tool). The upstream's own errors pass through
    /// unchanged; failing to reach it is an error naming it.
    /// What the upstream sends meanwhile (progress, log messages) goes to `downstream` as it
    /// arrives; when `cancelled` completes (the client went away or cancelled the call), the
    /// upstream is told to stop.
    pub async fn call_tool(
        &self,
        caller: &Caller,
        mut request: CallToolRequestParams,
        downstream: Downstream,
        cancelled: impl std::future::Future<Output = ()>,
    ) -> Result<Option<(CallToolResponse, Routed)>, ErrorData> {
        let Some(link) = self.link_of(&request.name) else {
            return Ok(None);
        };
        let Some(tool) = link.resolve(caller, Named::Tools, &request.name).await? else {
            return Ok(None);
        };
        let routed = Routed {
            upstream: link.upstream.name.clone(),
            tool: tool.clone(),
        };
        request.name = tool.into();
        request.meta = hop_meta(request.meta);
        link.call(caller, request, downstream, cancelled)
            .await
            .map(|r| Some((r, routed)))
    }

    /// Each upstream, its sessions and its tools.
    pub fn status(&self) -> Vec<UpstreamStatus> {
        self.links.iter().map(|l| l.status()).collect()
    }

    /// Contacts every upstream as `caller` (the operator's check): its tools, under their
    /// advertised names, and the names two tools would share. The session it opens is ended.
    pub async fn probe(&self, caller: &Caller) -> Vec<(String, Result<Vec<String>, String>)> {
        let mut out = Vec::new();
        for link in &self.links {
            let result = match link.list_tools(caller).await {
                Ok(tools) => {
                    let mut names: Vec<String> =
                        tools.into_iter().map(|t| t.name.into_owned()).collect();
                    names.sort();
                    Ok(names)
                }
                Err(e) => Err(e.message.into_owned()),
            };
            for (name, tools) in &link.catalog().collisions {
                tracing::error!(upstream = %link.upstream.name, advertised = %name, tools = ?tools, "upstream tools would share one name; none of them is served");
            }
            // The check's own session (a process, for stdio) is not kept for anyone.
            if let Some(slot) = link.sessions().remove(&link.key(caller)) {
                slot.end("the check is done");
            }
            out.push((link.upstream.name.clone(), result));
        }
        out
    }

    /// How often [`Self::end_idle`] runs: every 10 s, or a quarter of the shortest idle
    /// timeout, so that a session ends within a quarter of its timeout after it is due.
    pub fn sweep_every(&self) -> Duration {
        self.links
            .iter()
            .map(|l| l.upstream.idle_timeout / 4)
            .fold(IDLE_SWEEP, Duration::min)
    }

    /// Ends sessions idle past their upstream's timeout (a stdio process with it).
    pub fn end_idle(&self) {
        for link in &self.links {
            link.end_idle();
        }
    }

    /// Ends every session, as the server stops. Each process group gets SIGTERM at once (the
    /// sessions' own shutdown may not get to run while the runtime stops), so no process
    /// outlives Gatehouse.
    pub fn end_all(&self) {
        for link in &self.links {
            let all: Vec<_> = link.sessions().drain().collect();
            for (_, slot) in all {
                let pid = *slot.pid.lock().unwrap_or_else(PoisonError::into_inner);
                slot.end("gatehouse stopping");
                if let Some(group) = pid.and_then(|p| i32::try_from(p).ok()) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(group),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
            }
        }
    }
}

/// A request's `_meta` for the upstream hop: the protocol's reserved keys (a prefix with a
/// `modelcontextprotocol` or `mcp` label: the client's version, identity, capabilities, log
/// level) and the progress token belong to the client's hop; the upstream hop has its own.
pub(crate) fn hop_meta(meta: Option<RequestMetaObject>) -> Option<RequestMetaObject> {
    let mut meta = meta?;
    meta.0.0.retain(|key, _| {
        let reserved = key.split_once('/').is_some_and(|(prefix, _)| {
            prefix
                .split('.')
                .any(|label| label == "modelcontextprotocol" || label == "mcp")
        });
        !reserved && key != "progressToken"
    });
    (!meta.0.0.is_empty()).then_some(meta)
}

/// The MCP protocol era of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Era {
    /// 2026-07-28: `server/discover`, no session.
    Modern,
    /// 2025 revisions: `initialize`, a session.
    Legacy,
}

impl Era {
    fn as_str(self) -> &'static str {
        match self {
            Self::Modern => "2026-07-28 (stateless)",
            Self::Legacy => "2025 (initialize, session)",
        }
    }
}

/// A session's key: who it is for. Never shared between people (nor, for HTTP upstreams,
/// between applications or scopes, since the upstream sees those in each token).
type SessionKey = Caller;

/// One upstream at run time.
struct Link {
    upstream: Upstream,
    minter: Minter,
    http: reqwest::Client,
    catalog: RwLock<Catalog>,
    /// The protocol era the upstream speaks, once a session found out.
    era: Mutex<Option<Era>>,
    sessions: Mutex<HashMap<SessionKey, Arc<Slot>>>,
    epoch: Instant,
    max_name_len: usize,
}

/// A session's place: made at once, connected by its first user (others wait for it).
struct Slot {
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    /// Milliseconds since the gateway started, at the last use.
    last_used: AtomicU64,
    /// Requests using the session now: a busy session is neither evicted nor ended as idle.
    in_flight: AtomicUsize,
    subject: String,
    started: Instant,
    pid: Mutex<Option<u32>>,
}

/// A session in use; when dropped, the session counts as used now and is no longer busy.
struct InUse {
    slot: Arc<Slot>,
    epoch: Instant,
}

impl Drop for InUse {
    fn drop(&mut self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.slot.last_used.store(now, Ordering::Relaxed);
        self.slot.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What one session was told by its upstream's last listing, and when.
type Listed = Mutex<Option<(Catalog, Instant)>>;

/// Which of a session's listings a name is looked up in.
#[derive(Debug, Clone, Copy)]
enum Named {
    Tools,
    Prompts,
}

struct Session {
    service: RunningService<RoleClient, ClientConfig>,
    relay: Relay,
    /// The tools and prompts this caller's session listed: a name is resolved against what
    /// this caller was shown, never against another caller's listing.
    tools: Listed,
    prompts: Listed,
    /// When this session last listed the upstream's resources.
    resources_listed: Mutex<Option<Instant>>,
}

impl Session {
    fn new(service: RunningService<RoleClient, ClientConfig>, relay: Relay) -> Self {
        Self {
            service,
            relay,
            tools: Mutex::new(None),
            prompts: Mutex::new(None),
            resources_listed: Mutex::new(None),
        }
    }

    fn listed(&self, kind: Named) -> &Listed {
        match kind {
            Named::Tools => &self.tools,
            Named::Prompts => &self.prompts,
        }
    }

    /// The upstream's name of `advertised` in `listed`, and whether a new listing may be asked
    /// for (none yet, or the last is older than [`RELIST_AFTER`]).
    fn lookup(listed: &Listed, advertised: &str) -> (Option<String>, bool) {
        let guard = listed.lock().unwrap_or_else(PoisonError::into_inner);
        match guard.as_ref() {
            Some((catalog, at)) => (
                catalog.names.get(advertised).cloned(),
                at.elapsed() >= RELIST_AFTER,
            ),
            None => (None, true),
        }
    }

    fn remember(listed: &Listed, catalog: Catalog) {
        *listed.lock().unwrap_or_else(PoisonError::into_inner) = Some((catalog, Instant::now()));
    }
}

/// An unknown name makes a session list its upstream again at most this often, so a flood of
/// made-up names costs no flood of listings.
const RELIST_AFTER: Duration = Duration::from_secs(5);

/// Most sessions one person (subject) holds with one upstream; their least recently used idle
/// one gives its place to a new one.
const SESSIONS_PER_SUBJECT: usize = 16;

impl Slot {
    /// Ends the session: cancels the service, which stops a process (its group with it).
    fn end(&self, why: &str) {
        let pid = *self.pid.lock().unwrap_or_else(PoisonError::into_inner);
        if let Ok(mut session) = self.session.try_lock() {
            if let Some(s) = session.take() {
                if pid.is_some() {
                    tracing::info!(subject = %self.subject, pid = ?pid, reason = why, "upstream process stopping");
                }
                s.service.cancellation_token().cancel();
            }
        }
    }
}

impl Link {
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<SessionKey, Arc<Slot>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn catalog(&self) -> Catalog {
        self.catalog
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The answer for a call the upstream could not serve: the upstream's name and `why` (a
    /// fixed phrase), never the underlying error, which can name internal hosts, paths or
    /// commands; that goes to the log.
    fn unavailable(&self, why: &str, detail: impl std::fmt::Display) -> ErrorData {
        tracing::warn!(upstream = %self.upstream.name, error = %detail, "{why}");
        ErrorData::new(
            ErrorCode(UPSTREAM_UNAVAILABLE),
            format!("upstream {:?} is unavailable: {why}", self.upstream.name),
            Some(serde_json::json!({ "upstream": self.upstream.name })),
        )
    }

    /// The session key of `caller`: a shared process has one for everyone, a per-user process
    /// one per person; an HTTP session is per person, application and scopes.
    fn key(&self, caller: &Caller) -> SessionKey {
        match &self.upstream.kind {
            UpstreamKind::Stdio {
                isolation: Isolation::Shared,
                ..
            } => Caller {
                subject: String::new(),
                username: None,
                roles: Vec::new(),
                client_id: String::new(),
                scope: String::new(),
            },
            UpstreamKind::Stdio { .. } => Caller {
                client_id: String::new(),
                scope: String::new(),
                ..caller.clone()
            },
            UpstreamKind::Http { .. } => caller.clone(),
        }
    }

    fn cap(&self) -> usize {
        match &self.upstream.kind {
            UpstreamKind::Stdio { max_processes, .. } => *max_processes,
            UpstreamKind::Http { .. } => self.upstream.max_sessions,
        }
    }

    /// The live session of `caller`, connecting one if needed.
    async fn session(&self, caller: &Caller) -> Result<(InUse, Arc<Session>), ErrorData> {
        let key = self.key(caller);
        let slot = {
            let mut sessions = self.sessions();
            let slot = match sessions.get(&key) {
                Some(slot) => slot.clone(),
                None => {
                    self.make_room(&mut sessions, &key.subject)?;
                    let slot = Arc::new(Slot {
                        session: tokio::sync::Mutex::new(None),
                        last_used: AtomicU64::new(self.now_ms()),
                        in_flight: AtomicUsize::new(0),
                        subject: key.subject.clone(),
                        started: Instant::now(),
                        pid: Mutex::new(None),
                    });
                    sessions.insert(key.clone(), slot.clone());
                    slot
                }
            };
            // Busy from here (under the map's lock, so no eviction can take it meanwhile).
            slot.in_flight.fetch_add(1, Ordering::Relaxed);
            slot
        };
        let in_use = InUse {
            slot: slot.clone(),
            epoch: self.epoch,
        };
        slot.last_used.store(self.now_ms(), Ordering::Relaxed);
        let mut current = slot.session.lock().await;
        if let Some(s) = current.as_ref() {
            if !s.service.is_closed() {
                let s = s.clone();
                drop(current);
                return Ok((in_use, s));
            }
            tracing::warn!(upstream = %self.upstream.name, subject = %slot.subject, "upstream session ended; starting a new one");
        }
        // A shared process's log messages name no caller: they go to nobody.
        let relay = Relay::new(!matches!(
            self.upstream.kind,
            UpstreamKind::Stdio {
                isolation: Isolation::Shared,
                ..
            }
        ));
        let connecting = self.connect(caller, &slot, relay.clone());
        let service = match tokio::time::timeout(self.upstream.connect_timeout, connecting).await {
            Ok(Ok(service)) => service,
            Ok(Err(e)) => {
                *current = None;
                return Err(e);
            }
            Err(_) => {
                *current = None;
                return Err(self.unavailable(
                    "no answer to initialize in time",
                    format_args!("{} s", self.upstream.connect_timeout.as_secs()),
                ));
            }
        };
        let session = Arc::new(Session::new(service, relay));
        *current = Some(session.clone());
        drop(current);
        Ok((in_use, session))
    }

    /// Makes room for a new session of `subject`: past the caller's own quota, their least
    /// recently used idle session ends; past the upstream's cap, anyone's. A busy session is
    /// never ended for room; when every candidate is busy, the new one is refused.
    fn make_room(
        &self,
        sessions: &mut HashMap<SessionKey, Arc<Slot>>,
        subject: &str,
    ) -> Result<(), ErrorData> {
        let lru_idle = |sessions: &HashMap<SessionKey, Arc<Slot>>, mine: bool| {
            sessions
                .iter()
                .filter(|(k, s)| {
                    (!mine || k.subject == subject) && s.in_flight.load(Ordering::Relaxed) == 0
                })
                .min_by_key(|(_, s)| s.last_used.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone())
        };
        let held = sessions.keys().filter(|k| k.subject == subject).count();
        if held >= SESSIONS_PER_SUBJECT {
            let Some(key) = lru_idle(sessions, true) else {
                return Err(self.unavailable("too many sessions of this caller are busy", subject));
            };
            if let Some(slot) = sessions.remove(&key) {
                slot.end("the caller's session quota needed its place");
            }
        }
        if sessions.len() >= self.cap() {
            let Some(key) = lru_idle(sessions, false) else {
                return Err(self.unavailable("every session is busy", self.cap()));
            };
            if let Some(slot) = sessions.remove(&key) {
                slot.end("the upstream's session cap needed its place");
            }
        }
        Ok(())
    }

    /// After a failure of the transport (a process that died, a connection gone), the session
    /// is not used again: the next call starts a new one. A JSON-RPC error of the upstream's
    /// own leaves it as it is.
    async fn failed_in(&self, slot: &Slot, session: &Arc<Session>, e: ServiceError) -> ErrorData {
        if matches!(e, ServiceError::McpError(_)) {
            return self.failed(e);
        }
        let mut current = slot.session.lock().await;
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, session)) {
            tracing::warn!(upstream = %self.upstream.name, subject = %slot.subject, error = %e, "upstream session failed; the next call starts a new one");
            if let Some(s) = current.take() {
                s.service.cancellation_token().cancel();
            }
        }
        self.failed(e)
    }

    async fn connect(
        &self,
        caller: &Caller,
        slot: &Slot,
        relay: Relay,
    ) -> Result<RunningService<RoleClient, ClientConfig>, ErrorData> {
        match &self.upstream.kind {
            UpstreamKind::Http { url, identity } => {
                let identity = Identity::new(identity.clone(), caller.clone(), self.minter.clone());
                let client = http::UpstreamHttp::new(self.http.clone(), Arc::new(identity));
                let mut config = StreamableHttpClientTransportConfig::with_uri(url.as_str());
                config.reinit_on_expired_session = true;
                config.allow_stateless = true;
                let transport = StreamableHttpClientTransport::with_client(client, config);
                self.start(Tap::new(transport, relay)).await
            }
            UpstreamKind::Stdio {
                command,
                args,
                env,
                identity_env,
                ..
            } => {
                let mut cmd = tokio::process::Command::new(command);
                cmd.args(args).env_clear();
                // A program finds its interpreter and its caches with these two; nothing else
                // of Gatehouse's environment (its secrets among it) is passed on.
                for keep in ["PATH", "HOME"] {
                    if let Ok(v) = std::env::var(keep) {
                        cmd.env(keep, v);
                    }
                }
                cmd.envs(env);
                if *identity_env {
                    cmd.envs(identity::process_env(caller));
                }
                let mut wrapped = process_wrap::tokio::CommandWrap::from(cmd);
                wrapped.wrap(process_wrap::tokio::ProcessGroup::leader());
                let (process, stderr) = TokioChildProcess::builder(wrapped)
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|e| {
                        self.unavailable(
                            "its process did not start",
                            format_args!("{command:?}: {e}"),
                        )
                    })?;
                let pid = process.id();
                *slot.pid.lock().unwrap_or_else(PoisonError::into_inner) = pid;
                tracing::info!(upstream = %self.upstream.name, subject = %slot.subject, pid = ?pid, "upstream process started");
                if let Some(stderr) = stderr {
                    let name = self.upstream.name.clone();
                    let subject = slot.subject.clone();
                    tokio::spawn(async move {
                        let mut lines = tokio::io::BufReader::new(stderr).lines();
                        while let Ok(Some(line)) = lines.next_line().await {
                            tracing::debug!(upstream = %name, subject = %subject, pid = ?pid, "{line}");
                        }
                        tracing::info!(upstream = %name, subject = %subject, pid = ?pid, "upstream process exited");
                    });
                }
                self.start(Tap::new(process, relay)).await
            }
        }
    }

    /// Starts the MCP lifecycle on `transport`: the first session finds out which protocol era
    /// the upstream speaks (`server/discover` for 2026-07-28, else `initialize`), and later
    /// ones use that at once. A session that fails to start forgets it, so an upstream
    /// replaced by one of the other era is probed again.
    async fn start<T>(
        &self,
        transport: T,
    ) -> Result<RunningService<RoleClient, ClientConfig>, ErrorData>
    where
        T: rmcp::transport::Transport<RoleClient> + 'static,
    {
        let known = *self.era.lock().unwrap_or_else(PoisonError::into_inner);
        let modern = || vec![ProtocolVersion::V_2026_07_28];
        let lifecycle = match known {
            None => ClientLifecycleMode::Auto {
                preferred_versions: modern(),
                legacy_version: None,
            },
            Some(Era::Modern) => ClientLifecycleMode::Discover {
                preferred_versions: modern(),
            },
            Some(Era::Legacy) => ClientLifecycleMode::Initialize,
        };
        // Who Gatehouse is to the upstream; `initialize` asks for the newest 2025 revision.
        let us = ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("gatehouse", env!("CARGO_PKG_VERSION")),
        )
        .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE);
        match us.serve_with_lifecycle(transport, lifecycle).await {
            Ok(service) => {
                let era = match service.peer().peer_info() {
                    Some(info) if !info.protocol_version.has_initialize() => Era::Modern,
                    _ => Era::Legacy,
                };
                if known != Some(era) {
                    tracing::info!(upstream = %self.upstream.name, protocol = era.as_str(), "upstream protocol detected");
                }
                *self.era.lock().unwrap_or_else(PoisonError::into_inner) = Some(era);
                Ok(service)
            }
            Err(e) => {
                *self.era.lock().unwrap_or_else(PoisonError::into_inner) = None;
                Err(self.unavailable("it did not start a session", e))
            }
        }
    }

    /// The upstream's tools `caller` gets from it, named as advertised; the catalog is
    /// renewed from the answer.
    async fn list_tools(&self, caller: &Caller) -> Result<Vec<Tool>, ErrorData> {
        let (in_use, session) = self.session(caller).await?;
        let listing = session.service.peer().list_all_tools();
        let tools = self
            .ask(&in_use, &session, "no list of tools in time", listing)
            .await?;
        let (catalog, shown) = Catalog::advertise(
            &self.upstream.name,
            &tools,
            |t| t.name.as_ref(),
            |t, name| t.name = name.into(),
            self.max_name_len,
        );
        Session::remember(&session.tools, catalog.clone());
        // The last listing, for the operator's view (`status`).
        *self.catalog.write().unwrap_or_else(PoisonError::into_inner) = catalog;
        Ok(shown)
    }

    /// The upstream's name of the tool or prompt `advertised` among those this caller's
    /// session was shown, listing them again first if it is not among them (at most every
    /// [`RELIST_AFTER`]).
    async fn resolve(
        &self,
        caller: &Caller,
        kind: Named,
        advertised: &str,
    ) -> Result<Option<String>, ErrorData> {
        let (in_use, session) = self.session(caller).await?;
        let (found, may_relist) = Session::lookup(session.listed(kind), advertised);
        drop(in_use);
        if found.is_some() || !may_relist {
            return Ok(found);
        }
        match kind {
            Named::Tools => self.list_tools(caller).await.map(drop)?,
            Named::Prompts => self.list_prompts(caller).await.map(drop)?,
        }
        let (_in_use, session) = self.session(caller).await?;
        Ok(Session::lookup(session.listed(kind), advertised).0)
    }

    /// Waits at most `call_timeout` for `request` on `session`: the upstream's own JSON-RPC
    /// error passes through, a failed transport retires the session, and no answer in time is
    /// `what`.
    async fn ask<T>(
        &self,
        in_use: &InUse,
        session: &Arc<Session>,
        what: &str,
        request: impl std::future::Future<Output = Result<T, ServiceError>>,
    ) -> Result<T, ErrorData> {
        match tokio::time::timeout(self.upstream.call_timeout, request).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(self.failed_in(&in_use.slot, session, e).await),
            Err(_) => Err(self.unavailable(what, "timeout")),
        }
    }

    async fn call(
        &self,
        caller: &Caller,
        request: CallToolRequestParams,
        downstream: Downstream,
        cancelled: impl std::future::Future<Output = ()>,
    ) -> Result<CallToolResponse, ErrorData> {
        let (slot, session) = self.session(caller).await?;
        let peer = session.service.peer().clone();
        let sent = peer
            .send_cancellable_request(
                ClientRequest::CallToolRequest(CallToolRequest::new(request)),
                PeerRequestOptions::no_options(),
            )
            .await;
        let handle = match sent {
            Ok(handle) => handle,
            Err(e) => return Err(self.failed_in(&slot.slot, &session, e).await),
        };
        let id = handle.id.clone();
        let (_registered, mut notifications) =
            session.relay.register(handle.progress_token.clone());
        let answer = async {
            match handle.await_response().await? {
                ServerResult::CallToolResult(r) => Ok(CallToolResponse::Complete(r)),
                ServerResult::InputRequiredResult(r) => Ok(CallToolResponse::InputRequired(r)),
                ServerResult::CreateTaskResult(r) => Ok(CallToolResponse::Task(r)),
                _ => Err(ServiceError::UnexpectedResponse),
            }
        };
        let answer = tokio::time::timeout(self.upstream.call_timeout, answer);
        tokio::pin!(answer, cancelled);
        let outcome = loop {
            tokio::select! {
                biased;
                Some(notification) = notifications.recv() => downstream.forward(notification).await,
                outcome = &mut answer => {
                    // What the upstream sent before its answer goes out before it.
                    while let Ok(notification) = notifications.try_recv() {
                        downstream.forward(notification).await;
                    }
                    break outcome;
                }
                () = &mut cancelled => {
                    // MCP cancellation: the upstream may stop working on it (an answer that
                    // still comes is dropped).
                    let _ = peer
                        .notify_cancelled(CancelledNotificationParam::new(
                            Some(id),
                            Some("the client cancelled the request".to_owned()),
                        ))
                        .await;
                    return Err(self.unavailable("the call was cancelled", "the client went away"));
                }
            }
        };
        match outcome {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(self.failed_in(&slot.slot, &session, e).await),
            Err(_) => {
                // Told to stop, as a client would be (MCP cancellation).
                let _ = peer
                    .notify_cancelled(CancelledNotificationParam::new(
                        Some(id),
                        Some("no answer in time".to_owned()),
                    ))
                    .await;
                Err(self.unavailable(
                    "no answer in time",
                    format_args!("{} s", self.upstream.call_timeout.as_secs()),
                ))
            }
        }
    }

    /// An upstream's JSON-RPC error passes through unchanged; anything else names the upstream.
    fn failed(&self, e: ServiceError) -> ErrorData {
        match e {
            ServiceError::McpError(error) => error,
            other => self.unavailable("the connection to it failed", other),
        }
    }

    fn end_idle(&self) {
        let idle_ms = u64::try_from(self.upstream.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        let now = self.now_ms();
        let idle: Vec<Arc<Slot>> = {
            let mut sessions = self.sessions();
            let keys: Vec<SessionKey> = sessions
                .iter()
                .filter(|(_, s)| {
                    s.in_flight.load(Ordering::Relaxed) == 0
                        && now.saturating_sub(s.last_used.load(Ordering::Relaxed)) > idle_ms
                })
                .map(|(k, _)| k.clone())
                .collect();
            keys.iter().filter_map(|k| sessions.remove(k)).collect()
        };
        for slot in idle {
            slot.end("idle");
        }
    }

    fn status(&self) -> UpstreamStatus {
        let now = self.now_ms();
        let mut sessions: Vec<SessionStatus> = self
            .sessions()
            .values()
            .map(|s| SessionStatus {
                subject: s.subject.clone(),
                pid: *s.pid.lock().unwrap_or_else(PoisonError::into_inner),
                age_seconds: s.started.elapsed().as_secs(),
                idle_seconds: now.saturating_sub(s.last_used.load(Ordering::Relaxed)) / 1000,
            })
            .collect();
        sessions.sort_by(|a, b| a.subject.cmp(&b.subject));
        let catalog = self.catalog();
        UpstreamStatus {
            name: self.upstream.name.clone(),
            transport: self.upstream.transport(),
            sessions,
            tools: catalog.names.len(),
            collisions: catalog.collisions.into_iter().map(|(n, _)| n).collect(),
            protocol: self
                .era
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .map(Era::as_str),
        }
    }
}

/// How often idle sessions are looked for, at most.
const IDLE_SWEEP: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocols_reserved_meta_keys_stay_on_the_clients_hop() {
        let mut meta = RequestMetaObject::new();
        for key in [
            "io.modelcontextprotocol/clientInfo",
            "io.modelcontextprotocol/logLevel",
            "mcp.dev/anything",
            "progressToken",
            "com.example/trace",
        ] {
            meta.0.0.insert(key.to_owned(), serde_json::json!(1));
        }
        let kept = hop_meta(Some(meta)).expect("one key left");
        let keys: Vec<&String> = kept.0.0.keys().collect();
        assert_eq!(keys, ["com.example/trace"]);
        assert!(hop_meta(Some(RequestMetaObject::new())).is_none());
    }
}
