//! TEMPORARY: default plans until the routing config lands.
use bytes::Bytes;
use http::Request;

use super::plan::RoutePlan;
use crate::dataplane::Mesh;

pub(crate) fn plan(_mesh: &Mesh, _req: &mut Request<Bytes>) -> RoutePlan {
    RoutePlan {
        source: "default".into(),
        ..RoutePlan::default()
    }
}
