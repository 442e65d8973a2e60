//! Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document): documents
//! served by a real HTTP server on loopback (allowed only through
//! `client_metadata.insecure_allow_loopback`, which exists for exactly this), and the SSRF
//! refusals, which send nothing anywhere.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::support::{TestApp, sqlite_url};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use gatehouse::clients::metadata::ClientMetadataError;
use gatehouse::domain::{ClientKind, TokenEndpointAuthMethod};
use gatehouse::oauth::clients::{ClientLookupError, resolve_client};
use gatehouse::state::AppState;
use serde_json::json;
use tempfile::TempDir;

#[derive(Clone, Default)]
struct DocServer {
    base: Arc<Mutex<String>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl DocServer {
    fn hits(&self, name: &str) -> usize {
        self.hits
            .lock()
            .expect("lock")
            .get(name)
            .copied()
            .unwrap_or(0)
    }
}

async fn document(State(server): State<DocServer>, Path(name): Path<String>) -> Response {
    let hit = {
        let mut hits = server.hits.lock().expect("lock");
        let n = hits.entry(name.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let base = server.base.lock().expect("lock").clone();
    let own_id = format!("{base}/{name}");
    let doc = |extra: serde_json::Value| {
        let mut d = json!({
            "client_id": own_id,
            "client_name": "Claude",
            "client_uri": "https://claude.ai",
            "redirect_uris": ["https://claude.ai/api/mcp/auth_callback"],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none"
        });
        for (k, v) in extra.as_object().expect("object") {
            d[k] = v.clone();
        }
        d
    };
    let json_response = |status: StatusCode, body: serde_json::Value, cache: &'static str| {
        let mut r = (status, axum::Json(body)).into_response();
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
        r
    };
    match name.as_str() {
        "ok.json" | "cached.json" => json_response(StatusCode::OK, doc(json!({})), "max-age=3600"),
        "nostore.json" => json_response(StatusCode::OK, doc(json!({})), "no-store"),
        "mismatch.json" => json_response(
            StatusCode::OK,
            doc(json!({ "client_id": format!("{base}/other.json") })),
            "max-age=60",
        ),
        "missing.json" => (StatusCode::NOT_FOUND, "not here").into_response(),
        "redirect.json" => (
            StatusCode::FOUND,
            [(header::LOCATION, format!("{base}/ok.json"))],
        )
            .into_response(),
        "big.json" => json_response(
            StatusCode::OK,
            doc(json!({ "padding": "x".repeat(6000) })),
            "max-age=60",
        ),
        "html.json" => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html")],
            "<html>login</html>",
        )
            .into_response(),
        "no-redirects.json" => json_response(
            StatusCode::OK,
            doc(json!({ "redirect_uris": [] })),
            "max-age=60",
        ),
        "chatgpt.json" => json_response(
            StatusCode::OK,
            doc(json!({
                "client_name": "ChatGPT",
                "redirect_uris": ["https://chatgpt.com/connector_platform_oauth_redirect"],
                "token_endpoint_auth_method": "private_key_jwt",
                "token_endpoint_auth_methods_supported": ["none", "private_key_jwt"],
                "jwks_uri": "https://chatgpt.com/oauth/jwks.json"
            })),
            "max-age=60",
        ),
        "pkjwt-only.json" => json_response(
            StatusCode::OK,
            doc(json!({ "token_endpoint_auth_method": "private_key_jwt" })),
            "max-age=60",
        ),
        "secret.json" => json_response(
            StatusCode::OK,
            doc(json!({ "token_endpoint_auth_method": "client_secret_basic" })),
            "max-age=60",
        ),
        "flaky.json" if hit == 1 => {
            (StatusCode::INTERNAL_SERVER_ERROR, "try later").into_response()
        }
        "flaky.json" => json_response(StatusCode::OK, doc(json!({})), "max-age=60"),
        "secret-and-none.json" => json_response(
            StatusCode::OK,
            doc(
                json!({ "token_endpoint_auth_method": "client_secret_post", "token_endpoint_auth_methods_supported": ["client_secret_post", "none"] }),
            ),
            "max-age=60",
        ),
        "bad-redirect.json" => json_response(
            StatusCode::OK,
            doc(json!({ "redirect_uris": ["javascript:alert(1)"] })),
            "max-age=60",
        ),
        _ => (StatusCode::NOT_FOUND, "unknown").into_response(),
    }
}

/// Resolves as the consent and login pages do (no per-IP budget).
async fn resolve(
    state: &AppState,
    client_id: &str,
) -> Result<gatehouse::domain::Client, ClientLookupError> {
    resolve_client(state, client_id, None).await
}

/// Starts the document server and an app that may fetch from loopback.
async fn setup() -> (TestApp, DocServer, String) {
    let server = DocServer::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    *server.base.lock().expect("lock") = base.clone();
    let router = Router::new()
        .route("/{name}", get(document))
        .with_state(server.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let dir = TempDir::new().expect("tempdir");
    let url = sqlite_url(&dir);
    let app = TestApp::with(dir, &url, |c| {
        c.client_metadata.insecure_allow_loopback = true
    })
    .await;
    (app, server, base)
}

fn metadata_error(
    result: Result<gatehouse::domain::Client, ClientLookupError>,
) -> ClientMetadataError {
    match result {
        Err(ClientLookupError::Metadata(e)) => e,
        other => panic!("expected a metadata error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_valid_document_names_a_public_client_with_its_redirect_uris() {
    let (app, server, base) = setup().await;
    let id = format!("{base}/ok.json");
    let client = resolve(&app.state, &id).await.expect("resolves");
    assert_eq!(client.id, id);
    assert_eq!(client.kind, ClientKind::MetadataDocument);
    assert_eq!(client.name.as_deref(), Some("Claude"));
    assert_eq!(client.auth_method, TokenEndpointAuthMethod::None);
    assert!(
        client
            .redirect_uri("https://claude.ai/api/mcp/auth_callback")
            .is_some()
    );
    assert!(client.redirect_uri("https://evil.example/cb").is_none());
    assert_eq!(server.hits("ok.json"), 1);
    // Metadata-document clients are fetched, not stored.
    assert!(app.state.store.client(&id).await.expect("store").is_none());
}

#[tokio::test]
async fn documents_are_cached_per_their_headers_and_failures_are_not() {
    let (app, server, base) = setup().await;
    for _ in 0..3 {
        resolve(&app.state, &format!("{base}/cached.json"))
            .await
            .expect("resolves");
    }
    assert_eq!(server.hits("cached.json"), 1, "max-age=3600 is honoured");
    // no-store still gets the 30 s floor, so a busy authorize page cannot hammer the client.
    for _ in 0..2 {
        resolve(&app.state, &format!("{base}/nostore.json"))
            .await
            .expect("resolves");
    }
    assert_eq!(server.hits("nostore.json"), 1);

    let flaky = format!("{base}/flaky.json");
    let first = metadata_error(resolve(&app.state, &flaky).await);
    assert_eq!(first, ClientMetadataError::Status(flaky.clone(), 500));
    resolve(&app.state, &flaky)
        .await
        .expect("the failure was not cached");
    assert_eq!(server.hits("flaky.json"), 2);
}

#[tokio::test]
async fn bad_documents_are_refused_with_a_reason() {
    let (app, _server, base) = setup().await;
    type Check = fn(&ClientMetadataError) -> bool;
    let cases: [(&str, Check); 10] = [
        (
            "secret-and-none.json",
            |e| matches!(e, ClientMetadataError::Invalid(_, why) if why.contains("shared secret")),
        ),
        (
            "mismatch.json",
            |e| matches!(e, ClientMetadataError::Invalid(_, why) if why.contains("differs from the URL")),
        ),
        ("missing.json", |e| {
            matches!(e, ClientMetadataError::Status(_, 404))
        }),
        ("redirect.json", |e| {
            matches!(e, ClientMetadataError::Status(_, 302))
        }),
        ("big.json", |e| {
            matches!(e, ClientMetadataError::TooLarge(_))
        }),
        (
            "html.json",
            |e| matches!(e, ClientMetadataError::Invalid(_, why) if why.contains("JSON")),
        ),
        (
            "no-redirects.json",
            |e| matches!(e, ClientMetadataError::Invalid(_, why) if why.contains("redirect_uris")),
        ),
        (
            "pkjwt-only.json",
            |e| matches!(e, ClientMetadataError::Invalid(_, why) if why.contains("private_key_jwt")),
        ),
        (
            "secret.json",
            |e| matches!(e, ClientMetadataError::Invalid(_, why) if why.contains("shared secret")),
        ),
        (
            "bad-redirect.json",
            |e| matches!(e, ClientMetadataError::Invalid(_, why) if why.contains("javascript:alert(1)")),
        ),
    ];
    for (name, check) in cases {
        let err = metadata_error(resolve(&app.state, &format!("{base}/{name}")).await);
        assert!(check(&err), "{name}: {err}");
    }
    let events = gatehouse::audit::read(&app.state.store, &Default::default(), None, 20)
        .await
        .expect("audit");
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event.kind == "client_metadata.refused")
            .count(),
        10
    );
}

/// ChatGPT's document prefers private_key_jwt and also supports none: negotiate none
/// (kentcdodds/kody#1905).
#[tokio::test]
async fn chatgpt_document_negotiates_none() {
    let (app, _server, base) = setup().await;
    let client = resolve(&app.state, &format!("{base}/chatgpt.json"))
        .await
        .expect("resolves");
    assert_eq!(client.auth_method, TokenEndpointAuthMethod::None);
    assert_eq!(client.name.as_deref(), Some("ChatGPT"));
}

/// RFC 6890 special-use addresses are never fetched: IP literals are refused before any
/// request, and names resolving to them are refused by the resolver itself.
#[tokio::test]
async fn documents_on_private_or_metadata_addresses_are_refused() {
    let app = TestApp::sqlite().await; // loopback not allowed
    for id in [
        "https://10.0.0.1/client.json",
        "https://169.254.169.254/latest/meta-data/client.json",
        "https://[fd00::1]/client.json",
        "https://127.0.0.1/client.json",
        "https://localhost/client.json",
    ] {
        let err = metadata_error(resolve(&app.state, id).await);
        assert_eq!(
            err,
            ClientMetadataError::ForbiddenAddress(id.to_owned()),
            "{id}"
        );
    }
    // Without the test switch, plain http is not a metadata URL at all.
    let err = resolve(&app.state, "http://127.0.0.1:9/client.json").await;
    assert!(matches!(err, Err(ClientLookupError::Unknown(_))), "{err:?}");
}

#[tokio::test]
async fn malformed_metadata_urls_are_not_fetched() {
    let app = TestApp::sqlite().await;
    for id in [
        "https://client.example.com",
        "https://client.example.com/",
        "https://client.example.com/a/../client.json",
        "https://client.example.com/client.json#frag",
        "https://user@client.example.com/client.json",
        // Dot segments in any spelling the URL parser resolves: the id must be canonical.
        "https://client.example.com/u/alice/%2e%2e/mallory/client.json",
        "https://client.example.com/u/alice/.%2E/mallory/client.json",
        "https://client.example.com/u/alice\\..\\mallory/client.json",
        "https://CLIENT.example.com/client.json",
    ] {
        let err = resolve(&app.state, id).await;
        assert!(
            matches!(err, Err(ClientLookupError::Unknown(_))),
            "{id}: {err:?}"
        );
    }
}

#[tokio::test]
async fn metadata_advertises_cimd_only_when_enabled() {
    let app = TestApp::sqlite().await;
    let doc = app
        .get("/.well-known/oauth-authorization-server")
        .await
        .json();
    assert_eq!(doc["client_id_metadata_document_supported"], true);
    let dir = TempDir::new().expect("tempdir");
    let url = sqlite_url(&dir);
    let off = TestApp::with(dir, &url, |c| c.client_metadata.enabled = false).await;
    let doc = off
        .get("/.well-known/oauth-authorization-server")
        .await
        .json();
    assert!(doc.get("client_id_metadata_document_supported").is_none());
    // With CIMD off, a URL client_id is just an unknown client.
    let err = resolve(
        &off.state,
        "https://claude.ai/oauth/mcp-oauth-client-metadata",
    )
    .await;
    assert!(matches!(err, Err(ClientLookupError::Unknown(_))), "{err:?}");
}

/// Fetching documents not yet cached spends from the requester's budget; a cached document
/// costs nothing; the browser is never told network details.
#[tokio::test]
async fn uncached_fetches_are_budgeted_per_address_and_errors_stay_generic() {
    let (app, _server, base) = setup().await;
    let ip = Some("198.51.100.7".parse().expect("ip"));
    resolve_client(&app.state, &format!("{base}/ok.json"), ip)
        .await
        .expect("first");
    for _ in 0..50 {
        resolve_client(&app.state, &format!("{base}/ok.json"), ip)
            .await
            .expect("cached: free");
    }
    let mut limited = false;
    for i in 0..25 {
        match resolve_client(&app.state, &format!("{base}/missing-{i}.json"), ip).await {
            Err(ClientLookupError::RateLimited(_)) => {
                limited = true;
                break;
            }
            Err(ClientLookupError::Metadata(e)) => {
                // The document's address is named; the status it got is not. (The address
                // itself is left out of the check: its port may well contain "404".)
                let message = e.public_message().replace(&base, "<base>");
                assert!(!message.contains("404"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(limited, "20 uncached fetches a minute per address");
    // Another address is not affected.
    let other = Some("203.0.113.9".parse().expect("ip"));
    let err = resolve_client(&app.state, &format!("{base}/missing-x.json"), other).await;
    assert!(
        matches!(err, Err(ClientLookupError::Metadata(_))),
        "{err:?}"
    );

    // Through /authorize, the page names the document but not what the network said.
    let page = app
        .get(&format!(
            "/authorize?client_id={base}/redirect.json&response_type=code"
        ))
        .await;
    assert_eq!(page.status, 400);
    let html = page.text();
    assert!(
        html.contains("could not be fetched") && !html.contains("302"),
        "{html}"
    );
}

/// Security review: the sign-in page named a metadata-document client by the name it chose
/// ("Claude"). Both pages now lead with the host of its `client_id`, which was verified by
/// fetching the document, and give the chosen name second.
#[tokio::test]
async fn the_sign_in_page_leads_with_the_verified_host() {
    let (app, _server, base) = setup().await;
    let id = format!("{base}/ok.json");
    let host = url::Url::parse(&base)
        .expect("url")
        .host_str()
        .expect("host")
        .to_owned();
    let (path, _) = crate::support::oauth::authorize_request(
        &id,
        "https://claude.ai/api/mcp/auth_callback",
        &["mcp"],
    );
    let mut agent = crate::support::Agent::new(&app);
    let login = agent.get(&path).await.location();
    let page = agent.get(&login).await.text();
    assert!(
        page.contains(&format!("to continue to <strong>{host}</strong>")),
        "{page}"
    );
    assert!(page.contains("it calls itself “Claude”"), "{page}");
}
