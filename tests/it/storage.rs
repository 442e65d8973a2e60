//! The storage suite, run against both backends: a SQLite file and a real PostgreSQL server.

use crate::support::{TestApp, fresh_postgres_url, sqlite_url};
use gatehouse::audit::{AuditEvent, Outcome};
use gatehouse::domain::{
    Client, ClientKind, RedirectPolicy, RedirectUri, Secret, SigningAlgorithm,
    TokenEndpointAuthMethod,
};
use gatehouse::keys::KeyState;
use gatehouse::store::{Backend, DatabaseUrl, KeyRecord, Store, StoreError};
use serde_json::json;
use tempfile::TempDir;
use time::macros::datetime;

fn key(kid: &str, state: KeyState) -> KeyRecord {
    KeyRecord {
        kid: kid.to_owned(),
        alg: SigningAlgorithm::ES256,
        state,
        public_jwk: format!("{{\"kid\":\"{kid}\"}}"),
        created_at: datetime!(2026-11-01 00:00 UTC),
        activated_at: None,
        retire_after: None,
        retired_at: None,
        activate_after: None,
        private_sealed: None,
    }
}

async fn storage_suite(url: &str, backend: Backend) {
    let url = DatabaseUrl::parse(url).expect("url");
    let store = Store::open(&url).await.expect("open");
    assert_eq!(store.backend(), backend);
    store.ping().await.expect("ping");
    // Migrations are idempotent: a second start on the same database is fine.
    let again = Store::open(&url).await.expect("reopen");
    again.close().await;

    // Signing keys: round trip of every field, including absent timestamps.
    let mut current = key("kid-current", KeyState::Current);
    current.activated_at = Some(datetime!(2026-11-02 00:00 UTC));
    current.retire_after = Some(datetime!(2026-12-02 00:00 UTC));
    store
        .insert_signing_key(&current)
        .await
        .expect("insert current");
    let mut next = key("kid-next", KeyState::Next);
    next.created_at = datetime!(2026-11-03 00:00 UTC);
    next.activate_after = Some(datetime!(2026-11-04 00:00 UTC));
    next.private_sealed = Some("sealed-blob".to_owned());
    store.insert_signing_key(&next).await.expect("insert next");
    assert_eq!(
        store.signing_keys().await.expect("list"),
        vec![current.clone(), next.clone()]
    );
    assert_eq!(
        store.signing_key("kid-next").await.expect("get"),
        Some(next)
    );
    assert_eq!(store.signing_key("nope").await.expect("get"), None);

    // Exactly one current key, enforced by the database itself.
    let second = store
        .insert_signing_key(&key("kid-other", KeyState::Current))
        .await;
    assert!(matches!(second, Err(StoreError::Conflict(_))), "{second:?}");
    let duplicate = store
        .insert_signing_key(&key("kid-current", KeyState::Previous))
        .await;
    assert!(
        matches!(duplicate, Err(StoreError::Conflict(_))),
        "{duplicate:?}"
    );
    assert_eq!(
        store.signing_keys().await.expect("list").len(),
        2,
        "failed inserts left nothing"
    );
    // At most one key waits as next, too.
    let second_next = store
        .insert_signing_key(&key("kid-next-2", KeyState::Next))
        .await;
    assert!(
        matches!(second_next, Err(StoreError::Conflict(_))),
        "{second_next:?}"
    );

    // Activation swaps current and next in one transaction, only from the states the caller
    // saw: a stale request (another instance was first) changes nothing.
    let at = datetime!(2026-11-04 00:00 UTC);
    let retire_after = datetime!(2026-11-04 02:00 UTC);
    assert!(
        !store
            .promote_signing_key("kid-next", "kid-current", at, retire_after)
            .await
            .expect("stale promote"),
        "roles swapped: nothing to do"
    );
    assert!(
        store
            .promote_signing_key("kid-current", "kid-next", at, retire_after)
            .await
            .expect("promote")
    );
    assert!(
        !store
            .promote_signing_key("kid-current", "kid-next", at, retire_after)
            .await
            .expect("second promote"),
        "a second instance making the same step changes nothing"
    );
    let promoted = store
        .signing_key("kid-next")
        .await
        .expect("get")
        .expect("row");
    assert_eq!(promoted.state, KeyState::Current);
    assert_eq!(promoted.activated_at, Some(at));
    assert_eq!(promoted.activate_after, None);
    let demoted = store
        .signing_key("kid-current")
        .await
        .expect("get")
        .expect("row");
    assert_eq!(demoted.state, KeyState::Previous);
    assert_eq!(demoted.retire_after, Some(retire_after));

    // Retirement only from next or previous, never of the signing key; deletion only retired.
    assert!(
        !store
            .retire_signing_key("kid-next", retire_after)
            .await
            .expect("retire current")
    );
    assert!(
        !store
            .delete_retired_signing_key("kid-current")
            .await
            .expect("delete previous")
    );
    assert!(
        store
            .retire_signing_key("kid-current", retire_after)
            .await
            .expect("retire")
    );
    let retired = store
        .signing_key("kid-current")
        .await
        .expect("get")
        .expect("row");
    assert_eq!(retired.state, KeyState::Retired);
    assert_eq!(retired.retired_at, Some(retire_after));
    assert!(
        store
            .delete_retired_signing_key("kid-current")
            .await
            .expect("delete")
    );
    assert_eq!(store.signing_key("kid-current").await.expect("get"), None);

    // Audit: newest first, per-subject filter, paging, structured detail.
    for (i, subject) in ["alice", "bob", "alice"].iter().enumerate() {
        let mut event = AuditEvent::new(
            "login",
            datetime!(2026-11-22 12:00 UTC) + time::Duration::seconds(i as i64),
            json!({ "n": i, "note": "ünïcode \"quoted\"" }),
        );
        event.subject = Some((*subject).to_owned());
        event.client_id = Some("client-1".to_owned());
        event.ip = Some("127.0.0.1".to_owned());
        if i == 1 {
            event = event.failed();
        }
        gatehouse::audit::record(&store, event)
            .await
            .expect("record");
    }
    let all = gatehouse::audit::read(&store, &Default::default(), None, 10)
        .await
        .expect("read");
    assert_eq!(all.len(), 3);
    assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    assert_eq!(all[1].event.outcome, Outcome::Failure);
    assert_eq!(
        all[0].event.detail,
        json!({ "n": 2, "note": "ünïcode \"quoted\"" })
    );
    assert_eq!(all[0].event.at, datetime!(2026-11-22 12:00:02 UTC));
    let alice = gatehouse::audit::read(
        &store,
        &gatehouse::audit::AuditFilter {
            subject: Some("alice".into()),
            ..Default::default()
        },
        None,
        10,
    )
    .await
    .expect("read");
    assert_eq!(alice.len(), 2);
    let page = gatehouse::audit::read(&store, &Default::default(), Some(all[0].id), 1)
        .await
        .expect("page");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].id, all[1].id);
    // Every filter of the admin console's audit page, on this engine.
    let filtered = |filter: gatehouse::audit::AuditFilter| {
        let store = &store;
        async move {
            gatehouse::audit::read(store, &filter, None, 10)
                .await
                .expect("read")
                .len()
        }
    };
    use gatehouse::audit::AuditFilter as F;
    let kind = |k: &str| F {
        kind: Some(k.into()),
        ..Default::default()
    };
    assert_eq!(filtered(kind("login")).await, 3, "a kind");
    assert_eq!(filtered(kind("log")).await, 0, "not a prefix of a word");
    let client = F {
        client_id: Some("client-1".into()),
        outcome: Some(Outcome::Failure),
        ..Default::default()
    };
    assert_eq!(filtered(client).await, 1);
    let window = F {
        since: Some(datetime!(2026-11-22 12:00:01 UTC)),
        until: Some(datetime!(2026-11-22 12:00:02 UTC)),
        ..Default::default()
    };
    assert_eq!(filtered(window).await, 1, "from inclusive, until exclusive");

    links_and_locks_suite(&store).await;
    clients_suite(&store).await;
    rate_budget_suite(&store).await;
    redemption_suite(&store).await;
    identities_suite(&store).await;
    apps_suite(&store).await;
    store.close().await;
}

/// The applications a person connected (remembered consents and live grants, per client), and
/// disconnecting one: its live grants revoked and its consent forgotten in one transaction,
/// another person's and another client's untouched; ending a person's browser sessions.
async fn apps_suite(store: &Store) {
    use gatehouse::store::GrantRecord;
    let now = datetime!(2026-12-01 12:00 UTC);
    for (id, name) in [("u_apps", "apps-person"), ("u_apps_other", "apps-other")] {
        store
            .insert_user(&gatehouse::account::User::new(
                id.into(),
                gatehouse::account::Username::parse(name).expect("name"),
                "unused".into(),
                vec![],
                now,
            ))
            .await
            .expect("user");
    }
    let resource = "https://mcp.example.com/mcp";
    let grant = |id: &str, user: &str, client: &str, at: time::OffsetDateTime| GrantRecord {
        grant_id: id.to_owned(),
        client_id: client.to_owned(),
        user_id: Some(user.to_owned()),
        resource: resource.into(),
        scopes: "mcp tools:read".into(),
        created_at: at,
        expires_at: at + time::Duration::days(30),
        revoked_at: None,
    };
    for (user, client) in [
        ("u_apps", "app-a"),
        ("u_apps", "app-b"),
        ("u_apps_other", "app-a"),
    ] {
        store
            .save_consent(user, client, resource, "mcp", "https://app.example/cb", now)
            .await
            .expect("consent");
    }
    let later = now + time::Duration::hours(1);
    store
        .insert_grant(&grant("g_apps_1", "u_apps", "app-a", now))
        .await
        .expect("grant");
    store
        .insert_grant(&grant("g_apps_2", "u_apps", "app-a", later))
        .await
        .expect("grant");
    store
        .insert_grant(&grant("g_apps_3", "u_apps_other", "app-a", now))
        .await
        .expect("grant");
    let apps = store.connected_apps("u_apps", now).await.expect("apps");
    let ids: Vec<&str> = apps.iter().map(|a| a.client_id.as_str()).collect();
    assert_eq!(ids, ["app-a", "app-b"], "most recently used first");
    assert_eq!(apps[0].live_grants, 2);
    assert_eq!(apps[0].scopes, ["mcp", "tools:read"]);
    assert_eq!(apps[0].granted_at, now);
    assert_eq!(apps[0].last_used_at, Some(later));
    assert_eq!((apps[1].live_grants, apps[1].last_used_at), (0, None));

    let mut revoked = store
        .disconnect_app("u_apps", "app-a", "disconnected by the user", later)
        .await
        .expect("disconnect");
    revoked.sort();
    assert_eq!(revoked, ["g_apps_1", "g_apps_2"]);
    let ids: Vec<String> = store
        .connected_apps("u_apps", later)
        .await
        .expect("apps")
        .into_iter()
        .map(|a| a.client_id)
        .collect();
    assert_eq!(ids, ["app-b"]);
    let other = store
        .connected_apps("u_apps_other", later)
        .await
        .expect("apps");
    assert_eq!(
        (other.len(), other[0].live_grants),
        (1, 1),
        "another person's stays"
    );
    assert!(
        store
            .disconnect_app("u_apps", "app-a", "again", later)
            .await
            .expect("disconnect")
            .is_empty()
    );

    assert!(
        store
            .end_browser_sessions("u_apps", later)
            .await
            .expect("end")
    );
    let user = store.user("u_apps").await.expect("read").expect("user");
    assert!(
        !user.session_valid(later.unix_timestamp()),
        "a session of that second ends"
    );
    assert!(user.session_valid(later.unix_timestamp() + 1));
    assert!(
        !store
            .end_browser_sessions("nobody", later)
            .await
            .expect("end")
    );

    // API tokens: a round trip of every field, listed per user, revoked once, touched.
    use gatehouse::store::ApiTokenRecord;
    let token = |id: &str, user: &str, expires: Option<time::OffsetDateTime>| ApiTokenRecord {
        token_id: id.into(),
        user_id: user.into(),
        name: format!("token {id}"),
        secret_hash: format!("hash-{id}"),
        scopes: "mcp".into(),
        created_at: now,
        expires_at: expires,
        last_used_at: None,
        revoked_at: None,
    };
    let mine = token("tok-a", "u_apps", Some(later));
    store.insert_api_token(&mine).await.expect("insert");
    store
        .insert_api_token(&token("tok-b", "u_apps_other", None))
        .await
        .expect("insert");
    assert!(matches!(
        store.insert_api_token(&mine).await,
        Err(gatehouse::store::StoreError::Conflict(_))
    ));
    assert_eq!(
        store.api_token("tok-a").await.expect("read"),
        Some(mine.clone())
    );
    assert_eq!(
        store.api_tokens(Some("u_apps")).await.expect("list"),
        vec![mine]
    );
    assert_eq!(store.api_tokens(None).await.expect("list").len(), 2);
    store.touch_api_token("tok-b", later).await.expect("touch");
    assert_eq!(
        store
            .api_token("tok-b")
            .await
            .expect("read")
            .expect("token")
            .last_used_at,
        Some(later)
    );
    assert!(
        !store
            .revoke_api_token("tok-b", Some("u_apps"), later)
            .await
            .expect("revoke"),
        "only its owner's"
    );
    assert!(
        store
            .revoke_api_token("tok-b", None, later)
            .await
            .expect("revoke")
    );
    assert!(
        !store
            .revoke_api_token("tok-b", None, later)
            .await
            .expect("revoke")
    );
}

/// Identities at providers: a first sign-in makes the account, the next finds it by (provider,
/// issuer, subject) and replaces the provider's roles; an identity links to one user only; the
/// last way a user can sign in is not unlinked.
async fn identities_suite(store: &Store) {
    use gatehouse::store::{ProviderIdentity, Unlinked};
    let now = datetime!(2026-11-30 12:00 UTC);
    let person = |id: &str, name: &str, password: &str| {
        gatehouse::account::User::new(
            id.into(),
            gatehouse::account::Username::parse(name).expect("name"),
            password.into(),
            vec![],
            now,
        )
    };
    let identity = |subject: &str| ProviderIdentity {
        provider: "corp".into(),
        issuer: "https://idp.example.com".into(),
        subject: subject.into(),
        email: Some(format!("{subject}@example.com")),
        email_verified: true,
    };
    let roles = |r: &[&str]| r.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let (user, created) = store
        .sign_in_identity(
            &identity("s1"),
            &person("u_p1", "p1@example.com", ""),
            &roles(&["user", "admin"]),
            now,
        )
        .await
        .expect("first sign-in");
    assert!(created);
    assert_eq!(user.roles, ["user", "admin"]);
    let (again, created) = store
        .sign_in_identity(
            &identity("s1"),
            &person("u_other", "other", ""),
            &roles(&["user"]),
            now,
        )
        .await
        .expect("second sign-in");
    assert!(!created);
    assert_eq!(again.id, "u_p1", "found by subject, not made anew");
    assert_eq!(again.roles, ["user"], "the provider's roles replaced");
    assert_eq!(store.user("u_other").await.expect("read"), None);

    // An identity signs in one user only.
    store
        .insert_user(&person("u_local", "local", "$argon2id$stored"))
        .await
        .expect("user");
    let taken = store.link_identity("u_local", &identity("s1"), now).await;
    assert!(matches!(taken, Err(StoreError::Conflict(_))), "{taken:?}");
    store
        .link_identity("u_local", &identity("s2"), now)
        .await
        .expect("link");
    let linked = store.identities_of("u_local").await.expect("read");
    assert_eq!(linked.len(), 1);
    assert_eq!(linked[0].last_sign_in_at, None, "linked, not signed in yet");

    // The provider-only user's one identity is their last way in; a user with a password may
    // lose theirs.
    let unlink = |user: &'static str, subject: &'static str| async move {
        store
            .unlink_identity(user, "corp", "https://idp.example.com", subject)
            .await
            .expect("unlink")
    };
    assert_eq!(unlink("u_p1", "s1").await, Unlinked::LastWay);
    assert_eq!(store.identities_of("u_p1").await.expect("read").len(), 1);
    assert_eq!(unlink("u_p1", "s2").await, Unlinked::NotLinked);
    assert_eq!(unlink("u_local", "s2").await, Unlinked::Removed);
    assert!(
        store
            .identities_of("u_local")
            .await
            .expect("read")
            .is_empty()
    );
}

/// Guarded writes (issue 5): a redemption that fails (here: its grant id is taken) is rolled
/// back whole and fails alone, while the redemptions sent with it succeed; the writer keeps
/// working after. On SQLite the eight arrive as one batch: on this one-thread runtime every
/// task queues its write before the committer runs (seen once with a print in the committer;
/// nothing here observes the batch itself, so the test also holds for writes taken one by one).
async fn redemption_suite(store: &Store) {
    use gatehouse::store::{CodeRecord, CodeState, GrantRecord, NewRefresh};
    let now = datetime!(2026-11-30 12:00 UTC);
    store
        .insert_user(&gatehouse::account::User::new(
            "u_redeem".into(),
            gatehouse::account::Username::parse("redeemer").expect("name"),
            "unused".into(),
            vec![],
            now,
        ))
        .await
        .expect("user");
    let grant = |id: &str| GrantRecord {
        grant_id: id.to_owned(),
        client_id: "gh_redeem".into(),
        user_id: Some("u_redeem".into()),
        resource: "https://mcp.example.com/mcp".into(),
        scopes: "mcp".into(),
        created_at: now,
        expires_at: now + time::Duration::days(30),
        revoked_at: None,
    };
    store.insert_grant(&grant("g_taken")).await.expect("grant");
    let code = |n: usize, grant_id: &str| CodeRecord {
        code_hash: format!("code-hash-{n}"),
        grant_id: grant_id.to_owned(),
        client_id: "gh_redeem".into(),
        user_id: "u_redeem".into(),
        redirect_uri: "https://claude.ai/api/mcp/auth_callback".into(),
        code_challenge: "challenge".into(),
        resource: "https://mcp.example.com/mcp".into(),
        scopes: "mcp".into(),
        created_at: now,
        expires_at: now + time::Duration::minutes(1),
    };
    // Code 0 would create the grant that already exists; codes 1..8 are fine.
    let issued = |n: usize| AuditEvent::new("code.issued", now, json!({ "n": n }));
    store
        .issue_code(&code(0, "g_taken"), &issued(0), false)
        .await
        .expect("code");
    for n in 1..8 {
        store
            .issue_code(&code(n, &format!("g_new_{n}")), &issued(n), false)
            .await
            .expect("code");
    }
    let mut racers = tokio::task::JoinSet::new();
    for n in 0..8usize {
        let store = store.clone();
        let grant = grant(if n == 0 { "g_taken" } else { "g_fresh" });
        racers.spawn(async move {
            let grant = GrantRecord {
                grant_id: if n == 0 {
                    grant.grant_id
                } else {
                    format!("g_new_{n}")
                },
                ..grant
            };
            let refresh = NewRefresh {
                token_hash: format!("refresh-hash-{n}"),
                generation: 0,
                expires_at: now + time::Duration::days(1),
            };
            let mut event = AuditEvent::new("token.issued", now, json!({ "n": n }));
            event.grant_id = Some(grant.grant_id.clone());
            let outcome = store
                .redeem_code(
                    &format!("code-hash-{n}"),
                    now,
                    &grant,
                    Some(&refresh),
                    &event,
                )
                .await;
            (n, outcome)
        });
    }
    for (n, outcome) in racers.join_all().await {
        match n {
            0 => assert!(
                matches!(outcome, Err(StoreError::Conflict(_))),
                "the taken grant id: {outcome:?}"
            ),
            _ => assert!(matches!(outcome, Ok(true)), "code {n}: {outcome:?}"),
        }
    }
    // The failed redemption left nothing behind: its code is still fresh, no refresh token.
    assert!(matches!(
        store.code_for_exchange("code-hash-0").await.expect("read"),
        Some(CodeState::Fresh(_))
    ));
    assert_eq!(
        store.refresh_token("refresh-hash-0").await.expect("read"),
        None
    );
    for n in 1..8 {
        assert!(matches!(
            store.code_for_exchange(&format!("code-hash-{n}")).await.expect("read"),
            Some(CodeState::Consumed(c)) if c.grant_id == format!("g_new_{n}")
        ));
        let refresh = store
            .refresh_token(&format!("refresh-hash-{n}"))
            .await
            .expect("read")
            .expect("stored");
        assert_eq!(refresh.grant.grant_id, format!("g_new_{n}"));
    }
    let issued = store
        .audit_events(&Default::default(), None, 100)
        .await
        .expect("audit");
    let issued: Vec<_> = issued
        .iter()
        .filter(|r| r.event.kind == "token.issued")
        .map(|r| r.event.detail["n"].as_u64().expect("n"))
        .collect();
    assert_eq!(
        issued.len(),
        7,
        "one event per redemption, none for the failed one: {issued:?}"
    );
    assert!(!issued.contains(&0));
    // A second redemption of a consumed code changes nothing; the writer still works.
    let again = store
        .redeem_code(
            "code-hash-1",
            now,
            &grant("g_again"),
            None,
            &AuditEvent::new("token.issued", now, json!({ "n": 99 })),
        )
        .await
        .expect("redeem again");
    assert!(!again);
    assert_eq!(store.grant("g_again").await.expect("read"), None);

    // A registered client's code is written with its last use, only while the client exists:
    // `/authorize` may have read a removed one from its cache.
    store
        .insert_client(&client("gh_coded", ClientKind::Dynamic, now))
        .await
        .expect("client");
    let for_coded = |n: usize| CodeRecord {
        client_id: "gh_coded".into(),
        ..code(n, &format!("g_coded_{n}"))
    };
    let code_event = |n: usize| AuditEvent::new("code.issued", now, json!({ "n": n }));
    let later = now + time::Duration::minutes(5);
    let first = CodeRecord {
        created_at: later,
        ..for_coded(100)
    };
    assert!(
        store
            .issue_code(&first, &code_event(100), true)
            .await
            .expect("issue")
    );
    let coded = store
        .client("gh_coded")
        .await
        .expect("read")
        .expect("client");
    assert_eq!(coded.last_used_at, Some(later));
    assert!(
        store
            .code_for_exchange("code-hash-100")
            .await
            .expect("read")
            .is_some()
    );
    store
        .remove_client("gh_coded", "test", later)
        .await
        .expect("remove")
        .expect("removed");
    assert!(
        !store
            .issue_code(&for_coded(101), &code_event(101), true)
            .await
            .expect("issue")
    );
    assert_eq!(
        store
            .code_for_exchange("code-hash-101")
            .await
            .expect("read"),
        None
    );
}

/// Shared request budgets (issue 8: the per-token limit is global on PostgreSQL): many
/// simultaneous takes of one budget admit exactly its size, then one per interval.
async fn rate_budget_suite(store: &Store) {
    use gatehouse::store::RateTake;
    let (now, interval, burst) = (1_800_000_000_000_000i64, 6_000_000i64, 10i64);
    let mut racers = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let store = store.clone();
        racers.spawn(async move {
            store
                .take_rate_budget("mcp_token:race", now, interval, burst)
                .await
                .expect("take")
        });
    }
    let takes = racers.join_all().await;
    let allowed: Vec<i64> = takes
        .iter()
        .filter_map(|t| match t {
            RateTake::Allowed(tat) => Some(*tat),
            RateTake::Refused(_) => None,
        })
        .collect();
    assert_eq!(
        allowed.len(),
        10,
        "exactly the burst is admitted: {takes:?}"
    );
    let mut tats = allowed.clone();
    tats.sort_unstable();
    assert_eq!(tats.first(), Some(&(now + interval)));
    assert_eq!(tats.last(), Some(&(now + 10 * interval)));
    assert!(
        takes
            .iter()
            .all(|t| *t == RateTake::Refused(now + 10 * interval)
                || matches!(t, RateTake::Allowed(_)))
    );
    // One interval later, exactly one more fits; other keys are untouched.
    let later = now + interval;
    assert_eq!(
        store
            .take_rate_budget("mcp_token:race", later, interval, burst)
            .await
            .expect("take"),
        RateTake::Allowed(now + 11 * interval)
    );
    assert!(matches!(
        store
            .take_rate_budget("mcp_token:race", later, interval, burst)
            .await
            .expect("take"),
        RateTake::Refused(_)
    ));
    assert_eq!(
        store
            .take_rate_budget("mcp_token:other", later, interval, burst)
            .await
            .expect("take"),
        RateTake::Allowed(later + interval)
    );
    // Budgets that are full again are deleted; the others stay.
    assert_eq!(
        store
            .delete_idle_rate_budgets(later + interval)
            .await
            .expect("prune"),
        1
    );
    assert!(matches!(
        store
            .take_rate_budget("mcp_token:race", later, interval, burst)
            .await
            .expect("take"),
        RateTake::Refused(_)
    ));
}

fn client(id: &str, kind: ClientKind, created_at: time::OffsetDateTime) -> Client {
    let policy = RedirectPolicy::permissive();
    Client {
        id: id.to_owned(),
        kind,
        name: Some("Cursor \"beta\" ✓".to_owned()),
        redirect_uris: vec![
            RedirectUri::parse("cursor://anysphere.cursor-mcp/oauth/callback", &policy)
                .expect("uri"),
            RedirectUri::parse("http://127.0.0.1/cb", &policy).expect("uri"),
        ],
        auth_method: TokenEndpointAuthMethod::ClientSecretPost,
        grant_types: vec!["authorization_code".into(), "refresh_token".into()],
        response_types: vec!["code".into()],
        scope: Some("mcp".into()),
        client_uri: Some("https://cursor.com".into()),
        logo_uri: None,
        application_type: Some("native".into()),
        secret_hash: Some(Secret::presented("s3cret").hash()),
        created_at,
        last_used_at: None,
    }
}

async fn clients_suite(store: &Store) {
    let t0 = datetime!(2026-11-20 00:00 UTC);
    let dynamic = client("gh_dynamic", ClientKind::Dynamic, t0);
    store.insert_client(&dynamic).await.expect("insert");
    assert_eq!(
        store.client("gh_dynamic").await.expect("get"),
        Some(dynamic.clone())
    );
    let duplicate = store.insert_client(&dynamic).await;
    assert!(
        matches!(duplicate, Err(StoreError::Conflict(_))),
        "{duplicate:?}"
    );
    let stored = store
        .client("gh_dynamic")
        .await
        .expect("get")
        .expect("client");
    assert!(stored.verify_secret(&Secret::presented("s3cret")));
    assert!(stored.redirect_uri("http://127.0.0.1:5000/cb").is_some());

    let used = client("gh_used", ClientKind::Dynamic, t0);
    let operator = client("gh_operator", ClientKind::Operator, t0);
    let recent = client(
        "gh_recent",
        ClientKind::Dynamic,
        t0 + time::Duration::days(2),
    );
    for c in [&used, &operator, &recent] {
        store.insert_client(c).await.expect("insert");
    }
    store
        .touch_client("gh_used", t0 + time::Duration::hours(1))
        .await
        .expect("touch");
    assert_eq!(
        store
            .client("gh_used")
            .await
            .expect("get")
            .and_then(|c| c.last_used_at),
        Some(t0 + time::Duration::hours(1))
    );
    // Only never-used dynamic registrations older than the cutoff go.
    let expired = store
        .delete_unused_clients(t0 + time::Duration::days(1))
        .await
        .expect("expire");
    assert_eq!(expired, vec!["gh_dynamic".to_owned()]);
    let left: Vec<_> = store
        .clients()
        .await
        .expect("list")
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(left, ["gh_operator", "gh_used", "gh_recent"]);
    let now = time::OffsetDateTime::now_utc();
    assert!(
        store
            .remove_client("gh_operator", "test", now)
            .await
            .expect("remove")
            .is_some()
    );
    assert!(
        store
            .remove_client("gh_operator", "test", now)
            .await
            .expect("remove again")
            .is_none()
    );
}

#[tokio::test]
async fn storage_suite_on_sqlite() {
    let dir = TempDir::new().expect("tempdir");
    storage_suite(&sqlite_url(&dir), Backend::Sqlite).await;
}

#[tokio::test]
async fn storage_suite_on_postgres() {
    storage_suite(&fresh_postgres_url().await, Backend::Postgres).await;
}

#[tokio::test]
async fn sqlite_file_is_created_on_first_start_in_wal_mode() {
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("gatehouse.db");
    assert!(!path.exists());
    let store = Store::open(&DatabaseUrl::parse(&sqlite_url(&dir)).expect("url"))
        .await
        .expect("open");
    assert!(path.is_file());
    assert_eq!(
        store
            .sqlite_journal_mode()
            .await
            .expect("pragma")
            .as_deref(),
        Some("wal")
    );
}

/// The whole application (keys, discovery, health) also starts on PostgreSQL.
#[tokio::test]
async fn the_server_runs_on_postgres() {
    let app = TestApp::postgres().await;
    assert_eq!(app.get("/health").await.status, 200);
    let kid = app.state.keys.snapshot().current().kid().to_owned();
    let app = app.restart().await;
    assert_eq!(app.state.keys.snapshot().current().kid(), kid);
    assert_eq!(
        app.get("/jwks.json").await.json()["keys"][0]["kid"],
        kid.as_str()
    );
}

/// The mode bits of `path`.
fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Security review: the database file and its `-wal` and `-shm` were created 0644 and hold the
/// session-cookie key and every grant. A new one is 0600, all three files; an old one that
/// others could read is tightened at start.
#[tokio::test]
async fn the_sqlite_files_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let app = TestApp::sqlite().await;
    app.add_user("alice", "correct horse battery staple", &["user"])
        .await;
    let db = app.dir.path().join("gatehouse.db");
    let sidecars = ["gatehouse.db-wal", "gatehouse.db-shm"].map(|f| app.dir.path().join(f));
    for file in std::iter::once(&db).chain(&sidecars) {
        assert_eq!(mode_of(file), 0o600, "{}", file.display());
    }
    // Closed, the log is folded into the file and removed; the file made readable by others.
    let dir = app.restart_parts().await;
    let db = dir.path().join("gatehouse.db");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let url = sqlite_url(&dir);
    let app = TestApp::with(dir, &url, |_| {}).await;
    app.add_user("bob", "correct horse battery staple", &["user"])
        .await;
    for file in std::iter::once(&db).chain(&sidecars) {
        assert_eq!(mode_of(file), 0o600, "{}", file.display());
    }
}

/// One-time links and account locks, on this engine.
async fn links_and_locks_suite(store: &gatehouse::store::Store) {
    use gatehouse::domain::Secret;
    use gatehouse::store::FirstAdmin;
    let t0 = datetime!(2026-11-22 12:00 UTC);
    let hour = time::Duration::hours(1);
    let user = |name: &str| {
        gatehouse::account::User::new(
            format!("u_link_{name}"),
            gatehouse::account::Username::parse(name).expect("name"),
            String::new(),
            vec!["user".into()],
            t0,
        )
    };
    // A setup link works while nobody exists; once someone does, it opens nothing.
    let setup = Secret::generate().expect("rng");
    store
        .add_setup_link(&setup.hash(), t0, t0 + hour)
        .await
        .expect("add");
    let nobody = !store.has_users().await.expect("users");
    assert_eq!(
        store
            .setup_link_open(&setup.hash(), t0)
            .await
            .expect("open"),
        nobody
    );
    assert!(
        !store
            .setup_link_open(&setup.hash(), t0 + hour)
            .await
            .expect("open"),
        "expired"
    );
    let carol = user("carol");
    store.insert_user(&carol).await.expect("carol");
    assert!(
        !store
            .setup_link_open(&setup.hash(), t0)
            .await
            .expect("open")
    );
    let outcome = store
        .first_admin(&setup.hash(), &user("late"), t0)
        .await
        .expect("use");
    assert_eq!(outcome, FirstAdmin::AlreadySetUp);
    assert_eq!(
        store
            .first_admin(&setup.hash(), &user("later"), t0)
            .await
            .expect("use"),
        FirstAdmin::LinkNotValid,
        "the links went with the first use"
    );

    let first = Secret::generate().expect("rng");
    let second = Secret::generate().expect("rng");
    store
        .add_reset_link(&first.hash(), &carol.id, t0, t0 + hour)
        .await
        .expect("add");
    store
        .add_reset_link(&second.hash(), &carol.id, t0, t0 + hour)
        .await
        .expect("add");
    assert_eq!(
        store
            .reset_link_user(&first.hash(), t0)
            .await
            .expect("read"),
        None,
        "replaced"
    );
    assert_eq!(
        store
            .reset_link_user(&second.hash(), t0 + hour)
            .await
            .expect("read"),
        None,
        "expired"
    );
    assert_eq!(
        store
            .use_reset_link(&second.hash(), "phc", t0)
            .await
            .expect("use")
            .map(|(user, _)| user),
        Some(carol.id.clone())
    );
    assert_eq!(
        store
            .use_reset_link(&second.hash(), "phc2", t0)
            .await
            .expect("use"),
        None,
        "once"
    );
    let read = store.user(&carol.id).await.expect("read").expect("carol");
    assert_eq!(read.password_hash, "phc");

    assert!(
        store
            .lock_user(&carol.id, t0)
            .await
            .expect("lock")
            .is_some()
    );
    let read = store.user(&carol.id).await.expect("read").expect("carol");
    assert_eq!(read.locked_at, Some(t0));
    assert!(
        !read.session_valid(t0.unix_timestamp() + 10),
        "no session while locked"
    );
    assert!(store.unlock_user(&carol.id).await.expect("unlock"));
    assert!(
        store
            .set_roles(&carol.id, &["user".into(), "admin".into()])
            .await
            .expect("roles")
    );
    let read = store.user(&carol.id).await.expect("read").expect("carol");
    assert_eq!(
        (read.locked_at, read.roles.clone()),
        (None, vec!["user".to_owned(), "admin".to_owned()])
    );
    assert_eq!(store.lock_user("u_nobody", t0).await.expect("lock"), None);
}
