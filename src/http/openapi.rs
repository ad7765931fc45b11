//! The OpenAPI 3 description of the API, generated from the handlers'
//! annotations and served at `/api/openapi.json`.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::routes;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "cyltrack",
        description = "Tracks LPG gas cylinders and catches counterfeit and cloned labels. \
            Every error has the shape {\"error\": {\"code\", \"message\", \"field\"?}}; \
            malformed JSON is a 400, an invalid value a 422 naming the field, an oversized body a 413. \
            A request slower than the server's timeout gets a 408, and one beyond its concurrency \
            limit a 503 with a Retry-After header. Both have the error shape. \
            Too many or too large headers get a 431 with an empty body. \
            A request over a rate limit (per user for authenticated calls and scans, per client \
            address for login, refresh and logout, and for failed logins) gets a 429 with code \
            rate_limited, a Retry-After header and the same number of seconds in error.retry_after. \
            A Host outside ALLOWED_HOSTS, or a malformed forwarding header from a trusted proxy, \
            gets a 400 with code invalid_host or invalid_header. \
            Every response carries an x-request-id header."
    ),
    paths(
        routes::health,
        routes::login,
        routes::refresh,
        routes::logout,
        routes::me,
        routes::list_users,
        routes::get_user,
        routes::create_user,
        routes::update_user,
        routes::list_depots,
        routes::create_depot,
        routes::register_cylinder,
        routes::list_cylinders,
        routes::get_cylinder,
        routes::change_status,
        routes::assign_cylinder,
        routes::cylinder_history,
        routes::scan,
        routes::verify_token,
        routes::cylinder_scans,
        routes::set_tamper_flag,
        routes::reissue_codes,
    ),
    components(schemas(super::error::ErrorBody, super::error::ErrorDetail)),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Sessions: login, refresh, logout"),
        (name = "users", description = "Accounts; managed by admins"),
        (name = "depots", description = "Depots"),
        (name = "cylinders", description = "The cylinder registry"),
        (name = "scans", description = "Scan verification, clone detection and incident response"),
        (name = "meta", description = "Health"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.bearer_format = Some("JWT".to_string());
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}
