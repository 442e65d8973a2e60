//! `gatehouse doctor URL`: the discovery and registration a real MCP client goes through, replayed
//! against the URL a person would paste, with a checklist of what passes, what would break for
//! which client, and the fix in one line. It works against any MCP server with OAuth; with
//! `--user` it also signs in through Gatehouse's own pages and calls a tool.
//!
//! What each client does, as its code and documentation show: all follow the 401 challenge's
//! `resource_metadata` (RFC 9728 §5.1), else probe the path form of the Protected Resource
//! Metadata and then the root form (§3.1); all require `resource` to be the URL they were given
//! (§3.3) and the authorization server's `issuer` to be the one PRM names, byte for byte (RFC
//! 8414 §3.3); all need PKCE S256 advertised; hosted clients (Claude.ai, ChatGPT) reach the server
//! from the internet and require https; browser-based clients (MCP Inspector) need CORS.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};
use url::Url;

/// `gatehouse doctor` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// The MCP server's URL, exactly as a person would paste it into a client.
    pub url: String,
    /// Also sign in as this Gatehouse user (password on standard input) through the sign-in
    /// and consent pages, exchange the code with the `oauth2` crate and call a tool.
    #[arg(long)]
    pub user: Option<String>,
    /// Read the password for `--user` from standard input.
    #[arg(long)]
    pub password_stdin: bool,
    /// Send requests for HOST to ADDRESS (`HOST:ADDRESS:PORT`, as curl's `--resolve`), to check
    /// a deployment before its DNS points at it.
    #[arg(long, value_name = "HOST:ADDRESS:PORT")]
    pub resolve: Vec<String>,
    /// Do not register the clients (dynamic registration creates a client per run).
    #[arg(long)]
    pub no_register: bool,
}

/// The clients whose behaviour is replayed, and their registration bodies.
struct Profile {
    name: &'static str,
    /// Runs in a browser: needs CORS on the discovery documents, registration and token.
    browser: bool,
    /// Its dynamic registration request.
    registration: fn() -> Value,
}

const PROFILES: [Profile; 6] = [
    Profile {
        name: "Claude.ai",
        browser: false,
        registration: || {
            json!({
                "client_name": "Claude",
                "redirect_uris": ["https://claude.ai/api/mcp/auth_callback"],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none",
                "scope": "claudeai"
            })
        },
    },
    Profile {
        name: "ChatGPT",
        browser: false,
        registration: || {
            json!({
                "client_name": "ChatGPT",
                "redirect_uris": [
                    "https://chatgpt.com/connector_platform_oauth_redirect",
                    "https://chatgpt.com/connector/oauth/doctor"
                ],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none"
            })
        },
    },
    Profile {
        name: "Claude Code",
        browser: false,
        registration: || {
            json!({
                "client_name": "Claude Code (gatehouse doctor)",
                "redirect_uris": ["http://localhost:54212/callback"],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none"
            })
        },
    },
    Profile {
        name: "VS Code",
        browser: false,
        registration: || {
            json!({
                "client_name": "Visual Studio Code",
                "redirect_uris": [
                    "https://vscode.dev/redirect",
                    "https://insiders.vscode.dev/redirect",
                    "http://127.0.0.1/",
                    "http://127.0.0.1:33418/"
                ],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none"
            })
        },
    },
    Profile {
        name: "Cursor",
        browser: false,
        registration: || {
            json!({
                "client_name": "Cursor",
                "redirect_uris": [
                    "cursor://anysphere.cursor-mcp/oauth/callback",
                    "https://www.cursor.com/agents/mcp/oauth/callback",
                    "http://localhost:8787/callback"
                ],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none"
            })
        },
    },
    Profile {
        name: "MCP Inspector",
        browser: true,
        registration: || {
            json!({
                "redirect_uris": ["http://localhost:6274/oauth/callback"],
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "client_name": "MCP Inspector",
                "client_uri": "https://github.com/modelcontextprotocol/inspector"
            })
        },
    },
];

/// Which clients a failed check breaks.
#[derive(Debug, Clone, Copy)]
enum Breaks {
    /// Every client.
    All,
    /// Browser-based clients.
    Browser,
    /// Only the named client.
    One(&'static str),
    /// None: a warning.
    None,
}

impl Breaks {
    fn names(self) -> Vec<&'static str> {
        PROFILES
            .iter()
            .filter(|p| match self {
                Self::All => true,
                Self::Browser => p.browser,
                Self::One(name) => p.name == name,
                Self::None => false,
            })
            .map(|p| p.name)
            .collect()
    }
}

/// One line of the checklist.
#[derive(Debug)]
struct Line {
    ok: bool,
    what: String,
    breaks: Vec<&'static str>,
    fix: String,
}

/// The checklist as it is filled in.
#[derive(Debug, Default)]
struct Report {
    lines: Vec<Line>,
}

impl Report {
    fn pass(&mut self, what: impl Into<String>) {
        self.lines.push(Line {
            ok: true,
            what: what.into(),
            breaks: Vec::new(),
            fix: String::new(),
        });
    }

    fn fail(&mut self, what: impl Into<String>, breaks: Breaks, fix: impl Into<String>) {
        self.lines.push(Line {
            ok: false,
            what: what.into(),
            breaks: breaks.names(),
            fix: fix.into(),
        });
    }

    fn failed(&self) -> bool {
        self.lines.iter().any(|l| !l.ok && !l.breaks.is_empty())
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            if line.ok {
                let _ = writeln!(out, "PASS  {}", line.what);
                continue;
            }
            let mark = if line.breaks.is_empty() {
                "WARN"
            } else {
                "FAIL"
            };
            let _ = writeln!(out, "{mark}  {}", line.what);
            if !line.breaks.is_empty() {
                let _ = writeln!(out, "      breaks: {}", line.breaks.join(", "));
            }
            let _ = writeln!(out, "      fix: {}", line.fix);
        }
        let broken: Vec<&str> = PROFILES
            .iter()
            .map(|p| p.name)
            .filter(|name| self.lines.iter().any(|l| l.breaks.contains(name)))
            .collect();
        if broken.is_empty() {
            out.push_str("\nEvery client checked would connect.\n");
        } else {
            let _ = writeln!(out, "\nWould fail for: {}.", broken.join(", "));
        }
        out
    }
}

/// Whether `host` is a loopback name or address (where plain http is allowed, RFC 8252 §8.3).
fn loopback(url: &Url) -> bool {
    url.host()
        .is_some_and(|host| crate::domain::is_loopback_host(&host))
}

/// The parameters of a `Bearer` challenge (RFC 6750 §3), or `None` if it is not one.
fn bearer_params(header: &str) -> Option<Vec<(String, String)>> {
    let rest = header.trim().strip_prefix("Bearer")?;
    let mut params = Vec::new();
    let mut rest = rest.trim_start();
    while !rest.is_empty() {
        let (name, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.push((name.trim().to_ascii_lowercase(), value.to_owned()));
        rest = tail.trim_start().trim_start_matches(',').trim_start();
    }
    Some(params)
}

/// A JSON document fetched with GET: its status and body (`None` when not JSON).
async fn get_json(http: &reqwest::Client, url: &str) -> Result<(u16, Option<Value>), String> {
    let res = http
        .get(url)
        .header("accept", "application/json")
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    let status = res.status().as_u16();
    let body = res.bytes().await.map_err(|e| e.to_string())?;
    Ok((status, serde_json::from_slice(&body).ok()))
}

/// The well-known URL `suffix` for `url`, in path form (`/.well-known/{suffix}{path}`, the
/// trailing slash of the path dropped, RFC 9728 §3.1 and RFC 8414 §3.1) and root form.
fn well_known(url: &Url, suffix: &str) -> (String, String) {
    let origin = url.origin().ascii_serialization();
    let path = url.path().trim_end_matches('/');
    (
        format!("{origin}/.well-known/{suffix}{path}"),
        format!("{origin}/.well-known/{suffix}"),
    )
}

/// Runs the checks and prints the checklist; `Ok(false)` when a client would fail.
pub async fn doctor(args: DoctorArgs) -> anyhow::Result<bool> {
    let url = Url::parse(args.url.trim())
        .map_err(|e| anyhow::anyhow!("{:?} is not a URL: {e}", args.url))?;
    let password = if args.user.is_some() {
        if !args.password_stdin {
            anyhow::bail!("--user needs --password-stdin (passwords never go on the command line)");
        }
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        Some(line.trim_end_matches(['\n', '\r']).to_owned())
    } else {
        None
    };
    let mut http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .user_agent(concat!("gatehouse-doctor/", env!("CARGO_PKG_VERSION")));
    for rule in &args.resolve {
        let (host, address) = rule
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("--resolve {rule:?}: use HOST:ADDRESS:PORT"))?;
        let address: std::net::SocketAddr = address
            .parse()
            .map_err(|e| anyhow::anyhow!("--resolve {rule:?}: {e}"))?;
        http = http.resolve(host, address);
    }
    let http = http.build()?;
    let mut report = Report::default();
    let checked = check(&http, args.url.trim(), &url, &mut report, args.no_register).await;
    if let (Some(user), Some(password), Some(found)) = (&args.user, &password, &checked) {
        sign_in_and_call(&http, &url, found, user, password, &mut report).await;
    }
    println!("gatehouse doctor {url}\n");
    print!("{}", report.text());
    Ok(!report.failed())
}

/// What discovery found, for the sign-in.
#[derive(Debug)]
struct Found {
    metadata: Value,
    resource: String,
}

async fn check(
    http: &reqwest::Client,
    pasted: &str,
    url: &Url,
    report: &mut Report,
    no_register: bool,
) -> Option<Found> {
    // Transport.
    if url.scheme() == "https" {
        report.pass("the URL is https");
    } else if loopback(url) {
        report.fail(
            "the URL is plain http on loopback: for clients on this machine only (Claude.ai and ChatGPT cannot reach it)",
            Breaks::None,
            "for hosted clients, serve a public https URL: a TLS-terminating proxy in front, and `issuer` set to https://YOUR-HOST",
        );
    } else {
        report.fail(
            format!(
                "the URL is plain http on a public host ({})",
                url.host_str().unwrap_or("")
            ),
            Breaks::All,
            "serve it over https (a TLS-terminating proxy in front) and paste the https URL",
        );
    }

    // 1. The challenge.
    let initialize = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": { "protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": { "name": "gatehouse-doctor", "version": env!("CARGO_PKG_VERSION") } }
    });
    let res = match http
        .post(url.as_str())
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(initialize.to_string())
        .send()
        .await
    {
        Ok(res) => res,
        Err(err) => {
            report.fail(
                format!("cannot reach {url}: {}", err.without_url()),
                Breaks::All,
                "check the URL, DNS and that the server listens (and the proxy forwards to it)",
            );
            return None;
        }
    };
    let status = res.status().as_u16();
    let challenge = res
        .headers()
        .get_all("www-authenticate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(bearer_params);
    let resource_metadata = challenge.as_ref().and_then(|p| {
        p.iter()
            .find(|(k, _)| k == "resource_metadata")
            .map(|(_, v)| v.clone())
    });
    match (status, &challenge) {
        (401, Some(_)) => report.pass("an unauthenticated request gets 401 with a Bearer challenge"),
        (429, _) => report.fail(
            "an unauthenticated request gets 429, not 401: clients read it as a failure, not as \"sign in\"",
            Breaks::All,
            "answer requests without a token with 401 before any rate limit (or raise the limit for them)",
        ),
        (401, None) => report.fail(
            "401 without a `WWW-Authenticate: Bearer` challenge",
            Breaks::All,
            "send `WWW-Authenticate: Bearer resource_metadata=\"...\"` with the 401 (RFC 9728 §5.1)",
        ),
        (other, _) => report.fail(
            format!("an unauthenticated request gets {other}, not 401"),
            Breaks::All,
            "require a token at this URL and answer 401 with a Bearer challenge; check the URL is the MCP endpoint",
        ),
    }
    if challenge.is_some() && resource_metadata.is_none() {
        report.fail(
            "the challenge has no resource_metadata",
            Breaks::None,
            "add resource_metadata=\"https://HOST/.well-known/oauth-protected-resource/PATH\" (clients then skip probing)",
        );
    }

    // 2. Protected Resource Metadata: the challenge's pointer, the path form, the root form.
    let (path_form, root_form) = well_known(url, "oauth-protected-resource");
    let mut prm = None;
    let mut candidates: Vec<(&str, String)> = Vec::new();
    if let Some(pointer) = &resource_metadata {
        candidates.push(("the challenge's resource_metadata", pointer.clone()));
    }
    candidates.push(("the path form", path_form));
    candidates.push(("the root form", root_form));
    for (which, at) in candidates {
        match get_json(http, &at).await {
            Ok((200, Some(doc))) if doc.is_object() => {
                report.pass(format!("Protected Resource Metadata at {which} ({at})"));
                prm.get_or_insert(doc);
            }
            Ok((status, _)) => report.fail(
                format!("Protected Resource Metadata at {which} ({at}): {status}, not a JSON document"),
                if which == "the path form" { Breaks::One("Claude.ai") } else if which == "the root form" { Breaks::One("ChatGPT") } else { Breaks::All },
                "serve the same PRM JSON at /.well-known/oauth-protected-resource and at /.well-known/oauth-protected-resource/PATH, and let the proxy pass /.well-known through",
            ),
            Err(err) => report.fail(
                format!("Protected Resource Metadata at {which} ({at}): {err}"),
                Breaks::All,
                "let the proxy pass /.well-known through to the server",
            ),
        }
    }
    let prm = prm?;
    let resource = prm["resource"].as_str().unwrap_or_default().to_owned();
    if resource == pasted {
        report.pass(format!(
            "PRM resource is the pasted URL, byte for byte ({resource})"
        ));
    } else {
        report.fail(
            format!("PRM resource {resource:?} is not the pasted URL {pasted:?}"),
            Breaks::All,
            format!("paste {resource} into the client, or make PRM `resource` exactly {pasted}"),
        );
    }
    let Some(issuer) = prm["authorization_servers"]
        .get(0)
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        report.fail(
            "PRM names no authorization_servers",
            Breaks::All,
            "list the authorization server's issuer in PRM `authorization_servers`",
        );
        return None;
    };

    // 3. Authorization-server metadata: RFC 8414 first, then OpenID discovery.
    let Ok(issuer_url) = Url::parse(&issuer) else {
        report.fail(
            format!("PRM authorization server {issuer:?} is not a URL"),
            Breaks::All,
            "write the issuer as an absolute https URL",
        );
        return None;
    };
    let path = issuer_url.path().trim_end_matches('/');
    let origin = issuer_url.origin().ascii_serialization();
    let mut metadata = None;
    for at in [
        format!("{origin}/.well-known/oauth-authorization-server{path}"),
        format!("{origin}/.well-known/openid-configuration{path}"),
    ] {
        if let Ok((200, Some(doc))) = get_json(http, &at).await {
            report.pass(format!("authorization-server metadata at {at}"));
            metadata = Some(doc);
            break;
        }
    }
    let Some(metadata) = metadata else {
        report.fail(
            format!("no authorization-server metadata for {issuer} (RFC 8414 nor OpenID discovery)"),
            Breaks::All,
            format!("serve RFC 8414 metadata at {origin}/.well-known/oauth-authorization-server{path}, and let the proxy pass /.well-known through"),
        );
        return None;
    };
    let meta_issuer = metadata["issuer"].as_str().unwrap_or_default();
    if meta_issuer == issuer {
        report.pass(format!(
            "the metadata's issuer is PRM's authorization server ({issuer})"
        ));
    } else {
        report.fail(
            format!("the metadata's issuer {meta_issuer:?} differs from PRM's authorization server {issuer:?}"),
            Breaks::All,
            "write the issuer identically everywhere; the usual cause is a trailing slash on one of them",
        );
    }
    let endpoint = |name: &str| metadata[name].as_str().map(str::to_owned);
    for name in ["authorization_endpoint", "token_endpoint"] {
        match endpoint(name).and_then(|e| Url::parse(&e).ok()) {
            Some(e) if e.scheme() == "https" || loopback(&e) => {
                report.pass(format!("{name} is {e}"))
            }
            Some(e) => report.fail(
                format!("{name} {e} is not https"),
                Breaks::All,
                "serve every authorization-server endpoint over https",
            ),
            None => report.fail(
                format!("no {name} in the metadata"),
                Breaks::All,
                format!("advertise `{name}`"),
            ),
        }
    }
    let s256 = metadata["code_challenge_methods_supported"]
        .as_array()
        .is_some_and(|m| m.iter().any(|v| v == "S256"));
    if s256 {
        report.pass("PKCE S256 is advertised");
    } else {
        report.fail(
            "code_challenge_methods_supported does not list S256",
            Breaks::All,
            "advertise \"code_challenge_methods_supported\": [\"S256\"] (clients refuse to start without it)",
        );
    }
    let cimd = metadata["client_id_metadata_document_supported"] == json!(true);
    let registration = endpoint("registration_endpoint");
    if registration.is_none() && !cimd {
        report.fail(
            "neither dynamic registration nor Client ID Metadata Documents are offered",
            Breaks::All,
            "offer a registration_endpoint (RFC 7591) or client_id_metadata_document_supported",
        );
    }
    if cimd {
        if let Some(authorize) = endpoint("authorization_endpoint") {
            metadata_document(http, &authorize, pasted, report).await;
        }
    }

    // 4. CORS for browser-based clients.
    let cors_targets = [
        Some(url.as_str().to_owned()),
        Some(well_known(url, "oauth-protected-resource").0),
        endpoint("token_endpoint"),
        registration.clone(),
    ];
    for target in cors_targets.into_iter().flatten() {
        let res = http
            .request(reqwest::Method::OPTIONS, &target)
            .header("origin", "http://localhost:6274")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type, mcp-protocol-version",
            )
            .send()
            .await;
        let allowed = res.as_ref().ok().and_then(|r| {
            r.headers()
                .get("access-control-allow-origin")
                .and_then(|v| v.to_str().ok())
                .map(|v| v == "*" || v == "http://localhost:6274")
        });
        if allowed == Some(true) {
            report.pass(format!("CORS preflight answered at {target}"));
        } else {
            report.fail(
                format!("no CORS preflight answer at {target}"),
                Breaks::Browser,
                "answer OPTIONS with Access-Control-Allow-Origin (and the requested headers) on /mcp, the discovery documents, /token and /register",
            );
        }
    }

    // 5. Dynamic registration with each client's own request.
    if let (Some(register), false) = (&registration, no_register) {
        for profile in &PROFILES {
            let res = http
                .post(register)
                .header("content-type", "application/json")
                .body((profile.registration)().to_string())
                .send()
                .await;
            match res {
                Ok(r) if r.status().as_u16() == 201 || r.status().is_success() => {
                    report.pass(format!("{} registers", profile.name));
                }
                Ok(r) => {
                    let status = r.status().as_u16();
                    let body = r.text().await.unwrap_or_default();
                    report.fail(
                        format!("{} cannot register: {status} {}", profile.name, body.chars().take(200).collect::<String>()),
                        Breaks::One(profile.name),
                        "accept its redirect URIs (loopback on any port, https, its private-use scheme) and ignore unknown scopes and metadata",
                    );
                }
                Err(err) => report.fail(
                    format!("{} cannot register: {}", profile.name, err.without_url()),
                    Breaks::One(profile.name),
                    "make the registration endpoint reachable",
                ),
            }
        }
    }
    Some(Found { metadata, resource })
}

/// The metadata-document URL VS Code uses as its `client_id` where a server advertises
/// `client_id_metadata_document_supported` (it then registers no client).
const VS_CODE_METADATA_DOCUMENT: &str = "https://vscode.dev/oauth/client-metadata.json";

/// Starts an authorization as VS Code does with a Client ID Metadata Document: the server must
/// fetch the document and go on to its sign-in (a redirect or a page), not refuse the client.
async fn metadata_document(
    http: &reqwest::Client,
    authorize: &str,
    resource: &str,
    report: &mut Report,
) {
    let (challenge, _verifier) = oauth2::PkceCodeChallenge::new_random_sha256();
    let redirect = "http://127.0.0.1:33418/";
    let Ok(mut url) = Url::parse(authorize) else {
        return;
    };
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", VS_CODE_METADATA_DOCUMENT)
        .append_pair("redirect_uri", redirect)
        .append_pair("code_challenge", challenge.as_str())
        .append_pair("code_challenge_method", "S256")
        .append_pair("state", "gatehouse-doctor")
        .append_pair("resource", resource);
    let answer = http.get(url.as_str()).send().await;
    let refused = match &answer {
        Err(err) => Some(format!("{err}")),
        Ok(res) if res.status().is_redirection() => res
            .headers()
            .get("location")
            .and_then(|l| l.to_str().ok())
            .filter(|l| l.starts_with(redirect) && l.contains("error="))
            .map(|l| {
                format!(
                    "redirected back with {}",
                    l.split_once('?').map_or(l, |(_, q)| q)
                )
            }),
        Ok(res) if res.status().is_success() => None,
        Ok(res) => Some(format!("{}", res.status())),
    };
    match refused {
        None => report.pass(format!(
            "the server fetched VS Code's Client ID Metadata Document ({VS_CODE_METADATA_DOCUMENT}) and went on to sign-in"
        )),
        Some(why) => report.fail(
            format!("an authorization with VS Code's Client ID Metadata Document as client_id was refused: {why}"),
            Breaks::One("VS Code"),
            "let the server reach https://vscode.dev (its egress), or stop advertising client_id_metadata_document_supported so clients register dynamically",
        ),
    }
}

/// Signs in as `user` through the sign-in and consent pages (Gatehouse's form fields), with a
/// client registered for a loopback redirect; exchanges the code with the `oauth2` crate; lists
/// the tools and calls `whoami` (or the first tool).
async fn sign_in_and_call(
    http: &reqwest::Client,
    url: &Url,
    found: &Found,
    user: &str,
    password: &str,
    report: &mut Report,
) {
    match signed_in_call(http, url, found, user, password).await {
        Ok(what) => report.pass(what),
        Err(err) => report.fail(
            format!("signing in as {user} and calling a tool failed: {err}"),
            Breaks::All,
            "see the server's log for the request that failed",
        ),
    }
}

async fn signed_in_call(
    http: &reqwest::Client,
    url: &Url,
    found: &Found,
    user: &str,
    password: &str,
) -> Result<String, String> {
    use oauth2::basic::BasicClient;
    use oauth2::{
        AuthUrl, AuthorizationCode, ClientId, CsrfToken, PkceCodeChallenge, RedirectUrl, Scope,
        TokenResponse as _, TokenUrl,
    };
    let metadata = &found.metadata;
    let text = |name: &str| {
        metadata[name]
            .as_str()
            .map(str::to_owned)
            .ok_or(format!("no {name}"))
    };
    let redirect = "http://127.0.0.1:9/doctor/callback";
    let registered: Value = http
        .post(text("registration_endpoint")?)
        .header("content-type", "application/json")
        .body(
            json!({
                "client_name": "gatehouse doctor",
                "redirect_uris": [redirect],
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"]
            })
            .to_string(),
        )
        .send()
        .await
        .map_err(|e| e.to_string())?
        .bytes()
        .await
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))?;
    let client_id = registered["client_id"]
        .as_str()
        .ok_or("no client_id registered")?
        .to_owned();
    let client = BasicClient::new(ClientId::new(client_id))
        .set_auth_uri(AuthUrl::new(text("authorization_endpoint")?).map_err(|e| e.to_string())?)
        .set_token_uri(TokenUrl::new(text("token_endpoint")?).map_err(|e| e.to_string())?)
        .set_redirect_uri(RedirectUrl::new(redirect.to_owned()).map_err(|e| e.to_string())?);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (authorize, _state) = client
        .authorize_url(CsrfToken::new_random)
        .set_pkce_challenge(challenge)
        .add_scope(Scope::new("mcp".to_owned()))
        .add_extra_param("resource", &found.resource)
        .url();

    // The browser leg: follow redirects by hand, keeping the session cookie.
    let mut cookie = String::new();
    let mut next = authorize.to_string();
    let mut code = None;
    for _ in 0..8 {
        if next.starts_with(redirect) {
            let at = Url::parse(&next).map_err(|e| e.to_string())?;
            code = at
                .query_pairs()
                .find(|(k, _)| k == "code")
                .map(|(_, v)| v.into_owned());
            break;
        }
        let page = http
            .get(&next)
            .header("cookie", &cookie)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        keep_cookie(&page, &mut cookie);
        if let Some(location) = location(&page, &next) {
            next = location;
            continue;
        }
        let at = Url::parse(&next).map_err(|e| e.to_string())?;
        let html = page.text().await.map_err(|e| e.to_string())?;
        let form = |name: &str| hidden(&html, name);
        let (action, fields): (&str, Vec<(&str, String)>) = if at.path().ends_with("/login") {
            (
                "/login",
                vec![
                    ("csrf", form("csrf")),
                    ("request", form("request")),
                    ("username", user.to_owned()),
                    ("password", password.to_owned()),
                ],
            )
        } else if at.path().ends_with("/consent") {
            (
                "/consent",
                vec![
                    ("csrf", form("csrf")),
                    ("request", form("request")),
                    ("decision", "allow".to_owned()),
                ],
            )
        } else {
            return Err(format!("the browser leg stopped at {next}"));
        };
        let post = at.join(action).map_err(|e| e.to_string())?;
        let answer = http
            .post(post.as_str())
            .header("cookie", &cookie)
            .form(&fields)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        keep_cookie(&answer, &mut cookie);
        match location(&answer, post.as_str()) {
            Some(location) => next = location,
            None => {
                return Err(format!(
                    "{action} answered {} without a redirect (wrong password?)",
                    answer.status()
                ));
            }
        }
    }
    let code = code.ok_or("no code reached the redirect URI")?;
    let tokens = client
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(verifier)
        .add_extra_param("resource", &found.resource)
        .request_async(&crate::identity::Http::new(http.clone()))
        .await
        .map_err(|e| format!("token exchange: {e}"))?;
    let access = tokens.access_token().secret().clone();

    let mut session = None;
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "gatehouse-doctor", "version": env!("CARGO_PKG_VERSION")}}});
    let (status, headers, _) = mcp_post(http, url, &access, None, &init).await?;
    if !status.is_success() {
        return Err(format!("initialize with the token: {status}"));
    }
    session = headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(session);
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    mcp_post(http, url, &access, session.as_deref(), &initialized).await?;
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}});
    let (status, _, body) = mcp_post(http, url, &access, session.as_deref(), &list).await?;
    if !status.is_success() || !body.contains("\"tools\"") {
        let head: String = body.chars().take(200).collect();
        return Err(format!("tools/list with the token: {status} {head}"));
    }
    let tool = if body.contains("\"whoami\"") {
        "whoami"
    } else {
        ""
    };
    if !tool.is_empty() {
        let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": tool, "arguments": {}}});
        let (status, _, body) = mcp_post(http, url, &access, session.as_deref(), &call).await?;
        if !status.is_success() || !body.contains("\"result\"") {
            let head: String = body.chars().take(200).collect();
            return Err(format!("tools/call {tool} with the token: {status} {head}"));
        }
        return Ok(format!(
            "signed in as {user} through the pages, exchanged the code with the oauth2 crate, listed the tools and called {tool}"
        ));
    }
    Ok(format!(
        "signed in as {user} through the pages, exchanged the code with the oauth2 crate, and listed the tools"
    ))
}

/// One JSON-RPC message to the MCP endpoint with the access token (and the session, if any):
/// the status, headers and body of the answer.
async fn mcp_post(
    http: &reqwest::Client,
    url: &Url,
    access: &str,
    session: Option<&str>,
    body: &Value,
) -> Result<(reqwest::StatusCode, reqwest::header::HeaderMap, String), String> {
    let mut request = http
        .post(url.as_str())
        .bearer_auth(access)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18");
    if let Some(s) = session {
        request = request.header("mcp-session-id", s);
    }
    let answer = request
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let (status, headers) = (answer.status(), answer.headers().clone());
    let text = answer.text().await.map_err(|e| e.to_string())?;
    Ok((status, headers, text))
}

/// Keeps the session cookie a response sets.
fn keep_cookie(res: &reqwest::Response, cookie: &mut String) {
    if let Some(set) = res
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
    {
        *cookie = set.split(';').next().unwrap_or_default().to_owned();
    }
}

/// A redirect's target, made absolute against `base`.
fn location(res: &reqwest::Response, base: &str) -> Option<String> {
    if !res.status().is_redirection() {
        return None;
    }
    let to = res.headers().get("location")?.to_str().ok()?;
    Url::parse(base).ok()?.join(to).ok().map(|u| u.to_string())
}

/// The value of the hidden input `name` in a page, or "".
fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    html.find(&marker)
        .map(|at| {
            let rest = &html[at + marker.len()..];
            rest[..rest.find('"').unwrap_or(0)]
                .replace("&#38;", "&")
                .replace("&amp;", "&")
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_read_as_the_sdks_read_them() {
        let params = bearer_params(
            "Bearer resource_metadata=\"https://h/.well-known/oauth-protected-resource/mcp\", scope=\"mcp\"",
        )
        .expect("bearer");
        assert_eq!(
            params[0],
            (
                "resource_metadata".to_owned(),
                "https://h/.well-known/oauth-protected-resource/mcp".to_owned()
            )
        );
        assert_eq!(params[1], ("scope".to_owned(), "mcp".to_owned()));
        assert!(bearer_params("Basic realm=\"x\"").is_none());
    }

    #[test]
    fn well_known_urls_drop_the_trailing_slash_of_the_path() {
        let url = Url::parse("https://h.example/mcp/").expect("url");
        assert_eq!(
            well_known(&url, "oauth-protected-resource"),
            (
                "https://h.example/.well-known/oauth-protected-resource/mcp".to_owned(),
                "https://h.example/.well-known/oauth-protected-resource".to_owned()
            )
        );
    }
}
