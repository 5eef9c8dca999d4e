//! Signing in to the console, against the real binary: the first admin's password from
//! the banner, sessions in cookies, CSRF on every change, roles, stale versions, the
//! audit trail, sign-in limits and sign-out. The admin token keeps working.

mod common;

use common::{Reply, Server};
use serde_json::{json, Value};

/// The password the banner printed for the first admin.
fn first_password(s: &Server) -> String {
    let out = s.output.lock().unwrap().join("\n");
    let line = out
        .lines()
        .find(|l| l.contains("sign in as `admin` with password "))
        .unwrap_or_else(|| panic!("no sign-in line in the banner:\n{out}"));
    line.split("with password ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_string()
}

/// Signs in; the cookie (`name=value`) and the CSRF token.
fn sign_in(s: &Server, user: &str, password: &str) -> (Reply, Option<(String, String)>) {
    let body = json!({"username": user, "password": password}).to_string();
    let r = s.request(
        "POST",
        "/console/api/session",
        &[("Content-Type", "application/json")],
        Some(body.as_bytes()),
    );
    let session = r.header("set-cookie").map(|c| {
        let cookie = c.split(';').next().unwrap().to_string();
        (cookie, r.body["csrf"].as_str().unwrap_or("").to_string())
    });
    (r, session)
}

fn call(
    s: &Server,
    method: &str,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut headers = vec![("Cookie", cookie), ("Content-Type", "application/json")];
    if let Some(t) = csrf {
        headers.push(("X-CSRF-Token", t));
    }
    let bytes = body.map(|b| b.to_string().into_bytes());
    s.request(method, path, &headers, bytes.as_deref())
}

#[test]
fn people_sign_in_and_change_only_what_their_role_allows() {
    let config = "admin_token = \"test-admin-token\"\n[[sources]]\nname = \"web\"\nwrite_key = \"wk_web_123\"\n";
    let s = Server::start(Some(config));
    let password = first_password(&s);

    // A wrong password, then the right one: a session cookie, HttpOnly and SameSite.
    sign_in(&s, "admin", "not the password")
        .0
        .assert_error(401, "invalid_credentials");
    sign_in(&s, "nobody", &password)
        .0
        .assert_error(401, "invalid_credentials");
    let (r, session) = sign_in(&s, "admin", &password);
    assert_eq!(r.status, 200, "{}", r.body);
    let set_cookie = r.header("set-cookie").unwrap().to_string();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    let (cookie, csrf) = session.unwrap();
    let me = call(&s, "GET", "/admin/v1/me", &cookie, None, None);
    assert_eq!(
        (me.body["user"].as_str(), me.body["role"].as_str()),
        (Some("admin"), Some("admin"))
    );

    // A change without the session's CSRF token is refused; with it, it is made.
    let viewer = json!({"role": "viewer", "password": "a viewer's long password"});
    call(
        &s,
        "PUT",
        "/admin/v1/users/vera",
        &cookie,
        None,
        Some(viewer.clone()),
    )
    .assert_error(403, "csrf_token_invalid");
    call(
        &s,
        "PUT",
        "/admin/v1/users/vera",
        &cookie,
        Some("wrong"),
        Some(viewer.clone()),
    )
    .assert_error(403, "csrf_token_invalid");
    let made = call(
        &s,
        "PUT",
        "/admin/v1/users/vera",
        &cookie,
        Some(&csrf),
        Some(viewer.clone()),
    );
    assert_eq!(made.status, 201, "{}", made.body);
    assert_eq!(made.body["version"], 1);
    // Bad input names its field.
    let short = call(
        &s,
        "PUT",
        "/admin/v1/users/bob",
        &cookie,
        Some(&csrf),
        Some(json!({"role": "admin", "password": "short"})),
    );
    short.assert_error(400, "invalid_user");
    assert_eq!(short.body["field"], "password");
    let role = call(
        &s,
        "PUT",
        "/admin/v1/users/bob",
        &cookie,
        Some(&csrf),
        Some(json!({"role": "root", "password": "long enough password"})),
    );
    assert_eq!(role.body["field"], "role", "{}", role.body);
    // Creating a user that exists, or changing one from a version not stored: refused.
    call(
        &s,
        "PUT",
        "/admin/v1/users/vera",
        &cookie,
        Some(&csrf),
        Some(viewer),
    )
    .assert_error(409, "user_exists");
    call(
        &s,
        "PUT",
        "/admin/v1/users/vera",
        &cookie,
        Some(&csrf),
        Some(json!({"role": "viewer", "version": 7})),
    )
    .assert_error(409, "stale_version");

    // The viewer reads, and may change nothing, even with its CSRF token.
    let (_, vs) = sign_in(&s, "vera", "a viewer's long password");
    let (vcookie, vcsrf) = vs.unwrap();
    assert_eq!(
        call(&s, "GET", "/admin/v1/sources", &vcookie, None, None).status,
        200
    );
    let hook = json!({"type": "webhook", "sources": ["web"], "settings": {"hooks": [{"hook": "https://example.com/in"}]}});
    call(
        &s,
        "PUT",
        "/admin/v1/destinations/x",
        &vcookie,
        Some(&vcsrf),
        Some(hook.clone()),
    )
    .assert_error(403, "forbidden");
    call(
        &s,
        "PUT",
        "/admin/v1/users/vera",
        &vcookie,
        Some(&vcsrf),
        Some(json!({"role": "admin", "version": 1})),
    )
    .assert_error(403, "forbidden");

    // The admin token keeps working for scripts, and is audited as `token`.
    let r = s.admin_call(
        "PUT",
        "/admin/v1/destinations/x".trim_start_matches("/admin/v1"),
        Some(&hook),
    );
    assert_eq!(r.status, 201, "{}", r.body);

    // A destination changed since it was read is not overwritten (If-Match, 412).
    let read = s.admin("/destinations/x");
    let tag = read.header("etag").expect("an entity tag").to_string();
    let mut changed = hook.clone();
    changed["settings"]["hooks"][0]["hook"] = json!("https://example.com/other");
    let headers = |tag: &str| {
        vec![
            ("Cookie".to_string(), cookie.clone()),
            ("X-CSRF-Token".to_string(), csrf.clone()),
            ("If-Match".to_string(), tag.to_string()),
            ("Content-Type".to_string(), "application/json".to_string()),
        ]
    };
    let put = |body: &Value, tag: &str| {
        let hs = headers(tag);
        let hs: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        s.request(
            "PUT",
            "/admin/v1/destinations/x",
            &hs,
            Some(body.to_string().as_bytes()),
        )
    };
    let ok = put(&changed, &tag);
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_ne!(ok.header("etag"), Some(tag.as_str()), "a new version");
    put(&hook, &tag).assert_error(412, "stale_version");

    // The audit trail: who changed which user, when, before and after, no hash in it.
    let audit = call(&s, "GET", "/admin/v1/audit", &cookie, None, None);
    let entries = audit.body["data"].as_array().unwrap();
    let created = entries
        .iter()
        .find(|e| e["kind"] == "user" && e["name"] == "vera")
        .unwrap_or_else(|| panic!("{}", audit.body));
    assert_eq!(
        (created["actor"].as_str(), created["action"].as_str()),
        (Some("user:admin"), Some("create"))
    );
    assert_eq!(created["after"]["role"], "viewer");
    assert!(
        !audit.body.to_string().contains("argon2"),
        "no password hash in the trail"
    );
    let by_token = entries
        .iter()
        .find(|e| e["kind"] == "destination" && e["name"] == "x" && e["action"] == "create")
        .unwrap_or_else(|| panic!("{}", audit.body));
    assert_eq!(
        (by_token["actor"].as_str(), by_token["action"].as_str()),
        (Some("token"), Some("create"))
    );
    assert_eq!(by_token["after"]["type"], "webhook");
    let by_admin = entries
        .iter()
        .find(|e| e["kind"] == "destination" && e["name"] == "x" && e["action"] == "update")
        .unwrap_or_else(|| panic!("{}", audit.body));
    assert_eq!(by_admin["actor"], "user:admin");
    assert_eq!(
        by_admin["before"]["settings"]["hooks"][0]["hook"],
        "https://example.com/in"
    );
    assert_eq!(
        by_admin["after"]["settings"]["hooks"][0]["hook"],
        "https://example.com/other"
    );

    // Sign-out ends the session.
    let out = call(
        &s,
        "DELETE",
        "/console/api/session",
        &vcookie,
        Some(&vcsrf),
        None,
    );
    assert_eq!(out.status, 204);
    call(&s, "GET", "/admin/v1/me", &vcookie, None, None).assert_error(401, "missing_admin_token");

    // Sign-in is limited: after a burst of wrong passwords, 429 with Retry-After.
    let mut limited = None;
    for _ in 0..12 {
        let (r, _) = sign_in(&s, "admin", "guessing");
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        r.assert_error(401, "invalid_credentials");
    }
    let limited = limited.expect("sign-in is limited");
    limited.assert_error(429, "too_many_sign_ins");
    assert!(limited.header("retry-after").is_some());
}

/// `[console] enabled = false`: no console pages (the admin API stays); on by default,
/// its page carries the strict Content-Security-Policy.
#[test]
fn the_console_can_be_turned_off_and_its_pages_are_locked_down() {
    let on = Server::start(Some("admin_token = \"test-admin-token\"\n"));
    let page = on.request("GET", "/console/sources", &[], None);
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").unwrap_or("");
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(
        on.request("GET", "/", &[], None).status,
        200,
        "/ leads to the console"
    );
    let off = Server::start(Some(
        "admin_token = \"test-admin-token\"\n[console]\nenabled = false\n",
    ));
    assert_eq!(
        off.request("GET", "/console/sources", &[], None).status,
        404
    );
    assert_eq!(off.admin("/sources").status, 200, "the admin API stays");
}

/// `[console] listen`: the console, its sign-in and the admin API on an address of their
/// own; the server's listener serves no console and takes no session (a browser sends
/// the cookie to every port of the host), while the admin token keeps working there.
#[test]
fn the_console_can_have_an_address_of_its_own() {
    let s = Server::start(Some(
        "admin_token = \"test-admin-token\"\n[console]\nlisten = \"127.0.0.1:0\"\n",
    ));
    let console = s
        .console_url()
        .expect("the banner names the console's address");
    assert_ne!(console, s.url);
    let password = first_password(&s);
    // On the server's listener: no console, no sign-in; the Tracking API and the token.
    assert_eq!(s.request("GET", "/console/sources", &[], None).status, 404);
    let body = json!({"username": "admin", "password": password}).to_string();
    let json_type = [("Content-Type", "application/json")];
    assert_eq!(
        s.request(
            "POST",
            "/console/api/session",
            &json_type,
            Some(body.as_bytes())
        )
        .status,
        404
    );
    assert_eq!(s.admin("/sources").status, 200);
    assert_eq!(
        s.send("/v1/track", &json!({"userId": "u1", "event": "E"}))
            .status,
        200
    );
    // On the console's: the page, sign-in, the admin API; no Tracking API.
    let page = common::request_to(&console, "GET", "/console/sources", &[], None);
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-security-policy")
        .is_some_and(|c| c.contains("script-src 'self'")));
    let signed = common::request_to(
        &console,
        "POST",
        "/console/api/session",
        &json_type,
        Some(body.as_bytes()),
    );
    assert_eq!(signed.status, 200, "{}", signed.body);
    let cookie = signed
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let me = common::request_to(
        &console,
        "GET",
        "/admin/v1/me",
        &[("Cookie", &cookie)],
        None,
    );
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.body["user"], "admin");
    assert_eq!(
        me.body["tracking_url"].as_str(),
        Some(s.url.as_str()),
        "install snippets name the Tracking API's address, not the console's"
    );
    let track = common::request_to(&console, "POST", "/v1/track", &json_type, Some(b"{}"));
    assert_eq!(
        track.status, 404,
        "no Tracking API on the console's address: {}",
        track.body
    );
    // The same cookie on the server's listener is no session there.
    s.request("GET", "/admin/v1/me", &[("Cookie", &cookie)], None)
        .assert_error(401, "missing_admin_token");
}
