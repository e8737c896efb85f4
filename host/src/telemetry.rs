//! The metrics adc exports on its admin address: one Prometheus recorder per
//! process, and a description of every metric the host records, so that
//! each family in `/metrics` carries its `# HELP` line.

use metrics::{describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Histogram buckets, in seconds: from 50 µs (a policy hook) to 10 s (a slow
/// backend).
const BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// The process's recorder, installed on first use. A second adc in the same
/// process (tests) shares it.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_ok() {
                describe();
            }
            handle
        })
        .clone()
}

/// Host metric names a policy's own metrics may not take (a policy's metric
/// `NAME` is exported as `adc_policy_NAME`).
pub const RESERVED_POLICY_METRICS: &[&str] = &[
    "hook_calls_total",
    "hook_duration_seconds",
    "faults_total",
    "misplaced_decisions_total",
    "loads_total",
];

fn describe() {
    describe_counter!(
        "adc_client_received_bytes_total",
        "Request body bytes received from clients, by listener"
    );
    describe_counter!(
        "adc_client_sent_bytes_total",
        "Response body bytes sent to clients, by listener"
    );
    describe_counter!(
        "adc_tls_reloads_total",
        "Certificate reloads after a file changed, by listener and outcome"
    );
    describe_counter!(
        "adc_tls_handshake_failures_total",
        "TLS handshakes with clients that failed, by listener"
    );
    describe_counter!(
        "adc_policy_reroutes_refused_total",
        "Re-routes by backend-selected hooks past the limit per request, ignored, by pool"
    );
    describe_counter!(
        "adc_requests_total",
        "Client requests answered, by listener, route, pool, member and status class. Pool and member are empty for answers no member gave: a policy's (a waf 403, a redirect), adc's own refusals (400, 404 no route, 431, 501, 503); route is empty too for requests refused before routing (the HTTP/1 parser's 400, 414, 431; header lists over limits.max_header_bytes, 431). An HTTP/2 header list over twice the limit is refused by the h2 crate, uncounted"
    );
    describe_counter!(
        "adc_responses_aborted_total",
        "Responses whose body was cut after the head went out (the request is still counted by its status in adc_requests_total), by listener, pool, member and side: backend (its connection reset or closed mid-body; also a passive-check failure), client (it went away or reset the stream, its request body failed or stalled, or the backend gave up sending while the client was not reading; none is a member failure), policy (a streaming hook faulted)"
    );
    describe_histogram!(
        "adc_request_duration_seconds",
        "Time from a client request's arrival to its response headers, by listener"
    );
    describe_histogram!(
        "adc_upstream_duration_seconds",
        "Time from choosing a member to its response headers (connect included), by pool"
    );
    describe_counter!(
        "adc_upstream_connections_opened_total",
        "Connections opened to backend members"
    );
    describe_gauge!(
        "adc_upstream_connections_open",
        "Connections to backend members now open, idle or busy, by member address"
    );
    describe_gauge!(
        "adc_client_connections",
        "Client connections now open, by listener"
    );
    describe_counter!(
        "adc_l4_connections_total",
        "TCP connections relayed by L4 listeners, by listener, pool and member"
    );
    describe_counter!(
        "adc_l4_flows_total",
        "UDP flows started by L4 listeners, by listener, pool and member"
    );
    describe_counter!(
        "adc_l4_flows_refused_total",
        "Datagrams from UDP clients without a flow that started none and were dropped, by listener and reason (limit: max_udp_flows reached, policy, no_member, socket)"
    );
    describe_gauge!(
        "adc_l4_flows_open",
        "UDP flows now open, by listener (at most limits.max_udp_flows each)"
    );
    describe_counter!(
        "adc_lb_selections_total",
        "Times the load-balancing method chose a member, by pool and member"
    );
    describe_counter!(
        "adc_member_failures_total",
        "Requests counted as a member's failure by passive checks (connect errors, timeouts, bodies cut, counted 5xx), by pool and member"
    );
    describe_counter!(
        "adc_member_ejections_total",
        "Members taken out after consecutive failures (passive checks), by pool and member"
    );
    describe_counter!(
        "adc_health_checks_total",
        "Active health probes, by pool, member and result"
    );
    describe_gauge!(
        "adc_member_healthy",
        "1 when a member passes its active health checks, by pool and member"
    );
    describe_counter!(
        "adc_config_reloads_total",
        "Configuration reloads, by outcome (ok, refused)"
    );
    describe_counter!(
        "adc_policy_loads_total",
        "Policy files loaded from the watched folder, by policy and outcome (loaded, refused)"
    );
    describe_counter!(
        "adc_policy_hook_calls_total",
        "Policy hook calls, by policy, version and hook"
    );
    describe_histogram!(
        "adc_policy_hook_duration_seconds",
        "Time spent in policy hook calls, by policy, version and hook"
    );
    describe_counter!(
        "adc_policy_faults_total",
        "Policy calls stopped by a trap, the CPU budget or the memory cap, by policy, version and kind"
    );
    describe_counter!(
        "adc_policy_misplaced_decisions_total",
        "Decisions a hook may not return, taken as continue, and response_chunk holds over their bounds (once per response), by policy and hook"
    );
    describe_counter!(
        "adc_policy_invalid_answers_total",
        "Parts of policies' answers HTTP cannot carry, left out (a managed or invalid header, a body with 204 or 304) or answered with 500 (a 1xx status, an invalid redirect target), by policy and hook"
    );
}
