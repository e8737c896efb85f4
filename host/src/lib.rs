//! adc: a WebAssembly-programmable application delivery controller.
//!
//! Glossary, used everywhere: the *client* (downstream) connects to a
//! *listener*; a *route* picks a *pool* of *members* (backends, upstream) and
//! a chain of *policies*, whose *hooks* run at fixed points of each request.

pub mod admin;
pub mod config;
pub mod demo;
pub mod error;
pub mod h3;
pub mod health;
pub mod l4;
pub mod listeners;
pub mod net;
pub mod policy;
pub mod pool;
pub mod proxy;
pub mod proxy_protocol;
pub mod runtime;
pub mod serve;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod watch;
pub mod workers;
