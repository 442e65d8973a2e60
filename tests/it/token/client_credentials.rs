//! The client credentials grant (RFC 6749 §4.4) and client authentication at the token
//! endpoint (RFC 6749 §2.3, §5.2).

use super::*;

#[tokio::test]
async fn client_credentials_for_confidential_clients_only() {
    let app = TestApp::sqlite().await;
    let (id, secret) = app
        .operator_client("client_secret_basic", &["client_credentials"], "mcp")
        .await;
    let res = post(
        &app,
        "/token",
        &[("grant_type", "client_credentials")],
        Some((&id, &secret)),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let doc = res.json();
    assert_eq!(doc["scope"], "mcp");
    assert!(
        doc.get("refresh_token").is_none(),
        "no refresh token for client_credentials"
    );
    let (claims, _) = verified_claims(&app, doc["access_token"].as_str().expect("at")).await;
    assert_eq!(claims["sub"], id.as_str());
    assert_eq!(claims["aud"], resource());
    // Beyond what it registered for.
    let res = post(
        &app,
        "/token",
        &[
            ("grant_type", "client_credentials"),
            ("scope", "mcp activity:read"),
        ],
        Some((&id, &secret)),
    )
    .await;
    assert_error(&res, 400, "invalid_scope");
    // A public client may not.
    let public = app.register_client("Public", &[CALLBACK]).await;
    let res = post(
        &app,
        "/token",
        &[("grant_type", "client_credentials"), ("client_id", &public)],
        None,
    )
    .await;
    assert_error(&res, 400, "unauthorized_client");
}

/// Security review, high: `POST /register` with `grant_types: ["client_credentials"]` gave anyone
/// a secret, and the secret gave MCP tokens with no user behind them. RFC 6749 §4.4: the grant
/// is for what was arranged with the server; RFC 7591 §5: what a client registers is its own
/// word. By default it is refused at `/register`, and a client that registered it before (or
/// while a setting allowed it) is refused at `/token`.
#[tokio::test]
async fn self_registered_clients_get_no_tokens_without_a_user() {
    let app = TestApp::sqlite().await;
    for body in [
        json!({ "grant_types": ["client_credentials"], "scope": "mcp activity:read" }),
        json!({ "grant_types": ["client_credentials"], "token_endpoint_auth_method": "client_secret_post",
                "redirect_uris": ["https://service.example.com/cb"] }),
    ] {
        let res = app.post_json("/register", &body).await;
        assert_eq!(res.status, 400, "{body}: {}", res.text());
        assert_eq!(res.json()["error"], "invalid_client_metadata");
        assert!(
            res.json()["error_description"]
                .as_str()
                .is_some_and(|d| d.contains("client_credentials")),
            "{}",
            res.text()
        );
    }
    assert_eq!(app.count_rows("SELECT count(*) FROM clients").await, 0);

    // Registered while the operator allowed it; then the setting is taken away.
    let dir = app.restart_parts().await;
    let url = crate::support::sqlite_url(&dir);
    let app = TestApp::with(dir, &url, |c| {
        c.registration.client_credentials_scopes =
            vec![gatehouse::domain::ScopeToken::parse("mcp").expect("scope")];
    })
    .await;
    let res = app
        .post_json(
            "/register",
            &json!({ "grant_types": ["client_credentials"] }),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    let (id, secret) = (
        res.json()["client_id"].as_str().expect("id").to_owned(),
        res.json()["client_secret"]
            .as_str()
            .expect("secret")
            .to_owned(),
    );
    let cc = [("grant_type", "client_credentials")];
    assert_eq!(
        post(&app, "/token", &cc, Some((&id, &secret))).await.status,
        200
    );
    let app = app.restart().await;
    let res = post(&app, "/token", &cc, Some((&id, &secret))).await;
    assert_error(&res, 400, "unauthorized_client");
}

/// With `registration.client_credentials_scopes` set, a self-registered service client may
/// register the grant, within those scopes only; the token has no user behind it, and the MCP
/// side says so (`kind: service`) and never treats it as anyone's roles.
#[tokio::test]
async fn a_self_registered_service_client_stays_within_the_opened_scopes() {
    let dir = tempfile::TempDir::new().expect("dir");
    let url = crate::support::sqlite_url(&dir);
    let app = TestApp::with(dir, &url, |c| {
        c.registration.client_credentials_scopes =
            vec![gatehouse::domain::ScopeToken::parse("mcp").expect("scope")];
    })
    .await;
    let wider = json!({ "grant_types": ["client_credentials"], "scope": "mcp activity:read" });
    let res = app.post_json("/register", &wider).await;
    assert_eq!(res.status, 400, "{}", res.text());
    assert!(
        res.json()["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("activity:read"))
    );
    let res = app
        .post_json(
            "/register",
            &json!({ "grant_types": ["client_credentials"] }),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    let doc = res.json();
    assert_eq!(doc["scope"], "mcp");
    let (id, secret) = (
        doc["client_id"].as_str().expect("id"),
        doc["client_secret"].as_str().expect("secret"),
    );
    let cc = [("grant_type", "client_credentials")];
    let token = post(&app, "/token", &cc, Some((id, secret))).await.json();
    assert_eq!(token["scope"], "mcp");
    let whoami: Value = serde_json::from_str(
        &tool_text(
            &app,
            token["access_token"].as_str().expect("at"),
            "whoami",
            json!({}),
        )
        .await,
    )
    .expect("json");
    assert_eq!(whoami["kind"], "service");
    assert_eq!(whoami["subject"], id);
    assert!(whoami["username"].is_null() && whoami["roles"].is_null());
}

/// A service client the operator added, even with `activity:read`, is nobody's administrator:
/// it reads only its own activity.
#[tokio::test]
async fn a_service_client_is_never_an_administrator() {
    let (app, _) = app_with_claude().await;
    let (id, secret) = app
        .operator_client(
            "client_secret_basic",
            &["client_credentials"],
            "mcp activity:read",
        )
        .await;
    let cc = [("grant_type", "client_credentials")];
    let token = post(&app, "/token", &cc, Some((&id, &secret))).await.json();
    let access = token["access_token"].as_str().expect("at");
    let whoami: Value =
        serde_json::from_str(&tool_text(&app, access, "whoami", json!({})).await).expect("json");
    assert_eq!(whoami["kind"], "service");
    let everyone = tool_text(
        &app,
        access,
        "get_activity_log",
        json!({ "everyone": true }),
    )
    .await;
    assert!(
        everyone.contains("Only users with the \"admin\" role"),
        "{everyone}"
    );
}

#[tokio::test]
async fn client_authentication_failures_are_401_invalid_client() {
    let app = TestApp::sqlite().await;
    let (id, secret) = app
        .operator_client("client_secret_basic", &["client_credentials"], "mcp")
        .await;
    let cc = [("grant_type", "client_credentials")];
    let wrong_basic = post(&app, "/token", &cc, Some((&id, "wrong"))).await;
    assert_error(&wrong_basic, 401, "invalid_client");
    assert!(
        wrong_basic
            .header("www-authenticate")
            .is_some_and(|h| h.starts_with("Basic ")),
        "RFC 6749 §5.2"
    );
    let wrong_post = post(
        &app,
        "/token",
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &id),
            ("client_secret", "wrong"),
        ],
        None,
    )
    .await;
    assert_error(&wrong_post, 401, "invalid_client");
    assert!(wrong_post.header("www-authenticate").is_none());
    let no_secret = post(
        &app,
        "/token",
        &[("grant_type", "client_credentials"), ("client_id", &id)],
        None,
    )
    .await;
    assert_error(&no_secret, 401, "invalid_client");
    let unknown = post(&app, "/token", &cc, Some(("gh_unknown", "x"))).await;
    assert_error(&unknown, 401, "invalid_client");
    let both = post(
        &app,
        "/token",
        &[
            ("grant_type", "client_credentials"),
            ("client_secret", &secret),
        ],
        Some((&id, &secret)),
    )
    .await;
    assert_error(&both, 400, "invalid_request");
    // client_secret_post works too.
    let ok = post(
        &app,
        "/token",
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &id),
            ("client_secret", &secret),
        ],
        None,
    )
    .await;
    assert_eq!(ok.status, 200);
}
