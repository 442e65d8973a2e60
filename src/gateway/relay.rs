//! What an upstream sends while a call runs, passed on to the client that made the call as it
//! arrives: progress (MCP `notifications/progress`, under the client's own progress token), log
//! messages, and word that its tools, prompts or resources changed (`list_changed`; one that
//! arrives between calls goes out with the person's next call). The client's answer then
//! becomes an event stream (the Streamable HTTP transport's SSE response) instead of one JSON
//! body. Log messages and list changes name no call, so they are passed on only from a session
//! that is one person's.
//!
//! The upstream's messages are read in order at the transport ([`Tap`]), before the rmcp client
//! sees them, and each call's go into a queue of its own: the call passes on everything queued
//! before its result, so no progress ever follows the result it belongs to. Each upstream call
//! carries a progress token of the upstream session's own (the rmcp client numbers them), so
//! two callers' tokens never meet; it is mapped back to the client's here.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use rmcp::model::{JsonRpcMessage, JsonRpcNotification, ProgressToken, ServerNotification};
use rmcp::service::{Peer, RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use rmcp::{RoleClient, RoleServer};
use tokio::sync::mpsc;

/// Messages queued per call before the oldest are dropped (an upstream that floods progress
/// faster than the client reads it).
const QUEUE: usize = 256;
/// Progress kept for calls not registered yet (the moment between sending a call and
/// registering it).
const UNCLAIMED: usize = 64;

/// Where one call's notifications go.
#[derive(Debug, Clone)]
pub struct Downstream {
    /// The client's side of the request.
    pub peer: Peer<RoleServer>,
    /// The client's progress token, if it asked for progress.
    pub progress_token: Option<ProgressToken>,
}

impl Downstream {
    /// Passes one upstream notification on to the client.
    pub async fn forward(&self, notification: ServerNotification) {
        match notification {
            ServerNotification::ProgressNotification(n) => {
                if let Some(token) = &self.progress_token {
                    let mut params = n.params;
                    params.progress_token = token.clone();
                    let _ = self.peer.notify_progress(params).await;
                }
            }
            // Deprecated in the 2026-07-28 protocol; the 2025 servers and clients this relays
            // between still use it.
            #[allow(deprecated)]
            ServerNotification::LoggingMessageNotification(n) => {
                let _ = self.peer.notify_logging_message(n.params).await;
            }
            ServerNotification::ToolListChangedNotification(_) => {
                let _ = self.peer.notify_tool_list_changed().await;
            }
            ServerNotification::PromptListChangedNotification(_) => {
                let _ = self.peer.notify_prompt_list_changed().await;
            }
            ServerNotification::ResourceListChangedNotification(_) => {
                let _ = self.peer.notify_resource_list_changed().await;
            }
            _ => {}
        }
    }
}

#[derive(Debug, Default)]
struct Calls {
    by_token: HashMap<ProgressToken, mpsc::Sender<ServerNotification>>,
    unclaimed: VecDeque<(ProgressToken, ServerNotification)>,
    /// List changes that arrived with no call in flight (at most one of each kind).
    changes: Vec<ServerNotification>,
}

/// Whether `n` says a list changed.
fn is_list_change(n: &ServerNotification) -> bool {
    matches!(
        n,
        ServerNotification::ToolListChangedNotification(_)
            | ServerNotification::PromptListChangedNotification(_)
            | ServerNotification::ResourceListChangedNotification(_)
    )
}

/// The calls in flight on one upstream session, by the upstream progress token.
#[derive(Debug, Clone)]
pub struct Relay {
    calls: Arc<Mutex<Calls>>,
    /// Whether the session is one person's: only then do log messages and list changes (which
    /// name no call) go to the calls in flight.
    personal: bool,
}

/// A call's place in the relay; removed when dropped, however the call ends.
#[derive(Debug)]
pub struct Registered {
    relay: Relay,
    token: ProgressToken,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.relay.calls().by_token.remove(&self.token);
    }
}

impl Relay {
    /// A relay for one session; `personal`: whether it is one person's, so that its log
    /// messages and list changes may go to whichever of their calls is in flight.
    pub fn new(personal: bool) -> Self {
        Self {
            calls: Arc::default(),
            personal,
        }
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues what arrives under `token` (and what already arrived) until the guard drops.
    pub fn register(
        &self,
        token: ProgressToken,
    ) -> (Registered, mpsc::Receiver<ServerNotification>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut calls = self.calls();
        let early: Vec<ServerNotification> = {
            let mut kept = VecDeque::new();
            let mut early = Vec::new();
            for (t, n) in calls.unclaimed.drain(..) {
                if t == token {
                    early.push(n);
                } else {
                    kept.push_back((t, n));
                }
            }
            calls.unclaimed = kept;
            early
        };
        for n in early.into_iter().chain(calls.changes.drain(..)) {
            let _ = tx.try_send(n);
        }
        calls.by_token.insert(token.clone(), tx);
        drop(calls);
        (
            Registered {
                relay: self.clone(),
                token,
            },
            rx,
        )
    }

    /// Sorts one message from the upstream, in the order it arrived.
    fn sort(&self, message: &RxJsonRpcMessage<RoleClient>) {
        let JsonRpcMessage::Notification(JsonRpcNotification { notification, .. }) = message else {
            return;
        };
        let mut calls = self.calls();
        match notification {
            ServerNotification::ProgressNotification(n) => {
                let token = &n.params.progress_token;
                match calls.by_token.get(token) {
                    Some(tx) => {
                        let _ = tx.try_send(notification.clone());
                    }
                    None => {
                        if calls.unclaimed.len() >= UNCLAIMED {
                            calls.unclaimed.pop_front();
                        }
                        calls
                            .unclaimed
                            .push_back((token.clone(), notification.clone()));
                    }
                }
            }
            // A log message names no request: every call in flight on the session gets it,
            // when the session is one person's.
            ServerNotification::LoggingMessageNotification(_) if self.personal => {
                for tx in calls.by_token.values() {
                    let _ = tx.try_send(notification.clone());
                }
            }
            // A list change: to the calls in flight, or else the next one.
            n if self.personal && is_list_change(n) => {
                if calls.by_token.is_empty() {
                    // One pending change of a kind says all there is to say.
                    let kind = std::mem::discriminant(n);
                    if !calls
                        .changes
                        .iter()
                        .any(|c| std::mem::discriminant(c) == kind)
                    {
                        calls.changes.push(n.clone());
                    }
                } else {
                    for tx in calls.by_token.values() {
                        let _ = tx.try_send(n.clone());
                    }
                }
            }
            _ => {}
        }
    }
}

/// An upstream transport whose incoming messages the relay sees first, in order.
pub struct Tap<T> {
    inner: T,
    relay: Relay,
}

impl<T> std::fmt::Debug for Tap<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap").field("relay", &self.relay).finish()
    }
}

impl<T> Tap<T> {
    /// `inner`, observed by `relay`.
    pub fn new(inner: T, relay: Relay) -> Self {
        Self { inner, relay }
    }
}

impl<T: Transport<RoleClient>> Transport<RoleClient> for Tap<T> {
    type Error = T::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.inner.send(item)
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        let message = self.inner.receive().await?;
        self.relay.sort(&message);
        Some(message)
    }

    fn close(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.inner.close()
    }
}
