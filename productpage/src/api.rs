//! The JSON API: `/api/v1/products[/<id>[/reviews|/ratings]]`. Backend answers are passed
//! through re-serialised in Python's style, with the backend's status.

use axum::extract::State as AxumState;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::backends::{self, Backend, outbound_headers};
use crate::pages::PRODUCT;
use crate::{Session, State, paths, pyjson};

pub(crate) async fn products() -> Response {
    let list = serde_json::json!([{
        "id": PRODUCT.id,
        "title": PRODUCT.title,
        "descriptionHtml": PRODUCT.description_html,
    }]);
    json(StatusCode::OK, &list)
}

pub(crate) async fn product_details(
    state: AxumState<State>,
    session: Session,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    proxy(Backend::Details, state, session, uri, headers).await
}

pub(crate) async fn product_reviews(
    state: AxumState<State>,
    session: Session,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    proxy(Backend::Reviews, state, session, uri, headers).await
}

pub(crate) async fn product_ratings(
    state: AxumState<State>,
    session: Session,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    proxy(Backend::Ratings, state, session, uri, headers).await
}

/// Calls `backend` for the product in the path and answers with its JSON and status.
async fn proxy(
    backend: Backend,
    AxumState(state): AxumState<State>,
    session: Session,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let headers = outbound_headers(&headers, &session);
    let id = paths::requests_quote(&paths::decoded_segment(id_segment(uri.path())));
    let fetched = backends::fetch(&state, backend, &id, &headers).await;
    json(fetched.status, &fetched.body)
}

/// The `<id>` segment of the routed path (escaped); Flask hands the view its decoded text,
/// which `requests` quotes into the backend's URL.
fn id_segment(path: &str) -> &str {
    path.split('/').nth(4).unwrap_or("")
}

fn json(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        pyjson::to_string(value),
    )
        .into_response()
}
