//! The cost of the policy path per request: one policy with request and
//! response hooks that read three headers and set one, and a chain of three.
//!
//! One exchange is reused across iterations (the fixture's edits are
//! idempotent), so that building and dropping it is not measured.
//!
//! Run: `scripts/build-policies fixture-bench-headers && cargo bench -p adc --bench policy_path`

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use adc::policy::{Engine, Exchange, LoadedPolicy, NoPools, PolicyOptions};
use criterion::{criterion_group, criterion_main, Criterion};

fn exchange() -> Box<Exchange> {
    let mut request = http::Request::builder().uri("/app/items?page=2");
    for (name, value) in [
        ("host", "www.example.com"),
        ("user-agent", "curl/8.5"),
        ("accept", "*/*"),
        ("x-request-id", "5b0c4c2e-8f53-4d3c"),
        ("accept-encoding", "gzip"),
        ("accept-language", "en"),
        ("cookie", "a=1; b=2"),
        ("x-forwarded-for", "10.0.0.1"),
        ("x-forwarded-proto", "http"),
        ("forwarded", "for=10.0.0.1"),
    ] {
        request = request.header(name, value);
    }
    let (parts, ()) = request.body(()).expect("a valid request").into_parts();
    let mut ex = Box::new(Exchange::new(parts, IpAddr::from([10, 0, 0, 1]), false));
    let (response, ()) = http::Response::builder()
        .header("content-type", "text/plain")
        .header("server", "demo")
        .header("x-backend", "b1")
        .body(())
        .expect("a valid response")
        .into_parts();
    ex.response = Some(response);
    ex
}

fn run(chain: &[Arc<LoadedPolicy>], mut ex: Box<Exchange>) -> Box<Exchange> {
    for p in chain {
        let (back, result) = p.on_request_headers(ex);
        result.expect("the fixture does not fail");
        ex = back;
    }
    for p in chain {
        let (back, result) = p.on_response_headers(ex);
        result.expect("the fixture does not fail");
        ex = back;
    }
    ex
}

fn policy_path(c: &mut Criterion) {
    let file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/policies/fixture-bench-headers.wasm");
    let wasm = std::fs::read(&file).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run scripts/build-policies fixture-bench-headers",
            file.display()
        )
    });
    let engine = Engine::new(Default::default()).expect("engine");
    let load = |name: &str| {
        engine
            .load(name, &wasm, PolicyOptions::default(), Arc::new(NoPools))
            .expect("the fixture loads")
    };
    let one = vec![load("p1")];
    let noop_file = file.with_file_name("fixture-noop.wasm");
    let noop_wasm = std::fs::read(&noop_file).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run scripts/build-policies fixture-noop",
            noop_file.display()
        )
    });
    let noop = vec![engine
        .load(
            "noop",
            &noop_wasm,
            PolicyOptions::default(),
            Arc::new(NoPools),
        )
        .expect("the fixture loads")];
    let three = vec![load("p1"), load("p2"), load("p3")];

    let mut group = c.benchmark_group("policy_path");
    group.bench_function("no_policy", |b| {
        let mut ex = Some(exchange());
        b.iter(|| ex = Some(run(&[], ex.take().expect("put back"))))
    });
    // A request hook that does nothing: the cost of one hook call alone.
    group.bench_function("empty_hook", |b| {
        let mut ex = Some(exchange());
        b.iter(|| ex = Some(run(&noop, ex.take().expect("put back"))))
    });
    group.bench_function("one_policy", |b| {
        let mut ex = Some(exchange());
        b.iter(|| ex = Some(run(&one, ex.take().expect("put back"))))
    });
    group.bench_function("three_policies", |b| {
        let mut ex = Some(exchange());
        b.iter(|| ex = Some(run(&three, ex.take().expect("put back"))))
    });
    group.finish();
}

criterion_group!(benches, policy_path);
criterion_main!(benches);
