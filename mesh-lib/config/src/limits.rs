//! The sizes a mesh config may have, shared by the YAML loader (which checks files, strings and
//! hosts as they come in) and meshd (which checks the merged config before it ships it): meshd
//! sends the merged config in one gRPC message, and tonic refuses messages above 4 MiB by
//! default, which would break every data plane's watch at once.

use crate::model::MeshConfig;

/// The largest config file meshd reads.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// The longest string a config file may hold.
pub const MAX_STRING_BYTES: usize = 64 << 10;
/// The longest host name (RFC 1035: 253 characters in text form).
pub const MAX_HOST_BYTES: usize = 253;
/// The largest merged config, as the JSON meshd puts in every snapshot: half of tonic's
/// default 4 MiB decoding limit, leaving the rest of the message to the endpoints.
pub const MAX_CONFIG_JSON_BYTES: usize = 2 << 20;

/// The merged config would not fit in a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the mesh config would be {bytes} bytes as JSON, above the limit of {limit} bytes")]
pub struct ConfigTooLarge {
    pub bytes: usize,
    pub limit: usize,
}

/// How many bytes `config` takes as snapshot JSON, if at most [`MAX_CONFIG_JSON_BYTES`].
pub fn check_config_size(config: &MeshConfig) -> Result<usize, ConfigTooLarge> {
    let bytes = json_len(config);
    if bytes > MAX_CONFIG_JSON_BYTES {
        return Err(ConfigTooLarge {
            bytes,
            limit: MAX_CONFIG_JSON_BYTES,
        });
    }
    Ok(bytes)
}

/// Counts instead of allocating: the check runs on every reload.
fn json_len(config: &MeshConfig) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, config).expect("mesh config serialises");
    count.0
}
