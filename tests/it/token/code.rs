//! The code exchange (RFC 6749 §4.1.3, RFC 7636, RFC 8707): the whole flow through the
//! independent `oauth2` crate, the errors of a bad exchange, and a code used once (a second
//! redemption revokes what the first issued).

use super::*;

#[tokio::test]
async fn full_flow_with_the_oauth2_crate_code_exchange_and_refresh() {
    let (app, client_id) = app_with_claude().await;
    let (code, verifier) = code_for(&app, &client_id, &["mcp", "claudeai"]).await;
    let client = BasicClient::new(ClientId::new(client_id.clone()))
        .set_token_uri(TokenUrl::new(format!("{ISSUER}/token")).expect("url"))
        .set_redirect_uri(RedirectUrl::new(CALLBACK.to_owned()).expect("url"));
    let http = oauth_http(&app);
    let tokens = client
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(oauth2::PkceCodeVerifier::new(verifier))
        .add_extra_param("resource", resource())
        .request_async(&http)
        .await
        .expect("code exchange");
    assert_eq!(tokens.token_type().as_ref(), "bearer");
    assert_eq!(
        tokens.expires_in(),
        Some(std::time::Duration::from_secs(3600))
    );
    assert_eq!(
        tokens
            .scopes()
            .map(|s| s.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
        Some(vec!["mcp".to_owned()])
    );
    let refresh_token = tokens
        .refresh_token()
        .expect("a refresh token without offline_access")
        .secret()
        .clone();

    // RFC 9068: what an independent resource server sees.
    let (claims, header) = verified_claims(&app, tokens.access_token().secret()).await;
    assert_eq!(header.token_type(), Some("at+jwt"));
    assert_eq!(
        header.key_id(),
        Some(app.state.keys.snapshot().current().kid())
    );
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["sub"], "u_alice");
    assert_eq!(claims["aud"], resource());
    assert_eq!(claims["client_id"], client_id.as_str());
    assert_eq!(claims["scope"], "mcp");
    assert!(
        claims["grant_id"]
            .as_str()
            .is_some_and(|g| g.starts_with("g_"))
    );
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 22));
    let iat = claims["iat"].as_i64().expect("iat");
    assert_eq!(claims["nbf"].as_i64(), Some(iat));
    assert_eq!(claims["exp"].as_i64(), Some(iat + 3600));

    let refreshed = client
        .exchange_refresh_token(&RefreshToken::new(refresh_token.clone()))
        .add_extra_param("resource", resource())
        .request_async(&http)
        .await
        .expect("refresh");
    let rotated = refreshed.refresh_token().expect("rotated").secret().clone();
    assert_ne!(rotated, refresh_token);
    assert_ne!(
        refreshed.access_token().secret(),
        tokens.access_token().secret()
    );
    let (new_claims, _) = verified_claims(&app, refreshed.access_token().secret()).await;
    assert_eq!(
        new_claims["grant_id"], claims["grant_id"],
        "same grant, same family"
    );

    // Neither token is stored in clear anywhere in the database.
    for file in ["gatehouse.db", "gatehouse.db-wal"] {
        let bytes = std::fs::read(app.dir.path().join(file)).unwrap_or_default();
        for secret in [&refresh_token, &rotated, tokens.access_token().secret()] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "a token in clear in {file}"
            );
        }
    }
}

#[tokio::test]
async fn bad_code_exchanges_are_refused_with_the_right_error() {
    let (app, client_id) = app_with_claude().await;
    let other = app.register_client("Other", &[CALLBACK]).await;
    let (code, verifier) = code_for(&app, &client_id, &["mcp"]).await;
    let wrong_verifier = "x".repeat(43);
    let r = resource();
    let base = |extra: &[(&'static str, &str)]| {
        let mut fields: HashMap<&str, String> = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("code_verifier", verifier.as_str()),
            ("redirect_uri", CALLBACK),
            ("client_id", client_id.as_str()),
            ("resource", r.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_owned()))
        .collect();
        for (k, v) in extra {
            fields.insert(k, (*v).to_owned());
        }
        fields
    };
    let cases: Vec<(HashMap<&str, String>, u16, &str)> = vec![
        (
            base(&[("code_verifier", &wrong_verifier)]),
            400,
            "invalid_grant",
        ),
        (
            base(&[("redirect_uri", "https://claude.ai/other")]),
            400,
            "invalid_grant",
        ),
        (base(&[("client_id", &other)]), 400, "invalid_grant"),
        (
            base(&[("resource", "https://elsewhere.example/mcp")]),
            400,
            "invalid_target",
        ),
        (base(&[("code", "not-a-code")]), 400, "invalid_grant"),
        (base(&[("code_verifier", "short")]), 400, "invalid_request"),
        (
            base(&[("grant_type", "password")]),
            400,
            "unsupported_grant_type",
        ),
        (base(&[("client_id", "gh_nobody")]), 401, "invalid_client"),
    ];
    for (fields, status, error) in cases {
        let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_error(&post(&app, "/token", &pairs, None).await, status, error);
    }
    // None of these consumed the code: the right request still works.
    assert_eq!(
        exchange(&app, &client_id, &code, &verifier).await.status,
        200
    );
}

#[tokio::test]
async fn malformed_token_requests_are_json_errors() {
    let (app, client_id) = app_with_claude().await;
    assert_error(
        &post(&app, "/token", &[("client_id", &client_id)], None).await,
        400,
        "invalid_request",
    );
    // grant_type is read first: unknown wins over anything else wrong.
    assert_error(
        &post(
            &app,
            "/token",
            &[("grant_type", "urn:x"), ("grant_type", "y")],
            None,
        )
        .await,
        400,
        "invalid_request",
    );
    assert_error(
        &post(&app, "/token", &[("grant_type", "implicit")], None).await,
        400,
        "unsupported_grant_type",
    );
    assert_error(
        &post(
            &app,
            "/token",
            &[
                ("grant_type", "authorization_code"),
                ("client_id", &client_id),
                ("client_id", &client_id),
            ],
            None,
        )
        .await,
        400,
        "invalid_request",
    );
    assert_error(
        &post(
            &app,
            "/token",
            &[
                ("grant_type", "authorization_code"),
                ("client_id", &client_id),
            ],
            None,
        )
        .await,
        400,
        "invalid_request",
    );
    let json_body = app
        .send(
            request("POST", "/token")
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .expect("req"),
        )
        .await;
    assert_error(&json_body, 400, "invalid_request");
    let big = app
        .send(
            request("POST", "/token")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Body::from(format!(
                    "grant_type=refresh_token&refresh_token={}",
                    "a".repeat(100_000)
                )))
                .expect("req"),
        )
        .await;
    assert_error(&big, 400, "invalid_request");
}

/// A code lives `authorization_code_ttl` (60 s): one exchanged a moment before its end works,
/// one exchanged a moment after is `invalid_grant`.
#[tokio::test]
async fn expired_codes_are_refused() {
    let (app, client_id) = app_with_claude().await;
    let (first, first_verifier) = code_for(&app, &client_id, &["mcp"]).await;
    let (second, second_verifier) = code_for(&app, &client_id, &["mcp"]).await;
    app.clock.advance(time::Duration::seconds(59));
    let res = exchange(&app, &client_id, &first, &first_verifier).await;
    assert_eq!(res.status, 200, "{}", res.text());
    app.clock.advance(time::Duration::seconds(2));
    assert_error(
        &exchange(&app, &client_id, &second, &second_verifier).await,
        400,
        "invalid_grant",
    );
}

/// RFC 6749 §4.1.2, OAuth 2.1 §4.1.3: a code is used once. The identical request sent again at
/// once (as a conformance suite does) is refused, and every token issued from the code dies: its
/// refresh token, and its access token at `/mcp` on the very next call.
#[tokio::test]
async fn a_code_redeemed_twice_is_refused_and_revokes_what_it_issued() {
    let (app, client_id) = app_with_claude().await;
    let (code, verifier) = code_for(&app, &client_id, &["mcp"]).await;
    let first = exchange(&app, &client_id, &code, &verifier).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let tokens = first.json();
    let access = tokens["access_token"].as_str().expect("at");
    assert_eq!(mcp_status(&app, access).await, 200, "the first token works");

    let again = exchange(&app, &client_id, &code, &verifier).await;
    assert_error(&again, 400, "invalid_grant");
    assert!(
        again.json()["access_token"].is_null(),
        "no tokens the second time"
    );
    assert_eq!(
        mcp_status(&app, access).await,
        401,
        "the first access token is revoked"
    );
    assert_refresh_refused(&app, &client_id, &tokens["refresh_token"]).await;
    // Later too, and for any other verifier: still refused, nothing issued.
    app.clock.advance(time::Duration::seconds(30));
    assert_error(
        &exchange(&app, &client_id, &code, &verifier).await,
        400,
        "invalid_grant",
    );
    let kinds = event_kinds(&app).await;
    assert_eq!(count(&kinds, "token.issued"), 1, "{kinds:?}");
    assert_eq!(count(&kinds, "code.reuse_detected"), 2, "{kinds:?}");
}

#[tokio::test]
async fn code_replay_with_another_verifier_is_refused_and_revokes() {
    let (app, client_id) = app_with_claude().await;
    let (code, verifier) = code_for(&app, &client_id, &["mcp"]).await;
    let first = exchange(&app, &client_id, &code, &verifier).await.json();
    let other = "y".repeat(43);
    assert_error(
        &exchange(&app, &client_id, &code, &other).await,
        400,
        "invalid_grant",
    );
    assert_refresh_refused(&app, &client_id, &first["refresh_token"]).await;
    let events = gatehouse::audit::read(&app.state.store, &Default::default(), None, 50)
        .await
        .expect("audit");
    assert!(events.iter().any(|e| e.event.kind == "code.reuse_detected"));
}

/// Many simultaneous redemptions of one code: exactly one gets tokens, every other one is
/// `invalid_grant`, and since the code was used more than once the one grant it created is
/// revoked (RFC 6749 §4.1.2): a code raced from two places has leaked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_code_exchanges_issue_once_and_revoke() {
    let (app, client_id) = app_with_claude().await;
    let (code, verifier) = code_for(&app, &client_id, &["mcp"]).await;
    let r = resource();
    let fields = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("code_verifier", verifier.as_str()),
        ("redirect_uri", CALLBACK),
        ("client_id", client_id.as_str()),
        ("resource", r.as_str()),
    ];
    let answers = concurrently(&app, 8, "/token", &fields).await;
    let issued: Vec<Value> = answers
        .iter()
        .filter(|(status, _)| *status == 200)
        .map(|(_, body)| serde_json::from_slice(body).expect("json"))
        .collect();
    assert_eq!(issued.len(), 1, "one redemption succeeds");
    for (status, body) in answers.iter().filter(|(status, _)| *status != 200) {
        assert_eq!(*status, 400, "{}", String::from_utf8_lossy(body));
        let error: Value = serde_json::from_slice(body).expect("json");
        assert_eq!(error["error"], "invalid_grant");
    }
    assert_eq!(app.count_rows("SELECT count(*) FROM grants").await, 1);
    assert_eq!(
        app.count_rows("SELECT count(*) FROM grants WHERE revoked_at IS NOT NULL")
            .await,
        1
    );
    let access = issued[0]["access_token"].as_str().expect("at");
    assert_eq!(mcp_status(&app, access).await, 401);
}

/// `tokens revoke --client` revokes the client's grants and voids its codes not yet redeemed:
/// one redeemed a moment later would have made a new grant.
#[tokio::test]
async fn revoking_a_clients_grants_voids_its_pending_codes() {
    let (app, client_id) = app_with_claude().await;
    let (code, verifier) = code_for(&app, &client_id, &["mcp"]).await;
    let t0 = exchange(&app, &client_id, &code, &verifier).await.json();
    let (pending, pending_verifier) = code_for(&app, &client_id, &["mcp"]).await;
    let revoked = app
        .state
        .store
        .revoke_grants_of(None, Some(&client_id), "operator", app.clock.now())
        .await
        .expect("revoke");
    assert_eq!(revoked.len(), 1);
    assert_refresh_refused(&app, &client_id, &t0["refresh_token"]).await;
    assert_error(
        &exchange(&app, &client_id, &pending, &pending_verifier).await,
        400,
        "invalid_grant",
    );
}

/// Removing a user (`gatehouse users remove`, `Store::remove_user`) deletes them and revokes
/// their live grants in one transaction, the removal first (review: revoked first and removed
/// after, a code redeemed in between made a grant that outlived its user). A code issued before
/// the removal is void after it, though this instance still holds its hint.
#[tokio::test]
async fn removing_a_user_revokes_their_grants_and_voids_their_codes_at_once() {
    let (app, client_id) = app_with_claude().await;
    let (code, verifier) = code_for(&app, &client_id, &["mcp"]).await;
    let t = exchange(&app, &client_id, &code, &verifier).await.json();
    let (pending, pending_verifier) = code_for(&app, &client_id, &["mcp"]).await;

    let store = &app.state.store;
    let revoked = store
        .remove_user("u_alice", "user removed", app.clock.now())
        .await
        .expect("remove")
        .expect("alice was there");
    assert_eq!(revoked.len(), 1);
    assert!(store.user_by_name("alice").await.expect("read").is_none());
    assert_error(
        &refresh(&app, &client_id, t["refresh_token"].as_str().expect("rt")).await,
        400,
        "invalid_grant",
    );
    let late = exchange(&app, &client_id, &pending, &pending_verifier).await;
    assert_error(&late, 400, "invalid_grant");
    assert_eq!(count(&event_kinds(&app).await, "token.issued"), 1);
    assert_eq!(
        store
            .remove_user("u_alice", "user removed", app.clock.now())
            .await
            .expect("remove"),
        None
    );
}
