//! The mesh's config language: Istio's security (`PeerAuthentication`, `AuthorizationPolicy`)
//! and traffic-management (`VirtualService`, `DestinationRule`, `Gateway`) resources, plus the
//! mesh's own `LocalRateLimit` (`mesh.bookinfo.io/v1alpha1`, where Istio would need an
//! `EnvoyFilter`), as validated types, and their evaluation with Istio's semantics.
//!
//! This crate holds no YAML parser: the data plane links it to evaluate the config meshd ships,
//! and `mesh-yaml` reads the files an Istio user would `kubectl apply` into these types.
//!
//! - [`MeshConfig::mtls_mode`]: which mTLS mode a workload accepts.
//! - [`MeshConfig::authorize`]: whether a workload accepts a request.
//! - [`MeshConfig::route`]: which virtual service rule a request follows;
//!   [`choose_destination`] picks one of its weighted destinations.
//! - [`MeshConfig::destination_rule`] / [`MeshConfig::subset_labels`]: a host's policy and
//!   subsets; [`MeshConfig::gateway_for`]: the gateways a gateway workload serves.
//! - [`MeshConfig::local_rate_limit`]: the token bucket on a workload's inbound.
//! - [`check_config_size`] and the `MAX_*` sizes: what fits in one snapshot.
//!
//! A [`MeshConfig`] round-trips through JSON (serde) so it can be shipped to data planes;
//! unknown JSON fields are rejected, as unknown YAML fields are.

mod eval;
mod limits;
mod meta;
mod model;
mod net_eval;
mod net_model;
mod rate_limit;

pub use eval::{Decision, RequestAttrs, WorkloadAuthorization};
pub use limits::{
    ConfigTooLarge, MAX_CONFIG_JSON_BYTES, MAX_FILE_BYTES, MAX_HOST_BYTES, MAX_STRING_BYTES,
    check_config_size,
};
pub use meta::{Metadata, ROOT_NAMESPACE, Workload, format_duration, parse_duration};
pub use model::{
    Action, AuthorizationPolicy, Condition, ConditionKey, MeshConfig, MtlsMode, Operation,
    PeerAuthentication, Rule, Source, UnsupportedKey,
};
pub use net_eval::{RouteMatch, RouteRequest, choose_destination, resolve_host, total_weight};
pub use net_model::{
    ClientTls, ConnectionPool, Destination, DestinationRule, Fault, FaultAbort, FaultDelay,
    Gateway, HeaderOperations, Headers, HttpMatch, HttpPool, HttpRoute, LoadBalancer,
    OutlierDetection, Percent, RegexPattern, Retries, Rewrite, RouteDestination, Server,
    ServerPort, StringMatch, Subset, TcpPool, TlsMode, TrafficPolicy, VirtualService,
};
pub use rate_limit::{
    DEFAULT_RATE_LIMIT_HEADER, DEFAULT_RATE_LIMIT_STATUS, LocalRateLimit, check_fill_interval,
    check_header_name, check_header_value, check_status, check_tokens, default_response_headers,
};
