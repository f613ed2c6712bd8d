//! policyd: a Cedar authorization sidecar. Exact Cedar decisions over local HTTP, entities in
//! SQLite.
//!
//! # Layout
//! - [`analysis`]: policy change analysis (cvc5 through Cedar's symbolic compiler): `diff`,
//!   the `check` lints and the reload guard.
//! - [`policy`]: load, validate and snapshot the Cedar policies and schema of a directory;
//!   its `scope` submodule picks the policies a request shape can match, and its `slicing`
//!   submodule proves how far a decision's entities reach.
//! - [`reload`]: hot reload (directory watcher, SIGHUP, API), coalesced, never half-applied.
//! - [`authz`]: the pure decision core, (request, snapshot, entities) -> decision.
//! - [`store`]: the entity store interface, its SQLite backend, the parsed-entity cache,
//!   decision slicing, and the checks of entity writes (action entities against the schema).
//! - [`search`]: permission search (resources, subjects, actions), exact and narrowed by
//!   Cedar's partial evaluation.
//! - [`engine`]: joins the two: slices the store for queries and decides them on one snapshot.
//! - [`api`]: HTTP routes, JSON types, and the one mapping from errors to statuses.
//! - [`server`]: the accept loop and graceful drain; [`shutdown`]: the stop signal.
//! - [`state`]: what handlers share; [`config`]: what `serve` is given; [`daemon`]: start-up.
//! - [`activity`]: the activity log (decisions, entity writes, reloads) and its writer thread.
//! - [`storage`]: storage accounting and quota types (the store keeps the counters).
//! - [`import`]: entity files into the store (the `import` command and demo seeding).
//! - [`report`]: plain-text tables for the admin commands.
//! - [`synth`]: a deterministic synthetic platform for benchmarks and the load generator.
//! - [`policy_test`]: policy test files (`policyd test`), decided exactly as `serve` decides.
//! - [`formatter`]: Cedar's formatting of policy files (`policyd fmt`).
//! - [`dir`]: which files of a directory policyd reads (policies, `fmt` and `test` arguments).
//! - [`logging`]: the log's format (`--log-format text|json`) and filter.
//! - [`metrics`]: the Prometheus metrics (`GET /metrics`): names, labels, the registry.
//! - [`cli`]: command-line arguments.
//! - [`uid`]: entity uids from text, fast for canonical forms and exactly as Cedar reads them.
//! - `arena`: a bounded table of byte strings at a few bytes of bookkeeping each (the
//!   store's compact tier, the activity writer's names).
//! - [`upstream`]: fleet mode: PostgreSQL as the source of truth, the local store as its
//!   replica, revision tokens.

pub mod activity;
pub mod analysis;
pub mod api;
pub(crate) mod arena;
pub mod authz;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dir;
pub mod engine;
pub mod formatter;
pub mod import;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod policy_test;
pub mod reload;
pub mod report;
pub mod search;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod storage;
pub mod store;
pub mod synth;
pub mod uid;
pub mod upstream;

pub use server::run;
