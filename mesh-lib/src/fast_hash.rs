//! FNV-1a (the `fnv` crate) for the maps the data path looks up on every request: the
//! connection pool (by the address a request goes to), endpoint health (by endpoint address)
//! and round-robin turns. Their keys come from the mesh's registry, the workload's own
//! configuration or, behind a sidecar, from the application the sidecar serves — never from a
//! remote peer — so the defence SipHash buys against chosen colliding keys is not needed there,
//! while its cost (several hundred instructions for a short key) was a visible share of a
//! proxied request.

pub(crate) use fnv::FnvHasher;

/// A `HashMap` hashed with [`FnvHasher`].
pub(crate) type FastMap<K, V> = fnv::FnvHashMap<K, V>;
