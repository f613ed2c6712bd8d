//! The route table: every route the API serves, written once. Dispatch, `405` answers with
//! their `Allow` header, the bearer-token rule, the request log's route pattern, the metrics'
//! route label and the OpenAPI document all read [`ROUTES`].
//!
//! Adding a route is one row. A path belongs to the first pattern in the table that matches
//! it, so a pattern with a literal segment comes before a pattern with a parameter there
//! (`/v1/storage/reservations/{id}` before `/v1/storage/{type}/{id}`).

use std::future::Future;
use std::pin::Pin;

use hyper::body::Incoming;
use hyper::{Method, Request, Response};

use super::error::ApiError;
use super::json::Body;
use super::{
    activity, authzen, consistency, decisions, entities, health, metrics, openapi, policies,
    storage,
};
use crate::state::AppState;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Health probes: always open.
    Open,
    /// Decisions: open with `--open-decisions`, else like admin. Decision routes also count
    /// decisions and their latency in the metrics.
    Decision,
    /// Everything that changes state or reads admin data.
    Admin,
}

/// What a handler gets: the state, the request, and the path's parameters in order.
pub struct Call<'a> {
    /// The shared state.
    pub state: &'a AppState,
    /// The request (its body not read yet).
    pub req: Request<Incoming>,
    /// The percent-decoded values of the pattern's `{...}` segments, in order.
    pub params: Vec<String>,
    /// The route's index in [`ROUTES`] (for its metrics).
    pub route: usize,
}

impl Call<'_> {
    /// The JSON body, read within the size and time limits.
    pub async fn body(self) -> Result<hyper::body::Bytes, ApiError> {
        super::body(self.state, self.req).await
    }

    /// The `i`th path parameter.
    pub fn param(&self, i: usize) -> &str {
        self.params.get(i).map_or("", String::as_str)
    }

    /// The raw query string.
    pub fn query(&self) -> Option<&str> {
        self.req.uri().query()
    }
}

/// A handler's answer.
pub type Reply<'a> = Pin<Box<dyn Future<Output = Result<Response<Body>, ApiError>> + Send + 'a>>;

/// A route's handler.
pub type Handler = for<'a> fn(Call<'a>) -> Reply<'a>;

/// One route: a method on a path pattern.
pub struct Route {
    /// The method.
    pub method: Method,
    /// The path, with `{name}` for a segment that is a parameter.
    pub pattern: &'static str,
    /// Who may call it.
    pub access: Access,
    /// What answers it.
    pub handler: Handler,
    /// How the OpenAPI document describes it.
    pub doc: openapi::Doc,
}

use Access::{Admin, Decision, Open};

/// Every route. Decision routes first: the table is searched in order.
pub static ROUTES: &[Route] = &[
    Route {
        method: Method::POST,
        pattern: "/v1/is_authorized",
        access: Decision,
        handler: |c| {
            Box::pin(async move {
                let (route, at_least) = (c.route, consistency::header(&c.req));
                decisions::single(c.state, route, at_least, &c.body().await?).await
            })
        },
        doc: decisions::DOC_SINGLE,
    },
    Route {
        method: Method::POST,
        pattern: "/v1/is_authorized/batch",
        access: Decision,
        handler: |c| {
            Box::pin(async move {
                let (route, at_least) = (c.route, consistency::header(&c.req));
                decisions::batch(c.state, route, at_least, &c.body().await?).await
            })
        },
        doc: decisions::DOC_BATCH,
    },
    Route {
        method: Method::GET,
        pattern: "/healthz",
        access: Open,
        handler: |_| Box::pin(async { Ok(health::healthz()) }),
        doc: health::DOC_HEALTHZ,
    },
    Route {
        method: Method::GET,
        pattern: "/readyz",
        access: Open,
        handler: |c| Box::pin(health::readyz(c.state)),
        doc: health::DOC_READYZ,
    },
    Route {
        method: Method::GET,
        pattern: "/metrics",
        access: Admin,
        handler: |c| Box::pin(metrics::scrape(c.state)),
        doc: metrics::DOC,
    },
    Route {
        method: Method::GET,
        pattern: "/v1/openapi.json",
        access: Admin,
        handler: |_| Box::pin(async { Ok(openapi::serve()) }),
        doc: openapi::DOC,
    },
    Route {
        method: Method::GET,
        pattern: "/v1/policies",
        access: Admin,
        handler: |c| Box::pin(async move { Ok(policies::status(c.state)) }),
        doc: policies::DOC_STATUS,
    },
    Route {
        method: Method::POST,
        pattern: "/v1/policies/reload",
        access: Admin,
        handler: |c| Box::pin(async move { policies::reload(c.state, &c.body().await?).await }),
        doc: policies::DOC_RELOAD,
    },
    Route {
        method: Method::PUT,
        pattern: "/v1/entities",
        access: Admin,
        handler: |c| Box::pin(async move { entities::put(c.state, &c.body().await?).await }),
        doc: entities::DOC_PUT,
    },
    Route {
        method: Method::GET,
        pattern: "/v1/entities/{type}/{id}",
        access: Admin,
        handler: |c| Box::pin(async move { entities::get(c.state, c.param(0), c.param(1)).await }),
        doc: entities::DOC_GET,
    },
    Route {
        method: Method::DELETE,
        pattern: "/v1/entities/{type}/{id}",
        access: Admin,
        handler: |c| {
            Box::pin(async move { entities::delete(c.state, c.param(0), c.param(1)).await })
        },
        doc: entities::DOC_DELETE,
    },
    Route {
        method: Method::GET,
        pattern: "/v1/activity",
        access: Admin,
        handler: |c| {
            Box::pin(async move {
                consistency::gate(c.state, None, consistency::header(&c.req)).await?;
                activity::list(c.state, c.query()).await
            })
        },
        doc: activity::DOC,
    },
    Route {
        method: Method::POST,
        pattern: "/v1/storage/check",
        access: Admin,
        handler: |c| Box::pin(async move { storage::check(c.state, &c.body().await?).await }),
        doc: storage::DOC_CHECK,
    },
    Route {
        method: Method::POST,
        pattern: "/v1/storage/reservations",
        access: Admin,
        handler: |c| Box::pin(async move { storage::reserve(c.state, &c.body().await?).await }),
        doc: storage::DOC_RESERVE,
    },
    Route {
        method: Method::DELETE,
        pattern: "/v1/storage/reservations/{id}",
        access: Admin,
        handler: |c| Box::pin(async move { storage::release(c.state, c.param(0)).await }),
        doc: storage::DOC_RELEASE,
    },
    Route {
        method: Method::GET,
        pattern: "/v1/storage/{type}/{id}",
        access: Admin,
        handler: |c| {
            Box::pin(async move {
                consistency::gate(c.state, None, consistency::header(&c.req)).await?;
                storage::totals(c.state, c.param(0), c.param(1), c.query()).await
            })
        },
        doc: storage::DOC_TOTALS,
    },
    Route {
        method: Method::POST,
        pattern: "/access/v1/evaluation",
        access: Decision,
        handler: |c| {
            Box::pin(async move {
                // Fleet mode: held to the token and to freshness like native decisions.
                consistency::gate(c.state, None, consistency::header(&c.req)).await?;
                let state = c.state;
                authzen::evaluation(state, &c.body().await?).await
            })
        },
        doc: authzen::DOC_EVALUATION,
    },
    Route {
        method: Method::POST,
        pattern: "/access/v1/evaluations",
        access: Decision,
        handler: |c| {
            Box::pin(async move {
                consistency::gate(c.state, None, consistency::header(&c.req)).await?;
                let state = c.state;
                authzen::evaluations(state, &c.body().await?).await
            })
        },
        doc: authzen::DOC_EVALUATIONS,
    },
    Route {
        method: Method::POST,
        pattern: "/access/v1/search/subject",
        access: Decision,
        handler: |c| {
            Box::pin(async move {
                consistency::gate(c.state, None, consistency::header(&c.req)).await?;
                let state = c.state;
                authzen::search(state, &c.body().await?, crate::search::Side::Subject).await
            })
        },
        doc: authzen::DOC_SEARCH_SUBJECT,
    },
    Route {
        method: Method::POST,
        pattern: "/access/v1/search/resource",
        access: Decision,
        handler: |c| {
            Box::pin(async move {
                consistency::gate(c.state, None, consistency::header(&c.req)).await?;
                let state = c.state;
                authzen::search(state, &c.body().await?, crate::search::Side::Resource).await
            })
        },
        doc: authzen::DOC_SEARCH_RESOURCE,
    },
    Route {
        method: Method::POST,
        pattern: "/access/v1/search/action",
        access: Decision,
        handler: |c| {
            Box::pin(async move {
                consistency::gate(c.state, None, consistency::header(&c.req)).await?;
                let state = c.state;
                authzen::search_actions(state, &c.body().await?).await
            })
        },
        doc: authzen::DOC_SEARCH_ACTION,
    },
    Route {
        method: Method::GET,
        pattern: "/.well-known/authzen-configuration",
        access: Open,
        handler: |c| {
            Box::pin(async move {
                let host = c.req.headers().get(hyper::header::HOST);
                Ok(authzen::configuration(
                    c.state,
                    host.and_then(|h| h.to_str().ok()),
                ))
            })
        },
        doc: authzen::DOC_CONFIGURATION,
    },
];

/// Where a path led.
pub enum Found {
    /// A route serves this method on the path.
    Route(usize),
    /// Routes serve the path, but not with this method; the index of the first of them.
    OtherMethods(usize),
    /// No route serves the path.
    Nothing,
}

/// Finds the route for `method` on a path split into decoded segments.
pub fn find(method: &Method, segments: &[String]) -> Found {
    let Some(first) = ROUTES.iter().position(|r| matches(r.pattern, segments)) else {
        return Found::Nothing;
    };
    let pattern = ROUTES[first].pattern;
    match ROUTES[first..]
        .iter()
        .position(|r| r.pattern == pattern && r.method == *method)
    {
        Some(i) => Found::Route(first + i),
        None => Found::OtherMethods(first),
    }
}

/// The methods served on the path of route `index`, for an `Allow` header (`GET, DELETE`).
pub fn allowed_methods(index: usize) -> String {
    let pattern = ROUTES.get(index).map_or("", |r| r.pattern);
    let methods: Vec<&str> = ROUTES
        .iter()
        .filter(|r| r.pattern == pattern)
        .map(|r| r.method.as_str())
        .collect();
    methods.join(", ")
}

/// Whether `pattern` matches the segments: literals equal, `{name}` anything.
fn matches(pattern: &str, segments: &[String]) -> bool {
    let mut parts = pattern.strip_prefix('/').unwrap_or(pattern).split('/');
    for seg in segments {
        match parts.next() {
            Some(p) if is_param(p) || p == seg => {}
            _ => return false,
        }
    }
    parts.next().is_none()
}

/// Whether a pattern segment is a `{name}` parameter.
pub fn is_param(part: &str) -> bool {
    part.starts_with('{') && part.ends_with('}')
}

/// The parameter values of `segments` under `pattern`, moved out in order.
pub fn params(pattern: &str, segments: Vec<String>) -> Vec<String> {
    let parts = pattern.strip_prefix('/').unwrap_or(pattern).split('/');
    segments
        .into_iter()
        .zip(parts)
        .filter(|(_, p)| is_param(p))
        .map(|(s, _)| s)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(path: &str) -> Vec<String> {
        super::super::segments(path).unwrap()
    }

    #[test]
    fn the_first_matching_pattern_owns_a_path() {
        let Found::Route(i) = find(&Method::DELETE, &segs("/v1/storage/reservations/r-1")) else {
            panic!("no route");
        };
        assert_eq!(ROUTES[i].pattern, "/v1/storage/reservations/{id}");
        let Found::Route(i) = find(&Method::GET, &segs("/v1/storage/Project/p")) else {
            panic!("no route");
        };
        assert_eq!(ROUTES[i].pattern, "/v1/storage/{type}/{id}");
        assert!(matches!(
            find(&Method::GET, &segs("/v1/storage/reservations/r-1")),
            Found::OtherMethods(_)
        ));
        assert!(matches!(
            find(&Method::GET, &segs("/v1/entities/User")),
            Found::Nothing
        ));
    }

    #[test]
    fn allow_lists_every_method_on_the_path() {
        let Found::OtherMethods(i) = find(&Method::POST, &segs("/v1/entities/User/a")) else {
            panic!("expected a 405");
        };
        assert_eq!(allowed_methods(i), "GET, DELETE");
    }

    #[test]
    fn no_route_is_listed_twice_and_none_is_shadowed() {
        for (i, r) in ROUTES.iter().enumerate() {
            for later in &ROUTES[i + 1..] {
                assert!(
                    !(r.pattern == later.pattern && r.method == later.method),
                    "{} {} listed twice",
                    r.method,
                    r.pattern
                );
            }
            // A path made of the pattern itself must lead to this route.
            let path: Vec<String> = r
                .pattern
                .trim_start_matches('/')
                .split('/')
                .map(|p| {
                    if is_param(p) {
                        "x".to_owned()
                    } else {
                        p.to_owned()
                    }
                })
                .collect();
            let Found::Route(found) = find(&r.method, &path) else {
                panic!("{} {} is unreachable", r.method, r.pattern);
            };
            assert_eq!(found, i, "{} {} is shadowed", r.method, r.pattern);
        }
    }

    #[test]
    fn params_come_out_in_order() {
        assert_eq!(
            params(
                "/v1/entities/{type}/{id}",
                segs("/v1/entities/User/caf%C3%A9")
            ),
            ["User", "café"]
        );
        assert!(params("/v1/policies", segs("/v1/policies")).is_empty());
    }
}
