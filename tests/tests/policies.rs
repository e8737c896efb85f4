#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first unexpected error"
)]

//! Policies through the real proxy: a shipped policy changes a request, and
//! hostile policies fail one request each while the proxy carries on.

use adc_tests::{backend, client, h2_client, listener, policy, pool, Adc};

fn config_with(policy_name: &str, file: &str, extra: &str) -> String {
    format!("\n[policies.{policy_name}]\nfile = \"{file}\"\n{extra}\n")
}

#[tokio::test]
async fn the_rewrite_policy_changes_the_request_and_the_response() {
    policy("rewrite");
    let b = backend("b1").await;
    let config = listener("web", &["rw"])
        + &pool("web", "round_robin", &[&b])
        + &config_with(
            "rw",
            "rewrite.wasm",
            "[policies.rw.settings]\nrequest_headers = { set = [[\"x-env\", \"prod\"]], remove = [\"x-debug\"] }\nresponse_headers = { set = [[\"x-served-by\", \"adc\"]] }\nurl = [{ from = \"/old/\", to = \"/new/\" }]",
        );
    let adc = Adc::start(&config).await;
    let response = client()
        .get(adc.url("web", "/old/page?q=1"))
        .header("x-debug", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-served-by"], "adc");
    assert_eq!(response.headers()["x-echo-x-env"], "prod");
    assert!(response.headers().get("x-echo-x-debug").is_none());
    assert_eq!(response.text().await.unwrap(), "b1 GET /new/page?q=1");
}

async fn hostile(
    file: &str,
    path: &str,
    extra: &str,
) -> (Adc, reqwest::Response, reqwest::Response) {
    policy(file);
    let b = backend("b1").await;
    let config = listener("web", &["bad"])
        + &pool("web", "round_robin", &[&b])
        + &config_with("bad", &format!("{file}.wasm"), extra);
    let adc = Adc::start(&config).await;
    let c = client();
    let started = std::time::Instant::now();
    let failed = c.get(adc.url("web", path)).send().await.unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "the fault is stopped promptly"
    );
    let next = c.get(adc.url("web", "/fine")).send().await.unwrap();
    (adc, failed, next)
}

async fn fault_count(adc: &Adc, kind: &str) -> u64 {
    adc.metric(
        "adc_policy_faults_total",
        &[("kind", kind), ("policy", "bad")],
    )
    .await as u64
}

#[tokio::test]
async fn an_infinite_loop_is_stopped_by_the_cpu_budget_and_the_next_request_is_served() {
    let (adc, failed, next) = hostile("fixture-spin", "/spin", "cpu_budget = \"20ms\"").await;
    assert_eq!(failed.status(), 500);
    assert_eq!(next.status(), 200);
    assert!(fault_count(&adc, "cpu_budget").await >= 1);
}

#[tokio::test]
async fn unbounded_allocation_stops_at_the_memory_cap_and_the_next_request_is_served() {
    let (adc, failed, next) = hostile(
        "fixture-hog",
        "/hog",
        "memory_cap = \"8MiB\"\ncpu_budget = \"5s\"",
    )
    .await;
    assert_eq!(failed.status(), 500);
    assert_eq!(next.status(), 200);
    assert!(fault_count(&adc, "memory_cap").await >= 1);
}

#[tokio::test]
async fn a_panic_fails_one_request_and_fail_open_skips_the_policy() {
    let (adc, failed, next) = hostile("fixture-panicky", "/panic", "").await;
    assert_eq!(failed.status(), 500);
    assert_eq!(next.status(), 200);
    assert!(fault_count(&adc, "trap").await >= 1);
    // The SDK's panic hook sends the message and where it was raised to
    // the host log before the trap.
    let log = adc_tests::logged();
    let line = log
        .lines()
        .find(|l| l.contains("fixture panic on purpose"))
        .unwrap_or_else(|| panic!("no panic message in the log:\n{log}"));
    assert!(line.contains("panicked at "), "{line}");
    assert!(line.contains("src/lib.rs:"), "the source location: {line}");
    assert!(line.contains("ERROR"), "logged as an error: {line}");

    let (_adc, skipped, _) = hostile("fixture-panicky", "/panic", "fail_open = true").await;
    assert_eq!(
        skipped.status(),
        200,
        "fail-open serves the request without the policy"
    );
}

#[tokio::test]
async fn a_component_importing_an_unknown_function_is_refused_naming_the_import() {
    let engine = adc::policy::Engine::new(Default::default()).unwrap();
    let err = engine
        .load_file(
            "bad",
            &policy("fixture-bad-import"),
            Default::default(),
            std::sync::Arc::new(adc::policy::NoPools),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("teleport"), "{err}");
}

#[tokio::test]
async fn non_wasm_and_truncated_files_are_refused_with_a_clear_error() {
    let engine = adc::policy::Engine::new(Default::default()).unwrap();
    let pools = std::sync::Arc::new(adc::policy::NoPools);
    let err = engine
        .load(
            "x",
            b"#!/bin/sh\necho hi\n",
            Default::default(),
            pools.clone(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a WebAssembly file"), "{err}");
    let wasm = std::fs::read(policy("rewrite")).unwrap();
    let err = engine
        .load(
            "x",
            &wasm[..wasm.len() / 2],
            Default::default(),
            pools.clone(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid or truncated component"), "{err}");
    // The engine still loads a good one afterwards.
    engine.load("x", &wasm, Default::default(), pools).unwrap();
}

async fn set_cookie_round_trip(c: reqwest::Client) {
    policy("fixture-cookies");
    let b = adc_tests::backend_with(std::sync::Arc::new(|_req| {
        let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::from("ok")));
        r.headers_mut()
            .append("set-cookie", "a=1; Path=/".parse().unwrap());
        r.headers_mut()
            .append("set-cookie", "b=2, c=3; Path=/".parse().unwrap());
        r
    }))
    .await;
    let config = listener("web", &["cookies"])
        + &pool("web", "round_robin", &[&b])
        + &config_with("cookies", "fixture-cookies.wasm", "");
    let adc = Adc::start(&config).await;
    let response = c.get(adc.url("web", "/")).send().await.unwrap();
    assert_eq!(response.headers()["x-set-cookie-count"], "2");
    assert_eq!(
        response.headers()["x-set-cookie-values"],
        "a=1; Path=/ | b=2, c=3; Path=/"
    );
    let lines: Vec<_> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        lines,
        ["a=1; Path=/", "b=2, c=3; Path=/", "added=by-policy; Path=/"]
    );
}

#[tokio::test]
async fn every_set_cookie_is_seen_separately_and_an_added_one_is_its_own_line_over_http1() {
    set_cookie_round_trip(client()).await;
}

#[tokio::test]
async fn every_set_cookie_is_seen_separately_and_an_added_one_is_its_own_line_over_http2() {
    set_cookie_round_trip(h2_client()).await;
}

/// Header edits made in the header hooks: the backend and the client must
/// see exactly what the policy read back during its hook, over HTTP/1.1
/// and HTTP/2.
async fn header_edits_round_trip(c: reqwest::Client) {
    policy("fixture-edits");
    let b = adc_tests::backend_with(std::sync::Arc::new(|req| {
        let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::from("ok")));
        let mut seen: Vec<String> = req
            .headers()
            .iter()
            .filter(|(n, _)| {
                n.as_str().starts_with("x-one")
                    || [
                        "x-multi", "x-drop", "cookie", "x-after", "x-failed", "x-bad",
                    ]
                    .contains(&n.as_str())
            })
            .map(|(n, v)| format!("{n}={}", v.to_str().unwrap()))
            .collect();
        // Sorted: the order of different names on the wire is not the
        // point; that of one name's values is, and sorting keeps it.
        seen.sort();
        r.headers_mut()
            .insert("x-backend-saw", seen.join(" & ").parse().unwrap());
        r.headers_mut().append("set-cookie", "s=1".parse().unwrap());
        r.headers_mut()
            .append("x-backend-secret", "hide me".parse().unwrap());
        r
    }))
    .await;
    let config = listener("web", &["edits"])
        + &pool("web", "round_robin", &[&b])
        + &config_with("edits", "fixture-edits.wasm", "");
    let adc = Adc::start(&config).await;
    let response = c
        .get(adc.url("web", "/"))
        .header("x-drop", "gone")
        .header("cookie", "old=1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let h = response.headers();
    assert_eq!(
        h["x-backend-saw"],
        "cookie=k=v & x-after=2 & x-failed= & x-multi=a & x-multi=b & x-one=1"
    );
    let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["s=1", "added=1"]);
    assert_eq!(h["x-set-cookie-count"], "2");
    assert!(h.get("x-backend-secret").is_none());
    assert_eq!(h["x-status-seen"], "200");
}

#[tokio::test]
async fn header_edits_read_back_in_the_hook_are_what_the_backend_and_client_get_over_http1() {
    header_edits_round_trip(client()).await;
}

#[tokio::test]
async fn header_edits_read_back_in_the_hook_are_what_the_backend_and_client_get_over_http2() {
    header_edits_round_trip(h2_client()).await;
}

#[tokio::test]
async fn a_policy_that_reroutes_on_every_choice_cannot_hold_a_request_forever() {
    policy("fixture-pingpong");
    let (a, b) = (backend("a").await, backend("b").await);
    let config = listener("a", &["pingpong"])
        + &pool("a", "round_robin", &[&a])
        + &pool("b", "round_robin", &[&b])
        + &config_with("pingpong", "fixture-pingpong.wasm", "");
    let adc = Adc::start(&config).await;
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client().get(adc.url("web", "/")).send(),
    )
    .await
    .expect("the request ends")
    .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(a.hits() + b.hits(), 1);
}

/// Hook metrics cover what runs: `init` is counted, and a hook the policy
/// does not have gets no series (it is never called).
#[tokio::test]
async fn hook_metrics_count_init_and_leave_out_hooks_the_policy_lacks() {
    policy("fixture-noop");
    let b = backend("b1").await;
    let config = listener("web", &["hookcount"])
        + &pool("web", "round_robin", &[&b])
        + &config_with("hookcount", "fixture-noop.wasm", "");
    let adc = Adc::start(&config).await;
    let response = client().get(adc.url("web", "/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let calls = |hook: &'static str| {
        let adc = &adc;
        async move {
            adc.metric(
                "adc_policy_hook_calls_total",
                &[("policy", "hookcount"), ("hook", hook)],
            )
            .await
        }
    };
    assert!(calls("init").await >= 1.0, "init runs once per instance");
    assert_eq!(calls("request_headers").await, 1.0);
    let text = adc.metrics_text().await;
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("policy=\"hookcount\""))
        .filter(|l| {
            ["response_headers", "end", "response_chunk"]
                .iter()
                .any(|h| l.contains(&format!("hook=\"{h}\"")))
        })
        .collect();
    assert!(
        series.is_empty(),
        "series for hooks never called: {series:?}"
    );
}

fn answers_config(b: &adc_tests::Backend) -> String {
    policy("fixture-answers");
    listener("web", &["answers"])
        + &pool("web", "round_robin", &[b])
        + &config_with("answers", "fixture-answers.wasm", "")
}

/// A policy's answer with what HTTP cannot carry: the client still gets a
/// well-formed response, over HTTP/1.1 and HTTP/2, and each left-out part
/// is counted.
#[tokio::test]
async fn a_policys_answer_carries_only_what_http_allows() {
    let b = backend("plain").await;
    let adc = Adc::start(&answers_config(&b)).await;
    for (version, c) in [("HTTP/1.1", client()), ("HTTP/2", h2_client())] {
        for status in [204, 304] {
            // HTTP/2 refused this whole stream (DATA after a 204's HEADERS).
            let r = c
                .get(adc.url("web", &format!("/x?reply={status}")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), status, "{version}");
            assert_eq!(r.text().await.unwrap(), "", "{version} {status}");
        }
        for status in [100, 101, 199] {
            let r = c
                .get(adc.url("web", &format!("/x?reply={status}")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 500, "{version} {status}");
        }
        let r = c
            .get(adc.url("web", "/x?reply=200&evil=1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{version}");
        let h = r.headers().clone();
        assert_eq!(h["x-fine"], "yes", "{version}");
        assert_eq!(h["content-length"], "11", "{version}");
        for gone in ["x-split", "x-injected", "connection", "transfer-encoding"] {
            assert!(h.get(gone).is_none(), "{version}: {gone}");
        }
        assert_eq!(r.text().await.unwrap(), "reply-body\n", "{version}");
        let r = c
            .get(adc.url("web", "/x?redirect=bad"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 500, "{version}");
    }
    // Per version: the 204 and 304 bodies, three statuses, five headers,
    // the redirect.
    let counted = || async {
        adc.metric(
            "adc_policy_invalid_answers_total",
            &[("policy", "answers"), ("hook", "request_headers")],
        )
        .await
    };
    adc_tests::eventually(
        "invalid answers counted",
        std::time::Duration::from_secs(5),
        || async { counted().await == 22.0 },
    )
    .await;
    assert_eq!(b.hits.load(std::sync::atomic::Ordering::Relaxed), 0);
}

/// A status set on the backend's response: an interim one is refused, and
/// one that has no body sends none, whatever the backend sent.
#[tokio::test]
async fn a_status_a_policy_sets_is_final_and_drops_a_body_it_cannot_have() {
    let b = backend("plain").await;
    let adc = Adc::start(&answers_config(&b)).await;
    for (version, c) in [("HTTP/1.1", client()), ("HTTP/2", h2_client())] {
        let r = c.get(adc.url("web", "/x?status=204")).send().await.unwrap();
        assert_eq!(r.status(), 204, "{version}");
        assert_eq!(r.headers()["x-set-status"], "taken", "{version}");
        assert!(r.headers().get("content-length").is_none(), "{version}");
        assert_eq!(r.text().await.unwrap(), "", "{version}");
        let r = c.get(adc.url("web", "/x?status=101")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{version}");
        assert_eq!(r.headers()["x-set-status"], "refused", "{version}");
        assert_eq!(
            r.text().await.unwrap(),
            "plain GET /x?status=101",
            "{version}"
        );
        // The connection is still good for the next request.
        let r = c.get(adc.url("web", "/y")).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "plain GET /y", "{version}");
    }
}

/// Body hooks registered: a HEAD answer keeps the backend's length (it
/// was 0, the length of the nothing buffered), and a request without a
/// body is not given an empty one.
#[tokio::test]
async fn body_hooks_keep_a_heads_length_and_add_no_body_to_a_get() {
    let b = backend("plain").await;
    let adc = Adc::start(&answers_config(&b)).await;
    let direct = client()
        .head(format!("http://{}/x", b.addr))
        .send()
        .await
        .unwrap();
    let length = direct.headers()["content-length"].clone();
    assert_ne!(length, "0");
    for (version, c) in [("HTTP/1.1", client()), ("HTTP/2", h2_client())] {
        let r = c.head(adc.url("web", "/x")).send().await.unwrap();
        assert_eq!(r.headers()["content-length"], length, "{version}");
        let r = c.get(adc.url("web", "/x")).send().await.unwrap();
        assert!(
            r.headers().get("x-echo-content-length").is_none(),
            "{version}: a GET gained a Content-Length"
        );
        let r = c
            .post(adc.url("web", "/x"))
            .body("abc")
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-echo-content-length"], "3", "{version}");
    }
}

/// The end hook's summary names the member used, whether it answered, and
/// what went wrong.
#[tokio::test]
async fn the_end_hook_is_told_the_member_its_time_and_what_went_wrong() {
    let b = backend("plain").await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let config = answers_config(&b)
        + &format!(
            "\n[pools.dead]\nmethod = \"round_robin\"\nmembers = [{{ name = \"gone\", address = \"{dead}\" }}]\n\
             \n[[listener]]\nname = \"down\"\nlisten = \"127.0.0.1:0\"\n[[listener.route]]\npool = \"dead\"\npolicies = [\"answers\"]\n"
        );
    let adc = Adc::start(&config).await;
    let r = client().get(adc.url("web", "/ok")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client().get(adc.url("down", "/dead")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    adc_tests::eventually(
        "both summaries logged",
        std::time::Duration::from_secs(5),
        || async {
            let log = adc_tests::logged();
            log.contains("summary path=/ok status=200 backend=web/m0 upstream=true error=none")
                && log.lines().any(|l| {
                    l.contains(
                        "summary path=/dead status=502 backend=dead/gone upstream=false error=",
                    ) && !l.contains("error=none")
                })
        },
    )
    .await;
}
