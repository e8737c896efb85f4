//! The cost of the policy path per request: one policy with request and
//! response hooks that read three headers and set one, and a chain of three.
//!
//! One exchange is reused across iterations (the fixture's edits are
//! idempotent), so that building and dropping it is not measured.
//!
//! The `shipped` group runs each shipped policy with the settings of its
//! example (`examples/<policy>.toml`) through the header, backend and end
//! hooks it registers, on a plain GET: what each costs a request that
//! passes. Policies see the example's pools (`init` checks the names its
//! settings give), all members healthy.
//! `rewrite_chunk_16k` times one 16 KiB piece of a text body through
//! rewrite's `on-response-chunk`, as a streamed body goes through it.
//!
//! Run: `scripts/build-policies fixture-bench-headers && cargo bench -p adc --bench policy_path`

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use adc::policy::{
    Backend, Engine, Exchange, Hook, LoadedPolicy, NoPools, PolicyOptions, Transaction,
};
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

/// Every hook the policy registers, in request order, as the proxy runs
/// them for a request that goes to a backend and comes back.
fn run_all_hooks(policy: &LoadedPolicy, mut ex: Box<Exchange>) -> Box<Exchange> {
    let backend = Backend {
        pool: "web".to_owned(),
        member: "demo-1".to_owned(),
        address: "127.0.0.1:9101".to_owned(),
    };
    let step = |ex: Box<Exchange>, hook: Hook| -> Box<Exchange> {
        if !policy.implements(hook) {
            return ex;
        }
        let (ex, result) = match hook {
            Hook::RequestHeaders => policy.on_request_headers(ex),
            Hook::BackendSelected => policy.on_backend_selected(ex, &backend),
            Hook::ResponseHeaders => policy.on_response_headers(ex),
            _ => return ex,
        };
        result.expect("the shipped policies do not fail on this request");
        ex
    };
    ex = step(ex, Hook::RequestHeaders);
    ex = step(ex, Hook::BackendSelected);
    ex = step(ex, Hook::ResponseHeaders);
    if policy.implements(Hook::End) {
        let summary = Transaction {
            status: 200,
            duration_ns: 1_000_000,
            upstream_ns: Some(800_000),
            backend: Some(backend.clone()),
            error: None,
        };
        let (back, result) = policy.on_end(ex, &summary);
        result.expect("the shipped policies do not fail on this request");
        ex = back;
    }
    ex
}

fn shipped(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let engine = Engine::new(Default::default()).expect("engine");
    let mut group = c.benchmark_group("shipped");
    // Every crate under policies/ is a shipped policy.
    let mut names: Vec<String> = std::fs::read_dir(root.join("policies"))
        .expect("the policies folder")
        .map(|e| {
            e.expect("a folder entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    for name in &names {
        let name = name.as_str();
        let example = root.join(format!("examples/{name}.toml"));
        let mut config = adc::config::Config::load(&example)
            .unwrap_or_else(|e| panic!("{}: {e}", example.display()));
        let pools = adc::runtime::build_pools(&mut config).expect("the example's pools");
        let file = root.join(format!("target/policies/{name}.wasm"));
        let wasm = std::fs::read(&file)
            .unwrap_or_else(|e| panic!("{}: {e}; run scripts/build-policies", file.display()));
        // The example's first section that loads this file.
        let section = config
            .policies
            .values()
            .find(|p| p.file.get_ref() == Path::new(&format!("{name}.wasm")))
            .unwrap_or_else(|| panic!("examples/{name}.toml loads {name}.wasm"));
        let options = adc::runtime::policy_options(section);
        let policy = engine
            .load(name, &wasm, options, Arc::new(adc::runtime::Pools(pools)))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        // A fresh exchange each time (made outside the timing): policies
        // such as sticky add headers that a reused one would pile up.
        group.bench_function(name, |b| {
            b.iter_batched(
                exchange,
                |ex| run_all_hooks(&policy, ex),
                criterion::BatchSize::SmallInput,
            )
        });
        if name == "rewrite" {
            // The example substitutes "demo-" in text bodies.
            let piece = "<li>served by demo-1 for a client</li>\n".repeat(16 * 1024 / 40);
            group.bench_function("rewrite_chunk_16k", |b| {
                let mut ex = Some(exchange());
                b.iter(|| {
                    let taken = ex.take().expect("put back");
                    let (back, result) = policy.on_response_chunk(taken, piece.as_bytes(), false);
                    result.expect("rewrite does not fail on a text body");
                    ex = Some(back);
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, policy_path, shipped);
criterion_main!(benches);
