//! `GET /v1/openapi.json`: the OpenAPI 3.1 document of the native API, built with `utoipa`
//! from the route table: each route's [`Doc`] names the types its handler reads and renders
//! (their schemas derived from those types), its query parameters and its answers. Path
//! parameters come from the pattern, and the error answers every route shares (the token,
//! body limits, internal errors) from its access class and whether it reads a body.

use std::sync::OnceLock;

use hyper::StatusCode;
use utoipa::ToSchema;
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem, PathsBuilder,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Ref, RefOr, Required,
    ResponseBuilder,
};

use super::error::ErrorBody;
use super::json::Body;
use super::routes::{Access, ROUTES};

/// Named schemas collected while describing the routes.
pub type Schemas = Vec<(String, RefOr<Schema>)>;

/// Describes a body, adding the named schemas it refers to.
pub type SchemaFn = fn(&mut Schemas) -> RefOr<Schema>;

/// A body: JSON of a schema, or text.
#[derive(Clone, Copy)]
pub enum Content {
    /// `application/json` of this schema.
    Json(SchemaFn),
    /// `text/plain` (the Prometheus text format).
    Text,
    /// No body.
    Empty,
}

/// One documented answer.
pub struct Answer {
    /// Its status.
    pub status: u16,
    /// What it means.
    pub description: &'static str,
    /// Its body.
    pub body: Content,
}

/// A query parameter.
pub struct Query {
    /// Its name.
    pub name: &'static str,
    /// Whether it must be given.
    pub required: bool,
    /// What it is.
    pub description: &'static str,
}

/// How the OpenAPI document describes one route.
pub struct Doc {
    /// One line on what it does.
    pub summary: &'static str,
    /// Its request body, when it reads one.
    pub request: Option<SchemaFn>,
    /// Its query parameters.
    pub query: &'static [Query],
    /// Its answers: successes and the errors particular to it.
    pub answers: &'static [Answer],
}

/// The schema of a type the handlers use (a `$ref`, the type added to the components).
pub fn schema<T: ToSchema>(out: &mut Schemas) -> RefOr<Schema> {
    T::schemas(out);
    let name = T::name().into_owned();
    out.push((name.clone(), T::schema()));
    RefOr::Ref(Ref::from_schema_name(name))
}

/// A free-form JSON object (Cedar entity JSON, reports whose shape follows the policies).
pub fn any_object(_: &mut Schemas) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(SchemaType::new(Type::Object))
        .into()
}

/// An array of free-form JSON objects (a Cedar entities array).
pub fn object_array(out: &mut Schemas) -> RefOr<Schema> {
    ArrayBuilder::new().items(any_object(out)).into()
}

/// The errors every route of a kind may answer with.
fn shared_errors(access: Access, reads_body: bool) -> Vec<(u16, &'static str)> {
    let mut errors = vec![(
        500,
        "`internal`: a failure inside the daemon (details in its log).",
    )];
    if access != Access::Open {
        errors.push((401, "`unauthorized`: the bearer token is missing or wrong."));
    }
    if reads_body {
        errors.extend([
            (400, "`bad_json`, `invalid_field` and the route's other 400 codes: the body is malformed or a field is wrong (the message names it)."),
            (408, "`request_timeout`: the body did not arrive in time."),
            (413, "`body_too_large`: the body exceeds the size limit."),
            (415, "`unsupported_media_type`: the body is not declared as JSON."),
        ]);
    }
    errors
}

/// The document, built once.
pub fn document() -> &'static OpenApi {
    static DOC: OnceLock<OpenApi> = OnceLock::new();
    DOC.get_or_init(build)
}

fn build() -> OpenApi {
    let mut schemas = Schemas::new();
    let error = schema::<ErrorBody>(&mut schemas);
    let mut paths = PathsBuilder::new();
    for route in ROUTES {
        let doc = &route.doc;
        let mut op = OperationBuilder::new()
            .summary(Some(doc.summary))
            .operation_id(Some(operation_id(route.method.as_str(), route.pattern)));
        for name in route
            .pattern
            .split('/')
            .filter_map(|p| p.strip_prefix('{').and_then(|p| p.strip_suffix('}')))
        {
            op = op.parameter(
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
            );
        }
        for q in doc.query {
            op = op.parameter(
                ParameterBuilder::new()
                    .name(q.name)
                    .parameter_in(ParameterIn::Query)
                    .required(if q.required {
                        Required::True
                    } else {
                        Required::False
                    })
                    .description(Some(q.description))
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
            );
        }
        if let Some(request) = doc.request {
            op = op.request_body(Some(
                RequestBodyBuilder::new()
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(request(&mut schemas)))
                            .build(),
                    )
                    .build(),
            ));
        }
        for a in doc.answers {
            let mut resp = ResponseBuilder::new().description(a.description);
            match a.body {
                Content::Json(f) => {
                    let s = f(&mut schemas);
                    resp = resp.content(
                        "application/json",
                        ContentBuilder::new().schema(Some(s)).build(),
                    );
                }
                Content::Text => {
                    resp = resp.content(
                        "text/plain",
                        ContentBuilder::new()
                            .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                            .build(),
                    );
                }
                Content::Empty => {}
            }
            op = op.response(a.status.to_string(), resp.build());
        }
        let mut errors = shared_errors(route.access, doc.request.is_some());
        if doc.answers.iter().any(|a| a.status == 405) {
            errors.retain(|(s, _)| *s != 405);
        }
        for (status, description) in errors {
            if doc.answers.iter().any(|a| a.status == status) {
                continue;
            }
            op = op.response(
                status.to_string(),
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new().schema(Some(error.clone())).build(),
                    )
                    .build(),
            );
        }
        if route.access != Access::Open {
            op = op.security(SecurityRequirement::new("bearer", Vec::<String>::new()));
        }
        paths = paths.path(
            route.pattern,
            PathItem::new(http_method(route.method.as_str()), op.build()),
        );
    }
    let mut components = ComponentsBuilder::new().security_scheme(
        "bearer",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    for (name, s) in schemas {
        components = components.schema(name, s);
    }
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("policyd")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(env!("CARGO_PKG_DESCRIPTION")))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components.build()))
        .build()
}

/// `getV1EntitiesTypeId`-like ids, unique per method and pattern.
fn operation_id(method: &str, pattern: &str) -> String {
    let mut id = method.to_ascii_lowercase();
    for word in pattern
        .split(['/', '_', '.', '{', '}'])
        .filter(|w| !w.is_empty())
    {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            id.extend(first.to_uppercase());
            id.push_str(chars.as_str());
        }
    }
    id
}

fn http_method(method: &str) -> HttpMethod {
    match method {
        "POST" => HttpMethod::Post,
        "PUT" => HttpMethod::Put,
        "DELETE" => HttpMethod::Delete,
        "PATCH" => HttpMethod::Patch,
        "HEAD" => HttpMethod::Head,
        "OPTIONS" => HttpMethod::Options,
        "TRACE" => HttpMethod::Trace,
        _ => HttpMethod::Get,
    }
}

/// The document as an answer.
pub fn serve() -> hyper::Response<Body> {
    super::json::respond_with(StatusCode::OK, document())
}

/// The description of this route.
pub const DOC: Doc = Doc {
    summary: "This document: the OpenAPI 3.1 description of every route.",
    request: None,
    query: &[],
    answers: &[Answer {
        status: 200,
        description: "The OpenAPI document.",
        body: Content::Json(any_object),
    }],
};

/// A uid as the API takes it: `{"type", "id"}` or the Cedar text `User::"alice"`.
pub fn uid_schema() -> RefOr<Schema> {
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(r#"Cedar entity uid text, like User::"alice""#)),
        )
        .item(
            ObjectBuilder::new()
                .property("type", ObjectBuilder::new().schema_type(Type::String))
                .property("id", ObjectBuilder::new().schema_type(Type::String))
                .required("type")
                .required("id")
                .additional_properties(Some(AdditionalProperties::FreeForm(false))),
        )
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_ids_are_unique() {
        let mut ids: Vec<String> = ROUTES
            .iter()
            .map(|r| operation_id(r.method.as_str(), r.pattern))
            .collect();
        assert_eq!(
            operation_id("GET", "/v1/entities/{type}/{id}"),
            "getV1EntitiesTypeId"
        );
        ids.sort();
        let n = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), n);
    }
}
