//! Glue between the generated bindings and [`Policy`](crate::Policy); used
//! by the code the `#[policy]` attribute writes, not by authors.

#[cfg(target_arch = "wasm32")]
pub use wasm::*;

#[cfg(target_arch = "wasm32")]
mod wasm {
    use std::any::Any;
    use std::cell::OnceCell;
    use std::marker::PhantomData;

    use super::bindings::adc::policy::{http, types as wit};
    use super::bindings::exports::adc::policy::hooks::Guest;
    use crate::{Backend, Config, Connection, Decision, ListenerKind, Policy, Request, Response};
    use crate::{Hooks, Transaction};

    /// The generated bindings of the `adc:policy` world.
    pub mod bindings {
        wit_bindgen::generate!({
            path: "../wit/adc-policy@0.1.0",
            world: "hooks-policy",
            pub_export_macro: true,
            export_macro_name: "export",
            default_bindings_module: "adc_sdk::__private::bindings",
            generate_all,
        });
    }

    pub use bindings::export;

    thread_local! {
        // One policy per component and one thread per instance: `init` fills
        // this once, every hook reads it.
        static POLICY: OnceCell<Box<dyn Any>> = const { OnceCell::new() };
        // The host's handles for the request and response of whichever hook
        // runs, taken at the first hook and kept: `hooks` pass no handles.
        static CURRENT: OnceCell<(http::Request, http::Response)> = const { OnceCell::new() };
    }

    /// The exported handler for the policy type `P`.
    pub struct Export<P>(PhantomData<P>);

    fn with<P: Policy, R>(f: impl FnOnce(&P) -> R) -> R {
        POLICY.with(|cell| {
            let policy = cell
                .get()
                .and_then(|p| p.downcast_ref::<P>())
                .expect("the host runs init before any hook");
            f(policy)
        })
    }

    /// Run `f` with the policy and the request and response of this hook.
    fn with_exchange<P: Policy, R>(f: impl FnOnce(&P, Request<'_>, Response<'_>) -> R) -> R {
        CURRENT.with(|cell| {
            let (req, resp) =
                cell.get_or_init(|| (http::current_request(), http::current_response()));
            with(|p: &P| f(p, Request::__from_sys(req), Response::__from_sys(resp)))
        })
    }

    fn install_panic_hook() {
        std::panic::set_hook(Box::new(|info| {
            let message = match info.location() {
                Some(at) => format!(
                    "panicked at {}:{}:{}: {}",
                    at.file(),
                    at.line(),
                    at.column(),
                    payload(info)
                ),
                None => format!("panicked: {}", payload(info)),
            };
            super::bindings::adc::policy::log::write(wit::Level::Error, &message);
        }));
    }

    fn payload(info: &std::panic::PanicHookInfo<'_>) -> String {
        if let Some(s) = info.payload().downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = info.payload().downcast_ref::<String>() {
            s.clone()
        } else {
            "Box<dyn Any>".to_owned()
        }
    }

    fn hooks(h: Hooks) -> wit::Hooks {
        [
            (Hooks::CONNECT, wit::Hooks::CONNECT),
            (Hooks::REQUEST_HEADERS, wit::Hooks::REQUEST_HEADERS),
            (Hooks::REQUEST_BODY, wit::Hooks::REQUEST_BODY),
            (Hooks::BACKEND_SELECTED, wit::Hooks::BACKEND_SELECTED),
            (Hooks::BACKEND_FAILED, wit::Hooks::BACKEND_FAILED),
            (Hooks::RESPONSE_HEADERS, wit::Hooks::RESPONSE_HEADERS),
            (Hooks::RESPONSE_BODY, wit::Hooks::RESPONSE_BODY),
            (Hooks::END, wit::Hooks::END),
        ]
        .into_iter()
        .filter(|(ours, _)| h.contains(*ours))
        .fold(wit::Hooks::empty(), |set, (_, theirs)| set | theirs)
    }

    fn decision(d: Decision) -> wit::Decision {
        match d {
            Decision::Continue => wit::Decision::Continue,
            Decision::Respond(reply) => wit::Decision::Respond(wit::Reply {
                status: reply.status,
                headers: reply
                    .headers
                    .into_iter()
                    .map(|(name, value)| wit::Header { name, value })
                    .collect(),
                body: reply.body,
            }),
            Decision::Redirect { status, location } => {
                wit::Decision::Redirect(wit::Redirect { status, location })
            }
            Decision::Route { pool, member } => wit::Decision::Route(wit::Route { pool, member }),
            Decision::Reject => wit::Decision::Reject,
        }
    }

    fn backend(b: wit::Backend) -> Backend {
        Backend {
            pool: b.pool,
            member: b.member,
            address: b.address,
        }
    }

    impl<P: Policy> Guest for Export<P> {
        fn init(config: String) -> Result<wit::Registration, String> {
            install_panic_hook();
            let config = Config::from_json(&config).map_err(|e| e.to_string())?;
            let policy = P::init(config).map_err(|e| e.to_string())?;
            let limits = policy.body_limits();
            POLICY.with(|cell| {
                let _ = cell.set(Box::new(policy));
            });
            Ok(wit::Registration {
                hooks: hooks(P::HOOKS),
                request_body_limit: limits.request,
                response_body_limit: limits.response,
            })
        }

        fn on_connect(conn: wit::Connection) -> wit::Decision {
            let conn = Connection {
                listener: conn.listener,
                kind: match conn.kind {
                    wit::ListenerKind::Http => ListenerKind::Http,
                    wit::ListenerKind::Tcp => ListenerKind::Tcp,
                    wit::ListenerKind::Udp => ListenerKind::Udp,
                },
                client_ip: conn.client_ip,
                client_port: conn.client_port,
                local_ip: conn.local_ip,
                local_port: conn.local_port,
                sni: conn.sni,
                alpn: conn.alpn,
                client_certificate: conn.client_certificate,
            };
            decision(with(|p: &P| p.on_connect(&conn)))
        }

        fn on_request_headers() -> wit::Decision {
            decision(with_exchange(|p: &P, req, _| p.on_request_headers(&req)))
        }

        fn on_request_body() -> wit::Decision {
            decision(with_exchange(|p: &P, req, _| p.on_request_body(&req)))
        }

        fn on_backend_selected(b: wit::Backend) -> wit::Decision {
            let b = backend(b);
            decision(with_exchange(|p: &P, req, _| {
                p.on_backend_selected(&req, &b)
            }))
        }

        fn on_backend_failed(b: wit::Backend, reason: String) -> wit::Decision {
            let b = backend(b);
            decision(with_exchange(|p: &P, req, _| {
                p.on_backend_failed(&req, &b, &reason)
            }))
        }

        fn on_response_headers() -> wit::Decision {
            decision(with_exchange(|p: &P, req, resp| {
                p.on_response_headers(&req, &resp)
            }))
        }

        fn on_response_body() -> wit::Decision {
            decision(with_exchange(|p: &P, req, resp| {
                p.on_response_body(&req, &resp)
            }))
        }

        fn on_response_chunk(chunk: Vec<u8>, last: bool) -> wit::ChunkOutput {
            let out =
                with_exchange(|p: &P, req, resp| p.on_response_chunk(&req, &resp, &chunk, last));
            wit::ChunkOutput {
                data: out.data,
                hold: u32::try_from(out.hold).unwrap_or(u32::MAX),
            }
        }

        fn on_end(summary: wit::Transaction) {
            let summary = Transaction {
                status: summary.status,
                duration_ns: summary.duration_ns,
                upstream_ns: summary.upstream_ns,
                backend: summary.backend.map(backend),
                error: summary.error,
            };
            with_exchange(|p: &P, req, _| p.on_end(&req, &summary));
        }
    }
}
