//! FNV-1a for the maps the data path looks up on every request: the connection pool (by the
//! address a request goes to), endpoint health (by endpoint address) and round-robin turns.
//! Their keys come from the mesh's registry, the workload's own configuration or, behind a
//! sidecar, from the application the sidecar serves — never from a remote peer — so the
//! defence SipHash buys against chosen colliding keys is not needed there, while its cost
//! (several hundred instructions for a short key) was a visible share of a proxied request.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` hashed with [`Fnv`].
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;

/// The 64-bit FNV-1a hasher.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors_and_distinct_keys() {
        // FNV-1a test vectors.
        let hash = |bytes: &[u8]| {
            let mut h = Fnv::default();
            h.write(bytes);
            h.finish()
        };
        assert_eq!(hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash(b"foobar"), 0x8594_4171_f739_67e8);
        let mut map: FastMap<std::net::SocketAddr, usize> = FastMap::default();
        for port in 0..1000 {
            map.insert(
                std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                port.into(),
            );
        }
        assert_eq!(map.len(), 1000);
        assert_eq!(map[&std::net::SocketAddr::from(([127, 0, 0, 1], 999))], 999);
    }
}
